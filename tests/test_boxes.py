"""Box conversions, IoU, Eq. 1 box coding and NMS (rpn_lib.boxes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rpn_lib.boxes import (BoxCoder, box_iou, box_iou_pairwise, box_volume, corners_to_cs, cs_to_corners, nms,
                           nms_stacked)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_corners_hand_example_and_round_trip() -> None:
    b = t([[10, 20, 30, 4, 6, 8]])
    c = cs_to_corners(b)
    assert c.tolist() == [[8, 17, 26, 12, 23, 34]]
    assert corners_to_cs(c).tolist() == b.tolist()
    assert box_volume(b).tolist() == [4 * 6 * 8]


def test_iou_hand_examples() -> None:
    a = t([[0, 0, 0, 2, 2, 2]])
    b = t([
        [0, 0, 0, 2, 2, 2],    # identical: 1
        [1, 0, 0, 2, 2, 2],    # half overlap along axis 0: 4 / (8 + 8 - 4) = 1/3
        [0, 0, 0, 4, 4, 4],    # contains a: 8 / 64
        [3, 0, 0, 2, 2, 2],    # disjoint: 0
        [2, 0, 0, 2, 2, 2],    # touching faces: 0
        [1, 1, 1, 2, 2, 2],    # one corner cube: 1 / 15
    ])
    expected = [1.0, 1 / 3, 0.125, 0.0, 0.0, 1 / 15]
    np.testing.assert_allclose(box_iou(a, b)[0].numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(box_iou_pairwise(a.expand(6, 6), b).numpy(), expected, rtol=1e-12)
    # symmetric
    np.testing.assert_allclose(box_iou(b, a)[:, 0].numpy(), expected, rtol=1e-12)


def test_iou_of_empty_boxes_is_zero_not_nan() -> None:
    z = t([[5, 5, 5, 0, 0, 0]])
    iou = box_iou(z, torch.cat([z, t([[5, 5, 5, 2, 2, 2]])]))
    assert torch.isfinite(iou).all() and iou.tolist() == [[0.0, 0.0]]
    assert box_iou_pairwise(z, z).tolist() == [0.0]
    assert box_iou(t(np.zeros((0, 6))), z).shape == (0, 1)


def random_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    c = torch.rand(n, 3, generator=gen, dtype=torch.float64) * 20
    s = torch.rand(n, 3, generator=gen, dtype=torch.float64) * 10 + 0.5
    return torch.cat([c, s], dim=1)


def test_iou_matches_monai() -> None:
    box_utils = pytest.importorskip("monai.data.box_utils")
    gen = torch.Generator().manual_seed(0)
    a, b = random_boxes(40, gen), random_boxes(30, gen)
    # MONAI's StandardMode "xyzxyz" is our corner form with x, y, z read as array axes 0, 1, 2.
    ref = box_utils.box_iou(cs_to_corners(a), cs_to_corners(b))
    ours = box_iou(a, b)
    assert (ours > 0).sum() > 50  # the test exercises overlaps, not just zeros
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(box_iou_pairwise(a[:30], b).numpy(), torch.diagonal(box_iou(a[:30], b)).numpy())


def test_encode_hand_example() -> None:
    anchor = t([[10, 20, 30, 4, 8, 16]])
    gt = t([[12, 20, 26, 8, 8, 4]])
    deltas = BoxCoder().encode(anchor, gt)
    np.testing.assert_allclose(deltas.numpy(), [[0.5, 0.0, -0.25, math.log(2), 0.0, math.log(0.25)]], atol=1e-15)
    np.testing.assert_allclose(BoxCoder().decode(anchor, deltas).numpy(), gt.numpy(), atol=1e-12)
    weighted = BoxCoder(weights=(10, 10, 10, 5, 5, 5))
    wd = weighted.encode(anchor, gt)
    np.testing.assert_allclose(wd.numpy(), deltas.numpy() * [10, 10, 10, 5, 5, 5], atol=1e-12)
    np.testing.assert_allclose(weighted.decode(anchor, wd).numpy(), gt.numpy(), atol=1e-12)


def test_decode_is_eq1() -> None:
    anchor = t([[1, 2, 3, 10, 20, 30]])
    d = t([[0.1, -0.2, 0.3, 0.5, -1.0, 0.0]])
    box = BoxCoder().decode(anchor, d)[0].tolist()
    expected = [1 + 0.1 * 10, 2 - 0.2 * 20, 3 + 0.3 * 30, 10 * math.exp(0.5), 20 * math.exp(-1.0), 30.0]
    np.testing.assert_allclose(box, expected, rtol=1e-12)


finite = st.floats(-50, 50, allow_nan=False)
size = st.floats(1, 60, allow_nan=False)  # size ratios stay below the clamp (62.5)
box_st = st.tuples(finite, finite, finite, size, size, size)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(box_st, box_st), min_size=1, max_size=8),
       st.tuples(*[st.floats(0.5, 10) for _ in range(6)]))
def test_encode_decode_round_trip(pairs, weights) -> None:
    anchors = t([p[0] for p in pairs])
    gts = t([p[1] for p in pairs])
    coder = BoxCoder(weights=weights)
    back = coder.decode(anchors, coder.encode(anchors, gts))
    np.testing.assert_allclose(back.numpy(), gts.numpy(), rtol=1e-9, atol=1e-9)


def test_clamp_prevents_overflow() -> None:
    anchor = torch.tensor([[0, 0, 0, 16, 16, 16]], dtype=torch.float32)
    d = torch.tensor([[0, 0, 0, 1000.0, 90.0, -1000.0]])
    assert torch.isinf(anchor[:, 3:] * torch.exp(d[:, 3:])).any()  # what an unclamped exp does
    box = BoxCoder().decode(anchor, d)
    assert torch.isfinite(box).all()
    np.testing.assert_allclose(box[0, 3:5].numpy(), [1000.0, 1000.0], rtol=1e-5)  # 16 * 1000 / 16
    assert box[0, 5] == 0.0  # shrinking is not clamped (a zero-size box is harmless)
    iou = box_iou_pairwise(box, anchor)
    assert torch.isfinite(iou).all()


def test_nms_hand_example() -> None:
    boxes = t([
        [0, 0, 0, 10, 10, 10],
        [1, 0, 0, 10, 10, 10],    # IoU 9/11 with box 0
        [30, 0, 0, 10, 10, 10],   # far away
        [5, 0, 0, 10, 10, 10],    # IoU 5/15 = 1/3 with box 0, 6/14 = 0.43 with box 1
    ])
    scores = t([0.9, 0.95, 0.5, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 2]
    # box 3 vs box 1: IoU = 6/14 = 0.43 > 0.4 -> suppressed; box 0 by box 1 as before
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]
    # threshold exactly at an IoU keeps the box (suppress only IoU > threshold)
    two = t([[0, 0, 0, 2, 2, 2], [1, 0, 0, 2, 2, 2]])
    assert nms(two, t([1.0, 0.5]), 1 / 3 + 1e-12).tolist() == [0, 1]
    assert nms(two, t([1.0, 0.5]), 0.3).tolist() == [0]
    assert nms(t(np.zeros((0, 6))), t([]), 0.5).numel() == 0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 40), st.floats(0.05, 0.9))
def test_nms_properties(seed: int, n: int, thr: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    boxes = random_boxes(n, gen)
    scores = torch.rand(n, generator=gen, dtype=torch.float64)
    keep = nms(boxes, scores, thr)
    assert keep.dtype == torch.long
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])  # by decreasing score
    iou = box_iou(boxes, boxes)
    kept = set(keep.tolist())
    ks = keep.tolist()
    for i, a in enumerate(ks):  # kept boxes do not overlap each other above thr
        for b in ks[i + 1:]:
            assert iou[a, b] <= thr
    for r in set(range(n)) - kept:  # every removed box is covered by a better kept one
        assert any(iou[r, k] > thr and scores[k] >= scores[r] for k in kept)
    for m in (1, 2, 5):  # an early stop gives the first m survivors of the full sweep
        assert nms(boxes, scores, thr, max_keep=m).tolist() == ks[:m]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 30), st.floats(0.05, 0.9))
def test_nms_stacked_is_nms_of_each_set(seed: int, n: int, thr: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    boxes = torch.stack([random_boxes(n, gen) for _ in range(4)])  # (4, n, 6)
    # coarse scores: many exact ties, which both paths must order by lower index first
    scores = torch.randint(0, 4, (4, n), generator=gen).double()
    stacked = nms_stacked(boxes, scores, thr, max_keep=3)
    assert [k.tolist() for k in stacked] == [nms(b, s, thr, max_keep=3).tolist() for b, s in zip(boxes, scores)]
    # presorted: the same sets given in decreasing score order (stable), with the sort skipped
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    s_sorted = torch.gather(scores, 1, order)
    b_sorted = torch.gather(boxes, 1, order[..., None].expand(-1, -1, 6))
    pre = nms_stacked(b_sorted, s_sorted, thr, max_keep=3, presorted=True)
    assert [order[c][k].tolist() for c, k in enumerate(pre)] == [k.tolist() for k in stacked]
