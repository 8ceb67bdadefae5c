"""From the RPN's per-anchor outputs to a few scored candidate boxes per landmark (Sec. 2.3).

The graph prior chooses among the top-2 boxes of each class; this module produces them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rpn_lib.boxes import BoxCoder, nms_stacked
from rpn_lib.landmarks import EYES

__all__ = ["select_candidates", "top_class_probabilities"]


def select_candidates(cls_logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, coder: BoxCoder,
                      pre_nms_top_n: int = 64, nms_iou: float = 0.3,
                      top_k: int = 2, pool_eyes: bool = False) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Best ``top_k`` boxes of each landmark class of one volume.

    Steps: softmax over the ``K + 1`` classes; for each landmark class, the ``pre_nms_top_n``
    anchors of highest probability (:func:`top_class_probabilities`, before any box is
    decoded: only ``pre_nms_top_n * K`` of the millions of anchors are decoded with Eq. 1);
    class-wise NMS at ``nms_iou``; the first ``top_k`` survivors.

    Choice (NOTES item 9): NMS runs before the top-k are taken, so that the two candidates of
    a class are two different places rather than two near-identical boxes of one place.

    Args:
        cls_logits: ``(N, K + 1)`` class logits of every anchor (class 0 background), any
            float dtype (bf16 under autocast: only what is needed is converted to float32).
        deltas: ``(N, 6)`` box deltas of every anchor, any float dtype.
        anchors: ``(N, 6)`` the anchors (:func:`rpn_lib.anchors.anchor_grid`).
        coder: the Eq. 1 box coder.
        pre_nms_top_n: anchors per class considered (and decoded) before NMS.
        nms_iou: IoU above which a lower-scoring box of the same class is suppressed.
        top_k: candidates kept per class.
        pool_eyes: ``Preset.eye_sides == "geometry"``: the two eye classes' probabilities are
            summed into one eye score, and both eye classes get the same candidates, the
            best places of "an eye" (:mod:`rpn_lib.handedness` names the sides later).

    Returns:
        ``K`` tuples, one per landmark class ``k`` (detector class ``k + 1``):
        ``boxes`` ``(k', 6)`` decoded boxes, ``scores`` ``(k',)`` class probabilities by
        decreasing value, ``anchor_idx`` ``(k',)`` int64 rows of the anchors; ``k' <= top_k``
        (smaller only when fewer than ``top_k`` anchors exist).
    """
    if cls_logits.ndim != 2 or deltas.shape != (cls_logits.shape[0], 6) or anchors.shape != deltas.shape:
        raise ValueError(f"need cls_logits (N, K+1), deltas (N, 6), anchors (N, 6); got "
                         f"{tuple(cls_logits.shape)}, {tuple(deltas.shape)}, {tuple(anchors.shape)}")
    n, k1 = cls_logits.shape
    top_n = min(pre_nms_top_n, n)
    values, indices, searched = _top_n_per_class(cls_logits, top_n, pool_eyes)  # (C, top_n) each
    flat = indices.reshape(-1)
    decoded = coder.decode(anchors[flat].float(), deltas[flat].float()).reshape(len(searched), top_n, 6)
    # all classes' NMS at once; values are by decreasing value, ties by position (no sort needed)
    keeps = nms_stacked(decoded, values, nms_iou, max_keep=top_k, presorted=True)
    # one gather of every class's survivors, then views per class
    rows = torch.cat([j * top_n + keep for j, keep in enumerate(keeps)])
    sizes = [len(keep) for keep in keeps]
    parts = zip(decoded.reshape(-1, 6)[rows].split(sizes), values.reshape(-1)[rows].split(sizes),
                indices.reshape(-1)[rows].split(sizes))
    by_class = dict(zip(searched, parts))
    # pooled eyes: the second eye class gets the same candidates as the first
    return [by_class[c] if c in by_class else by_class[EYES[0]] for c in range(k1 - 1)]


BLOCK_ANCHORS = 64
"""Anchors per block in :func:`top_class_probabilities` (a divisor of the anchor count is used)."""


