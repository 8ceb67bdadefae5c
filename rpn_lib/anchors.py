"""Anchors (Sec. 2.2) and their labels for training (Sec. 3).

* :func:`anchor_shapes` and :func:`anchor_grid` place ``A = 4^3 = 64`` anchors (or only the 4
  cubes, ``layout="cubes"``) on every cell of the feature map; :func:`flatten_head_output` puts
  the RPN head's outputs in the same order, so that row ``n`` of the head output always
  belongs to anchor ``n``.
* :class:`Matcher` and :func:`label_anchors` mark each anchor positive (with its landmark
  class), negative or ignored from its IoU with the ground-truth boxes.
* :func:`sample_anchors` draws the fixed-size minibatch of anchors that enters the loss.

Boxes follow the library convention ``(cz, cy, cx, d, h, w)`` in voxels (:mod:`rpn_lib.boxes`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from rpn_lib.boxes import box_iou
from rpn_lib.presets import ANCHOR_LAYOUTS, Preset

__all__ = [
    "anchor_shapes", "anchor_grid", "preset_anchor_grid", "flatten_head_output", "Matcher", "label_anchors",
    "sample_anchors",
]


def anchor_shapes(base_sizes_vox: Sequence[float], dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None, layout: str = "all") -> torch.Tensor:
    """The anchor shapes of one feature cell (Sec. 2.2).

    ``layout="all"`` (the paper): every combination of the base sizes along the three axes.
    With the paper's base sizes ``{13, 16, 20, 28}`` this gives ``4^3 = 64`` shapes, from
    cubes (13^3 ... 28^3) to flat and elongated boxes (13 x 28 x 13 ...). Order: anchor
    ``a = (i_d * L + i_h) * L + i_w`` has shape ``(base[i_d], base[i_h], base[i_w])`` with
    ``L = len(base_sizes_vox)``, i.e. ``itertools.product(base, base, base)``: the last axis
    (w) varies fastest.

    ``layout="cubes"`` (a deviation, ``Preset.anchor_layout``): only the ``L`` cubes
    ``(base[i], base[i], base[i])``, in the order of the base sizes. The landmark boxes are
    cubes, so the elongated shapes add little overlap (over random box centres, an eye box's
    best anchor IoU averages about 0.65 with the 4 cubes and 0.67 with all 64 shapes on the
    paper's grid: chapter *Anchors*), while the head has 16 times fewer outputs to learn from
    the same positives.

    Args:
        base_sizes_vox: ``L`` edge lengths in voxels (of the model grid).
        layout: ``"all"`` or ``"cubes"``.

    Returns:
        ``(L^3, 3)`` (``"all"``) or ``(L, 3)`` (``"cubes"``) anchor sizes as ``d, h, w`` in voxels.
    """
    base = [float(s) for s in base_sizes_vox]
    if not base or any(s <= 0 for s in base):
        raise ValueError(f"base sizes must be positive, got {base_sizes_vox}")
    if layout not in ANCHOR_LAYOUTS:
        raise ValueError(f"layout must be one of {ANCHOR_LAYOUTS}, got {layout!r}")
    shapes = [(s, s, s) for s in base] if layout == "cubes" else list(itertools.product(base, base, base))
    return torch.tensor(shapes, dtype=dtype, device=device)


def anchor_grid(feature_shape: Sequence[int], stride: int, base_sizes_vox: Sequence[float],
                device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                layout: str = "all") -> torch.Tensor:
    """All anchors of a feature map, in the order of :func:`flatten_head_output`.

    Feature cell ``(i0, i1, i2)`` covers the input voxels ``[i * stride, (i + 1) * stride)``
    along each axis. Choice: its anchors are centred on the centre of that block,
    ``i * stride + (stride - 1) / 2`` (1.5, 5.5, 9.5 ... for stride 4), because voxel centres
    sit at integer coordinates. (MONAI and torchvision put them at ``i * stride + stride // 2``,
    half a voxel further.)

    Order: anchor ``a`` of cell ``(i0, i1, i2)`` is row ``((i0 * f1 + i1) * f2 + i2) * A + a``,
    with ``a`` indexing :func:`anchor_shapes`.

    Args:
        feature_shape: ``(f0, f1, f2)`` cells of the feature map.
        stride: input voxels per feature cell along each axis (4 in the paper's network).
        base_sizes_vox: anchor base sizes in voxels (see :func:`anchor_shapes`).
        layout: ``"all"`` (the paper's ``L^3`` shapes) or ``"cubes"`` (see :func:`anchor_shapes`).

    Returns:
        ``(f0 * f1 * f2 * A, 6)`` anchors as ``cz, cy, cx, d, h, w`` in input voxels.
    """
    if len(feature_shape) != 3 or any(int(f) < 1 for f in feature_shape):
        raise ValueError(f"feature_shape must be three positive sizes, got {feature_shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    shapes = anchor_shapes(base_sizes_vox, dtype=dtype, device=device, layout=layout)  # (A, 3)
    a = shapes.shape[0]
    axes = [torch.arange(int(f), dtype=dtype, device=device) * stride + (stride - 1) / 2 for f in feature_shape]
    centres = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 1, 3)  # (F, 1, 3)
    n_cells = centres.shape[0]
    return torch.cat([centres.expand(n_cells, a, 3), shapes[None].expand(n_cells, a, 3)], dim=-1).reshape(-1, 6)


def preset_anchor_grid(feature_shape: Sequence[int], stride: int, preset: Preset,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """:func:`anchor_grid` with a preset's base sizes (:attr:`~rpn_lib.presets.Preset.anchor_base_vox`) and
    layout (:attr:`~rpn_lib.presets.Preset.anchor_layout`): ``(f0 * f1 * f2 * preset.num_anchors, 6)``."""
    return anchor_grid(feature_shape, stride, preset.anchor_base_vox, device=device, layout=preset.anchor_layout)


def flatten_head_output(x: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """Reorder a head output to one row per anchor, in :func:`anchor_grid` order.

    The head's 1x1x1 conv produces ``(B, A * C, f0, f1, f2)`` whose channel ``a * C + c`` is
    value ``c`` of anchor ``a``. It is reshaped to ``(B, A, C, f0, f1, f2)``, permuted to
    ``(B, f0, f1, f2, A, C)`` and reshaped to ``(B, f0 * f1 * f2 * A, C)``: row
    ``((i0 * f1 + i1) * f2 + i2) * A + a``, exactly the row of that anchor in
    :func:`anchor_grid`.

    Args:
        x: ``(B, A * C, f0, f1, f2)``.
        num_anchors: ``A``.

    Returns:
        ``(B, f0 * f1 * f2 * A, C)``.
    """
    if x.ndim != 5:
        raise ValueError(f"expected a (B, A*C, f0, f1, f2) tensor, got shape {tuple(x.shape)}")
    b, ac, f0, f1, f2 = x.shape
    if ac % num_anchors:
        raise ValueError(f"{ac} channels are not a multiple of {num_anchors} anchors")
    c = ac // num_anchors
    return x.view(b, num_anchors, c, f0, f1, f2).permute(0, 3, 4, 5, 1, 2).reshape(b, f0 * f1 * f2 * num_anchors, c)


class Matcher:
    """Match each anchor to a ground truth from their IoU matrix (Sec. 3).

    An anchor is

    * matched to ground truth ``m`` (positive) if its best IoU, with ``m``, is ``> high``;
    * ``BELOW_LOW_THRESHOLD`` (negative) if its IoU is ``< low`` with every ground truth;
    * ``BETWEEN_THRESHOLDS`` (ignored) otherwise, i.e. ``low <= IoU <= high``.

    Choice (the paper says positive "above 0.5" and ignored "0.25 <= IoU < 0.5", leaving
    IoU = 0.5 undefined): positive needs IoU strictly above ``high``; exactly ``high`` is
    ignored. (torchvision's Matcher makes ``>= high`` positive.)

    With ``allow_low_quality_matches`` the anchor(s) with the highest IoU for a ground truth
    are positive for it as well ("or the highest IoU with the ground truth"), so that every
    ground truth has a positive even when no anchor reaches ``high``. Ties: every anchor
    that ties for the maximum is matched, as in torchvision. For example, with IoUs

        gt 0: [0.10, 0.30, 0.30, 0.00]      best 0.30: anchors 1 and 2 both become positive
        gt 1: [0.00, 0.00, 0.20, 0.45]      best 0.45: anchor 3 becomes positive

    Two choices differ from torchvision: (1) such an anchor is matched to the ground truth it
    is the best anchor *for* (torchvision re-uses the anchor's own arg-max, which can hand
    the only good anchor of one box to a neighbour), and when it is the best for several,
    to the one with the highest IoU; this match also overrides a threshold match to another
    box; (2) a ground truth whose best IoU is 0 (outside every anchor) matches nothing
    (torchvision would match every anchor, since all tie at 0).

    Args:
        high: positive threshold (paper: 0.5).
        low: negative threshold (paper: 0.25), ``low <= high``.
        allow_low_quality_matches: also match each ground truth's best anchor(s).
        min_positives: with ``allow_low_quality_matches``, each ground truth's ``k`` best
            anchors (ties included) are matched instead of only its best, provided their IoU is
            at least ``low`` (the best one is matched whatever its IoU). ``1`` is the paper's
            rule. Used by ``cpu-small`` (``Preset.min_positives``): on its grid, twice as coarse
            as the paper's, an 18 mm eye box often has a single anchor above IoU 0.25 and that
            one positive is lost among the others (a deviation, stated in the preset).
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high: float, low: float, allow_low_quality_matches: bool = True,
                 min_positives: int = 1) -> None:
        if not 0 <= low <= high <= 1:
            raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
        if min_positives < 1:
            raise ValueError(f"min_positives must be >= 1, got {min_positives}")
        self.high = float(high)
        self.low = float(low)
        self.allow_low_quality_matches = allow_low_quality_matches
        self.min_positives = int(min_positives)

    def __call__(self, iou: torch.Tensor) -> torch.Tensor:
        """``iou``: ``(M, N)`` IoU of M ground truths with N anchors -> ``(N,)`` int64, the
        matched ground truth in ``0..M-1`` or one of the two negative sentinels."""
        if iou.ndim != 2:
            raise ValueError(f"iou must be an (M, N) matrix, got shape {tuple(iou.shape)}")
        m, n = iou.shape
        if m == 0:
            return torch.full((n,), self.BELOW_LOW_THRESHOLD, dtype=torch.long, device=iou.device)
        vals, matches = iou.max(dim=0)
        matches = matches.clone()
        matches[vals <= self.high] = self.BETWEEN_THRESHOLDS
        matches[vals < self.low] = self.BELOW_LOW_THRESHOLD
        if self.allow_low_quality_matches and n > 0:
            best = iou.max(dim=1).values  # (M,)
            is_best = (iou == best[:, None]) & (best[:, None] > 0)  # (M, N)
            if self.min_positives > 1:
                kth = iou.topk(min(self.min_positives, n), dim=1).values[:, -1:]  # (M, 1)
                is_best |= (iou >= kth) & (iou >= self.low) & (iou > 0)
            idx = is_best.any(dim=0).nonzero().squeeze(1)
            if idx.numel():
                sub = torch.where(is_best[:, idx], iou[:, idx], torch.full_like(iou[:, idx], -1.0))
                matches[idx] = sub.argmax(dim=0)
        return matches


def label_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor, gt_classes: torch.Tensor,
                  matcher: Matcher, iou: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training labels of every anchor (Sec. 3).

    Args:
        anchors: ``(N, 6)`` anchors.
        gt_boxes: ``(M, 6)`` ground-truth boxes (five landmark-centred boxes per volume).
        gt_classes: ``(M,)`` landmark index of each box in ``0..K-1``.
        matcher: thresholds and matching rule.
        iou: optional precomputed ``box_iou(gt_boxes, anchors)``, ``(M, N)``.

    Returns:
        ``labels`` ``(N,)`` int64: ``-1`` ignored, ``0`` background, ``k + 1`` landmark ``k``;
        ``matched_gt`` ``(N,)`` int64 index into ``gt_boxes``, meaningful where ``labels > 0``
        (0 elsewhere).
    """
    n = anchors.shape[0]
    if gt_boxes.shape[0] != gt_classes.shape[0]:
        raise ValueError("gt_boxes and gt_classes must have the same length")
    if gt_boxes.shape[0] == 0:
        zeros = torch.zeros(n, dtype=torch.long, device=anchors.device)
        return zeros, zeros.clone()
    if iou is None:
        iou = box_iou(gt_boxes.to(device=anchors.device, dtype=anchors.dtype), anchors)  # (M, N)
    matches = matcher(iou)
    matched = matches.clamp(min=0)
    cls = gt_classes.to(device=anchors.device, dtype=torch.long)
    labels = torch.where(matches >= 0, cls[matched] + 1,
                         torch.where(matches == Matcher.BELOW_LOW_THRESHOLD, 0, -1))
    return labels, matched


def allowed_classes(iou: torch.Tensor, labels: torch.Tensor, gt_classes: torch.Tensor, low: float,
                    num_classes: int) -> torch.Tensor:
    """Which classes each anchor may take in the loss: the per-class ignore band.

    The paper (Sec. 3) ignores an anchor whose best IoU lies between the two thresholds. The
    five landmark boxes of a face overlap (the eyes, the eyebrow and the nose tip lie within
    a few voxels of each other), so that band covers most of the face: an anchor in the band
    of the nose box is then never told that it is *not* an eye, and the eye class learns to
    fire there (measured: the top-scoring left-eye anchor of a training volume was such an
    ignored anchor, with IoU 0 with the left eye). Choice (``Preset.ambiguous = "partial"``):
    an anchor that is not positive may be background or any landmark whose box it overlaps
    with IoU >= ``low``, and nothing else; the loss is then ``-log`` of the summed
    probability of its allowed classes (:func:`rpn_lib.losses.classification_loss`). For a
    plain negative this is the usual cross-entropy against background; for a positive, the
    usual cross-entropy against its class.

    Args:
        iou: ``(M, N)`` IoU of the M ground-truth boxes with the N anchors.
        labels: ``(N,)`` from :func:`label_anchors`.
        gt_classes: ``(M,)`` landmark index of each box in ``0..K-1``.
        low: the negative threshold (``Preset.neg_iou``).
        num_classes: ``K + 1``.

    Returns:
        ``(N, K + 1)`` bool, column 0 background.
    """
    n = labels.shape[0]
    allowed = torch.zeros(n, num_classes, dtype=torch.bool, device=labels.device)
    pos = labels > 0
    allowed[:, 0] = ~pos
    if iou.shape[0]:
        near = (iou >= low) & ~pos[None, :]  # (M, N)
        for j, c in enumerate(gt_classes.tolist()):
            allowed[:, c + 1] |= near[j]
    allowed[pos, labels[pos]] = True
    return allowed


def merge_classes(allowed: torch.Tensor, columns: tuple[int, ...]) -> torch.Tensor:
    """Let an anchor that may take one of ``columns`` take any of them (one class in the loss).

    With ``Preset.eye_sides = "geometry"`` the two eye columns are merged: an anchor on either
    eye is then rewarded for the summed probability of the two eye classes, so the network
    learns "an eye" without having to tell the sides apart (:mod:`rpn_lib.handedness` names
    them at inference).

    Args:
        allowed: ``(N, K + 1)`` bool from :func:`allowed_classes` (or :func:`labels_as_allowed`).
        columns: the detector classes (columns) to merge, e.g. ``(1, 3)`` for the two eyes.

    Returns:
        a new ``(N, K + 1)`` bool tensor.
    """
    out = allowed.clone()
    cols = list(columns)
    out[:, cols] = allowed[:, cols].any(dim=1, keepdim=True)
    return out


def labels_as_allowed(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(N,)`` labels -> ``(N, K + 1)`` bool with exactly the labelled class allowed (none
    for ignored rows): the paper's plain cross-entropy in the form :func:`merge_classes` takes."""
    allowed = torch.zeros(labels.shape[0], num_classes, dtype=torch.bool, device=labels.device)
    keep = labels >= 0
    allowed[keep, labels[keep]] = True
    return allowed


def _random_subset(n: int, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """``k`` distinct indices drawn uniformly from ``range(n)`` (CPU, int64), random order.

    For ``k`` much smaller than ``n`` (hundreds of negatives among millions of anchors) a full
    permutation would cost ~50 ms per volume; instead draw ``2k + 64`` indices with
    replacement, keep the distinct ones and take ``k`` of them in random order. The result is
    still uniform over the ``k``-subsets: the set drawn is exchangeable, and choosing
    uniformly within it preserves that. Falls back to a permutation when too few are distinct.
    """
    k = min(k, n)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    if 8 * k < n:
        draw = torch.unique(torch.randint(0, n, (2 * k + 64,), generator=generator))
        if draw.numel() >= k:
            return draw[torch.randperm(draw.numel(), generator=generator)[:k]]
    return torch.randperm(n, generator=generator)[:k]


def sample_anchors(labels: torch.Tensor, num: int, max_pos_fraction: float,
                   generator: torch.Generator | None = None,
                   hard_negative_scores: torch.Tensor | None = None,
                   hard_fraction: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the anchors that enter the loss (NOTES item 8).

    Choice: a fixed-size random minibatch as in Faster R-CNN's RPN: at most
    ``int(num * max_pos_fraction)`` positives drawn at random from all positives, the rest of
    the ``num`` filled with negatives drawn uniformly at random (fewer if there are not
    enough). Ignored anchors (label -1) are never drawn. A 128^3 volume has 2.1 M anchors
    and a few dozen positives; without sampling the negatives would swamp the loss.

    Optional hard-negative mining: given ``hard_negative_scores`` (``(N,)``, e.g. the
    detached foreground probability of each anchor), ``round(hard_fraction * n_neg)`` of the
    negatives are the highest-scoring ones and the rest are drawn at random among the others.

    Args:
        labels: ``(N,)`` from :func:`label_anchors` (-1 ignore, 0 background, > 0 positive).
        num: anchors per volume; 0 takes every positive and every negative (dense, no
            sampling: for the focal loss, ``Preset.focal_gamma > 0``).
        max_pos_fraction: upper bound on the positives' share of ``num``.
        generator: random generator (CPU) for reproducible draws.
        hard_negative_scores: optional ``(N,)`` scores for hard-negative mining.
        hard_fraction: share of the negatives that are hard ones, in [0, 1].

    Returns:
        ``(pos_idx, neg_idx)``: int64 indices into ``labels`` on its device.
    """
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if not 0 <= max_pos_fraction <= 1 or num < 0:
        raise ValueError("need num >= 0 and 0 <= max_pos_fraction <= 1")
    dev = labels.device
    lab = labels.cpu()
    pos = (lab > 0).nonzero().squeeze(1)
    neg = (lab == 0).nonzero().squeeze(1)
    if num == 0:  # dense: every labelled anchor (for the focal loss)
        return pos.to(dev), neg.to(dev)
    n_pos = min(pos.numel(), int(num * max_pos_fraction))
    n_neg = min(neg.numel(), num - n_pos)
    pos_idx = pos[_random_subset(pos.numel(), n_pos, generator)]
    if hard_negative_scores is None or n_neg == 0:
        neg_idx = neg[_random_subset(neg.numel(), n_neg, generator)]
    else:
        if not 0 <= hard_fraction <= 1:
            raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
        s = hard_negative_scores.detach().cpu().reshape(-1)[neg]
        n_hard = int(round(hard_fraction * n_neg))
        hard = torch.topk(s, n_hard).indices
        rest = torch.ones(neg.numel(), dtype=torch.bool)
        rest[hard] = False
        others = rest.nonzero().squeeze(1)
        rand = others[_random_subset(others.numel(), n_neg - n_hard, generator)]
        neg_idx = neg[torch.cat([hard, rand])]
    return pos_idx.to(dev), neg_idx.to(dev)
