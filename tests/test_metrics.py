"""Paper-style detection rates and a COCO-style ranked AP (rpn_lib.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rpn_lib.boxes import cs_to_corners
from rpn_lib.landmarks import LANDMARK_NAMES
from rpn_lib.metrics import coco_ap, detection_rate, final_box_ious, paper_metrics


def boxes_with_ious() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2 volumes x 5 landmarks of 10^3 boxes, each prediction shifted along axis 0 by s, which
    gives IoU (10 - s) / (10 + s)."""
    shifts = np.array([[0.0, 1, 2, 3, 20], [0.5, 4, 0, 6, 1]])
    gt = np.zeros((2, 5, 6))
    gt[..., :3] = np.arange(10)[:, None].reshape(2, 5, 1) * 30.0
    gt[..., 3:] = 10.0
    pred = gt.copy()
    pred[..., 0] += shifts
    iou = np.clip((10 - shifts) / (10 + shifts), 0, None)
    return pred, gt, iou


def test_detection_rate_hand_example() -> None:
    pred, gt, iou = boxes_with_ious()
    np.testing.assert_allclose(final_box_ious(pred, gt), iou, atol=1e-12)
    # IoUs: [1, 9/11, 8/12, 7/13, 0], [19/21, 6/14, 1, 4/16, 9/11]
    assert detection_rate(pred, gt, 0.5) == pytest.approx(7 / 10)
    assert detection_rate(pred, gt, 0.75) == pytest.approx(5 / 10)
    assert detection_rate(pred, gt, 0.35) == pytest.approx(8 / 10)
    assert detection_rate(pred, gt, 1.0) == pytest.approx(2 / 10)  # IoU >= t, inclusive


def test_paper_metrics_hand_example() -> None:
    pred, gt, iou = boxes_with_ious()
    gt_mm = gt[..., :3] * 1.3
    pred_mm = gt_mm.copy()
    pred_mm[..., 0] += np.array([[3.0, 4, 0, 0, 0], [0, 0, 0, 0, 5]])
    m = paper_metrics(pred, gt, pred_mm, gt_mm)
    d = np.array([3.0, 4, 0, 0, 0, 0, 0, 0, 0, 5])
    assert m["d_mean_mm"] == pytest.approx(1.2)
    assert m["d_std_mm"] == pytest.approx(d.std())
    assert m["dr50"] == pytest.approx(0.7) and m["dr75"] == pytest.approx(0.5) and m["dr35"] == pytest.approx(0.8)
    expected_5095 = np.mean([np.mean(iou >= t) for t in [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]])
    assert m["dr_50_95"] == pytest.approx(expected_5095)
    assert m["miou"] == pytest.approx(iou.mean())
    assert set(m["per_landmark"]) == set(LANDMARK_NAMES)
    nose = m["per_landmark"]["nose_tip"]
    assert nose["miou"] == pytest.approx(iou[:, 3].mean()) and nose["dr50"] == pytest.approx(0.5)
    assert m["per_landmark"]["left_eye"]["d_mean_mm"] == pytest.approx(1.5)
    assert m["n_volumes"] == 2


def test_coco_ap_hand_example() -> None:
    g = np.array([[10, 10, 10, 10, 10, 10.0]])
    miss = np.array([[40, 40, 40, 10, 10, 10.0]])
    # image 1: one TP (0.9); image 2: a FP (0.8) then a TP (0.7); 2 ground truths of class 0
    dets = [(g, np.array([0.9]), np.array([0])),
            (np.concatenate([miss, g]), np.array([0.8, 0.7]), np.array([0, 0]))]
    gts = [(g, np.array([0])), (g, np.array([0]))]
    res = coco_ap(dets, gts)
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> envelope 1 up to recall 0.5, 2/3 after
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    assert res["ap50"] == pytest.approx(expected)
    assert res["ap"] == pytest.approx(expected)  # exact boxes: same at every threshold
    assert res["per_class"] == {0: pytest.approx(expected)}
    # no detections -> AP 0
    res0 = coco_ap([(g[:0], np.zeros(0), np.zeros(0, int))], [(g, np.array([0]))])
    assert res0["ap"] == 0.0


def random_case(rng: np.random.Generator, n_images: int = 6):
    dets, gts = [], []
    for _ in range(n_images):
        gb = np.concatenate([rng.uniform(20, 100, (5, 3)), rng.uniform(8, 20, (5, 3))], axis=1)
        gc = np.arange(5)
        db, dc = [], []
        for k in range(5):
            n = rng.integers(0, 5)
            jitter = np.concatenate([rng.normal(0, 1.0, (n, 3)), rng.normal(0, 1.0, (n, 3))], axis=1)
            db.append(gb[k] + jitter)
            dc.append(np.full(n, k))
            if rng.random() < 0.3:  # a detection of the class far away
                db.append(np.concatenate([rng.uniform(20, 100, (1, 3)), gb[k:k + 1, 3:]], axis=1))
                dc.append(np.array([k]))
        db = np.concatenate(db)
        db[:, 3:] = np.abs(db[:, 3:])
        dets.append((db, rng.random(len(db)), np.concatenate(dc)))
        gts.append((gb, gc))
    return dets, gts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_ap_matches_monai(seed: int) -> None:
    coco = pytest.importorskip("monai.apps.detection.metrics.coco")
    matching = pytest.importorskip("monai.apps.detection.metrics.matching")
    box_utils = pytest.importorskip("monai.data.box_utils")
    dets, gts = random_case(np.random.default_rng(seed))
    metric = coco.COCOMetric(classes=[str(k) for k in range(5)], iou_list=(0.35, 0.5, 0.75),
                             iou_range=(0.5, 0.95, 0.05), max_detection=(100,), per_class=True, verbose=False)

    def corners(b: np.ndarray) -> np.ndarray:
        return cs_to_corners(torch.as_tensor(b)).numpy()

    results = matching.matching_batch(
        iou_fn=box_utils.box_iou, iou_thresholds=metric.iou_thresholds,
        pred_boxes=[corners(d[0]) for d in dets], pred_classes=[d[2] for d in dets],
        pred_scores=[d[1] for d in dets], gt_boxes=[corners(g[0]) for g in gts], gt_classes=[g[1] for g in gts],
        max_detections=100)
    ref = metric(results)[0]
    ours = coco_ap(dets, gts)
    assert 0.05 < ours["ap"] < 0.95  # a non-trivial case
    assert ours["ap"] == pytest.approx(ref["mAP_IoU_0.50_0.95_0.05_MaxDet_100"], abs=1e-6)
    assert ours["ap50"] == pytest.approx(ref["AP_IoU_0.50_MaxDet_100"], abs=1e-6)
    assert ours["ap75"] == pytest.approx(ref["AP_IoU_0.75_MaxDet_100"], abs=1e-6)
    assert ours["ap35"] == pytest.approx(ref["AP_IoU_0.35_MaxDet_100"], abs=1e-6)
    for k in range(5):
        assert ours["per_class"][k] == pytest.approx(ref[f"{k}_mAP_IoU_0.50_0.95_0.05_MaxDet_100"], abs=1e-6)
        assert ours["per_class_ap50"][k] == pytest.approx(ref[f"{k}_AP_IoU_0.50_MaxDet_100"], abs=1e-6)