def top_class_probabilities(cls_logits: torch.Tensor, top_n: int,
                            pool_eyes: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top_n`` anchors of highest softmax probability for each landmark class.

    The same result as ``torch.topk(torch.softmax(cls_logits, 1)[:, 1:].T, top_n, dim=1)``
    (up to the order of exactly equal probabilities, which here is by anchor index), at a
    fraction of its cost on millions of anchors:

    * the ``(N, K + 1)`` logits are regrouped as ``(N / b, K + 1, b)`` blocks of ``b`` anchors
      (a transpose of small tiles, in cache), so that the softmax over the classes runs along
      contiguous memory instead of rows of six numbers;
    * each class's top ``top_n`` is exact but found from the block maxima: the ``top_n``-th
      largest block maximum ``t`` is a lower bound of the ``top_n``-th largest value (each of
      the ``top_n`` best blocks holds a value ``>= t``), so only the values ``>= t`` (a few
      blocks' worth) are sorted instead of all ``N``.

    Args:
        cls_logits: ``(N, K + 1)`` class logits (class 0 background), any float dtype.
        top_n: anchors kept per class, ``1 <= top_n <= N``.
        pool_eyes: sum the two eye classes' probabilities (``rpn_lib.landmarks.EYES``) into
            one eye score used for both eye classes (see :func:`select_candidates`).

    Returns:
        ``values`` ``(K, top_n)`` float32 probabilities, by decreasing value, and
        ``indices`` ``(K, top_n)`` int64 anchor rows.
    """
    if cls_logits.ndim != 2 or cls_logits.shape[1] < 2:
        raise ValueError(f"need cls_logits (N, K+1) with K >= 1, got {tuple(cls_logits.shape)}")
    n, k1 = cls_logits.shape
    if not 1 <= top_n <= n:
        raise ValueError(f"top_n must be in [1, {n}], got {top_n}")
    values, indices, searched = _top_n_per_class(cls_logits, top_n, pool_eyes)
    if pool_eyes:  # the second eye class reuses the first's
        rows = [searched.index(EYES[0] if c == EYES[1] else c) for c in range(k1 - 1)]
        return values[rows], indices[rows]
    return values, indices


def _top_n_per_class(cls_logits: torch.Tensor, top_n: int,
                     pool_eyes: bool) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """:func:`top_class_probabilities` of the classes that need a search: every landmark class,
    less the second eye class when the eyes are pooled (it has the first's result). Returns
    ``values`` and ``indices`` ``(C, top_n)`` and the ``C`` landmark classes they belong to."""
    n, k1 = cls_logits.shape
    b = math.gcd(n, BLOCK_ANCHORS)
    blocks = cls_logits.reshape(n // b, b, k1).transpose(1, 2)  # (N/b, K+1, b)
    blocks = blocks.to(torch.float32, memory_format=torch.contiguous_format)
    probs = torch.softmax(blocks, dim=1)  # (N/b, K+1, b), class 0 background
    searched = list(range(k1 - 1))
    per_class = probs[:, 1:]  # (N/b, K, b), a view
    if pool_eyes:  # the eye score is the sum of the two eye classes' probabilities
        e0, e1, last = EYES[0], EYES[1], k1 - 2
        per_class[:, e0] += per_class[:, e1]
        # the second eye's row is not searched: the last class takes its place, and the
        # first K - 1 rows stay a view (no copy of the probabilities)
        if e1 != last:
            per_class[:, e1] = per_class[:, last]
            searched[e1] = last
        searched, per_class = searched[:-1], per_class[:, :-1]
    values, indices = _top_n_by_blocks(per_class, top_n)
    return values, indices, searched


def _top_n_by_blocks(v: torch.Tensor, top_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top ``top_n`` of each class of a ``(B, C, b)`` float32 array of probabilities
    (values in ``[0, 1]``; ``B`` blocks of ``b`` anchors): ``(C, top_n)`` values by decreasing
    value (ties by position) and flat positions ``block * b + column``, on ``v``'s device.

    The block maxima and the thresholds are tensor operations on ``v``'s device; the few
    blocks above a threshold (hundreds of values, not millions) are ranked in NumPy, whose
    per-call cost is a fraction of a tensor operation's at that size."""
    rows, classes, cols = v.shape
    if rows > top_n:
        row_max = v.amax(dim=2)  # (B, C)
        threshold = torch.topk(row_max.T, top_n, dim=1).values[:, -1]  # (C,)
        cand_rows_t = torch.nonzero((row_max >= threshold).any(dim=1)).squeeze(1)  # increasing
        sub = v[cand_rows_t].cpu().numpy()  # (R, C, b): the blocks that may hold a top value of some class
        cand_rows, thr = cand_rows_t.cpu().numpy(), threshold.cpu().numpy()
    else:
        sub, cand_rows, thr = v.cpu().numpy(), np.arange(rows), np.full(classes, -np.inf, dtype=np.float32)
    # the values at or above their class's threshold, in (block, class, column) order; a 1-D
    # search and integer division cost a fraction of a 3-D np.nonzero
    hits = np.flatnonzero(sub >= thr[:, None])
    r, cj = np.divmod(hits, classes * cols)
    c, j = np.divmod(cj, cols)
    vals = sub.reshape(-1)[hits]
    flat = cand_rows[r] * cols + j
    # by class, then decreasing value, in one stable sort of an exact float64 key (float32
    # values below 1 after a small integer offset); ties keep the search's order, which is by
    # increasing position within a class
    order = np.argsort(2.0 * c - vals.astype(np.float64), kind="stable")
    counts = np.bincount(c, minlength=classes)  # each >= top_n: every class has top_n values >= its threshold
    first = np.cumsum(counts) - counts
    take = order[first[:, None] + np.arange(top_n)]  # (C, top_n)
    return torch.from_numpy(vals[take]).to(v.device), torch.from_numpy(flat[take]).to(v.device)
