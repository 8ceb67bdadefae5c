"""Which reduced precisions a device computes natively, and the choice of precision that follows.

bf16 autocast pays only where the hardware computes in bf16: CUDA GPUs from Ampere on, and
x86 CPUs with the AVX512-BF16 or AMX instructions. On any other CPU, PyTorch emulates bf16 by
converting every operand, and a bf16 network runs many times *slower* than in fp32
(``rpn-lib bench`` measures the ratio with a small matmul and reports it in its machine line;
the book's chapter Performance shows it). fp16 autocast is for CUDA only.

This module is the one place that decides:

- :func:`bf16_native` says whether bf16 is native on a device;
- :func:`resolve_precision` turns ``"auto"`` into ``"bf16"`` where it is native and ``"fp32"``
  elsewhere (training, ``rpn-lib replicate``);
- :func:`warn_if_emulated` warns when bf16 is asked for where it is emulated (a
  :class:`~rpn_lib.detect.Detector` with ``amp=True``, training with ``precision="bf16"``).
"""

from __future__ import annotations

import platform
import warnings

import torch

__all__ = ["PRECISIONS", "EmulatedPrecisionWarning", "autocast_precisions", "bf16_native", "cpu_bf16_instructions",
           "emulation_message", "resolve_precision", "warn_if_emulated"]

PRECISIONS = ("fp32", "bf16")
"""Training precisions (autocast of the forward pass); ``"auto"`` is also accepted where a
precision is chosen (:func:`resolve_precision`)."""


class EmulatedPrecisionWarning(RuntimeWarning):
    """bf16 asked for on a device that emulates it (slow, see the module)."""


def _cpu_check(name: str) -> bool:
    """One of ``torch.cpu``'s instruction-set checks; False where this build lacks it."""
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if callable(fn) else False
    except Exception:  # noqa: BLE001 - a check that cannot run means the instructions are not known to be there
        return False


def cpu_bf16_instructions() -> list[str]:
    """The bf16 instruction sets of this CPU that oneDNN uses: a subset of
    ``["AVX512-BF16", "AMX"]`` (empty on AVX2-only x86 CPUs and on non-x86 CPUs)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return []
    found = []
    if _cpu_check("_is_avx512_bf16_supported"):
        found.append("AVX512-BF16")
    if _cpu_check("_is_amx_tile_supported"):
        found.append("AMX")
    return found


def bf16_native(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it
    (``torch.cuda.is_bf16_supported``), or a CPU with :func:`cpu_bf16_instructions`.

    Non-x86 CPUs (e.g. ARM) count as not native: their bf16 paths in PyTorch's CPU kernels
    are not known to beat fp32, so fp32 is the safe choice there.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        return bool(cpu_bf16_instructions())
    return False


def autocast_precisions(device: str | torch.device = "cpu") -> list[str]:
    """Reduced precisions worth measuring on ``device``, natively computed: on CUDA
    ``["bf16", "fp16"]`` (``["fp16"]`` where bf16 is not supported), on a CPU ``["bf16"]``
    where :func:`bf16_native`, else none."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return (["bf16"] if bf16_native(dev) else []) + ["fp16"]
    return ["bf16"] if bf16_native(dev) else []


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``"fp32"`` and ``"bf16"`` as given; ``"auto"``: ``"bf16"`` where :func:`bf16_native`
    on ``device``, else ``"fp32"``.

    Raises:
        ValueError: ``precision`` is none of ``"auto"``, ``"fp32"``, ``"bf16"``.
    """
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    return precision


def emulation_message(device: str | torch.device = "cpu") -> str:
    """Why bf16 is slow on ``device`` and what to do instead (one sentence each)."""
    dev = torch.device(device)
    where = ("this GPU does not support bf16" if dev.type == "cuda" else
             f"this CPU ({platform.machine()}, {torch.backends.cpu.get_cpu_capability()}) has neither AVX512-BF16 nor AMX")
    return (f"bf16 autocast asked for, but {where}: PyTorch emulates bf16 there and the network runs many times "
            "slower than in fp32. Use fp32 (precision='fp32' / 'auto', or leave amp off).")


def warn_if_emulated(precision: str, device: str | torch.device = "cpu", stacklevel: int = 3) -> bool:
    """Warn (:class:`EmulatedPrecisionWarning`) when ``precision`` is ``"bf16"`` and ``device``
    does not compute it natively. Returns whether it warned."""
    if precision != "bf16" or bf16_native(device):
        return False
    warnings.warn(emulation_message(device), EmulatedPrecisionWarning, stacklevel=stacklevel)
    return True
