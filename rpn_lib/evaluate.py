"""Evaluating a trained detector on a dataset split with the paper's metrics and a ranked AP.

Boxes are compared on the model grid (isotropic, the preset's spacing), where the ground-truth
boxes are the landmark-centred boxes of Sec. 2.2; distances are in world millimetres.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rpn_lib.data.dataset import LandmarkDataset
from rpn_lib.data.geometry import world_to_voxel
from rpn_lib.detect import Detection, Detector
from rpn_lib.errors import DataError
from rpn_lib.landmarks import LANDMARK_NAMES, NUM_LANDMARKS, box_size_vox
from rpn_lib.metrics import coco_ap, final_box_ious, paper_metrics


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
             max_cases: int | None = None) -> Evaluation:
    """Detect on every case of a split and compute the metrics.

    ``time_ms`` is the median wall time per volume of network + candidates + prior (after the
    first volume, which pays for warm-up), on this machine.

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

    Returns:
        The metrics and, per case, the detections and boxes (:class:`Evaluation`).

    Raises:
        DataError: there is no case to evaluate.
    """
    det = detector if isinstance(detector, Detector) else Detector.from_file(detector)
    ds = data if isinstance(data, (LandmarkDataset, list, tuple)) else LandmarkDataset(data, split=split)
    n = len(ds) if max_cases is None else min(max_cases, len(ds))
    if n == 0:
        raise DataError(f"no cases to evaluate in split {split!r}", getattr(ds, "root", None))
    ids, dets, pb, gb, pw, gw, times = [], [], [], [], [], [], []
    for i in tqdm(range(n), desc="evaluate", disable=not progress, leave=False):
        case = ds[i]
        t0 = time.perf_counter()
        d = det.detect(case.volume, case.affine, use_prior=use_prior)
        times.append((time.perf_counter() - t0) * 1e3)
        ids.append(case.case_id)
        dets.append(d)
        pb.append(d.boxes_vox)
        gb.append(gt_boxes_on_grid(case.landmarks_world, d.model_affine, d.spacing_mm))
        pw.append(d.landmarks_world)
        gw.append(case.landmarks_world)
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
    metrics["n_cases"] = n
    metrics["use_prior"] = use_prior
    if use_prior:
        metrics["prior_rule"] = det.prior_rule
    metrics["device"] = str(det.device)
    if det.amp:  # fp32 otherwise
        metrics["precision"] = "fp16" if det.device.type == "cuda" else "bf16"
    metrics["threads"] = torch.get_num_threads()
    return Evaluation(metrics, ids, dets, pred_boxes, gt_boxes, pred_world, gt_world)


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
