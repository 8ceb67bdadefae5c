"""3D boxes: conversions, volume, IoU, the box coding of Eq. 1, and non-maximum suppression.

Box convention (the library's only one, see :mod:`rpn_lib`): a box is a row
``(cz, cy, cx, d, h, w)`` of an ``(N, 6)`` tensor, centre and size in voxel units, in the axis
order of the volume array (axis 0, 1, 2). A box covers the continuous interval
``[c - s/2, c + s/2]`` along each axis, so its volume is ``d * h * w`` (no "+1" convention:
boxes are continuous, voxel centres sit at integer coordinates). Corner form, used only
inside this module and for exchanges with other libraries, is
``(z0, y0, x0, z1, y1, x1)``: the lower corner, then the upper corner (MONAI's "xyzxyz"
``StandardMode`` when its x, y, z are read as our array axes 0, 1, 2).

Everything here is torch, differentiable where it makes sense, works on any device and in
the dtype it is given (use float64 for reference computations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "cs_to_corners", "corners_to_cs", "box_volume", "box_iou", "box_iou_pairwise",
    "BoxCoder", "nms", "nms_stacked",
]


def _check_boxes(boxes: torch.Tensor, name: str = "boxes") -> None:
    if boxes.shape[-1] != 6:
        raise ValueError(f"{name} must have 6 columns (cz, cy, cx, d, h, w), got shape {tuple(boxes.shape)}")


def cs_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """Centre-size boxes ``(..., 6)`` as ``cz, cy, cx, d, h, w`` -> corners ``(..., 6)`` as
    ``z0, y0, x0, z1, y1, x1`` (same units, voxels)."""
    _check_boxes(boxes)
    c, s = boxes[..., :3], boxes[..., 3:]
    return torch.cat([c - s / 2, c + s / 2], dim=-1)


def corners_to_cs(corners: torch.Tensor) -> torch.Tensor:
    """Corners ``(..., 6)`` as ``z0, y0, x0, z1, y1, x1`` -> centre-size ``(..., 6)`` as
    ``cz, cy, cx, d, h, w``. Inverse of :func:`cs_to_corners`."""
    _check_boxes(corners, "corners")
    lo, hi = corners[..., :3], corners[..., 3:]
    return torch.cat([(lo + hi) / 2, hi - lo], dim=-1)


def box_volume(boxes: torch.Tensor) -> torch.Tensor:
    """Volume ``d * h * w`` of boxes ``(N, 6)`` -> ``(N,)``, in voxels^3."""
    _check_boxes(boxes)
    return boxes[..., 3] * boxes[..., 4] * boxes[..., 5]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every pair: ``a`` ``(N, 6)`` x ``b`` ``(M, 6)`` -> ``(N, M)``.

    Leading dimensions are batch dimensions: ``(..., N, 6)`` x ``(..., M, 6)`` ->
    ``(..., N, M)``, each batch element on its own (broadcast as in ``torch.matmul``).
    The intersection is built one axis at a time, so the largest temporary is one ``(N, M)``
    matrix (labelling 2.1 M anchors against 5 boxes needs no ``(N, M, 3)`` array); the
    corners are computed once per set (few operations: at the NMS of a few hundred boxes the
    cost is the number of tensor operations, not their size). A pair whose union is empty
    (two boxes of zero volume) has IoU 0.
    """
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    dtype = torch.promote_types(a.dtype, b.dtype)
    # corners as (..., 6, N) rows: each coordinate contiguous, so the broadcast min / max
    # below run on contiguous rows (a strided operand would take a slow, unvectorised loop)
    ca = cs_to_corners(a.to(dtype)).transpose(-2, -1).contiguous()[..., :, :, None]  # (..., 6, N, 1)
    cb = ca.transpose(-2, -1) if b is a else cs_to_corners(b.to(dtype)).transpose(-2, -1).contiguous()[..., :, None, :]
    inter: torch.Tensor | None = None
    for ax in range(3):
        hi = torch.minimum(ca[..., ax + 3, :, :], cb[..., ax + 3, :, :])
        side = hi.sub_(torch.maximum(ca[..., ax, :, :], cb[..., ax, :, :])).clamp_(min=0)
        inter = side if inter is None else inter.mul_(side)
    assert inter is not None
    vol_a = box_volume(a.to(dtype))[..., :, None]
    vol_b = vol_a.transpose(-2, -1) if b is a else box_volume(b.to(dtype))[..., None, :]
    union = (vol_a + vol_b).sub_(inter)
    return inter / union.clamp_(min=torch.finfo(dtype).tiny)


