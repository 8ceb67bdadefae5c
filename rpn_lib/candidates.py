"""From the RPN's per-anchor outputs to a few scored candidate boxes per landmark (Sec. 2.3).

The graph prior chooses among the top-2 boxes of each class; this module produces them.
"""

from __future__ import annotations

import torch

from rpn_lib.boxes import BoxCoder, nms
from rpn_lib.landmarks import EYES

__all__ = ["select_candidates"]


def select_candidates(cls_logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, coder: BoxCoder,
                      pre_nms_top_n: int = 64, nms_iou: float = 0.3,
                      top_k: int = 2, pool_eyes: bool = False) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Best ``top_k`` boxes of each landmark class of one volume.

    Steps: softmax over the ``K + 1`` classes; for each landmark class, the ``pre_nms_top_n``
    anchors of highest probability (one ``topk`` over the ``(N, K)`` probabilities, before
    any box is decoded: only ``pre_nms_top_n * K`` of the millions of anchors are decoded
    with Eq. 1); class-wise NMS at ``nms_iou``; the first ``top_k`` survivors.

    Choice (NOTES item 9): NMS runs before the top-k are taken, so that the two candidates of
    a class are two different places rather than two near-identical boxes of one place.

    Args:
        cls_logits: ``(N, K + 1)`` class logits of every anchor (class 0 background).
        deltas: ``(N, 6)`` box deltas of every anchor.
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
    # softmax over the classes as a (K + 1, N) array: a softmax along a last axis of only six
    # entries runs row by row and took 4x longer on a CPU (same values)
    probs = torch.softmax(cls_logits.float().t().contiguous(), dim=0)[1:]  # (K, N)
    if pool_eyes:
        probs = probs.clone()
        probs[EYES[0]] = probs[EYES[0]] + probs[EYES[1]]
        probs[EYES[1]] = probs[EYES[0]]
    top_n = min(pre_nms_top_n, n)
    top = torch.topk(probs, top_n, dim=1)  # values, indices: (K, top_n)
    flat = top.indices.reshape(-1)
    decoded = coder.decode(anchors[flat].float(), deltas[flat].float()).reshape(k1 - 1, top_n, 6)
    out: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for c in range(k1 - 1):
        idx, boxes, scores = top.indices[c], decoded[c], top.values[c]
        keep = nms(boxes, scores, nms_iou, max_keep=top_k)
        out.append((boxes[keep], scores[keep], idx[keep]))
    return out
