"""Evaluation metrics: the paper's (detection rate at an IoU, mIoU, d-mean) and a ranked AP.

NOTES item 1: every "AP" of the paper's tables is a multiple of 1/160 (32 volumes x 5
landmarks), so it behaves as a *detection rate*: the share of landmarks whose single final box
has IoU >= t with its ground truth. This module reports both

* :func:`paper_metrics`: the paper-style numbers (``dr35``, ``dr50``, ``dr75``,
  ``dr_50_95``, ``miou``, ``d_mean_mm``), computed from the one final box per landmark;
* :func:`coco_ap`: a standard COCO-style ranked average precision over all scored
  candidates (101-point interpolation), cross-checked against MONAI in the tests.

Choice: rates, IoUs and APs are fractions in [0, 1]; multiply by 100 only for display (the
paper prints percent). Boxes follow the library convention ``(cz, cy, cx, d, h, w)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rpn_lib.boxes import box_iou, box_iou_pairwise
from rpn_lib.landmarks import LANDMARK_NAMES

__all__ = ["DR_THRESHOLDS", "COCO_THRESHOLDS", "final_box_ious", "detection_rate", "paper_metrics", "coco_ap"]

DR_THRESHOLDS: np.ndarray = np.round(np.linspace(0.5, 0.95, 10), 10)
"""IoU thresholds 0.50, 0.55, ..., 0.95 of the paper's "AP (averaged on IoUs from 0.5 to 0.95)"."""

COCO_THRESHOLDS: np.ndarray = DR_THRESHOLDS
"""The same ten thresholds for the ranked AP."""


def _iou_pairwise_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ta = torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(-1, 6))
    tb = torch.as_tensor(np.asarray(b, dtype=np.float64).reshape(-1, 6))
    return box_iou_pairwise(ta, tb).numpy()


def _iou_matrix_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ta = torch.as_tensor(np.asarray(a, dtype=np.float64).reshape(-1, 6))
    tb = torch.as_tensor(np.asarray(b, dtype=np.float64).reshape(-1, 6))
    return box_iou(ta, tb).numpy()


