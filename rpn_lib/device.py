"""The device a model runs on: ``auto``, CPU, CUDA (or Apple's MPS), checked before any work.

Every entry point of the library (training, detection, evaluation, the benchmark, the command
line's ``--device``) goes through :func:`resolve_device`, so that asking for a GPU that is not
there is one clear :class:`~rpn_lib.errors.DeviceError` (the command line: one line, exit
code 2) rather than an assertion deep inside ``Module.to``.
"""

from __future__ import annotations

import torch

from rpn_lib.errors import DeviceError

__all__ = ["computes_float64", "resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` to run on: ``"auto"`` -> CUDA when available, else CPU; otherwise
    ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (or a ``torch.device``), checked here.

    Raises:
        DeviceError: the name is not a device, or asks for a CUDA or MPS device that this
            PyTorch build or this machine does not have (rather than failing later, deep inside
            ``Module.to``).
    """
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise DeviceError(f"device {str(dev)!r} asked for, but this PyTorch ({torch.__version__}) is built "
                              "without CUDA: use --device cpu (or auto), or install a CUDA build of torch")
        n = torch.cuda.device_count()
        if n == 0:
            raise DeviceError(f"device {str(dev)!r} asked for, but no CUDA GPU is visible "
                              "(check nvidia-smi and CUDA_VISIBLE_DEVICES); use --device cpu (or auto)")
        if dev.index is not None and dev.index >= n:
            raise DeviceError(f"device {str(dev)!r} asked for, but only {n} CUDA GPU(s) are visible "
                              f"(cuda:0 to cuda:{n - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' asked for, but Apple's Metal backend is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {str(dev)!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return dev


def computes_float64(device: str | torch.device) -> bool:
    """Whether ``device`` computes in float64: the CPU and CUDA do, Apple's MPS does not.

    The library runs a step on the device only where it gives there what it gives on the CPU,
    which for resampling and intensity normalisation takes float64; elsewhere the step stays
    on the CPU and its result is copied over.
    """
    return torch.device(device).type in ("cpu", "cuda")
