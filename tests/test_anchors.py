"""Anchor shapes and grid, head-output order, matching, labelling and sampling (rpn_lib.anchors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rpn_lib.anchors import (Matcher, anchor_grid, anchor_shapes, flatten_head_output, label_anchors,
                             preset_anchor_grid, sample_anchors)
from rpn_lib.boxes import box_iou, cs_to_corners
from rpn_lib.presets import get_preset

PAPER_BASE = (13.0, 16.0, 20.0, 28.0)


def test_anchor_shapes_are_every_combination_in_documented_order() -> None:
    s = anchor_shapes(PAPER_BASE)
    assert s.shape == (64, 3)
    assert len({tuple(r) for r in s.tolist()}) == 64
    assert s[0].tolist() == [13, 13, 13]
    assert s[1].tolist() == [13, 13, 16]  # w varies fastest
    assert s[4].tolist() == [13, 16, 13]
    assert s[16].tolist() == [16, 13, 13]
    assert s[(2 * 4 + 3) * 4 + 1].tolist() == [20, 28, 16]
    assert s[63].tolist() == [28, 28, 28]
    with pytest.raises(ValueError):
        anchor_shapes([13, -1])


def test_cube_layout_keeps_the_cubes_in_base_order() -> None:
    s = anchor_shapes(PAPER_BASE, layout="cubes")
    assert s.tolist() == [[b] * 3 for b in PAPER_BASE]
    every = anchor_shapes(PAPER_BASE)
    cube_rows = [r for r in every.tolist() if r[0] == r[1] == r[2]]
    assert cube_rows == s.tolist()  # the cubes of "all", in the same order
    with pytest.raises(ValueError, match="layout"):
        anchor_shapes(PAPER_BASE, layout="spheres")


@pytest.mark.parametrize("layout", ["all", "cubes"])
def test_preset_anchor_grid_follows_the_preset(layout: str) -> None:
    preset = get_preset("cpu-small").replace(anchor_layout=layout)
    assert preset.num_anchors == (4 if layout == "cubes" else 64)
    f = (3, 4, 5)
    g = preset_anchor_grid(f, 4, preset)
    assert g.shape == (3 * 4 * 5 * preset.num_anchors, 6)
    expected = anchor_grid(f, 4, preset.anchor_base_vox, layout=layout)
    assert torch.equal(g, expected)
    # cell (1, 2, 3), its last anchor: the largest cube at the cell's centre
    row = ((1 * 4 + 2) * 5 + 3) * preset.num_anchors + preset.num_anchors - 1
    big = preset.anchor_base_vox[-1]
    assert g[row].tolist() == pytest.approx([5.5, 9.5, 13.5, big, big, big])
    with pytest.raises(ValueError, match="anchor_layout"):
        preset.replace(anchor_layout="cube")


def test_anchor_grid_count_centres_and_order() -> None:
    a = anchor_grid((16, 16, 16), 4, PAPER_BASE)  # a 64^3 volume at stride 4
    assert a.shape == (16 ** 3 * 64, 6)
    assert a.dtype == torch.float32
    assert a[0].tolist() == [1.5, 1.5, 1.5, 13, 13, 13]  # cell (0,0,0) covers voxels 0..3
    f = (3, 4, 5)
    g = anchor_grid(f, 4, PAPER_BASE, dtype=torch.float64)
    shapes = anchor_shapes(PAPER_BASE, dtype=torch.float64)
    for i0, i1, i2, k in [(0, 0, 0, 0), (2, 3, 4, 63), (1, 2, 3, 17), (2, 0, 1, 40)]:
        row = ((i0 * f[1] + i1) * f[2] + i2) * 64 + k
        assert g[row, :3].tolist() == [i0 * 4 + 1.5, i1 * 4 + 1.5, i2 * 4 + 1.5]
        assert g[row, 3:].tolist() == shapes[k].tolist()


def test_flatten_head_output_matches_anchor_grid() -> None:
    """Build a head output whose value names its cell and anchor; after flattening, row n must
    name the cell and anchor that anchor_grid puts in row n."""
    base = (2.0, 5.0)  # A = 8
    a_n, c_n, f, stride = 8, 3, (2, 3, 4), 4
    x = torch.zeros(2, a_n * c_n, *f, dtype=torch.float64)
    for b in range(2):
        for a in range(a_n):
            for c in range(c_n):
                for i0 in range(f[0]):
                    for i1 in range(f[1]):
                        for i2 in range(f[2]):
                            x[b, a * c_n + c, i0, i1, i2] = b * 1e6 + i0 * 1e5 + i1 * 1e4 + i2 * 1e3 + a * 10 + c
    flat = flatten_head_output(x, a_n)
    assert flat.shape == (2, f[0] * f[1] * f[2] * a_n, c_n)
    grid = anchor_grid(f, stride, base, dtype=torch.float64)
    shapes = anchor_shapes(base, dtype=torch.float64)
    for b in range(2):
        for n in range(flat.shape[1]):
            for c in range(c_n):
                v = int(round(flat[b, n, c].item()))
                assert v // 1_000_000 == b and v % 10 == c
                i0, i1, i2 = (v // 100_000) % 10, (v // 10_000) % 10, (v // 1000) % 10
                a = (v // 10) % 100
                assert grid[n, :3].tolist() == [i0 * stride + 1.5, i1 * stride + 1.5, i2 * stride + 1.5]
                assert grid[n, 3:].tolist() == shapes[a].tolist()
    with pytest.raises(ValueError):
        flatten_head_output(torch.zeros(1, 10, 2, 2, 2), 3)


@pytest.mark.parametrize("layout", ["all", "cubes"])
def test_anchor_grid_matches_monai_up_to_half_voxel(layout: str) -> None:
    anchor_utils = pytest.importorskip("monai.apps.detection.utils.anchor_utils")
    base = (12.0, 16.0, 20.0, 28.0)  # even sizes: MONAI rounds half-sizes to integers
    f, stride = (3, 4, 5), 4
    shapes = ([(b, b, b) for b in base] if layout == "cubes"
              else [(d, h, w) for d in base for h in base for w in base])  # written out, not ours
    gen = anchor_utils.AnchorGeneratorWithAnchorShape(feature_map_scales=(1,),
                                                      base_anchor_shapes=shapes, indexing="ij")
    image = torch.zeros(1, 1, *(s * stride for s in f))
    ref = gen(image, [torch.zeros(1, 1, *f)])[0]  # corners, "xyzxyz" = our axes 0, 1, 2
    ours = cs_to_corners(anchor_grid(f, stride, base, layout=layout))
    # MONAI centres anchors at i*stride + stride//2 = i*4 + 2; ours at i*4 + 1.5. Same order.
    assert ref.shape == ours.shape
    np.testing.assert_allclose(ours.numpy() + 0.5, ref.numpy(), atol=1e-6)


def test_matcher_thresholds_ties_and_low_quality() -> None:
    iou = torch.tensor([
        # a0    a1    a2    a3    a4    a5    a6
        [0.10, 0.30, 0.30, 0.00, 0.60, 0.50, 0.24],  # gt 0: a4 > 0.5 positive; a5 = 0.5 not
        [0.00, 0.00, 0.20, 0.45, 0.00, 0.25, 0.00],  # gt 1: best 0.45 at a3 only
        [0.00, 0.35, 0.35, 0.00, 0.00, 0.00, 0.00],  # gt 2: best 0.35, a tie between a1 and a2
    ])
    m = Matcher(0.5, 0.25, allow_low_quality_matches=False)(iou)
    assert m.tolist() == [-1, -2, -2, -2, 0, -2, -1]
    m = Matcher(0.5, 0.25)(iou)
    # a1, a2 tie as the best of gt 2 -> both matched to gt 2; a3 best of gt 1; a4 stays with gt 0
    assert m.tolist() == [-1, 2, 2, 1, 0, -2, -1]
    # an anchor that is the best for gt 1 is matched to gt 1 even if its IoU with gt 0 is higher
    iou2 = torch.tensor([[0.9, 0.4], [0.0, 0.3]])
    assert Matcher(0.5, 0.25)(iou2).tolist() == [0, 1]
    # a ground truth that touches no anchor matches nothing (not every anchor at IoU 0)
    iou3 = torch.tensor([[0.0, 0.0, 0.7], [0.0, 0.0, 0.0]])
    assert Matcher(0.5, 0.25)(iou3).tolist() == [-1, -1, 0]
    assert Matcher(0.5, 0.25)(torch.zeros(0, 4)).tolist() == [-1] * 4
    with pytest.raises(ValueError):
        Matcher(0.2, 0.4)


def test_label_anchors_on_boxes() -> None:
    gt = torch.tensor([[10, 10, 10, 4, 4, 4], [40, 40, 40, 4, 4, 4]], dtype=torch.float64)
    cls = torch.tensor([2, 0])
    anchors = torch.tensor([
        [10, 10, 10, 4, 4, 4],  # IoU 1 with gt 0 -> class 2 -> label 3
        [11, 10, 10, 4, 4, 4],  # IoU 3/5 -> positive
        [12, 10, 10, 4, 4, 4],  # IoU 2/6 -> ignored
        [13, 10, 10, 4, 4, 4],  # IoU 1/7 -> negative
        [42, 40, 40, 4, 4, 4],  # IoU 1/3 with gt 1, its best -> positive, label 1
        [43, 40, 40, 4, 4, 4],  # IoU 1/7 -> negative
        [80, 80, 80, 4, 4, 4],  # far -> negative
    ], dtype=torch.float64)
    labels, matched = label_anchors(anchors, gt, cls, Matcher(0.5, 0.25))
    assert labels.tolist() == [3, 3, -1, 0, 1, 0, 0]
    assert matched[labels > 0].tolist() == [0, 0, 1]
    np.testing.assert_allclose(box_iou(gt, anchors)[0, :4].numpy(), [1, 3 / 5, 1 / 3, 1 / 7])
    labels, matched = label_anchors(anchors, gt[:0], cls[:0], Matcher(0.5, 0.25))
    assert labels.tolist() == [0] * 7


def test_label_anchors_on_paper_grid_gives_positives_for_every_landmark() -> None:
    anchors = anchor_grid((16, 16, 16), 4, PAPER_BASE)
    centres = torch.tensor([[20.3, 30.0, 25.7], [30.1, 40.2, 32.0], [20.9, 30.4, 40.2], [40.0, 40.0, 32.0],
                            [50.5, 35.0, 33.3]])
    sizes = torch.tensor([14.0, 24, 14, 24, 24])[:, None].expand(5, 3)
    gt = torch.cat([centres, sizes], dim=1)
    labels, matched = label_anchors(anchors, gt, torch.arange(5), Matcher(0.5, 0.25))
    for k in range(5):
        assert (labels == k + 1).sum() >= 1
    assert (labels == 0).sum() > 0.9 * len(labels)
    iou = box_iou(gt, anchors)
    pos = labels > 0
    assert torch.all(iou.max(0).values[labels == 0] < 0.25)
    assert torch.equal(labels[pos] - 1, matched[pos])  # class k is gt k here


def make_labels(n_pos: int, n_neg: int, n_ign: int, seed: int = 0) -> torch.Tensor:
    lab = torch.cat([torch.randint(1, 6, (n_pos,)), torch.zeros(n_neg, dtype=torch.long),
                     torch.full((n_ign,), -1)])
    return lab[torch.randperm(len(lab), generator=torch.Generator().manual_seed(seed))]


def test_sample_anchors_counts_and_labels() -> None:
    g = torch.Generator().manual_seed(0)
    lab = make_labels(10, 5000, 50)
    pos, neg = sample_anchors(lab, 64, 0.25, g)
    assert len(pos) == 10 and len(neg) == 54  # all 10 positives (< 16), the rest negatives
    assert torch.all(lab[pos] > 0) and torch.all(lab[neg] == 0)
    assert len(set(neg.tolist())) == 54
    lab = make_labels(100, 5000, 50)
    pos, neg = sample_anchors(lab, 64, 0.25, g)
    assert len(pos) == 16 and len(neg) == 48 and len(set(pos.tolist())) == 16
    lab = make_labels(2, 5, 50)  # too few negatives
    pos, neg = sample_anchors(lab, 64, 0.25, g)
    assert len(pos) == 2 and len(neg) == 5
    # reproducible with the same seed, different with another
    a = sample_anchors(lab := make_labels(30, 100000, 10), 256, 0.5, torch.Generator().manual_seed(3))
    b = sample_anchors(lab, 256, 0.5, torch.Generator().manual_seed(3))
    c = sample_anchors(lab, 256, 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


def test_negative_sampling_is_uniform() -> None:
    g = torch.Generator().manual_seed(1)
    lab = torch.zeros(200, dtype=torch.long)
    counts = torch.zeros(200)
    for _ in range(2000):
        _, neg = sample_anchors(lab, 10, 0.0, g)  # 8 * 10 < 200: the oversampling path
        assert len(set(neg.tolist())) == 10
        counts[neg] += 1
    expected = 2000 * 10 / 200  # 100 per index
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 300  # 199 degrees of freedom: mean 199, sd 20


def test_hard_negatives() -> None:
    g = torch.Generator().manual_seed(0)
    lab = torch.zeros(1000, dtype=torch.long)
    lab[:5] = 1
    scores = torch.rand(1000, generator=g)
    scores[500:520] = 10.0  # the 20 hardest negatives
    pos, neg = sample_anchors(lab, 45, 0.2, g, hard_negative_scores=scores, hard_fraction=0.5)
    assert len(pos) == 5 and len(neg) == 40
    assert set(range(500, 520)) <= set(neg.tolist())
    assert len(set(neg.tolist())) == 40 and torch.all(lab[neg] == 0)


def test_matcher_min_positives_takes_the_k_best_above_low() -> None:
    iou = torch.tensor([
        [0.10, 0.30, 0.28, 0.00, 0.27, 0.20],  # best 0.30; the next two reach low = 0.25
        [0.00, 0.00, 0.00, 0.45, 0.00, 0.60],  # already positive above 0.5; 0.45 is its 2nd best
    ])
    one = Matcher(0.5, 0.25)(iou)
    assert one.tolist() == [-1, 0, -2, -2, -2, 1]
    three = Matcher(0.5, 0.25, min_positives=3)(iou)
    # gt 0: anchors 1, 2, 4 (0.30, 0.28, 0.27); gt 1: anchors 5, 3 (0.20 of anchor 5 for gt 0 is lower)
    assert three.tolist() == [-1, 0, 0, 1, 0, 1]
    # the k best must still reach `low`; the single best is matched whatever its IoU
    low = torch.tensor([[0.10, 0.20, 0.05]])
    assert Matcher(0.5, 0.25, min_positives=3)(low).tolist() == [-1, 0, -1]
    with pytest.raises(ValueError):
        Matcher(0.5, 0.25, min_positives=0)
