"""Training the IG-RPN and the baselines: one function, :func:`train`, used by the CLI and the book.

Per step: draw ``batch_size`` training volumes, augment each on the training device
(rotation and flip, Sec. 3; :func:`rpn_lib.augment.augmented_batch`), run the network, and
minimise the method's loss with AdamW. For the IG-RPN (``method="rpn"``)
the loss labels all anchors of each volume against its five landmark-centred boxes
(positive IoU > 0.5 or best anchor of a box, negative IoU < 0.25, Sec. 3), samples a fixed
number of anchors per volume (positives at random; negatives half the hardest, half at
random: NOTES item 8), and takes the IoU-balanced classification loss (Eq. 2-3)
plus a smooth-L1 box loss on the positives (:func:`rpn_lib.methods.compute_losses`).

The loop (data, augmentation, optimiser, learning-rate schedule, checkpoints, exact resume,
logs) is the same for every method; a :class:`rpn_lib.methods.Method` supplies the network
and its loss (``method="ssd"``, ``"faster-rcnn"``, ``"heatmap"``: :mod:`rpn_lib.baselines`).

A run folder holds ``checkpoint.pt`` (everything needed to resume exactly: weights, optimiser,
step, random state), ``model.pt`` (what inference needs: weights, preset, graph prior, label
names, method), ``log.csv`` (losses every ``log_every`` steps) and ``train.json`` (the run's settings
and timing); a run given validation cases adds ``val.csv`` and ``model_best.pt``
(:mod:`rpn_lib.validation`). Both ``.pt`` files hold only tensors, numbers and strings, and are read with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rpn_lib.augment import augmented_batch
from rpn_lib.checkpoint import load_checkpoint, save_checkpoint, save_model
from rpn_lib.data.dataset import LandmarkDataset
from rpn_lib.data.geometry import spacing_from_affine
from rpn_lib.data.io import check_landmarks_inside
from rpn_lib.data.preprocess import check_grid_size, prepare_volume
from rpn_lib.device import resolve_device
from rpn_lib.errors import DataError
from rpn_lib.fileio import atomic_write, atomic_write_json
from rpn_lib.landmarks import LANDMARK_NAMES
from rpn_lib.methods import (  # noqa: F401 - StepLosses, compute_losses, gt_boxes_from_landmarks: the book imports them from here
    StepLosses, TrainContext, compute_losses, get_method, gt_boxes_from_landmarks,
)
from rpn_lib.precision import resolve_precision, warn_if_emulated
from rpn_lib.presets import Preset, get_preset, preset_changes
from rpn_lib.prior import GraphPrior
from rpn_lib.validation import BEST_MODEL, VAL_LOG, Validator

LOG_FIELDS = ("step", "lr", "loss", "cls", "box", "positives", "sec_per_step")


@dataclass
class TrainingSet:
    """Training volumes on the model grid, held in memory.

    Attributes:
        volumes: ``(N, D, H, W)`` float32 in [0, 1].
        landmarks_vox: ``(N, 5, 3)`` landmark voxel coordinates on the model grid.
        landmarks_world: ``(N, 5, 3)`` the same landmarks in world mm (for the graph prior).
        case_ids: case identifiers.
    """

    volumes: torch.Tensor
    landmarks_vox: torch.Tensor
    landmarks_world: np.ndarray
    case_ids: list[str]


def load_training_set(dataset: LandmarkDataset, preset: Preset, progress: bool = True) -> TrainingSet:
    """Load and prepare every case of ``dataset`` for ``preset`` (resampled, fixed shape).

    Raises:
        DataError: naming the case's image, if the split is empty, a volume is far larger
            than the training grid (:func:`~rpn_lib.data.preprocess.check_grid_size`), or the
            training grid centred on a volume does not hold all its landmarks.
    """
    if len(dataset) == 0:
        raise DataError("the training split has no cases", getattr(dataset, "root", None))
    vols, lms_vox, lms_world, ids = [], [], [], []
    fov_mm = [round(n * preset.spacing_mm, 1) for n in preset.shape_vox]
    for i in tqdm(range(len(dataset)), desc="loading", disable=not progress, leave=False):
        case = dataset[i]
        check_grid_size(case.volume.shape, case.affine, preset.spacing_mm, preset.shape_vox, case.image_path)
        inp = prepare_volume(case.volume, case.affine, preset.spacing_mm, preset.shape_vox)
        try:  # the fixed training grid is centred on the volume: a larger volume loses its borders
            lm_vox = check_landmarks_inside(case.landmarks_world, inp.array.shape, inp.affine, case.image_path)
        except DataError as e:
            extent = np.asarray(case.volume.shape) * spacing_from_affine(case.affine)
            fits = ",".join(str(8 * math.ceil(x / preset.spacing_mm / 8)) for x in extent)
            raise DataError(f"the training grid of preset {preset.name!r} ({fov_mm} mm, centred on the volume of "
                            f"{extent.round(1).tolist()} mm) does not hold every landmark ({e.problem}); crop the "
                            f"volume around the face first, or train on a grid that holds the whole volume, slower: "
                            f"shape_vox={fits} (rpn-lib train --set shape_vox={fits})", case.image_path) from None
        vols.append(torch.from_numpy(inp.array))
        lms_vox.append(torch.from_numpy(lm_vox).float())
        lms_world.append(case.landmarks_world)
        ids.append(case.case_id)
    return TrainingSet(torch.stack(vols), torch.stack(lms_vox), np.stack(lms_world), ids)


def learning_rate(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 5 % of ``peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@dataclass
class TrainResult:
    """Where a run's files are and how it went."""

    run_dir: Path
    steps: int
    seconds: float
    final_loss: float
    log: list[dict[str, float]] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)
    """Rows of ``val.csv`` (:data:`rpn_lib.validation.VAL_FIELDS`) when the run was validated."""


