"""Performance benchmark: where detection and training spend their time, and how close to the
machine's limit the network runs.

Every measurement is a function that returns a plain, JSON-ready ``dict``;
:func:`run_benchmark` composes them for the ``cpu-small`` and ``paper`` presets, prints a
table (:func:`format_report`) and writes the whole result as JSON. What is measured:

- detection latency per volume through :meth:`rpn_lib.detect.Detector.detect` itself (the
  code path of ``rpn-lib detect``), split into the network (backbone + head), candidate
  selection (:func:`rpn_lib.candidates.select_candidates`) and the graph prior
  (:func:`rpn_lib.prior.select_combination`) from the detector's own ``timing_ms``;
- one training step as :func:`rpn_lib.train.train` runs it (augmentation, the method's
  :meth:`~rpn_lib.methods.Method.training_losses`: forward and loss, backward, AdamW), in fp32
  and bf16;
- peak memory: the process's peak resident set (``VmHWM`` of ``/proc/self/status``, reset
  before each measurement through ``/proc/self/clear_refs``) and, on CUDA,
  ``torch.cuda.max_memory_allocated``;
- forward time, FLOPs and memory for growing volumes (64^3 ... 160^3);
- achieved FLOP/s of the forward pass (FLOPs counted with
  :class:`torch.utils.flop_counter.FlopCounterMode`: two per multiply-add of every
  convolution) against the measured rate of a large dense matmul in the same precision, and
  the end-to-end time over that floor;
- levers side by side on the forward pass: autocast precision, ``channels_last_3d``,
  ``inference_mode`` against ``no_grad``, batch 2, thread count, ``torch.compile`` (and
  ``cudnn.benchmark`` on CUDA);
- peers on the same volume when their modules are importable (:data:`PEERS`): the baselines
  of :mod:`rpn_lib.baselines` (heatmap regression, SSD, Faster R-CNN) and MONAI's RetinaNet
  (:mod:`rpn_lib.baselines.retinanet_peer`), network and end to end, timed in the same rounds
  as the IG-RPN (each round runs every model once, in a rotating order) and reported as the
  median of the per-round ratios, with their range; in fp32, and again with every model under
  the detector's autocast where that precision is measured (``peers_amp``);
- the memory allocator side by side: detection latency in a child process with the other
  setting of :func:`rpn_lib.allocator.retain_freed_memory` (kept freed memory against glibc
  as it comes), as a ratio;
- optionally, the accuracy cost of autocast: d-mean of a trained model on a test split in
  fp32 and with autocast (bf16 on CPU, fp16 on CUDA).

Times are wall-clock medians over ``repeats`` runs after ``warmup`` runs (CUDA is synchronised
before each clock read). Untrained weights are used unless a model file is given: the time of
every stage but the NMS does not depend on the weights.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import gc
import inspect
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rpn_lib import allocator
from rpn_lib.augment import augmented_batch
from rpn_lib.checkpoint import LoadedModel, load_model
from rpn_lib.data.geometry import world_to_voxel
from rpn_lib.data.preprocess import prepare_volume
from rpn_lib.data.synth import generate_case, sample_scene
from rpn_lib.detect import Detector
from rpn_lib.device import resolve_device
from rpn_lib.errors import RpnLibError
from rpn_lib.fileio import atomic_write, atomic_write_json
from rpn_lib.inference import prepare_for_inference
from rpn_lib.landmarks import LANDMARK_NAMES
from rpn_lib.methods import TrainContext, get_method
from rpn_lib.model import IGRPN
from rpn_lib.precision import autocast_precisions, bf16_native, cpu_bf16_instructions
from rpn_lib.presets import Preset, get_preset
from rpn_lib.prior import GraphPrior
from rpn_lib.readahead import READ_AHEAD

BENCH_FORMAT = "rpn-lib-bench/1"
DEFAULT_SIZES = (64, 96, 128, 160)
"""Cube sides (voxels) of the size-scaling table."""
DEFAULT_SIZE_WIDTH = 32
"""First-block width of the size-scaling model (the paper's)."""
QUICK_SHAPE = (32, 32, 32)
"""``--quick``: input shape of every preset (same field of view, coarser voxels)."""
QUICK_WIDTH = 4
"""``--quick``: first-block width of every preset."""
QUICK_SIZES = (16, 24)
"""``--quick``: cube sides of the size-scaling table."""
QUICK_SIZE_WIDTH = 2
"""``--quick``: width of the size-scaling model."""
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_MB = 1024.0 * 1024.0


# --------------------------------------------------------------------------------------------
# clocks and memory
# --------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _r(x: float | None, nd: int = 3) -> float | None:
    """Round for JSON; None and non-finite values become None (JSON has no NaN)."""
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), nd)


def _error(e: BaseException) -> str:
    """An exception as one short line for a result row."""
    msg = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {msg}"


def _stats_ms(runs_ms: Sequence[float]) -> dict[str, Any]:
    return {"median_ms": _r(statistics.median(runs_ms)), "min_ms": _r(min(runs_ms)),
            "max_ms": _r(max(runs_ms)), "runs_ms": [_r(t) for t in runs_ms]}