def final_box_ious(pred_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU of each final box with its ground truth: ``(N, 5, 6)`` x ``(N, 5, 6)`` -> ``(N, 5)``."""
    p, g = np.asarray(pred_boxes, dtype=np.float64), np.asarray(gt_boxes, dtype=np.float64)
    if p.shape != g.shape or p.shape[-1] != 6:
        raise ValueError(f"pred_boxes and gt_boxes must both be (N, K, 6), got {p.shape} and {g.shape}")
    return _iou_pairwise_np(p, g).reshape(p.shape[:-1])


def detection_rate(pred_boxes: np.ndarray, gt_boxes: np.ndarray, threshold: float) -> float:
    """Paper-style "AP_t" (NOTES item 1): share of landmarks whose final box has IoU >= t.

    Args:
        pred_boxes: ``(N, 5, 6)`` one final box per volume and landmark.
        gt_boxes: ``(N, 5, 6)`` the ground-truth boxes.
        threshold: IoU threshold ``t``.

    Returns:
        fraction in [0, 1].
    """
    iou = final_box_ious(pred_boxes, gt_boxes)
    return float(np.mean(iou >= threshold)) if iou.size else float("nan")


def paper_metrics(pred_boxes: np.ndarray, gt_boxes: np.ndarray, pred_points_mm: np.ndarray,
                  gt_points_mm: np.ndarray, names: Sequence[str] = LANDMARK_NAMES) -> dict[str, Any]:
    """The paper's metrics (Sec. 3, Tables 1-2) from one final box per landmark.

    Args:
        pred_boxes, gt_boxes: ``(N, 5, 6)`` final and ground-truth boxes (same grid).
        pred_points_mm, gt_points_mm: ``(N, 5, 3)`` predicted and true landmarks in mm.
        names: landmark names for ``per_landmark``.

    Returns:
        ``d_mean_mm``, ``d_std_mm`` (mean and population standard deviation of the
        Euclidean landmark error over all N x 5 landmarks, mm); ``dr35``, ``dr50``, ``dr75``
        (detection rate at IoU 0.35 / 0.5 / 0.75); ``dr_50_95`` (mean detection rate over
        IoU 0.50:0.05:0.95, the paper's "AP"); ``miou`` (mean IoU of the final boxes: the
        mean over landmarks of the per-landmark mean, equal to the overall mean since every
        volume has every landmark); ``n_volumes``; and ``per_landmark``
        ``{name: {d_mean_mm, d_std_mm, dr35, dr50, dr75, miou}}``. Fractions in [0, 1].
    """
    iou = final_box_ious(pred_boxes, gt_boxes)  # (N, K)
    p, g = np.asarray(pred_points_mm, dtype=np.float64), np.asarray(gt_points_mm, dtype=np.float64)
    if p.shape != g.shape or p.shape[:-1] != iou.shape:
        raise ValueError(f"points must be (N, K, 3) matching the boxes, got {p.shape} and {g.shape}")
    dist = np.linalg.norm(p - g, axis=-1)  # (N, K)

    def summary(i: np.ndarray, d: np.ndarray) -> dict[str, float]:
        return {"d_mean_mm": float(d.mean()), "d_std_mm": float(d.std()),
                "dr35": float(np.mean(i >= 0.35)), "dr50": float(np.mean(i >= 0.5)),
                "dr75": float(np.mean(i >= 0.75)), "miou": float(i.mean())}

    out: dict[str, Any] = summary(iou, dist)
    out["dr_50_95"] = float(np.mean([np.mean(iou >= t) for t in DR_THRESHOLDS]))
    out["n_volumes"] = int(iou.shape[0])
    out["per_landmark"] = {str(n): summary(iou[:, k], dist[:, k]) for k, n in enumerate(names)}
    return out


def _ap_101(tp: np.ndarray, n_gt: int) -> float:
    """101-point interpolated AP of a ranked list of true/false positives (COCO)."""
    if n_gt == 0:
        return float("nan")
    if tp.size == 0:
        return 0.0
    ctp = np.cumsum(tp, dtype=np.float64)
    cfp = np.cumsum(~tp, dtype=np.float64)
    recall = ctp / n_gt
    precision = ctp / (ctp + cfp)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # precision envelope
    idx = np.searchsorted(recall, np.linspace(0.0, 1.0, 101), side="left")
    pr = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(pr.mean())


def coco_ap(detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
            gts: Sequence[tuple[np.ndarray, np.ndarray]],
            iou_thresholds: Sequence[float] = COCO_THRESHOLDS, max_detections: int | None = 100) -> dict[str, Any]:
    """Standard COCO-style ranked average precision over scored candidates.

    For each class and threshold: within an image, detections of the class are visited by
    decreasing score (at most ``max_detections`` per image and class, as COCO) and each is
    matched to the unmatched ground truth of that class with the highest IoU ``>= t`` (a true
    positive) or counts as a false positive. Detections of all images are then ranked by
    score (stable sort), precision is made monotone and read at 101 recall points
    0, 0.01, ..., 1 (COCO's interpolation). A class without ground truth is left out.

    Args:
        detections: per image ``(boxes (n, 6), scores (n,), classes (n,))``.
        gts: per image ``(boxes (m, 6), classes (m,))`` (here 5 boxes, one per landmark).
        iou_thresholds: thresholds averaged in ``ap`` (default 0.50:0.05:0.95).
        max_detections: detections per image and class considered (None: all).

    Returns:
        ``ap`` (mean over classes and ``iou_thresholds``), ``ap35``, ``ap50``, ``ap75``
        (mean over classes at one threshold), ``per_class`` ``{class: ap}`` and
        ``per_class_ap50`` ``{class: ap50}``; fractions in [0, 1].
    """
    if len(detections) != len(gts):
        raise ValueError(f"{len(detections)} detection lists for {len(gts)} images")
    ths = np.round(np.asarray(iou_thresholds, dtype=np.float64), 10)
    extra = np.array([0.35, 0.5, 0.75])
    all_th = np.union1d(ths, extra)
    classes = sorted({int(c) for _, gc in gts for c in np.asarray(gc).reshape(-1)})
    ap = np.full((len(all_th), len(classes)), np.nan)
    for ci, cls in enumerate(classes):
        scores_all: list[np.ndarray] = []
        tp_all: list[np.ndarray] = []  # (T, n) per image
        n_gt = 0
        for (db, ds, dc), (gb, gc) in zip(detections, gts):
            db, ds, dc = np.asarray(db, np.float64).reshape(-1, 6), np.asarray(ds, np.float64).reshape(-1), np.asarray(dc).reshape(-1)
            gb, gc = np.asarray(gb, np.float64).reshape(-1, 6), np.asarray(gc).reshape(-1)
            g = gb[gc == cls]
            n_gt += len(g)
            m = dc == cls
            d, s = db[m], ds[m]
            order = np.argsort(-s, kind="mergesort")
            if max_detections is not None:
                order = order[:max_detections]
            d, s = d[order], s[order]
            tp = np.zeros((len(all_th), len(d)), dtype=bool)
            if len(d) and len(g):
                iou = _iou_matrix_np(d, g)  # (n, m)
                for ti, t in enumerate(all_th):
                    taken = np.zeros(len(g), dtype=bool)
                    for j in range(len(d)):
                        cand = np.where(~taken & (iou[j] >= t), iou[j], -1.0)
                        best = int(np.argmax(cand))
                        if cand[best] >= 0:
                            taken[best] = True
                            tp[ti, j] = True
            scores_all.append(s)
            tp_all.append(tp)
        if n_gt == 0:
            continue
        s = np.concatenate(scores_all)
        tp = np.concatenate(tp_all, axis=1)
        rank = np.argsort(-s, kind="mergesort")
        for ti in range(len(all_th)):
            ap[ti, ci] = _ap_101(tp[ti, rank], n_gt)

    def at(t: float) -> np.ndarray:
        return ap[int(np.flatnonzero(np.isclose(all_th, t))[0])]

    in_range = np.isin(all_th, ths)
    per_class = {cls: float(np.mean(ap[in_range, ci])) for ci, cls in enumerate(classes)}
    return {
        "ap": float(np.mean(ap[in_range])) if classes else float("nan"),
        "ap35": float(np.mean(at(0.35))) if classes else float("nan"),
        "ap50": float(np.mean(at(0.5))) if classes else float("nan"),
        "ap75": float(np.mean(at(0.75))) if classes else float("nan"),
        "per_class": per_class,
        "per_class_ap50": {cls: float(at(0.5)[ci]) for ci, cls in enumerate(classes)},
    }