def _read_log(path: Path, upto_step: int) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return [r for r in rows if r["step"] <= upto_step]


def _write_log(path: Path, rows: Sequence[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (int(r[k]) if k == "step" else f"{r[k]:.6g}") for k in LOG_FIELDS})
    atomic_write(path, buf.getvalue())


class RunningLog:
    """Running means of a loop's losses, turned into a ``log.csv`` row every ``log_every`` steps.

    Shared by :func:`train` and the MONAI peer's loop. ``add`` takes one step's values; at a
    logging step (or the last) it appends ``{"step", "lr", <means>, "sec_per_step"}`` to
    ``rows``, shows the losses on ``bar``, calls ``callback(step, row)`` and starts new means.
    """

    def __init__(self, keys: Sequence[str], rows: list[dict[str, float]], bar: Any, log_every: int, steps: int,
                 callback: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self.rows, self.bar, self.log_every, self.steps, self.callback = rows, bar, log_every, steps, callback
        self.acc = dict.fromkeys(keys, 0.0)
        self.n = 0
        self.t_last = time.perf_counter()

    def add(self, done: int, lr: float, values: dict[str, float]) -> None:
        """Record the values of the step that brought the count to ``done``."""
        for k in self.acc:
            self.acc[k] += values[k]
        self.n += 1
        if done % self.log_every == 0 or done == self.steps:
            now = time.perf_counter()
            row = {"step": done, "lr": lr, **{k: v / self.n for k, v in self.acc.items()},
                   "sec_per_step": (now - self.t_last) / self.n}
            self.rows.append(row)
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", cls=f"{row['cls']:.3f}", box=f"{row['box']:.3f}")
            if self.callback is not None:
                self.callback(done, row)
            self.acc = dict.fromkeys(self.acc, 0.0)
            self.n, self.t_last = 0, now


RUN_FILES = ("model.pt", "checkpoint.pt", "log.csv", "train.json", VAL_LOG, BEST_MODEL)
"""The files a training run writes into its folder."""
RUN_MARKERS = ("model.pt", "checkpoint.pt")
"""The run files whose presence means that a folder holds a run (the others are only logs)."""


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a training over a run already in ``out`` (``model.pt`` or
    ``checkpoint.pt``) unless ``resume`` (continue it) or ``overwrite`` (start again over it)
    says what to do with it; called before anything is read, so no run is lost by accident.

    Raises:
        ValueError: ``resume`` and ``overwrite`` both set.
        DataError: ``out`` holds a run and neither is set.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run, or start again over it")
    held = [name for name in RUN_MARKERS if (out / name).exists()]
    if held and not (resume or overwrite):
        raise DataError(f"already holds a training run ({', '.join(held)}): continue it with resume=True "
                        "(--resume), start again over it with overwrite=True (--overwrite), or choose another "
                        "folder", out)


def clear_run_files(out: Path) -> None:
    """Delete the run files (:data:`RUN_FILES`) of ``out``, so that a run started again over an
    old one leaves no old checkpoint behind to be resumed by mistake."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def train(
    data: str | Path | LandmarkDataset,
    out: str | Path,
    preset: str | Preset = "cpu-small",
    steps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    iou_balance: bool = True,
    checkpoint_every: int = 100,
    log_every: int = 10,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    progress: bool = True,
    max_cases: int | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    method: str = "rpn",
    method_options: dict[str, Any] | None = None,
    channels_last: bool = False,
    overwrite: bool = False,
    split: str | None = "train",
    val_data: str | Path | LandmarkDataset | None = None,
) -> TrainResult:
    """Train an IG-RPN (or a baseline) on a split of a dataset folder (``train``) and write a run folder.

    Args:
        data: dataset folder (``images/``, ``landmarks/``, optional ``splits.json``) or a
            :class:`~rpn_lib.data.dataset.LandmarkDataset`.
        out: run folder (created).
        preset: ``cpu-small``, ``paper`` or a :class:`~rpn_lib.presets.Preset`.
        steps: training steps (default: the preset's).
        seed: seeds the weights, the data order, augmentation and anchor sampling.
        resume: continue from ``out/checkpoint.pt`` exactly where it stopped.
        iou_balance: use the IoU-balanced classification loss (Eq. 2-3); False is the
            ablation with plain cross-entropy. (Faster R-CNN: its second-stage classifier;
            heatmap regression has no class scores and ignores it.)
        checkpoint_every: write ``checkpoint.pt`` and ``model.pt`` every this many steps.
        log_every: append the running mean of the losses to ``log.csv`` this often.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        precision: ``"fp32"``, ``"bf16"`` (autocast of the forward pass) or ``"auto"``: bf16
            where the device computes it natively, else fp32
            (:func:`rpn_lib.precision.resolve_precision`). bf16 on a CPU without AVX512-BF16
            or AMX is emulated and much slower: it runs, with an
            :class:`~rpn_lib.precision.EmulatedPrecisionWarning`.
        progress: show a progress bar with the loss and the step rate.
        max_cases: use only the first ``max_cases`` training cases (tests, quick demos).
        callback: called as ``callback(step, row)`` after each logged step.
        method: ``"rpn"`` (the IG-RPN), ``"ssd"``, ``"faster-rcnn"`` or ``"heatmap"``
            (:data:`rpn_lib.methods.METHOD_NAMES`).
        method_options: the method's own options (fields of its dataclass, e.g.
            ``{"sigma_mm": 4.0}`` for ``heatmap``); defaults when None.
        channels_last: keep weights and batches in ``torch.channels_last_3d`` (a speed
            setting: the same training up to rounding; ``rpn-lib bench`` measures it).
        overwrite: start again over a run already in ``out`` (its run files are deleted);
            without it (or ``resume``) such a folder is refused (:func:`check_run_folder`).
        split: the split of ``splits.json`` to train on when ``data`` is a folder; None: every
            case (a folder without ``splits.json``).
        val_data: validation cases, scored at every checkpoint (:class:`rpn_lib.validation.Validator`:
            ``val.csv``, and ``model_best.pt``, the model with the lowest validation d-mean): a
            :class:`~rpn_lib.data.dataset.LandmarkDataset`, or a dataset folder whose ``val``
            split is read. None: no validation. Training is the same with or without it.
    """
    preset = get_preset(preset)
    steps = int(steps if steps is not None else preset.steps)
    if steps <= 0:
        raise ValueError("steps must be positive")
    resolve_precision(precision)  # checked before anything is read
    meth = get_method(method, method_options)
    if preset.eye_sides == "geometry" and not meth.pools_eyes:
        raise ValueError(f"eye_sides='geometry' needs a method that pools the eye classes (rpn, ssd), not {method!r}")
    if preset.anchor_layout != "all" and not meth.uses_anchor_layout:
        raise ValueError(f"anchor_layout={preset.anchor_layout!r} applies to rpn and faster-rcnn, not {method!r}")
    if preset.block1_convs != 2 and not meth.uses_block1_convs:
        raise ValueError(f"block1_convs={preset.block1_convs} applies to rpn only, not {method!r}")
    out = Path(out)
    check_run_folder(out, resume, overwrite)
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    warn_if_emulated(precision, dev)
    dataset = data if isinstance(data, LandmarkDataset) else LandmarkDataset(data, split=split)
    ts = load_training_set(dataset, preset, progress=progress)
    if max_cases is not None:
        ts = TrainingSet(ts.volumes[:max_cases], ts.landmarks_vox[:max_cases], ts.landmarks_world[:max_cases], ts.case_ids[:max_cases])
    prior = GraphPrior.fit(ts.landmarks_world)
    if val_data is not None and not isinstance(val_data, LandmarkDataset):
        val_data = LandmarkDataset(val_data, split="val")

    torch.manual_seed(seed)
    model = meth.build(preset).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    config = {"preset": preset.to_dict(), "steps": steps, "seed": seed, "iou_balance": iou_balance,
              "precision": precision, "train_cases": len(ts.case_ids), "method": method,
              "method_options": meth.options()}
    start_step = 0
    ckpt_path = out / "checkpoint.pt"
    if resume:
        if not ckpt_path.exists():
            raise DataError("no checkpoint.pt to resume from", out)
        state = load_checkpoint(ckpt_path)
        old = state["config"]
        differ = [f"{k} {a} in the checkpoint, {b} now"
                  for k, (a, b) in preset_changes(old["preset"], config["preset"]).items()]
        differ += [f"{k} {a} in the checkpoint, {b} now" for k, a, b in (
            ("iou_balance", old["iou_balance"], iou_balance), ("method", old.get("method", "rpn"), method),
            ("method options", old.get("method_options", {}), config["method_options"])) if a != b]
        if differ:
            raise DataError("checkpoint was made with other settings (" + "; ".join(differ) + "): resume with "
                            "the preset and settings of the run it continues", ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start_step = state["step"]
    log_rows = _read_log(out / "log.csv", start_step) if resume else []
    validator = (Validator(val_data, out, dev, start_step, ts.case_ids)
                 if val_data is not None else None)
    if overwrite:  # the data and settings are good: now the old run may go
        clear_run_files(out)

    n_cases = ts.volumes.shape[0]
    t0 = time.perf_counter()
    last_loss = float("nan")

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt_path, model, optimizer, generator, step, config)
        save_model(out / "model.pt", model, preset, prior, LANDMARK_NAMES,
                   meta={"steps": step, "seed": seed, "iou_balance": iou_balance, "precision": precision,
                         "method": method, "method_options": meth.options()})
        _write_log(out / "log.csv", log_rows)

    model.train()
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, desc="train", disable=not progress)
    log = RunningLog(("loss", "cls", "box", "positives"), log_rows, bar, log_every, steps, callback)
    for step in bar:
        lr = learning_rate(step, steps, preset.lr)
        for g in optimizer.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n_cases, (preset.batch_size,), generator=generator)
        x, lm_b = augmented_batch(ts.volumes[idx], ts.landmarks_vox[idx], generator, dev, preset.rotation_deg,
                                  preset.flip, preset.flip_axes, channels_last)
        ctx = TrainContext(preset, generator, iou_balance, hard_mining=step >= preset.hard_negative_start * steps,
                           device=dev, precision=precision)
        losses = meth.training_losses(model, x, lm_b, ctx)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        last_loss = float(losses.total.detach())
        done = step + 1
        log.add(done, lr, {"loss": last_loss, "cls": losses.cls, "box": losses.box, "positives": losses.positives})
        if done % checkpoint_every == 0 or done == steps:
            checkpoint(done)
            if validator is not None:
                v, best = validator(done), validator.best
                bar.set_postfix_str(f"val d-mean {v['d_mean_mm']:.2f} mm (best {best['d_mean_mm']:.2f})")
    bar.close()
    seconds = time.perf_counter() - t0
    info = {**config, "seconds_this_session": round(seconds, 1), "device": str(dev),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    if validator is not None:
        info.update(validator.summary())
    atomic_write_json(out / "train.json", info)
    return TrainResult(out, steps, seconds, last_loss, log_rows, list(validator.rows) if validator is not None else [])