def _status_kb(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or None."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, flags=re.M)
    return int(m.group(1)) if m else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (``VmHWM``); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring the peak memory of the code inside it.

    CPU: the peak resident set size of the process (``VmHWM``), reset on entry. Where the
    reset is impossible (not Linux, or no permission) the peak is ``ru_maxrss``, the peak of
    the whole process lifetime, and ``cpu_peak_method`` says so. The peak includes what was
    resident before (Python, torch, weights): ``cpu_peak_extra_mb`` is the growth during the
    block. CUDA: ``torch.cuda.max_memory_allocated`` with its counter reset on entry.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.result: dict[str, Any] = {}

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        self._reset = _reset_peak_rss()
        self._rss_before = _status_kb("VmRSS")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_before = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc: Any) -> None:
        _sync(self.device)
        hwm = _status_kb("VmHWM")
        if self._reset and hwm is not None:
            peak_kb, method = hwm, "VmHWM, reset before the measurement"
        else:
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
            method = "ru_maxrss (peak of the process lifetime)"
        before = self._rss_before
        self.result = {
            "cpu_peak_rss_mb": _r(peak_kb / 1024.0, 1),
            "cpu_rss_before_mb": _r(before / 1024.0, 1) if before is not None else None,
            "cpu_peak_extra_mb": _r((peak_kb - before) / 1024.0, 1) if before is not None else None,
            "cpu_peak_method": method,
            "cuda_max_allocated_mb": None, "cuda_allocated_before_mb": None,
        }
        if self.device.type == "cuda":
            self.result["cuda_max_allocated_mb"] = _r(torch.cuda.max_memory_allocated(self.device) / _MB, 1)
            self.result["cuda_allocated_before_mb"] = _r(self._cuda_before / _MB, 1)


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int = 5, warmup: int = 1,
              memory: bool = True) -> dict[str, Any]:
    """Wall time of ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Returns ``median_ms``, ``min_ms``, ``max_ms``, ``runs_ms`` (milliseconds per call),
    ``repeats``, ``warmup`` and, with ``memory``, ``memory`` (a :class:`PeakMemory` result over
    the timed calls).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        fn()
    _sync(device)
    runs = []
    with PeakMemory(device) if memory else contextlib.nullcontext() as pm:
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            runs.append((time.perf_counter() - t0) * 1e3)
    out = {**_stats_ms(runs), "repeats": repeats, "warmup": warmup}
    if memory:
        out["memory"] = pm.result  # type: ignore[union-attr]
    return out


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(n)`` (None: unchanged), restoring it after."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``"bf16"`` / ``"fp16"``; nothing for ``"fp32"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def amp_precision(device: torch.device) -> str:
    """The autocast precision :class:`~rpn_lib.detect.Detector` uses with ``amp=True`` here."""
    return "fp16" if device.type == "cuda" else "bf16"


# --------------------------------------------------------------------------------------------
# machine
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, memory, threads, torch, GPU."""
    mem_kb = None
    with contextlib.suppress(OSError):
        m = re.search(r"^MemTotal:\s+(\d+)\s+kB", Path("/proc/meminfo").read_text(), flags=re.M)
        mem_kb = int(m.group(1)) if m else None
    info: dict[str, Any] = {
        "cpu": _cpu_model(), "logical_cpus": os.cpu_count(), "usable_cores": usable_cores(),
        "memory_gb": _r(mem_kb / 1024.0 ** 2, 1) if mem_kb else None,
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()), "device": str(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_instructions": cpu_bf16_instructions(),
        "bf16_native": bf16_native(device),
        "gpu": None, "cuda": None, "cudnn_allow_tf32": None, "cuda_matmul_allow_tf32": None,
        "allocator": allocator.allocator_setting(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        # TF32 convolutions (cuDNN's default) can beat the fp32 matmul peak measured without TF32
        info["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
        info["cuda_matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return info


# --------------------------------------------------------------------------------------------
# FLOPs and the matmul peak
# --------------------------------------------------------------------------------------------


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Floating-point operations of one forward pass of ``model`` on an input of ``input_shape``.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`: two per multiply-add of
    convolutions and matrix products; normalisation, activations, pooling and interpolation
    are not counted. The count runs on a copy of the model on the ``meta`` device (no
    arithmetic); a model that needs real values (e.g. ``.item()`` in its forward) is run
    once on a random input instead.
    """
    from torch.utils.flop_counter import FlopCounterMode

    shape = tuple(int(s) for s in input_shape)
    try:
        meta = copy.deepcopy(model).to("meta").eval()
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            meta(torch.empty(shape, device="meta"))
    except (RuntimeError, NotImplementedError):
        dev = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                model(torch.rand(shape, device=dev))
        finally:
            model.train(was_training)
    return int(fc.get_total_flops())


def matmul_peak(n: int = 4096, precision: str = "fp32", device: str | torch.device = "cpu",
                repeats: int = 5, warmup: int = 1) -> dict[str, Any]:
    """Rate of an ``n x n`` by ``n x n`` dense matmul in ``precision``: the practical peak.

    Returns ``n``, ``precision``, ``ms`` (median), ``gflops_per_s`` (``2 n^3`` over the median)
    and ``best_gflops_per_s`` (over the fastest run).
    """
    dev = resolve_device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, _DTYPES[precision])
    b = torch.randn(n, n, generator=g).to(dev, _DTYPES[precision])
    t = time_call(lambda: torch.mm(a, b), dev, repeats, warmup, memory=False)
    flops = 2.0 * n ** 3
    return {"n": n, "precision": precision, "ms": t["median_ms"],
            "gflops_per_s": _r(flops / (t["median_ms"] * 1e-3) / 1e9, 1),
            "best_gflops_per_s": _r(flops / (t["min_ms"] * 1e-3) / 1e9, 1), "repeats": repeats}


EMULATION_N = 256
"""Side of the matmul of :func:`bf16_emulation` (small: emulated bf16 is slow)."""


def bf16_emulation(device: str | torch.device = "cpu", n: int = EMULATION_N, repeats: int = 3) -> dict[str, Any]:
    """What bf16 costs where it is not native: an ``n x n`` matmul in fp32 and in bf16, side by side.

    Returns ``fp32`` and ``bf16`` (:func:`matmul_peak` rows) and ``slowdown``: the bf16 time
    over the fp32 time (above 1: bf16 is slower).
    """
    f32 = matmul_peak(n, "fp32", device, repeats, 1)
    b16 = matmul_peak(n, "bf16", device, repeats, 1)
    return {"n": n, "fp32": f32, "bf16": b16, "slowdown": _r(b16["ms"] / f32["ms"], 1)}


# --------------------------------------------------------------------------------------------
# forward pass under a setting
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwardSetting:
    """How a forward pass is run (one lever combination).

    Attributes:
        precision: ``fp32``, or autocast to ``bf16`` / ``fp16``.
        channels_last: weights and input in ``torch.channels_last_3d``.
        grad_mode: ``inference_mode`` (what the detector uses) or ``no_grad``.
        batch: volumes per forward pass (times are reported per volume).
        threads: ``torch.set_num_threads`` during the measurement (None: unchanged).
        compile: wrap the model in ``torch.compile``.
        cudnn_benchmark: ``torch.backends.cudnn.benchmark`` (CUDA only).
        rewrite: the inference rewrite of :func:`rpn_lib.inference.prepare_for_inference`
            (batch norm folded, every fp32 convolution on oneDNN), as the detector runs it.
    """

    precision: str = "fp32"
    channels_last: bool = False
    grad_mode: str = "inference_mode"
    batch: int = 1
    threads: int | None = None
    compile: bool = False
    cudnn_benchmark: bool = False
    rewrite: bool = False

    def label(self) -> str:
        """Short description, e.g. ``"bf16, channels_last_3d, batch 2"``."""
        parts = [self.precision]
        if self.channels_last:
            parts.append("channels_last_3d")
        if self.grad_mode != "inference_mode":
            parts.append(self.grad_mode)
        if self.batch != 1:
            parts.append(f"batch {self.batch}")
        if self.threads is not None:
            parts.append(f"{self.threads} thread{'s' if self.threads != 1 else ''}")
        if self.compile:
            parts.append("torch.compile")
        if self.cudnn_benchmark:
            parts.append("cudnn.benchmark")
        if self.rewrite:
            parts.append("BN folded + oneDNN")
        return ", ".join(parts)


def _grad_ctx(mode: str) -> contextlib.AbstractContextManager:
    if mode == "inference_mode":
        return torch.inference_mode()
    if mode == "no_grad":
        return torch.no_grad()
    raise ValueError(f"grad_mode must be 'inference_mode' or 'no_grad', got {mode!r}")


def time_forward(model: nn.Module, shape_vox: Sequence[int], setting: ForwardSetting = ForwardSetting(),
                 device: str | torch.device = "cpu", repeats: int = 5, warmup: int = 1,
                 seed: int = 0) -> dict[str, Any]:
    """Time ``model`` on a random ``(batch, 1, *shape_vox)`` input under ``setting``.

    ``model`` is not changed (``rewrite``, ``channels_last`` and ``compile`` work on a copy). Returns
    ``setting``, ``shape_vox``, ``ms_per_volume`` (median per call / batch), ``timing`` (of a
    whole call, see :func:`time_call`) and ``memory``.
    """
    dev = resolve_device(device)
    m = model.to(dev).eval()
    if setting.rewrite:
        m = prepare_for_inference(m)
    if setting.channels_last:
        m = copy.deepcopy(m).to(memory_format=torch.channels_last_3d)
    if setting.compile:
        m = torch.compile(m)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((setting.batch, 1, *(int(s) for s in shape_vox)), generator=g).to(dev)
    if setting.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)

    def fwd() -> None:
        with _grad_ctx(setting.grad_mode), autocast(dev, setting.precision):
            m(x)

    old_bench = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = setting.cudnn_benchmark
        with num_threads(setting.threads):
            t = time_call(fwd, dev, repeats, warmup)
    finally:
        torch.backends.cudnn.benchmark = old_bench
    mem = t.pop("memory")
    return {"setting": asdict(setting), "label": setting.label(), "shape_vox": [int(s) for s in shape_vox],
            "ms_per_volume": _r(t["median_ms"] / setting.batch), "timing": t, "memory": mem}


# --------------------------------------------------------------------------------------------
# inputs and models
# --------------------------------------------------------------------------------------------


def quick_preset(preset: str | Preset) -> Preset:
    """A tiny version of a preset for smoke tests: :data:`QUICK_SHAPE` voxels over the same
    field of view (coarser spacing), width :data:`QUICK_WIDTH`."""
    p = get_preset(preset)
    spacing = p.spacing_mm * p.shape_vox[0] / QUICK_SHAPE[0]
    return p.replace(name=f"{p.name}-quick", shape_vox=QUICK_SHAPE, spacing_mm=spacing, width=QUICK_WIDTH)


def synthetic_landmarks(preset: str | Preset, n: int = 8, seed: int = 0) -> np.ndarray:
    """``(n, 5, 3)`` landmark sets (world mm) of synthetic scenes at ``preset``'s field of view
    (no volume is rendered)."""
    p = get_preset(preset)
    return np.stack([sample_scene(seed + i, p.field_of_view_mm)[0].face.landmarks_world for i in range(n)])


def untrained_detector(preset: str | Preset, device: str | torch.device = "auto", amp: bool = False,
                       seed: int = 0, method: str = "rpn") -> Detector:
    """A :class:`~rpn_lib.detect.Detector` of ``method`` (:data:`rpn_lib.methods.METHOD_NAMES`) with random
    weights and a graph prior fitted on synthetic landmarks: the same code path and cost as a
    trained one (NMS aside), without a model file."""
    p = get_preset(preset)
    meth = get_method(method)
    torch.manual_seed(seed)
    model = meth.build(p)
    prior = GraphPrior.fit(synthetic_landmarks(p, seed=seed))
    loaded = LoadedModel(model, p, prior, list(LANDMARK_NAMES), {"untrained": True, "method": method},
                         Path("untrained"), meth)
    return Detector(loaded, device=device, amp=amp)


def build_model(preset: str | Preset, device: str | torch.device = "cpu", seed: int = 0,
                method: str = "rpn") -> nn.Module:
    """The network of ``method`` with random weights at ``preset``'s scale, in eval mode."""
    p = get_preset(preset)
    meth = get_method(method)
    torch.manual_seed(seed)
    return meth.build(p).to(resolve_device(device)).eval()


# --------------------------------------------------------------------------------------------
# detection latency
# --------------------------------------------------------------------------------------------


def bench_detect(detector: Detector, volume: np.ndarray, affine: np.ndarray, repeats: int = 5,
                 warmup: int = 1, use_prior: bool = True) -> dict[str, Any]:
    """Latency of :meth:`~rpn_lib.detect.Detector.detect` on one volume, split into its stages.

    Returns (milliseconds, medians over the timed runs): ``end_to_end`` (a :func:`time_call`
    dict of the whole ``detect`` call), ``network_ms`` (backbone + head, with the copy to the
    device), ``candidates_ms`` (:func:`~rpn_lib.candidates.select_candidates` and conversion
    to world mm), ``prior_ms`` (:func:`~rpn_lib.prior.select_combination`), ``other_ms``
    (validation, resampling and intensity normalisation, result assembly: the rest of the
    call), ``candidates_prior_share`` of the end-to-end time, ``precision``, ``grid_shape``
    (the volume on the model grid), ``n_anchors``, ``memory`` and ``network_setting`` (the
    :meth:`ForwardSetting.label` of the way the detector runs its network, the name of the
    same setting among the levers).
    """
    parts: list[dict[str, float]] = []
    totals: list[float] = []

    def run() -> None:
        t0 = time.perf_counter()
        res = detector.detect(volume, affine, use_prior=use_prior)
        _sync(detector.device)
        totals.append((time.perf_counter() - t0) * 1e3)
        parts.append(dict(res.timing_ms))

    t = time_call(run, detector.device, repeats, warmup)
    parts, totals = parts[warmup:], totals[warmup:]
    med = {k: statistics.median(p[k] for p in parts) for k in ("network", "candidates", "prior")}
    other = statistics.median(tot - sum(p.values()) for tot, p in zip(totals, parts))
    e2e = statistics.median(totals)
    grid = detector.prepare(volume, affine).array.shape
    n_anchors = None
    if isinstance(detector.model, IGRPN):
        n_anchors = int(np.prod(detector.model.feature_shape(grid))) * detector.model.head.num_anchors
    return {
        "precision": amp_precision(detector.device) if detector.amp else "fp32",
        "end_to_end": _stats_ms(totals), "network_ms": _r(med["network"]), "candidates_ms": _r(med["candidates"]),
        "prior_ms": _r(med["prior"]), "other_ms": _r(other),
        "candidates_prior_share": _r((med["candidates"] + med["prior"]) / e2e, 4),
        "grid_shape": [int(s) for s in grid], "n_anchors": n_anchors, "use_prior": use_prior,
        "repeats": repeats, "warmup": warmup, "memory": t["memory"],
        "network_setting": detector_setting(detector).label(),
    }


def detector_setting(detector: Detector) -> ForwardSetting:
    """The :class:`ForwardSetting` under which ``detector`` runs its network (batch 1)."""
    return ForwardSetting(precision=amp_precision(detector.device) if detector.amp else "fp32",
                          channels_last=detector.channels_last, rewrite=detector.fast_inference)


def default_detector_setting(precision: str = "fp32") -> ForwardSetting:
    """The :class:`ForwardSetting` of a :class:`~rpn_lib.detect.Detector` made with its default
    ``channels_last`` and ``fast_inference``, in ``precision`` (batch 1)."""
    params = inspect.signature(Detector.__init__).parameters
    return ForwardSetting(precision=precision, channels_last=params["channels_last"].default,
                          rewrite=params["fast_inference"].default)


# --------------------------------------------------------------------------------------------
# reading files ahead
# --------------------------------------------------------------------------------------------

READ_AHEAD_FINER = 1.5
""":func:`bench_read_ahead` writes its files at the model's spacing divided by this, so that
reading one means resampling it, as for a scanner's volume (finer than the model's grid)."""


def read_ahead_label(depth: int) -> str:
    """The name of a reading-ahead setting in tables: "each read in turn", "4 read ahead"."""
    return "each read in turn" if depth == 0 else f"{depth} read ahead"


def _detect_files_ms(detector: Detector, paths: Sequence[Path], depth: int) -> float:
    """Wall time per file of :meth:`~rpn_lib.detect.Detector.detect_files` over ``paths``."""
    def run() -> None:
        for item in detector.detect_files(paths, read_ahead_files=depth):
            if item.error is not None:
                raise item.error

    return time_call(run, detector.device, repeats=1, warmup=0, memory=False)["median_ms"] / len(paths)


def bench_read_ahead(detector: Detector, volume: np.ndarray, affine: np.ndarray, n_files: int = 2 * READ_AHEAD,
                     rounds: int = 3, depths: Sequence[int] = (0, 1, READ_AHEAD),
                     finer: float = READ_AHEAD_FINER) -> dict[str, Any]:
    """Detection throughput over NIfTI files (:meth:`~rpn_lib.detect.Detector.detect_files`,
    what ``rpn-lib detect`` runs) with each number of files read ahead in ``depths`` (0: each
    file read in turn).

    ``volume`` is resampled ``finer`` times finer than the model's spacing and written as
    ``.nii.gz``, then copied to ``n_files`` files in a temporary folder. Each round times every
    setting over all files, the order reversed every other round.

    Returns (milliseconds per file, medians over the rounds): ``read_ms`` (reading and
    resampling one file alone, :meth:`~rpn_lib.detect.Detector.read`), ``rows`` (per depth:
    ``ms_per_file``, ``x_in_turn``, the median of the per-round ratios in-turn / this
    setting, above 1 when faster, and ``x_range``), ``default_depth``
    (:data:`~rpn_lib.readahead.READ_AHEAD`), ``ideal_x`` (in-turn over in-turn
    without the reading: the ratio if reading were wholly hidden), the file's ``file_shape``
    and ``file_mb`` on disk.
    """
    import shutil
    import tempfile

    from rpn_lib.data.geometry import resample_to_spacing
    from rpn_lib.data.io import save_volume

    depths = sorted(set(depths) | {0})
    fine, fine_affine = resample_to_spacing(volume, affine, detector.preset.spacing_mm / finer, order=1)
    with tempfile.TemporaryDirectory(prefix="rpn-lib-bench-") as tmp:
        first = save_volume(Path(tmp) / "case_0.nii.gz", fine.astype(np.float32), fine_affine)
        paths = [first] + [Path(shutil.copy(first, Path(tmp) / f"case_{i}.nii.gz")) for i in range(1, n_files)]
        _detect_files_ms(detector, paths[:2], 0)  # warm-up: caches, anchors, the file in the page cache
        read_ms = time_call(lambda: detector.read(first), detector.device, repeats=3, warmup=0,
                            memory=False)["median_ms"]
        times: dict[int, list[float]] = {d: [] for d in depths}
        for r in range(rounds):
            for d in (depths if r % 2 == 0 else depths[::-1]):
                times[d].append(_detect_files_ms(detector, paths, d))
        mb = first.stat().st_size / 2**20
    rows = []
    for d in depths:
        x, span, _ = _paired(times[d], times[0])
        rows.append({"depth": d, "ms_per_file": _r(statistics.median(times[d])), "x_in_turn": x, "x_range": span})
    in_turn = statistics.median(times[0])
    return {"n_files": n_files, "rounds": rounds, "file_shape": [int(v) for v in fine.shape], "file_mb": _r(mb, 2),
            "read_ms": _r(read_ms), "rows": rows, "default_depth": READ_AHEAD,
            "ideal_x": _r(in_turn / max(in_turn - read_ms, 1e-9)),
            "precision": amp_precision(detector.device) if detector.amp else "fp32"}


# --------------------------------------------------------------------------------------------
# training step
# --------------------------------------------------------------------------------------------


def bench_train_step(preset: str | Preset, device: str | torch.device = "auto", precision: str = "fp32",
                     repeats: int = 3, warmup: int = 1, seed: int = 0, batch_size: int | None = None,
                     hard_mining: bool = True, method: str = "rpn", channels_last: bool = False) -> dict[str, Any]:
    """Time of one training step as :func:`rpn_lib.train.train` runs it, split into its parts.

    The step is the training loop's: augmentation on the device
    (:func:`rpn_lib.augment.augmented_batch`), the method's
    :meth:`~rpn_lib.methods.Method.training_losses` (forward pass under autocast and
    the loss: for the IG-RPN anchor labelling, sampling and Eq. 2-3), backward, gradient
    clipping and AdamW. The batch is ``batch_size`` (default: the preset's) augmented copies of
    one synthetic volume on the preset's grid; hard-negative mining is on (as in the last 60 %
    of a run). ``channels_last``: weights and batch in ``torch.channels_last_3d``
    (``train(channels_last=True)``).

    Returns per-part medians in ms: ``data`` (copy to the device and augmentation),
    ``forward`` (the network's own calls, clocked by forward hooks), ``loss`` (the rest of
    ``training_losses``), ``backward``, ``optimizer``; ``step`` (a :func:`time_call`-style dict
    of the whole step), ``samples_per_s`` and ``memory``.
    """
    p = get_preset(preset)
    dev = resolve_device(device)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"training precision must be 'fp32' or 'bf16', got {precision!r}")
    bs = int(batch_size or p.batch_size)
    case = generate_case(seed, p.spacing_mm, p.shape_vox)
    inp = prepare_volume(case.volume, case.affine, p.spacing_mm, p.shape_vox)
    vol = torch.from_numpy(inp.array)
    lm = torch.from_numpy(world_to_voxel(case.landmarks_world, inp.affine)).float()
    meth = get_method(method)
    torch.manual_seed(seed)
    model = meth.build(p).to(dev).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    ctx = TrainContext(p, generator, iou_balance=True, hard_mining=hard_mining, device=dev, precision=precision)
    fwd_clock: list[float] = []  # start, end, start, end ... of the network's calls in one step

    def mark(*_: Any) -> None:
        _sync(dev)
        fwd_clock.append(time.perf_counter())

    hooks = [model.register_forward_pre_hook(mark), model.register_forward_hook(mark)]
    parts: list[dict[str, float | None]] = []

    def step() -> None:
        fwd_clock.clear()
        clock = [time.perf_counter()]

        def tick() -> None:
            _sync(dev)
            clock.append(time.perf_counter())

        x, lm_b = augmented_batch([vol] * bs, [lm] * bs, generator, dev, p.rotation_deg, p.flip, p.flip_axes,
                                  channels_last)
        tick()
        losses = meth.training_losses(model, x, lm_b, ctx)
        tick()
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        tick()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        tick()
        ms = [(clock[i + 1] - clock[i]) * 1e3 for i in range(4)]
        fwd = sum(fwd_clock[i + 1] - fwd_clock[i] for i in range(0, len(fwd_clock) - 1, 2)) * 1e3 if fwd_clock else None
        parts.append({"data": ms[0], "forward": fwd, "loss": None if fwd is None else ms[1] - fwd,
                      "forward_loss": ms[1], "backward": ms[2], "optimizer": ms[3]})

    try:
        t = time_call(step, dev, repeats, warmup)
    finally:
        for h in hooks:
            h.remove()
    timed = parts[warmup:]
    res: dict[str, Any] = {
        "method": method, "precision": precision, "batch_size": bs, "hard_mining": hard_mining,
        "channels_last": channels_last,
        "shape_vox": list(p.shape_vox),
        "step": {k: t[k] for k in ("median_ms", "min_ms", "max_ms", "runs_ms", "repeats", "warmup")},
        "samples_per_s": _r(bs / (t["median_ms"] * 1e-3), 3), "memory": t["memory"]}
    for name in timed[0]:
        vals = [q[name] for q in timed if q[name] is not None]
        res[f"{name}_ms"] = _r(statistics.median(vals)) if vals else None
    return res


# --------------------------------------------------------------------------------------------
# size scaling, levers, peers
# --------------------------------------------------------------------------------------------


def bench_sizes(sizes: Sequence[int] = DEFAULT_SIZES, width: int = DEFAULT_SIZE_WIDTH, stride: int = 4,
                device: str | torch.device = "auto", repeats: int = 5, warmup: int = 1,
                precision: str = "fp32", setting: ForwardSetting | None = None) -> dict[str, Any]:
    """Forward time, FLOPs and peak memory of a width-``width`` IG-RPN on cubes of ``sizes``.

    ``setting``: how the network runs (None: as a detector with its defaults runs it,
    :func:`default_detector_setting` in ``precision``). Returns
    ``width``, ``stride``, ``precision``, ``setting`` (its :meth:`ForwardSetting.label`) and
    ``rows``, one per size: ``size``, ``voxels``, ``gflop``, ``ms`` (per volume),
    ``gflops_per_s``, ``memory``.
    """
    bad = [s for s in sizes if s < 8 or s % 8]
    if bad:
        raise ValueError(f"volume sizes must be positive multiples of 8 (three down-samplings), got {bad}")
    if setting is None:
        setting = default_detector_setting(precision)
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = IGRPN(width=width, stride=stride).to(dev).eval()
    rows = []
    for s in sizes:
        shape = (int(s),) * 3
        flops = count_flops(model, (1, 1, *shape))
        r = time_forward(model, shape, setting, dev, repeats, warmup)
        rows.append({"size": int(s), "voxels": int(s) ** 3, "flops": flops, "gflop": _r(flops / 1e9, 4),
                     "ms": r["ms_per_volume"],
                     "gflops_per_s": _r(flops / 1e9 / (r["ms_per_volume"] * 1e-3), 1), "memory": r["memory"]})
        gc.collect()
    return {"width": width, "stride": stride, "precision": setting.precision, "setting": setting.label(),
            "rows": rows}


def _autocast_list(device: torch.device, autocast: Sequence[str] | None) -> list[str]:
    """``autocast`` as a list; None: :func:`~rpn_lib.precision.autocast_precisions` (the reduced
    precisions ``device`` computes natively)."""
    return list(autocast_precisions(device) if autocast is None else autocast)


def lever_settings(device: torch.device, threads: Sequence[int] = (), compile: bool = False,
                   autocast: Sequence[str] | None = None) -> list[ForwardSetting]:
    """The lever combinations compared by :func:`bench_levers`; the first is the baseline
    (fp32, ``inference_mode``, batch 1, current threads). ``autocast``: the reduced precisions
    tried (None: :func:`~rpn_lib.precision.autocast_precisions`, those ``device`` computes
    natively)."""
    amp = _autocast_list(device, autocast)
    # the fastest-looking combination, tried with each thread count and compiled
    best = ForwardSetting(precision=amp[0], channels_last=True) if amp else ForwardSetting(channels_last=True)
    s = [ForwardSetting(), ForwardSetting(grad_mode="no_grad"), ForwardSetting(channels_last=True),
         ForwardSetting(channels_last=True, rewrite=True)]
    for a in amp:
        s += [ForwardSetting(precision=a), ForwardSetting(precision=a, channels_last=True),
              ForwardSetting(precision=a, channels_last=True, rewrite=True)]
    s += [ForwardSetting(batch=2)] + [ForwardSetting(precision=a, batch=2) for a in amp]
    s += [ForwardSetting(threads=int(n)) for n in threads]
    s += [replace(best, threads=int(n)) for n in threads]
    if device.type == "cuda":
        s += [ForwardSetting(cudnn_benchmark=True),
              ForwardSetting(precision=amp[-1] if amp else "fp32", channels_last=True, cudnn_benchmark=True)]
    if compile:
        s += [ForwardSetting(compile=True), replace(best, compile=True)]
    return s


def bench_levers(model: nn.Module, shape_vox: Sequence[int], device: str | torch.device = "auto",
                 repeats: int = 5, warmup: int = 1, threads: Sequence[int] = (), compile: bool = False,
                 settings: Sequence[ForwardSetting] | None = None) -> list[dict[str, Any]]:
    """Forward time per volume under each lever setting, side by side in one run.

    Each row: ``label``, ``setting``, ``ms_per_volume``, ``x_baseline`` (time over the first
    setting's: below 1 is faster), ``memory``; a setting that fails (e.g. ``torch.compile``
    without a compiler) gives a row with ``error`` and no time.
    """
    dev = resolve_device(device)
    settings = list(settings) if settings is not None else lever_settings(dev, threads, compile)
    rows: list[dict[str, Any]] = []
    base = None
    for st in settings:
        try:
            r = time_forward(model, shape_vox, st, dev, repeats, warmup)
        except Exception as e:  # noqa: BLE001 - a lever that cannot run here is a result, not a crash
            if st == settings[0]:
                raise
            rows.append({"label": st.label(), "setting": asdict(st), "ms_per_volume": None, "x_baseline": None,
                         "memory": None, "error": _error(e)})
            continue
        base = r["ms_per_volume"] if base is None else base
        rows.append({"label": r["label"], "setting": r["setting"], "ms_per_volume": r["ms_per_volume"],
                     "x_baseline": _r(r["ms_per_volume"] / base, 3), "memory": r["memory"], "error": None})
        gc.collect()
    return rows


ONE_CONV_PEER = "igrpn-1conv"
"""The peer that is the IG-RPN itself with one conv in block 1 (``Preset.block1_convs = 1``, a
deviation from the paper for speed; :mod:`rpn_lib.model`)."""

IGRPN_KEY = "IG-RPN"
"""The IG-RPN's key among the models :func:`bench_peers` times in rounds."""

PEERS = {
    ONE_CONV_PEER: "rpn_lib.model.IGRPN(block1_convs=1): the IG-RPN with one conv in block 1 (a deviation)",
    "heatmap": "rpn_lib.baselines.heatmap (method 'heatmap')",
    "ssd": "rpn_lib.baselines.ssd (method 'ssd')",
    "faster-rcnn": "rpn_lib.baselines.faster_rcnn (method 'faster-rcnn')",
    "retinanet": "rpn_lib.baselines.retinanet_peer (MONAI's RetinaNet)",
}
"""Comparison models: name -> where they come from. All but ``retinanet`` are methods of
:mod:`rpn_lib.methods` (:data:`ONE_CONV_PEER` is the ``rpn`` method with ``block1_convs=1``);
all run through a :class:`~rpn_lib.detect.Detector`."""


def retinanet_peer(preset: Preset, device: str | torch.device = "auto", seed: int = 0,
                   amp: bool = False) -> tuple[nn.Module, Detector | None]:
    """MONAI's RetinaNet for ``preset`` with random weights, from
    :func:`rpn_lib.baselines.retinanet_peer.build_retinanet`: its network, and a
    :class:`~rpn_lib.detect.Detector` around it (``RetinaNetPeerDetector``, with a graph prior
    fitted on synthetic landmarks and the detector's ``amp``) when that module provides one,
    else None. Raises
    ``ImportError`` (or the module's error naming the ``[peers]`` extra) when MONAI or the
    module is not there."""
    from rpn_lib.baselines import retinanet_peer as rp

    torch.manual_seed(seed)
    obj = rp.build_retinanet(preset)
    net = getattr(obj, "network", obj)
    if not isinstance(net, nn.Module):
        raise TypeError(f"build_retinanet returned {type(obj).__name__}, not a torch module")
    det = None
    if hasattr(rp, "RetinaNetPeerDetector"):
        det = rp.RetinaNetPeerDetector(obj, preset, GraphPrior.fit(synthetic_landmarks(preset, seed=seed)), device=device,
                                       amp=amp)
    return net, det


def _peer_row(name: str) -> dict[str, Any]:
    return {"name": name, "source": PEERS[name], "available": False, "reason": None, "error": None,
            "network_ms": None, "end_to_end_ms": None, "x_igrpn_network": None, "x_igrpn_end_to_end": None,
            "x_igrpn_network_range": None, "x_igrpn_end_to_end_range": None, "slower_rounds": None,
            "rounds": 0, "runs_network_ms": [], "runs_end_to_end_ms": [], "gflop": None, "memory": None}


def _build_peer(name: str, p: Preset, dev: torch.device, seed: int,
                amp: bool = False) -> tuple[nn.Module, Detector | None]:
    """A peer's network (for the FLOP count, and the timing when it has no detector) and its
    detector (None: network only), with autocast when ``amp``."""
    if name == "retinanet":
        return retinanet_peer(p, dev, seed, amp)
    if name == ONE_CONV_PEER:
        det = untrained_detector(p.replace(block1_convs=1), dev, amp=amp, seed=seed, method="rpn")
    else:
        det = untrained_detector(p, dev, amp=amp, seed=seed, method=name)
    return det.loaded.model, det  # the network as trained (the FLOP count needs plain layers)


def _runner(det: Detector | None, net: nn.Module, volume: np.ndarray, affine: np.ndarray, grid: Sequence[int],
            dev: torch.device, precision: str = "fp32") -> Callable[[int, int], tuple[float | None, float, dict[str, Any]]]:
    """``run(repeats, warmup)`` -> (median end-to-end ms or None, median network ms, memory):
    :func:`bench_detect` of ``det`` (which has its own ``amp``), or :func:`time_forward` of
    ``net`` in ``precision`` when there is no detector."""
    def run(repeats: int, warmup: int) -> tuple[float | None, float, dict[str, Any]]:
        if det is not None:
            d = bench_detect(det, volume, affine, repeats, warmup)
            return d["end_to_end"]["median_ms"], d["network_ms"], d["memory"]
        r = time_forward(net, grid, ForwardSetting(precision=precision), dev, repeats, warmup)
        return None, r["ms_per_volume"], r["memory"]
    return run


def paired_ratios(mine: Sequence[float | None], other: Sequence[float | None]) -> tuple[float | None, list[float] | None, int]:
    """Median and [min, max] of the per-round ratios ``other / mine`` of two models timed in the
    same rounds (rounds where either has no time are skipped), and the number of rounds where
    the ratio is above 1; ``(None, None, 0)`` without a common round."""
    x = [o / m for m, o in zip(mine, other) if m and o]
    if not x:
        return None, None, 0
    return statistics.median(x), [min(x), max(x)], sum(v > 1.0 for v in x)


def _paired(mine: Sequence[float | None], other: Sequence[float | None]) -> tuple[float | None, list[float] | None, int]:
    """:func:`paired_ratios` rounded for JSON."""
    med, span, slower = paired_ratios(mine, other)
    return _r(med, 3), (None if span is None else [_r(v, 3) for v in span]), slower


def peer_results(preset_result: Mapping[str, Any],
                 precision: str = "fp32") -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """A preset's peer rows in ``precision`` and what :func:`bench_peers` said of their rounds
    (its result less ``rows``; None in files written before peers were timed in rounds):
    ``peers`` and ``peers_paired`` for fp32, ``peers_amp`` for the detector's autocast
    precision; ``([], None)`` when the peers were not measured in ``precision``."""
    if precision == "fp32":
        return list(preset_result.get("peers", [])), preset_result.get("peers_paired")
    amp = preset_result.get("peers_amp")
    if amp and amp.get("precision") == precision:
        return list(amp["rows"]), {k: v for k, v in amp.items() if k != "rows"}
    return [], None


def peer_precisions(bench_result: Mapping[str, Any]) -> list[str]:
    """The precisions some preset of a :func:`run_benchmark` result timed its peers in: fp32
    first, then the autocast precision where its peers were timed too."""
    amp = [r["peers_amp"]["precision"] for r in bench_result["presets"].values() if r.get("peers_amp")]
    return ["fp32", *dict.fromkeys(amp)]


def igrpn_peer_times(preset_result: Mapping[str, Any], precision: str = "fp32") -> dict[str, float | None]:
    """The IG-RPN's ``network_ms`` and ``end_to_end_ms`` that a preset's peers in ``precision``
    are compared with: the medians of the rounds it ran in beside them (:func:`peer_results`),
    or, in results written before peers were interleaved, its detection benchmark
    (``detect[precision]``)."""
    paired = peer_results(preset_result, precision)[1]
    if paired:
        return {"network_ms": paired["igrpn"]["network_ms"], "end_to_end_ms": paired["igrpn"]["end_to_end_ms"]}
    d = preset_result["detect"][precision]
    return {"network_ms": d["network_ms"], "end_to_end_ms": d["end_to_end"]["median_ms"]}


def paired_range_text(pe: Mapping[str, Any]) -> str:
    """A peer row's spread over the rounds, e.g. ``"0.93-1.12, slower in 3 of 5"`` (the
    end-to-end ratios, else the network's); empty for rows without rounds."""
    span = pe.get("x_igrpn_end_to_end_range") or pe.get("x_igrpn_network_range")
    if not span:
        return ""
    return f"{span[0]:.2f}-{span[1]:.2f}, slower in {pe['slower_rounds']} of {pe['rounds']}"


def bench_peers(preset: str | Preset, igrpn: Detector, device: str | torch.device = "auto", rounds: int = 5,
                warmup: int = 1, names: Sequence[str] = tuple(PEERS), volume: np.ndarray | None = None,
                affine: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
    """Each peer on the same volume as the IG-RPN detector ``igrpn`` (batch 1, random weights,
    in ``igrpn``'s precision: fp32, or the autocast of its ``amp``), timed in the same rounds,
    as paired ratios.

    A shared machine's speed drifts over minutes, so the models are not timed one after the
    other: after ``warmup`` runs and one run that measures each model's memory, every round
    times each model once, the IG-RPN included, in an order rotated by one model from round to
    round. Within a round each model first runs once untimed, so that every timed run follows a
    run of the same model, as when a detector processes volume after volume: the caches and the
    freed memory the process keeps then hold that model's data, not the previous model's. A
    peer's ratio is the median over the rounds of its time over the IG-RPN's time of the same
    round (above 1: slower), with the smallest and largest per-round ratio.

    A method peer, and RetinaNet through its ``RetinaNetPeerDetector``, run through
    :func:`bench_detect` (network and end-to-end time); a peer without a detector runs only
    its network, through :func:`time_forward` on a random input of the IG-RPN's grid, and is
    compared with the IG-RPN's network time.

    Returns ``precision``, ``rounds``, ``igrpn`` (its ``runs_network_ms`` and ``runs_end_to_end_ms`` per
    round, and their medians ``network_ms``, ``end_to_end_ms``) and ``rows``, one per peer:
    ``name``, ``source``, ``available`` (False with ``reason`` when its module cannot be
    imported), ``error`` (it failed to run), ``network_ms`` and ``end_to_end_ms`` (medians
    over the rounds), ``runs_network_ms``, ``runs_end_to_end_ms``, ``x_igrpn_network`` and
    ``x_igrpn_end_to_end`` (median paired ratios), ``x_igrpn_network_range`` and
    ``x_igrpn_end_to_end_range`` (``[min, max]``), ``slower_rounds`` (rounds in which the
    peer was slower end to end, else by network), ``rounds``, ``gflop``, ``memory``.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds} and {warmup}")
    for name in names:
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; choose from {sorted(PEERS)}")
    p = get_preset(preset)
    dev = resolve_device(device)
    if volume is None or affine is None:
        case = generate_case(seed, p.spacing_mm, p.shape_vox)
        volume, affine = case.volume, case.affine
    grid = tuple(igrpn.prepare(volume, affine).array.shape)
    precision = amp_precision(igrpn.device) if igrpn.amp else "fp32"
    runners: dict[str, Callable[[int, int], tuple[float | None, float, dict[str, Any]]]] = {}
    runners[IGRPN_KEY] = _runner(igrpn, igrpn.model, volume, affine, grid, dev, precision)
    runners[IGRPN_KEY](1, warmup)
    rows = []
    for name in names:
        row = _peer_row(name)
        rows.append(row)
        try:
            net, det = _build_peer(name, p, dev, seed, amp=igrpn.amp)
        except (ImportError, RpnLibError) as e:  # a missing optional dependency (e.g. MONAI)
            row["reason"] = f"not available ({_error(e)})"
            continue
        except Exception as e:  # noqa: BLE001 - a peer that cannot be built here is reported, not fatal
            row.update(available=True, error=_error(e))
            continue
        row["available"] = True
        with contextlib.suppress(Exception):  # some layers have no meta kernel: leave the count out
            row["gflop"] = _r(count_flops(net, (1, 1, *grid)) / 1e9, 4)
        run = _runner(det, net, volume, affine, grid, dev, precision)
        try:
            row["memory"] = run(1, warmup)[2]
        except Exception as e:  # noqa: BLE001 - a peer that cannot run here is reported, not fatal
            row["error"] = _error(e)
            continue
        runners[name] = run
    times: dict[str, list[tuple[float | None, float | None]]] = {k: [] for k in runners}
    keys = list(runners)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            if key not in runners:  # failed in an earlier round
                times[key].append((None, None))
                continue
            try:
                e2e, net_ms, _ = runners[key](1, 1)  # one untimed run first: timed warm
            except Exception as e:  # noqa: BLE001
                if key == IGRPN_KEY:
                    raise
                next(row for row in rows if row["name"] == key)["error"] = _error(e)
                del runners[key]
                e2e, net_ms = None, None
            times[key].append((e2e, net_ms))
        gc.collect()
    mine_e2e = [t[0] for t in times[IGRPN_KEY]]
    mine_net = [t[1] for t in times[IGRPN_KEY]]
    for row in rows:
        if row["name"] not in times:
            continue
        e2e = [t[0] for t in times[row["name"]]]
        net_ms = [t[1] for t in times[row["name"]]]
        done_e2e, done_net = [t for t in e2e if t is not None], [t for t in net_ms if t is not None]
        row.update(rounds=len(done_net), runs_network_ms=net_ms, runs_end_to_end_ms=e2e,
                   network_ms=_r(statistics.median(done_net)) if done_net else None,
                   end_to_end_ms=_r(statistics.median(done_e2e)) if done_e2e else None)
        row["x_igrpn_network"], row["x_igrpn_network_range"], slower_net = _paired(mine_net, net_ms)
        row["x_igrpn_end_to_end"], row["x_igrpn_end_to_end_range"], slower_e2e = _paired(mine_e2e, e2e)
        row["slower_rounds"] = slower_e2e if done_e2e else slower_net
    igrpn_res = {"runs_network_ms": mine_net, "runs_end_to_end_ms": mine_e2e,
                 "network_ms": _r(statistics.median(mine_net)), "end_to_end_ms": _r(statistics.median(mine_e2e))}
    return {"precision": precision, "rounds": rounds, "warmup": warmup, "order": "rotated by one model each round",
            "igrpn": igrpn_res, "rows": rows}


# --------------------------------------------------------------------------------------------
# accuracy of autocast
# --------------------------------------------------------------------------------------------


def amp_accuracy(model_path: str | Path, data: str | Path, split: str = "test", device: str | torch.device = "auto",
                 max_cases: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Evaluate a trained model on a split in fp32 and with autocast (the detector's ``amp``:
    bf16 on CPU, fp16 on CUDA) and compare.

    Returns the two d-means (mm) and their difference (autocast minus fp32), the largest
    shift of a predicted landmark between the two (mm), the share of landmarks whose chosen
    candidate is the same, DR50 of both, median detection time of both and ``within_0_1_mm``
    (``|difference| <= 0.1`` mm, the issue's criterion).
    """
    from rpn_lib.evaluate import evaluate

    res = {}
    for amp in (False, True):
        det = Detector.from_file(model_path, device=device, amp=amp)
        res[amp] = evaluate(det, data, split=split, progress=progress, max_cases=max_cases,
                            read_ahead_cases=0)  # times the detection alone
    e32, eamp = res[False], res[True]
    shift = np.linalg.norm(e32.pred_world - eamp.pred_world, axis=-1)
    same = np.mean([np.array_equal(a.choice, b.choice) and np.allclose(a.landmarks_world, b.landmarks_world)
                    for a, b in zip(e32.detections, eamp.detections)])
    diff = eamp.metrics["d_mean_mm"] - e32.metrics["d_mean_mm"]
    return {
        "model": str(model_path), "data": str(data), "split": split, "n_cases": e32.metrics["n_cases"],
        "amp_precision": amp_precision(resolve_device(device)),
        "d_mean_fp32_mm": _r(e32.metrics["d_mean_mm"], 4), "d_mean_amp_mm": _r(eamp.metrics["d_mean_mm"], 4),
        "d_mean_diff_mm": _r(diff, 4), "max_landmark_shift_mm": _r(float(shift.max()), 4),
        "same_result_fraction": _r(float(same), 4),
        "dr50_fp32": _r(e32.metrics["dr50"], 4), "dr50_amp": _r(eamp.metrics["dr50"], 4),
        "time_ms_fp32": _r(e32.metrics["time_ms"]), "time_ms_amp": _r(eamp.metrics["time_ms"]),
        "within_0_1_mm": bool(abs(diff) <= 0.1),
    }


# --------------------------------------------------------------------------------------------
# the whole benchmark
# --------------------------------------------------------------------------------------------


def bench_layers(model: nn.Module, shape_vox: Sequence[int], device: str | torch.device = "cpu", repeats: int = 3,
                 warmup: int = 1, seed: int = 0) -> dict[str, Any]:
    """Time of every convolution in one fp32 forward pass of the network as the detector runs it:
    batch norm folded and every convolution on oneDNN (:func:`~rpn_lib.inference.prepare_for_inference`,
    applied to a copy), channels-last weights and input, batch 1, inference mode.

    Forward hooks read the clock before and after each convolution; on CUDA each read first
    synchronises, which serialises the GPU's queue, so there the times are an upper bound.
    ``model`` is not changed.

    Returns ``shape_vox``; ``rows``, one per convolution in forward order: ``name`` (module
    path), ``gflop`` (two per multiply-add), ``ms`` (median over ``repeats`` passes) and
    ``gflops_per_s``; ``forward_ms`` (median whole pass, hooks included), ``convs_ms`` (the sum
    of the rows) and ``other_ms`` (the rest of the pass: ReLU, pooling, up-sampling,
    concatenation, layout changes).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    dev = resolve_device(device)
    m = prepare_for_inference(model.to(dev).eval()).to(memory_format=torch.channels_last_3d)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 1, *(int(s) for s in shape_vox)), generator=g).to(dev)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    convs = [(name, mod) for name, mod in m.named_modules() if isinstance(mod, nn.Conv3d)]
    times: dict[str, list[float]] = {name: [] for name, _ in convs}
    flops: dict[str, int] = {}
    start: dict[str, float] = {}

    def before(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, inp: Any) -> None:
            _sync(dev)
            start[name] = time.perf_counter()
        return hook

    def after(name: str) -> Callable[..., None]:
        def hook(mod: nn.Conv3d, inp: Any, out: torch.Tensor) -> None:
            _sync(dev)
            times[name].append((time.perf_counter() - start[name]) * 1e3)
            flops[name] = 2 * out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        return hook

    handles = [h for name, mod in convs
               for h in (mod.register_forward_pre_hook(before(name)), mod.register_forward_hook(after(name)))]
    try:
        with torch.inference_mode():
            t = time_call(lambda: m(x), dev, repeats, warmup, memory=False)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name, _ in convs:
        ms = statistics.median(times[name][warmup:])
        rows.append({"name": name, "gflop": _r(flops[name] / 1e9, 4), "ms": _r(ms),
                     "gflops_per_s": _r(flops[name] / 1e9 / (ms * 1e-3), 3)})  # toy layers run at < 0.1
    convs_ms = sum(r["ms"] for r in rows)
    return {"shape_vox": [int(s) for s in shape_vox], "rows": rows, "forward_ms": t["median_ms"],
            "convs_ms": _r(convs_ms), "other_ms": _r(t["median_ms"] - convs_ms), "repeats": repeats, "warmup": warmup}


def _efficiency(gflop: float, forward_ms: float, e2e_ms: float, peak: dict[str, Any]) -> dict[str, Any]:
    achieved = gflop / (forward_ms * 1e-3)
    floor_ms = gflop / peak["gflops_per_s"] * 1e3
    return {"gflop": _r(gflop, 4), "forward_ms": _r(forward_ms), "gflops_per_s": _r(achieved, 1),
            "peak_gflops_per_s": peak["gflops_per_s"], "fraction_of_peak": _r(achieved / peak["gflops_per_s"], 4),
            "floor_ms": _r(floor_ms), "end_to_end_ms": _r(e2e_ms), "end_to_end_over_floor": _r(e2e_ms / floor_ms, 3)}


def _bench_detector(loaded: LoadedModel | None, preset: Preset, device: torch.device, precision: str,
                    seed: int) -> Detector:
    """The detector a benchmark times: the trained model when given, else random weights."""
    amp = precision != "fp32"
    if loaded is not None:
        return Detector(loaded, device=device, amp=amp)
    return untrained_detector(preset, device=device, amp=amp, seed=seed)


def bench_preset(preset: Preset, device: torch.device, peaks: dict[str, dict[str, Any]], repeats: int = 5,
                 warmup: int = 1, train_repeats: int = 3, model_path: Path | None = None,
                 threads: Sequence[int] = (), compile: bool = False, seed: int = 0,
                 peers: Sequence[str] = tuple(PEERS), log: Callable[[str], None] = lambda s: None,
                 autocast: Sequence[str] | None = None) -> dict[str, Any]:
    """Every per-preset measurement: detection (fp32 and autocast), reading files ahead, FLOP
    efficiency, training step (fp32 and bf16), levers and peers. ``peaks``: :func:`matmul_peak` per precision.
    ``autocast``: the reduced precisions measured (None: :func:`~rpn_lib.precision.autocast_precisions`,
    those the device computes natively); detection uses the one :class:`~rpn_lib.detect.Detector` takes
    (:func:`amp_precision`), training bf16, each where it is in the list."""
    amp = _autocast_list(device, autocast)
    loaded = load_model(model_path) if model_path is not None else None
    p = loaded.preset if loaded is not None else preset
    case = generate_case(seed, preset.spacing_mm, preset.shape_vox)
    res: dict[str, Any] = {
        "preset": {"name": p.name, "shape_vox": list(p.shape_vox), "spacing_mm": p.spacing_mm, "width": p.width,
                   "stride": p.stride, "batch_size": p.batch_size},
        "model": (str(model_path) if model_path is not None
                  else "untrained (random weights, prior fitted on synthetic landmarks)"),
    }
    precisions = ["fp32", *([amp_precision(device)] if amp_precision(device) in amp else [])]
    res["detect"] = {}
    for prec in precisions:
        log(f"{preset.name}: detect {prec}")
        det = _bench_detector(loaded, p, device, prec, seed)
        res["detect"][prec] = bench_detect(det, case.volume, case.affine, repeats, warmup)
        if prec == precisions[-1]:  # the fastest: where the reading would show most
            log(f"{preset.name}: reading files ahead, {prec}")
            res["read_ahead"] = bench_read_ahead(det, case.volume, case.affine, rounds=min(repeats, 3))
        del det
        gc.collect()
    grid = tuple(res["detect"]["fp32"]["grid_shape"])
    model = build_model(p, device, seed)
    flops = count_flops(model, (1, 1, *grid))
    gflop = flops / 1e9
    res["flops_forward"] = flops
    res["gflop_forward"] = _r(gflop, 4)
    res["efficiency"] = {}
    for prec in precisions:
        if prec in peaks:
            d = res["detect"][prec]
            res["efficiency"][prec] = _efficiency(gflop, d["network_ms"], d["end_to_end"]["median_ms"], peaks[prec])
    log(f"{preset.name}: time per convolution")
    res["layers"] = bench_layers(model, grid, device, min(repeats, 3), warmup, seed)
    res["train"] = {}
    for prec in ("fp32", *(["bf16"] if "bf16" in amp else [])):
        log(f"{preset.name}: training step {prec}")
        res["train"][prec] = bench_train_step(p.replace(shape_vox=grid), device, prec, train_repeats,
                                              min(warmup, 1), seed)
        gc.collect()
    log(f"{preset.name}: levers")
    res["levers"] = bench_levers(model, grid, device, repeats, warmup, threads, compile,
                                 settings=lever_settings(device, threads, compile, amp))
    res["peers"] = []
    for prec in precisions if peers else []:
        log(f"{preset.name}: peers, interleaved with the IG-RPN, {prec}")
        paired = bench_peers(p, _bench_detector(loaded, p, device, prec, seed), device, repeats, warmup,
                             names=peers, volume=case.volume, affine=case.affine, seed=seed)
        rows = paired.pop("rows")
        if prec == "fp32":
            res["peers"], res["peers_paired"] = rows, paired
        else:  # the same comparison in the detector's autocast precision
            res["peers_amp"] = {**paired, "rows": rows}
        gc.collect()
    del model
    gc.collect()
    return res


# --------------------------------------------------------------------------------------------
# the memory allocator, side by side
# --------------------------------------------------------------------------------------------


def _allocator_label(retained: bool) -> str:
    return (f"freed memory kept ({allocator.DEFAULT_TOP_PAD_MB} MB top pad)" if retained
            else "glibc as it comes")


def bench_allocator(preset: str, quick: bool, model_path: Path | None, detect_here: dict[str, Any],
                    device: torch.device, repeats: int = 5, warmup: int = 1, seed: int = 0,
                    timeout_s: float = 1800.0) -> dict[str, Any]:
    """Detection latency with the other allocator setting, in a child process, beside this
    process's ``detect_here`` (:func:`bench_detect` results by precision).

    The setting (:func:`rpn_lib.allocator.retain_freed_memory`) is process-wide and cannot be
    undone, hence the child. Returns ``here`` and ``other`` (the settings' labels), ``rows``
    (per precision: end-to-end and network ms of both, ``x_here``: the other's end-to-end time
    over this process's, above 1 when this process's setting is faster) and ``error`` (the
    child's failure, else None). Where glibc is absent the comparison is skipped (``error``
    says so).
    """
    setting = allocator.allocator_setting()
    here = bool(setting["retain_freed_memory"])
    res: dict[str, Any] = {"here": _allocator_label(here), "other": _allocator_label(not here), "rows": [], "error": None}
    if setting["libc"] is None:
        res["error"] = "not glibc: the setting does not apply"
        return res
    spec = {"preset": preset, "quick": quick, "model": str(model_path) if model_path else None,
            "device": str(device), "precisions": list(detect_here), "repeats": repeats, "warmup": warmup,
            "seed": seed, "threads": torch.get_num_threads()}
    env = {**os.environ, allocator.ENV_VAR: "default" if here else "retain"}
    code = "import sys; from rpn_lib.bench import _allocator_child; _allocator_child(sys.argv[1])"
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env, capture_output=True,
                              text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        res["error"] = f"the child process ran past {timeout_s:.0f} s"
        return res
    if proc.returncode != 0:
        res["error"] = _error(RuntimeError((proc.stderr.strip().splitlines() or ["no message"])[-1]))
        return res
    other = json.loads(proc.stdout.strip().splitlines()[-1])
    for prec, d in detect_here.items():
        o = other[prec]
        e_here, e_other = d["end_to_end"]["median_ms"], o["end_to_end"]["median_ms"]
        res["rows"].append({"precision": prec, "end_to_end_ms_here": e_here, "network_ms_here": d["network_ms"],
                            "end_to_end_ms_other": e_other, "network_ms_other": o["network_ms"],
                            "peak_mb_here": d["memory"].get("cpu_peak_rss_mb"),
                            "peak_mb_other": o["memory"].get("cpu_peak_rss_mb"),
                            "x_here": _r(e_other / e_here, 3)})
    return res


def _allocator_child(spec_json: str) -> None:
    """Child of :func:`bench_allocator`: the allocator from ``RPN_LIB_ALLOCATOR``, then the
    detection latencies of ``spec_json``'s preset, as one JSON line on stdout."""
    allocator.configure_from_env()
    spec = json.loads(spec_json)
    torch.set_num_threads(int(spec["threads"]))
    dev = resolve_device(spec["device"])
    preset = quick_preset(spec["preset"]) if spec["quick"] else get_preset(spec["preset"])
    loaded = load_model(spec["model"]) if spec["model"] else None
    p = loaded.preset if loaded is not None else preset
    case = generate_case(spec["seed"], preset.spacing_mm, preset.shape_vox)
    out = {}
    for prec in spec["precisions"]:
        det = _bench_detector(loaded, p, dev, prec, spec["seed"])
        out[prec] = bench_detect(det, case.volume, case.affine, spec["repeats"], spec["warmup"])
        del det
        gc.collect()
    print(json.dumps(out))


def run_benchmark(presets: Sequence[str] = ("cpu-small", "paper"), model_path: str | Path | None = None,
                  sizes: Sequence[int] | None = None, size_width: int | None = None,
                  repeats: int = 5, warmup: int = 1, train_repeats: int = 3, out: str | Path | None = None,
                  markdown: str | Path | None = None, quick: bool = False, compile: bool = False,
                  accuracy_data: str | Path | None = None, device: str | torch.device = "auto",
                  threads: Sequence[int] | None = None, matmul_n: int = 4096, seed: int = 0,
                  peers: Sequence[str] = tuple(PEERS), log: Callable[[str], None] | None = None,
                  autocast: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write ``out`` (JSON) and ``markdown`` (the table) atomically, return
    the result.

    Args:
        presets: preset names.
        model_path: a trained ``model.pt``, used for the preset it was trained at (its name
            must be among ``presets``); other presets use random weights.
        sizes: cube sides for the size-scaling table (None: :data:`DEFAULT_SIZES`, or
            :data:`QUICK_SIZES` with ``quick``; empty: skipped).
        size_width: first-block width of the size-scaling model (None:
            :data:`DEFAULT_SIZE_WIDTH`, or :data:`QUICK_SIZE_WIDTH` with ``quick``).
        repeats, warmup: timed and untimed runs of each measurement.
        train_repeats: timed training steps (one is a warm-up).
        quick: smoke-test scale: presets shrunk to :data:`QUICK_SHAPE` and width
            :data:`QUICK_WIDTH`, one repeat, no warm-up, a 256 matmul, no thread lever, small
            default sizes.
        compile: add ``torch.compile`` levers (slow to compile).
        accuracy_data: dataset folder: with ``model_path``, compare d-mean in fp32 and autocast
            on its test split (:func:`amp_accuracy`).
        threads: thread counts tried as levers (default: 1 and the usable cores, where they
            differ from the current setting).
        matmul_n: side of the dense matmul that measures the peak.
        peers: comparison models (:data:`PEERS` keys) measured beside the IG-RPN.
        log: progress messages (default: none).
        autocast: reduced precisions measured beside fp32 (detection, training, levers, the
            accuracy check). None: those the device computes natively
            (:func:`~rpn_lib.precision.autocast_precisions`: bf16 on CPUs with AVX512-BF16 or
            AMX, none on other CPUs, fp16 and bf16 on CUDA). Where bf16 is left out on a CPU,
            ``bf16_emulation`` records a small matmul in both precisions: what bf16 would cost.
    """
    t_start = time.perf_counter()
    log = log or (lambda s: None)
    dev = resolve_device(device)
    names = [get_preset(n).name for n in presets]
    if not names:
        raise ValueError("no preset to benchmark")
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}; choose from {list(PEERS)}")
    if repeats < 1 or train_repeats < 1 or warmup < 0:
        raise ValueError("repeats and train_repeats must be at least 1 and warmup at least 0")
    for path in (out, markdown):
        if path is not None and Path(path).is_dir():
            raise ValueError(f"{path}: is a folder; give a file path")
    loaded_name = None
    if model_path is not None:
        model_path = Path(model_path)
        loaded = load_model(model_path)
        if getattr(loaded.method, "name", "rpn") != "rpn":
            raise ValueError(f"{model_path}: a {loaded.method.name!r} model; the benchmark measures an IG-RPN "
                             "(method 'rpn')")
        loaded_name = loaded.preset.name
        del loaded
        if loaded_name not in names:
            raise ValueError(f"{model_path}: the model was trained at preset {loaded_name!r}, which is not benchmarked "
                             f"here ({', '.join(names)}); add --preset {loaded_name} or all")
    if accuracy_data is not None:
        if model_path is None:
            raise ValueError("the accuracy check needs a trained model (--model)")
        from rpn_lib.data.dataset import LandmarkDataset

        LandmarkDataset(accuracy_data, split="test")  # fail now, not after the timings
    if quick:
        repeats, warmup, train_repeats, matmul_n = 1, 0, 1, min(matmul_n, 256)
        threads = []
    if sizes is None:
        sizes = QUICK_SIZES if quick else DEFAULT_SIZES
    if size_width is None:
        size_width = QUICK_SIZE_WIDTH if quick else DEFAULT_SIZE_WIDTH
    bad = [s for s in sizes if s < 8 or s % 8]
    if bad:  # checked now, not after the timings
        raise ValueError(f"volume sizes must be positive multiples of 8 (three down-samplings), got {bad}")
    amp = _autocast_list(dev, autocast)
    bad = sorted(set(amp) - {"bf16", "fp16"})
    if bad:
        raise ValueError(f"autocast precisions must be among ['bf16', 'fp16'], got {bad}")
    if threads is None:
        cur = torch.get_num_threads()
        threads = sorted({1, usable_cores()} - {cur})
    settings = {"presets": names, "model": str(model_path) if model_path else None, "sizes": list(sizes or []),
                "size_width": size_width, "repeats": repeats, "warmup": warmup, "train_repeats": train_repeats,
                "quick": quick, "compile": compile, "thread_levers": list(threads), "matmul_n": matmul_n,
                "peers": list(peers), "seed": seed, "autocast": amp}
    created = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    result: dict[str, Any] = {"format": BENCH_FORMAT, "created": created,
                              "settings": settings, "machine": machine_info(dev)}
    log("matmul peak")
    result["matmul_peak"] = {prec: matmul_peak(matmul_n, prec, dev, max(repeats, 3), max(warmup, 1))
                             for prec in ["fp32", *amp]}
    result["bf16_emulation"] = None
    if dev.type == "cpu" and "bf16" not in amp:
        log("bf16 emulation")
        result["bf16_emulation"] = bf16_emulation(dev)
    result["presets"] = {}
    for name in names:
        preset = quick_preset(name) if quick else get_preset(name)
        result["presets"][name] = bench_preset(preset, dev, result["matmul_peak"], repeats, warmup, train_repeats,
                                               model_path if name == loaded_name else None, threads, compile, seed,
                                               peers, log, amp)
        log(f"{name}: allocator")
        result["presets"][name]["allocator"] = bench_allocator(
            name, quick, model_path if name == loaded_name else None, result["presets"][name]["detect"], dev,
            repeats, warmup, seed)
    if sizes:
        log("size scaling")
        result["sizes"] = bench_sizes(sizes, size_width, 4, dev, repeats, warmup)
    else:
        result["sizes"] = None
    result["accuracy"] = None
    if accuracy_data is not None and amp_precision(dev) in amp:
        log("autocast accuracy")
        result["accuracy"] = amp_accuracy(model_path, accuracy_data, "test", dev)  # type: ignore[arg-type]
    result["seconds"] = _r(time.perf_counter() - t_start, 1)
    if out is not None:
        atomic_write_json(out, result)
    if markdown is not None:
        atomic_write(markdown, format_report(result))
    return result


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------


def _f(x: Any, nd: int = 1, pct: bool = False) -> str:
    if x is None:
        return "-"
    if pct:
        return f"{100 * x:.{nd}f} %"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def fmt_gflop(x: float | None, missing: str = "-") -> str:
    """A GFLOP count with three significant digits and no exponent (``394``, ``12.3``,
    ``0.0126``); ``missing`` for None."""
    if x is None:
        return missing
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])]


def _mem(m: dict[str, Any] | None) -> str:
    if not m:
        return "-"
    s = _f(m.get("cpu_peak_rss_mb"), 0)
    if m.get("cuda_max_allocated_mb") is not None:
        s += f" / {_f(m['cuda_max_allocated_mb'], 0)}"
    return s


def _allocator_line(a: dict[str, Any] | None) -> str:
    if not a:
        return "not recorded"
    return f"{a['libc'] or 'not glibc'}, {_allocator_label(bool(a['retain_freed_memory'])) if a['libc'] else 'as it comes'}"


def _bf16_line(m: dict[str, Any]) -> str:
    """``", bf16 native (AVX512-BF16, AMX)"`` / ``", bf16 emulated (AVX2)"``; empty for results
    written before the machine recorded it."""
    if "bf16_native" not in m:
        return ""
    if m["bf16_native"]:
        how = ", ".join(m.get("bf16_instructions") or []) or ("CUDA" if m.get("gpu") else "")
        return f", bf16 native{f' ({how})' if how else ''}"
    return f", bf16 emulated ({m.get('cpu_capability')})"


def _peers_markdown(pres: Mapping[str, Any], precision: str) -> list[str]:
    """The peers table of :func:`format_report` for one precision (presets without peers in
    it are left out, but for fp32, where older files may hold none)."""
    rows, rounds = [], set()
    for name, r in pres.items():
        peers, paired = peer_results(r, precision)
        if precision != "fp32" and not peers:
            continue
        if paired:
            rounds.add(paired["rounds"])
        mine = igrpn_peer_times(r, precision)
        rows.append([name, "IG-RPN", _f(mine["network_ms"]), "1.00", _f(mine["end_to_end_ms"]), "1.00", "",
                     fmt_gflop(r["gflop_forward"]), _mem(r["detect"][precision]["memory"]), ""])
        for pe in peers:
            note = pe["reason"] or pe["error"] or ("network only" if pe["end_to_end_ms"] is None else "")
            rows.append([name, pe["name"], _f(pe["network_ms"]), _f(pe["x_igrpn_network"], 2), _f(pe["end_to_end_ms"]),
                         _f(pe["x_igrpn_end_to_end"], 2), paired_range_text(pe), fmt_gflop(pe["gflop"]), _mem(pe["memory"]),
                         note])
    n_rounds = "/".join(map(str, sorted(rounds)))
    how = (f"medians of {n_rounds} round{'' if rounds == {1} else 's'}, every model once per round in a rotating order; "
           "x IG-RPN: median of the per-round ratios" if rounds else "x IG-RPN: ratio of medians")
    what = "fp32" if precision == "fp32" else f"{precision} autocast, every model"
    return ["", f"## Peers on the same input ({what}, batch 1, ms per volume; {how}; above 1 is slower)", "",
            *_table(["preset", "model", "network", "x IG-RPN", "end to end", "x IG-RPN", "per-round x (end to end)",
                     "GFLOP", "peak MB", "note"], rows)]


def format_report(result: dict[str, Any]) -> str:
    """The benchmark result as Markdown tables (also readable as plain fixed-width text)."""
    m, st = result["machine"], result["settings"]
    gpu = f"{m['gpu']} (CUDA {m['cuda']})" if m.get("gpu") else "none"
    out = ["# rpn-lib benchmark", "",
           f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, {m['memory_gb']} GB; GPU: {gpu}; "
           f"torch {m['torch']}, {m['torch_threads']} threads{_bf16_line(m)}; "
           f"allocator: {_allocator_line(m.get('allocator'))}. "
           f"Measured {result['created']} in {result['seconds']} s"
           f"{' (quick smoke-test scale: not a measurement)' if st['quick'] else ''}.",
           f"Times: median of {st['repeats']} runs after {st['warmup']} warm-up; memory: peak resident set of the "
           "process in MB (/ CUDA max allocated).", ""]
    out += [f"## Dense matmul ({st['matmul_n']} x {st['matmul_n']}): the practical peak", ""]
    out += _table(["precision", "ms", "GFLOP/s", "best GFLOP/s"],
                  [[k, _f(v["ms"], 2), _f(v["gflops_per_s"]), _f(v["best_gflops_per_s"])]
                   for k, v in result["matmul_peak"].items()])
    emu = result.get("bf16_emulation")
    if emu:
        out += ["", f"bf16 is not native on this CPU ({m.get('cpu_capability')}; neither AVX512-BF16 nor AMX): a "
                    f"{emu['n']} x {emu['n']} matmul takes {_f(emu['fp32']['ms'], 2)} ms in fp32 and "
                    f"{_f(emu['bf16']['ms'], 2)} ms in bf16 ({_f(emu['slowdown'])}x as long), so bf16 is left out "
                    "of every table below (rpn-lib bench --autocast bf16 measures it anyway)."]
    pres = result["presets"]
    rows = []
    for name, r in pres.items():
        for prec, d in r["detect"].items():
            rows.append([name, prec, "x".join(map(str, d["grid_shape"])), _f(d["end_to_end"]["median_ms"]),
                         _f(d["network_ms"]), _f(d["candidates_ms"], 2), _f(d["prior_ms"], 2), _f(d["other_ms"], 2),
                         _f(d["candidates_prior_share"], 1, pct=True), _mem(d["memory"])])
    out += ["", "## Detection latency per volume (Detector.detect, ms)", ""]
    out += _table(["preset", "precision", "grid", "end to end", "network", "candidates", "prior", "other",
                   "cand.+prior", "peak MB"], rows)
    ahead = [(name, r["read_ahead"]) for name, r in pres.items() if r.get("read_ahead")]
    if ahead:
        out += ["", "## Reading files ahead (rpn-lib detect over .nii.gz files, ms per file; x: in turn / this "
                    "setting, above 1 when faster)", ""]
        rows = []
        for name, a in ahead:
            file = f"{'x'.join(map(str, a['file_shape']))}, {_f(a['file_mb'], 2)} MB, read in {_f(a['read_ms'])} ms"
            for row in a["rows"]:
                setting = read_ahead_label(row["depth"])
                rows.append([name, a["precision"], file, setting + (" (default)" if row["depth"] == a["default_depth"]
                                                                    else ""),
                             _f(row["ms_per_file"]), _f(row["x_in_turn"], 2),
                             "-".join(_f(v, 2) for v in row["x_range"] or []),
                             _f(a["ideal_x"], 2) if row["depth"] == 0 else ""])
        out += _table(["preset", "precision", "file", "setting", "ms/file", "x", "x per round",
                       "x if reading were hidden"], rows)
    rows = [[name, prec, fmt_gflop(e["gflop"]), _f(e["forward_ms"]), _f(e["gflops_per_s"]), _f(e["peak_gflops_per_s"]),
             _f(e["fraction_of_peak"], 1, pct=True), _f(e["floor_ms"]), _f(e["end_to_end_over_floor"], 2)]
            for name, r in pres.items() for prec, e in r["efficiency"].items()]
    out += ["", "## How close to the hardware limit (network forward pass against the matmul peak)", ""]
    out += _table(["preset", "precision", "GFLOP", "network ms", "GFLOP/s", "peak GFLOP/s", "of peak",
                   "floor ms", "end to end / floor"], rows)
    layered = [(name, r["layers"]) for name, r in pres.items() if r.get("layers")]
    if layered:
        peak = (result.get("matmul_peak") or {}).get("fp32", {}).get("gflops_per_s")
        rows = [[name, row["name"], fmt_gflop(row["gflop"]), _f(row["ms"]), _f(row["gflops_per_s"]),
                 _f(row["gflops_per_s"] / peak if peak else None, 1, pct=True)]
                for name, lay in layered for row in lay["rows"]]
        rows += [[name, "everything else (ReLU, pooling, up-sampling, concatenation)", "", _f(lay["other_ms"]), "", ""]
                 for name, lay in layered]
        out += ["", "## Time per convolution (fp32 forward pass as the detector runs it; of peak: of the fp32 matmul's)",
                ""]
        out += _table(["preset", "layer", "GFLOP", "ms", "GFLOP/s", "of peak"], rows)
    rows = [[name, prec, t["batch_size"], _f(t["step"]["median_ms"]), _f(t["samples_per_s"], 2), _f(t["data_ms"]),
             _f(t["forward_ms"]), _f(t["loss_ms"]), _f(t["backward_ms"]), _f(t["optimizer_ms"]), _mem(t["memory"])]
            for name, r in pres.items() for prec, t in r["train"].items()]
    out += ["", "## Training step (ms)", ""]
    out += _table(["preset", "precision", "batch", "step", "samples/s", "data", "forward", "loss", "backward",
                   "optimizer", "peak MB"], rows)
    rows = [[name, lv["label"], _f(lv["ms_per_volume"]), _f(lv["x_baseline"], 2), _mem(lv["memory"]), lv["error"] or ""]
            for name, r in pres.items() for lv in r["levers"]]
    out += ["", "## Levers (network forward pass, ms per volume; x baseline below 1 is faster)", ""]
    out += _table(["preset", "setting", "ms/volume", "x baseline", "peak MB", "error"], rows)
    for prec in peer_precisions(result):
        out += _peers_markdown(pres, prec)
    alloc = [(name, r["allocator"]) for name, r in pres.items() if r.get("allocator")]
    if alloc:
        a0 = alloc[0][1]
        out += ["", f"## Allocator (detection end to end, ms per volume; this run: {a0['here']}; "
                    f"other: {a0['other']}, in a child process; x above 1: this run's setting is faster)", ""]
        rows = [[name, row["precision"], _f(row["end_to_end_ms_here"]), _f(row["end_to_end_ms_other"]),
                 _f(row["x_here"], 2), _f(row["network_ms_here"]), _f(row["network_ms_other"]),
                 _f(row["peak_mb_here"], 0), _f(row["peak_mb_other"], 0), ""]
                for name, a in alloc for row in a["rows"]]
        rows += [[name, "", "", "", "", "", "", "", "", a["error"]] for name, a in alloc if a["error"]]
        out += _table(["preset", "precision", "this run", "other", "x", "network, this run", "network, other",
                       "peak MB, this run", "peak MB, other", "note"], rows)
    if result.get("sizes"):
        sz = result["sizes"]
        out += ["", f"## Cost against volume size (IG-RPN width {sz['width']}, stride {sz['stride']}, "
                    f"{sz.get('setting') or sz['precision']}, batch 1)", ""]
        out += _table(["size", "voxels", "GFLOP", "ms", "GFLOP/s", "peak MB"],
                      [[f"{r['size']}^3", r["voxels"], fmt_gflop(r["gflop"]), _f(r["ms"]), _f(r["gflops_per_s"]), _mem(r["memory"])]
                       for r in sz["rows"]])
    acc = result.get("accuracy")
    if acc:
        out += ["", f"## Accuracy of {acc['amp_precision']} autocast ({acc['split']} split, {acc['n_cases']} cases)", ""]
        out += _table(["", "fp32", acc["amp_precision"], "difference"],
                      [["d-mean mm", _f(acc["d_mean_fp32_mm"], 3), _f(acc["d_mean_amp_mm"], 3),
                        _f(acc["d_mean_diff_mm"], 3)],
                       ["DR50", _f(acc["dr50_fp32"], 1, pct=True), _f(acc["dr50_amp"], 1, pct=True), ""],
                       ["ms/volume", _f(acc["time_ms_fp32"]), _f(acc["time_ms_amp"]), ""]])
        out += ["", f"Largest landmark shift {_f(acc['max_landmark_shift_mm'], 3)} mm; identical result on "
                    f"{_f(acc['same_result_fraction'], 1, pct=True)} of the cases; within 0.1 mm: "
                    f"{'yes' if acc['within_0_1_mm'] else 'no'}."]
    return "\n".join(out) + "\n"