def box_iou_pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows: ``a`` ``(N, 6)``, ``b`` ``(N, 6)`` -> ``(N,)`` (``a[i]`` vs ``b[i]``)."""
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"box_iou_pairwise needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    ca, cb = cs_to_corners(a), cs_to_corners(b)
    side = (torch.minimum(ca[..., 3:], cb[..., 3:]) - torch.maximum(ca[..., :3], cb[..., :3])).clamp(min=0)
    inter = side.prod(dim=-1)
    union = box_volume(a) + box_volume(b) - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


class BoxCoder:
    """Eq. 1 (Sec. 2.2): the one place where box deltas and boxes are converted.

    A box is obtained from an anchor ``(za, ya, xa, da, ha, wa)`` and deltas
    ``(tz, ty, tx, td, th, tw)`` as::

        z = za + tz * da      d = da * exp(td)
        y = ya + ty * ha      h = ha * exp(th)
        x = xa + tx * wa      w = wa * exp(tw)

    The delta order follows the box order (centre first, then size; axis 0, 1, 2); the paper
    writes the same six numbers as ``(tx, ty, tz, tw, th, td)``.

    Args:
        weights: per-delta normalisation ``(wz, wy, wx, wd, wh, ww)`` as in Faster R-CNN:
            :meth:`encode` multiplies the Eq. 1 deltas by them and :meth:`decode` divides, so
            the network regresses targets of a convenient scale. The default ``1`` is Eq. 1
            exactly.
        bbox_xform_clip: size deltas are clamped to at most this value before ``exp`` in
            :meth:`decode` (default ``log(1000 / 16)``, torchvision's value: a box may grow at
            most 62.5 times its anchor). Without it an untrained or diverging network can
            output a delta of a few hundred, ``exp`` overflows to ``inf``, and the IoU,
            the IoU-balanced weights and every gradient through them become NaN.
    """

    def __init__(self, weights: Sequence[float] = (1.0,) * 6,
                 bbox_xform_clip: float = math.log(1000.0 / 16)) -> None:
        if len(weights) != 6 or any(w <= 0 for w in weights):
            raise ValueError(f"weights must be 6 positive numbers, got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def _w(self, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.weights, dtype=like.dtype, device=like.device)

    @property
    def _unit_weights(self) -> bool:
        """All weights 1 (Eq. 1 exactly): scaling by them is skipped (the same numbers, fewer operations)."""
        return all(w == 1.0 for w in self.weights)

    def encode(self, anchors: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Deltas that turn ``anchors`` ``(N, 6)`` into ``gt`` ``(N, 6)`` -> ``(N, 6)`` as
        ``(tz, ty, tx, td, th, tw)`` (Eq. 1 inverted, times ``weights``). Sizes must be > 0."""
        _check_boxes(anchors, "anchors")
        _check_boxes(gt, "gt")
        dtype = torch.promote_types(anchors.dtype, gt.dtype)
        anchors, gt = anchors.to(dtype), gt.to(dtype)
        a_c, a_s = anchors[..., :3], anchors[..., 3:]
        t = torch.cat([(gt[..., :3] - a_c) / a_s, torch.log(gt[..., 3:] / a_s)], dim=-1)
        return t if self._unit_weights else t * self._w(t)

    def decode(self, anchors: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """Boxes ``(N, 6)`` from ``anchors`` ``(N, 6)`` and ``deltas`` ``(N, 6)`` (Eq. 1); size
        deltas are clamped at ``bbox_xform_clip`` first (see the class docstring)."""
        _check_boxes(anchors, "anchors")
        _check_boxes(deltas, "deltas")
        dtype = torch.promote_types(anchors.dtype, deltas.dtype)
        anchors, deltas = anchors.to(dtype), deltas.to(dtype)
        t = deltas if self._unit_weights else deltas / self._w(deltas)
        a_c, a_s = anchors[..., :3], anchors[..., 3:]
        # Clamp before exp: a large size delta would overflow to inf (see class docstring).
        t_s = torch.clamp(t[..., 3:], max=self.bbox_xform_clip)
        return torch.cat([a_c + t[..., :3] * a_s, a_s * torch.exp(t_s)], dim=-1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int | None = None) -> torch.Tensor:
    """Greedy non-maximum suppression of 3D boxes.

    Boxes are visited from the highest score down (ties: lower index first); a box is kept
    unless a box kept before it overlaps it with IoU ``> iou_threshold`` (torchvision's rule).
    The IoU matrix of all pairs is computed once, so this suits the few hundred candidates of
    inference, not millions of boxes.

    Args:
        boxes: ``(N, 6)`` as ``cz, cy, cx, d, h, w``.
        scores: ``(N,)``.
        iou_threshold: suppression threshold in [0, 1].
        max_keep: stop once this many boxes are kept (the result is then the first
            ``max_keep`` of the full greedy NMS); None keeps every survivor.

    Returns:
        ``(K,)`` int64 indices into ``boxes`` of the kept boxes, by decreasing score.
    """
    _check_boxes(boxes)
    if boxes.ndim != 2 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"need boxes (N, 6) and scores (N,), got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    return nms_stacked(boxes[None], scores[None], iou_threshold, max_keep)[0]


def nms_stacked(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                max_keep: int | None = None, presorted: bool = False) -> list[torch.Tensor]:
    """:func:`nms` of ``C`` independent sets of boxes at once (e.g. one set per class).

    The ``C`` sorts and IoU matrices are single batched tensor operations and one transfer;
    only the greedy sweeps run one set after the other. Each set's result is exactly
    :func:`nms` of that set.

    Args:
        boxes: ``(C, N, 6)`` as ``cz, cy, cx, d, h, w``.
        scores: ``(C, N)``.
        iou_threshold: suppression threshold in [0, 1].
        max_keep: at most this many boxes kept per set; None keeps every survivor.
        presorted: each set's ``scores`` are already in decreasing order (ties: lower index
            first, as :func:`rpn_lib.candidates.top_class_probabilities` gives them), so the
            sort is skipped; the result is then that of a sort only if this holds.

    Returns:
        ``C`` int64 tensors: the kept indices into ``boxes[c]``, by decreasing score.
    """
    _check_boxes(boxes)
    if boxes.ndim != 3 or scores.shape != boxes.shape[:2]:
        raise ValueError(f"need boxes (C, N, 6) and scores (C, N), got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    sets, n = scores.shape
    if n == 0:
        return [torch.zeros(0, dtype=torch.long, device=boxes.device) for _ in range(sets)]
    if presorted:
        ordered, order_np = boxes, None
    else:
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (C, N)
        ordered = torch.gather(boxes, 1, order[..., None].expand(-1, -1, 6))
        order_np = order.cpu().numpy()
    # One transfer of the overlap matrices, then sequential sweeps (greedy NMS is sequential;
    # a NumPy sweep: indexing torch tensors element by element costs microseconds each)
    over = (box_iou(ordered, ordered) > iou_threshold).cpu().numpy()  # (C, N, N)
    keeps = [_greedy_sweep(over[c], max_keep) for c in range(sets)]
    if order_np is not None:
        keeps = [order_np[c][keep] for c, keep in enumerate(keeps)]
    return [torch.from_numpy(keep).to(boxes.device) for keep in keeps]


def _greedy_sweep(over: np.ndarray, max_keep: int | None) -> np.ndarray:
    """Positions kept by greedy NMS, given ``over[i, j]``: box ``i`` suppresses box ``j``
    (boxes in visiting order)."""
    n = over.shape[0]
    removed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for i in range(n):
        if max_keep is not None and len(keep) >= max_keep:
            break
        if removed[i]:
            continue
        keep.append(i)
        removed |= over[i]
    return np.asarray(keep, dtype=np.int64)
