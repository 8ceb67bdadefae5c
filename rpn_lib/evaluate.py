"""Evaluating a trained detector on a dataset split with the paper's metrics and a ranked AP.

Boxes are compared on the model grid (isotropic, the preset's spacing), where the ground-truth
boxes are the landmark-centred boxes of Sec. 2.2; distances are in world millimetres.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rpn_lib.data.dataset import LandmarkDataset
from rpn_lib.data.geometry import world_to_voxel
from rpn_lib.data.preprocess import IntensityWarning, ModelInput
from rpn_lib.detect import Detection, Detector
from rpn_lib.errors import DataError
from rpn_lib.landmarks import LANDMARK_NAMES, NUM_LANDMARKS, box_size_vox
from rpn_lib.metrics import coco_ap, final_box_ious, paper_metrics
from rpn_lib.readahead import READ_AHEAD, read_ahead


@dataclass
class Evaluation:
    """Per-case results and the summary metrics of one evaluation.

    Attributes:
        metrics: summary (keys ``d_mean_mm``, ``d_std_mm``, ``dr35``, ``dr50``, ``dr75``,
            ``dr_50_95``, ``miou``, ``ap_coco``, ``time_ms``, ``per_landmark``...).
        case_ids: evaluated cases.
        detections: one :class:`~rpn_lib.detect.Detection` per case.
        pred_boxes: ``(N, 5, 6)`` chosen boxes on each case's model grid.
        gt_boxes: ``(N, 5, 6)`` ground-truth boxes on the same grids.
        pred_world: ``(N, 5, 3)`` predicted landmarks, mm.
        gt_world: ``(N, 5, 3)`` ground-truth landmarks, mm.
    """

    metrics: dict[str, Any]
    case_ids: list[str]
    detections: list[Detection]
    pred_boxes: np.ndarray
    gt_boxes: np.ndarray
    pred_world: np.ndarray
    gt_world: np.ndarray

    @property
    def distances_mm(self) -> np.ndarray:
        """``(N, 5)`` Euclidean error per case and landmark, mm."""
        return np.linalg.norm(self.pred_world - self.gt_world, axis=-1)


def gt_boxes_on_grid(landmarks_world: np.ndarray, model_affine: np.ndarray, spacing_mm: float) -> np.ndarray:
    """``(5, 3)`` world landmarks -> ``(5, 6)`` landmark-centred boxes on a model grid."""
    centres = world_to_voxel(np.asarray(landmarks_world, dtype=np.float64), model_affine)
    sizes = np.asarray(box_size_vox(spacing_mm))[:, None].repeat(3, axis=1)
    return np.concatenate([centres, sizes], axis=1)


def evaluate(detector: Detector | str | Path, data: str | Path | LandmarkDataset | Sequence[Any],
             split: str | None = "test", use_prior: bool = True, progress: bool = True,
             max_cases: int | None = None, read_ahead_cases: int = READ_AHEAD) -> Evaluation:
    """Detect on every case of a split and compute the metrics.

    The results are those of :meth:`~rpn_lib.detect.Detector.detect` on each case. The
    next cases are read and resampled to the model grid in background threads while the
    network works on this one (``read_ahead_cases``), so that on a GPU it need not wait.

    ``time_ms`` is the median wall time per volume of resampling + network + candidates +
    prior (after the first volume, which pays for warm-up), on this machine; reading the
    files is not in it. ``volumes_per_s`` is the throughput of the whole loop after the first
    volume, reading included. On a CPU the threads that read ahead share its cores with the
    network and slow it a little: pass ``read_ahead_cases=0`` to time the detection alone
    (as ``rpn-lib replicate`` and ``rpn-lib bench`` do).

    Args:
        detector: a :class:`~rpn_lib.detect.Detector`, or the path of a model file.
        data: a dataset folder (read with ``split``), a
            :class:`~rpn_lib.data.dataset.LandmarkDataset`, or a sequence of cases with
            ``case_id``, ``volume``, ``affine`` and ``landmarks_world`` (e.g. from
            :func:`rpn_lib.data.dataset.synthetic_split_cases`).
        split: the split of a dataset folder's ``splits.json`` (``None``: every case).
        use_prior: choose with the graph prior (False: the top candidate of each class).
        progress: show a progress bar.
        max_cases: evaluate only the first this many cases.
        read_ahead_cases: cases of a dataset folder read ahead of the one being detected,
            each in its own thread (:func:`rpn_lib.readahead.read_ahead`); 0 reads each
            case when its turn comes, in this thread. Cases given in memory are resampled
            in this thread.

    Returns:
        The metrics and, per case, the detections and boxes (:class:`Evaluation`).

    Raises:
        DataError: there is no case to evaluate, or a case cannot be read or used.
        ValueError: ``read_ahead_cases`` is negative.

    Warns:
        IntensityWarning: a case has many negative voxels (naming the case).
    """
    det = detector if isinstance(detector, Detector) else Detector.from_file(detector)
    ds = data if isinstance(data, (LandmarkDataset, list, tuple)) else LandmarkDataset(data, split=split)
    n = len(ds) if max_cases is None else min(max_cases, len(ds))
    if n == 0:
        raise DataError(f"no cases to evaluate in split {split!r}", getattr(ds, "root", None))
    depth = read_ahead_cases if isinstance(ds, LandmarkDataset) else 0

    def read(i: int) -> tuple[Any, ModelInput, list[str], float]:
        case = ds[i]
        t0 = time.perf_counter()
        inp, notes = det.prepare_quietly(case.volume, case.affine)  # as detect() does
        return case, inp, notes, (time.perf_counter() - t0) * 1e3

    cases = read_ahead(range(n), read, depth)  # raises for a negative depth
    start = time.perf_counter()
    ids, dets, pb, gb, pw, gw, times = [], [], [], [], [], [], []
    try:
        for _, pending in tqdm(cases, total=n, desc="evaluate", disable=not progress, leave=False):
            case, inp, notes, prepare_ms = pending.result()
            for note in notes:
                warnings.warn(f"case {case.case_id}: {note}", IntensityWarning, stacklevel=2)
            t0 = time.perf_counter()
            in_affine = np.asarray(case.affine, dtype=np.float64)
            d = det.detect_prepared([inp], [in_affine], use_prior)[0]
            t1 = time.perf_counter()
            times.append(prepare_ms + (t1 - t0) * 1e3)
            if len(times) == 1:
                first_done = t1
            ids.append(case.case_id)
            dets.append(d)
            pb.append(d.boxes_vox)
            gb.append(gt_boxes_on_grid(case.landmarks_world, d.model_affine, d.spacing_mm))
            pw.append(d.landmarks_world)
            gw.append(case.landmarks_world)
    finally:
        cases.close()  # a failed case stops the loads still ahead
    # throughput after the first volume (warm-up), like time_ms
    loop_s, loop_n = (t1 - first_done, n - 1) if n > 1 else (t1 - start, 1)
    pred_boxes, gt_boxes = np.stack(pb), np.stack(gb)
    pred_world, gt_world = np.stack(pw), np.stack(gw)
    metrics = dict(paper_metrics(pred_boxes, gt_boxes, pred_world, gt_world))
    classes = np.arange(NUM_LANDMARKS)
    detections = []
    for d in dets:
        boxes = np.concatenate([np.stack([c.box_vox for c in cl]) for cl in d.candidates])
        scores = np.concatenate([np.array([c.score for c in cl]) for cl in d.candidates])
        cls = np.concatenate([np.full(len(cl), k) for k, cl in enumerate(d.candidates)])
        detections.append((boxes, scores, cls))
    ap = coco_ap(detections, [(g, classes) for g in gb])
    metrics["ap_coco"] = float(ap["ap"])
    metrics["ap_coco_50"] = float(ap["ap50"])
    metrics["ap_coco_75"] = float(ap["ap75"])
    warm = times[1:] if len(times) > 1 else times
    metrics["time_ms"] = float(np.median(warm))
    metrics["volumes_per_s"] = loop_n / loop_s
    metrics["read_ahead_cases"] = depth
    metrics["n_cases"] = n
    metrics["use_prior"] = use_prior
    if use_prior:
        metrics["prior_rule"] = det.prior_rule
    metrics["device"] = str(det.device)
    if det.amp:  # fp32 otherwise
        metrics["precision"] = "fp16" if det.device.type == "cuda" else "bf16"
    metrics["threads"] = torch.get_num_threads()
    return Evaluation(metrics, ids, dets, pred_boxes, gt_boxes, pred_world, gt_world)


def summary(metrics: Mapping[str, Any]) -> str:
    """A plain-text report of :func:`evaluate`'s metrics (or of a metrics file that
    ``rpn-lib evaluate`` wrote): one line for all landmarks, then one row per landmark.

    Example::

        32 cases: d-mean 3.69 +- 6.23 mm, DR35/50/75 95.6/85.6/51.9 %, mIoU 70.2 %, ...
        landmark        d-mean mm      DR35 %  DR50 %  DR75 %  mIoU %
        left_eye        4.27 +- 3.48     90.6    68.8    28.1    57.5
    """
    m = metrics
    speed = f"{m['time_ms']:.0f} ms/volume"
    if m.get("volumes_per_s") is not None:
        speed += f" ({m['volumes_per_s']:.1f} volumes/s, reading included)"
    lines = [f"{m['n_cases']} cases: d-mean {m['d_mean_mm']:.2f} +- {m['d_std_mm']:.2f} mm, "
             f"DR35/50/75 {100 * m['dr35']:.1f}/{100 * m['dr50']:.1f}/{100 * m['dr75']:.1f} %, "
             f"mIoU {100 * m['miou']:.1f} %, AP(COCO) {100 * m['ap_coco']:.1f} %, {speed}",
             f"{'landmark':<15} {'d-mean mm':<14} {'DR35 %':>6}  {'DR50 %':>6}  {'DR75 %':>6}  {'mIoU %':>6}"]
    for name in LANDMARK_NAMES:
        k = m["per_landmark"][name]
        dist = f"{k['d_mean_mm']:.2f} +- {k['d_std_mm']:.2f}"
        lines.append(f"{name:<15} {dist:<14} {100 * k['dr35']:6.1f}  {100 * k['dr50']:6.1f}  "
                     f"{100 * k['dr75']:6.1f}  {100 * k['miou']:6.1f}")
    return "\n".join(lines)


def per_case_table(ev: Evaluation) -> list[dict[str, Any]]:
    """One row per case and landmark: distance (mm), score and the chosen box's IoU with the
    ground-truth box, for paired comparisons and the score-IoU correlation."""
    rows = []
    dist = ev.distances_mm
    ious = final_box_ious(ev.pred_boxes, ev.gt_boxes)
    for i, cid in enumerate(ev.case_ids):
        for k, name in enumerate(LANDMARK_NAMES):
            rows.append({"case": cid, "landmark": name, "distance_mm": float(dist[i, k]),
                         "score": float(ev.detections[i].scores[k]), "iou": float(ious[i, k])})
    return rows
