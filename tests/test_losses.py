"""IoU-balanced classification loss (Eq. 2-3), box regression loss (rpn_lib.losses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rpn_lib.boxes import BoxCoder, box_iou_pairwise
from rpn_lib.losses import box_regression_loss, classification_loss, iou_balanced_weights, rpn_losses


def test_eq3_weights_hand_example() -> None:
    ious = torch.tensor([0.5, 1.0])
    ce = torch.tensor([1.0, 2.0])
    # eta = 2: IoU^eta = [0.25, 1]; sum CE = 3; sum IoU^eta CE = 0.25 + 2 = 2.25
    w = iou_balanced_weights(ious, ce, eta=2.0)
    np.testing.assert_allclose(w.numpy(), [0.25 * 3 / 2.25, 3 / 2.25], rtol=1e-6)
    np.testing.assert_allclose(float((w * ce).sum()), 3.0, rtol=1e-6)  # total positive CE is kept
    np.testing.assert_allclose(iou_balanced_weights(ious, ce, eta=0.0).numpy(), [1.0, 1.0])


def test_eq3_zero_denominator_falls_back_to_ones() -> None:
    w = iou_balanced_weights(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0]), eta=1.75)
    assert w.tolist() == [1.0, 1.0, 1.0]
    w = iou_balanced_weights(torch.tensor([0.3, 0.6]), torch.zeros(2), eta=1.75)
    assert w.tolist() == [1.0, 1.0]
    w = iou_balanced_weights(torch.tensor([float("nan"), 0.6]), torch.ones(2), eta=1.75)
    assert w.tolist() == [1.0, 1.0]


def log_softmax_np(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


LOGITS = [[0.2, 1.5, -0.3], [1.0, 0.1, 0.4], [2.0, -1.0, 0.5], [0.0, 3.0, 1.0], [0.3, 0.2, 0.1]]
LABELS = [1, 2, 0, -1, 1]
IOUS = [0.5, 0.9, 0.0, 0.0, 0.2]


def test_eq2_hand_example() -> None:
    x = np.array(LOGITS)
    lab = np.array(LABELS)
    ious = np.array(IOUS)
    eta = 1.75
    ce = -log_softmax_np(x)[np.arange(5), np.maximum(lab, 0)]
    pos = [0, 1, 4]
    u = ious[pos] ** eta
    w = u * ce[pos].sum() / (u * ce[pos]).sum()  # Eq. 3
    expected = ((w * ce[pos]).sum() + ce[2]) / 4  # Eq. 2 over the 4 non-ignored anchors
    loss = classification_loss(torch.tensor(x), torch.tensor(lab), torch.tensor(ious), eta=eta)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-10)
    # Eq. 3 keeps the positives' total CE, so the loss *value* equals plain CE ...
    np.testing.assert_allclose(expected, (ce[pos].sum() + ce[2]) / 4, rtol=1e-12)
    s = classification_loss(torch.tensor(x), torch.tensor(lab), torch.tensor(ious), eta=eta, reduction="sum")
    np.testing.assert_allclose(float(s), expected * 4, rtol=1e-10)
    per = classification_loss(torch.tensor(x), torch.tensor(lab), torch.tensor(ious), eta=eta, reduction="none")
    assert per[3] == 0.0
    np.testing.assert_allclose(per[pos].numpy(), w * ce[pos], rtol=1e-10)
    # ... but not its distribution over the positives (hence a different gradient)
    assert not np.allclose(per[pos].numpy(), ce[pos], rtol=1e-3)


def test_plain_ce_at_eta_zero_and_without_balance() -> None:
    x = torch.tensor(LOGITS, dtype=torch.float64)
    lab = torch.tensor(LABELS)
    ref = F.cross_entropy(x, lab, ignore_index=-1)
    a = classification_loss(x, lab, torch.tensor(IOUS), eta=0.0)
    b = classification_loss(x, lab, torch.tensor(IOUS), eta=1.75, iou_balance=False)
    c = classification_loss(x, lab, None, iou_balance=False)
    for v in (a, b, c):
        np.testing.assert_allclose(float(v), float(ref), rtol=1e-12)
    with pytest.raises(ValueError):
        classification_loss(x, lab, None, iou_balance=True)


def test_weights_carry_no_gradient() -> None:
    """The gradient of Eq. 2 w.r.t. the logits equals that of a CE weighted by constants."""
    x1 = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    ious = torch.tensor(IOUS, dtype=torch.float64, requires_grad=True)
    lab = torch.tensor(LABELS)
    loss = classification_loss(x1, lab, ious, eta=1.75)
    loss.backward()
    assert ious.grad is None  # nothing flows into the IoU
    with torch.no_grad():
        ce = F.cross_entropy(x1, lab.clamp(min=0), reduction="none")
        pos = lab > 0
        w = torch.ones(5, dtype=torch.float64)
        u = ious[pos] ** 1.75
        w[pos] = u * ce[pos].sum() / (u * ce[pos]).sum()
        w[lab < 0] = 0
    x2 = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    ((w * F.cross_entropy(x2, lab.clamp(min=0), reduction="none")).sum() / 4).backward()
    np.testing.assert_allclose(x1.grad.numpy(), x2.grad.numpy(), rtol=1e-10, atol=1e-14)
    # had the weights been differentiated, the gradient would differ
    x3 = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    ce3 = F.cross_entropy(x3, lab.clamp(min=0), reduction="none")
    w3 = torch.ones(5, dtype=torch.float64)
    w3 = torch.where(pos, ious.detach() ** 1.75 * ce3[pos].sum() / (ious.detach()[pos] ** 1.75 * ce3[pos]).sum(), w3)
    ((torch.where(lab >= 0, w3 * ce3, 0)).sum() / 4).backward()
    assert not np.allclose(x3.grad.numpy(), x2.grad.numpy())


def test_ignored_anchors_do_not_matter() -> None:
    x = torch.tensor(LOGITS)
    lab = torch.tensor(LABELS)
    x2 = x.clone()
    x2[3] = torch.tensor([100.0, -100.0, 7.0])
    ious = torch.tensor(IOUS)
    assert float(classification_loss(x, lab, ious)) == float(classification_loss(x2, lab, ious))
    empty = classification_loss(x[:0].requires_grad_(), lab[:0], ious[:0])
    assert float(empty.detach()) == 0.0


def test_box_loss_hand_example() -> None:
    beta = 1.0 / 9
    pred = torch.tensor([[0.5, 0.0, 0.0, 0.0, 0.0, 0.0], [0.05, 0.0, 0.0, 0.0, 0.0, -1.0]], requires_grad=True)
    target = torch.zeros(2, 6)
    # |0.5| >= beta: 0.5 - beta/2; |0.05| < beta: 0.5 * 0.05^2 / beta; |-1|: 1 - beta/2; mean over 2 positives
    expected = ((0.5 - beta / 2) + (0.5 * 0.05 ** 2 / beta) + (1 - beta / 2)) / 2
    loss = box_regression_loss(pred, target)
    np.testing.assert_allclose(float(loss.detach()), expected, rtol=1e-6)
    loss.backward()
    z = torch.zeros(0, 6, requires_grad=True)
    zl = box_regression_loss(z, torch.zeros(0, 6))
    assert float(zl.detach()) == 0.0
    zl.backward()


def test_rpn_losses_combines_the_parts() -> None:
    coder = BoxCoder()
    anchors = torch.tensor([[10, 10, 10, 8, 8, 8], [20, 20, 20, 8, 8, 8], [40, 40, 40, 8, 8, 8]], dtype=torch.float64)
    gt = torch.tensor([[11, 10, 10, 8, 8, 8], [20, 21, 20, 10, 8, 8], [0, 0, 0, 1, 1, 1]], dtype=torch.float64)
    labels = torch.tensor([1, 3, 0])
    logits = torch.tensor([[0.1, 0.5, 0.0], [0.3, 0.2, 0.1], [1.0, 0.0, 0.0]], dtype=torch.float64)
    logits = torch.cat([logits, torch.zeros(3, 1, dtype=torch.float64)], dim=1)
    deltas = torch.tensor([[0.1, 0, 0, 0, 0, 0], [0, 0, 0, 0.2, 0, 0], [5, 5, 5, 5, 5, 5]], dtype=torch.float64)
    out = rpn_losses(logits, deltas, anchors, labels, gt, coder, eta=1.75, box_weight=2.0)
    pos = labels > 0
    ious = torch.zeros(3, dtype=torch.float64)
    ious[pos] = box_iou_pairwise(coder.decode(anchors[pos], deltas[pos]), gt[pos])
    cls = classification_loss(logits, labels, ious, eta=1.75)
    box = box_regression_loss(deltas[pos], coder.encode(anchors[pos], gt[pos]))
    np.testing.assert_allclose(float(out["cls"]), float(cls), rtol=1e-6)
    np.testing.assert_allclose(float(out["box"]), float(box), rtol=1e-10)
    np.testing.assert_allclose(float(out["total"]), float(cls + 2 * box), rtol=1e-6)


def test_allowed_classes_band_is_per_class() -> None:
    from rpn_lib.anchors import Matcher, allowed_classes, label_anchors

    gt = torch.tensor([[10.0, 10, 10, 8, 8, 8], [10.0, 13, 10, 8, 8, 8]])  # two overlapping boxes
    anchors = torch.tensor([
        [10.0, 10, 10, 8, 8, 8],   # box 0 exactly: positive class 1
        [10.0, 15, 10, 8, 8, 8],   # IoU 0.6 with box 1 (positive class 2), 1/7 with box 0
        [10.0, 11.5, 10, 8, 8, 16],  # band for both boxes (IoU 0.39 and 0.39)
        [10.0, 7, 10, 8, 8, 8],    # IoU 5/11 with box 0 (band), 0 with box 1
        [40.0, 40, 40, 8, 8, 8],   # far: plain negative
    ])
    classes = torch.tensor([0, 1])
    from rpn_lib.boxes import box_iou
    iou = box_iou(gt, anchors)
    labels, _ = label_anchors(anchors, gt, classes, Matcher(0.5, 0.25, allow_low_quality_matches=False), iou=iou)
    assert labels.tolist() == [1, 2, -1, -1, 0]
    allowed = allowed_classes(iou, labels, classes, 0.25, 3)
    assert allowed.tolist() == [
        [False, True, False],
        [False, False, True],
        [True, True, True],
        [True, True, False],  # background or landmark 0, never landmark 1
        [True, False, False],
    ]


def test_partial_loss_equals_ce_for_one_hot_and_logsumexp_otherwise() -> None:
    logits = torch.tensor([[0.2, 1.0, -0.5], [1.5, 0.3, 0.7], [0.1, 0.2, 0.3]], requires_grad=True)
    labels = torch.tensor([1, 0, -1])
    allowed = torch.tensor([[False, True, False], [True, False, False], [True, False, True]])
    loss = classification_loss(logits, labels, None, iou_balance=False, reduction="none", allowed=allowed)
    ce = torch.nn.functional.cross_entropy(logits[:2], labels[:2], reduction="none")
    np.testing.assert_allclose(loss[:2].detach().numpy(), ce.detach().numpy(), rtol=1e-6)
    p = logits[2].softmax(0)
    np.testing.assert_allclose(float(loss[2].detach()), float(-torch.log(p[0] + p[2]).detach()), rtol=1e-6)
    # the mean counts the band row too
    mean = classification_loss(logits, labels, None, iou_balance=False, allowed=allowed)
    np.testing.assert_allclose(float(mean.detach()), float(loss.detach().sum() / 3), rtol=1e-6)
    mean.backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_loss_reduces_to_ce_at_gamma_zero_and_shrinks_easy_terms() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    labels = torch.tensor([0, 1])
    ce = classification_loss(logits, labels, None, iou_balance=False, reduction="none")
    f0 = classification_loss(logits, labels, None, iou_balance=False, reduction="none", focal_gamma=0.0)
    f2 = classification_loss(logits, labels, None, iou_balance=False, reduction="none", focal_gamma=2.0)
    np.testing.assert_allclose(f0.numpy(), ce.numpy())
    p = torch.exp(-ce)
    np.testing.assert_allclose(f2.numpy(), ((1 - p) ** 2 * ce).numpy(), rtol=1e-6)
    assert float(f2[0] / ce[0]) < float(f2[1] / ce[1])  # the easy background anchor is down-weighted more
    per_pos = classification_loss(logits, labels, None, iou_balance=False, reduction="positives", focal_gamma=2.0)
    np.testing.assert_allclose(float(per_pos), float(f2.sum()), rtol=1e-6)  # one positive
