"""RPN losses: the IoU-balanced classification loss (Eq. 2-3) and the box regression loss.

Inputs are the anchors of the sampled minibatch (:func:`rpn_lib.anchors.sample_anchors`),
one row per anchor; labels follow :func:`rpn_lib.anchors.label_anchors` (-1 ignored,
0 background, ``k + 1`` landmark ``k``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rpn_lib.boxes import BoxCoder, box_iou_pairwise

__all__ = ["iou_balanced_weights", "classification_loss", "box_regression_loss", "rpn_losses"]


def iou_balanced_weights(ious: torch.Tensor, ce: torch.Tensor, eta: float) -> torch.Tensor:
    """Eq. 3: weight of each positive anchor in the classification loss.

    ``w_i = IoU_i^eta * sum_j CE_j / sum_j (IoU_j^eta * CE_j)`` over the ``P`` positives given.
    The weights rescale the positives' loss by their localisation quality while keeping its
    total ``sum_i w_i CE_i = sum_i CE_i``.

    Choices (NOTES item 7): ``IoU_i`` is the IoU of the positive's *regressed* (decoded) box
    with its ground truth, and the weights are constants for back-propagation (computed from
    detached inputs under ``no_grad``): the loss pushes the class score, not the IoU. IoUs
    are clamped to [0, 1]. If the denominator is 0 (every positive has IoU 0 or CE 0), the
    weights are all 1 (plain cross-entropy), since Eq. 3 is then undefined.

    Args:
        ious: ``(P,)`` IoU of each positive's decoded box with its ground truth.
        ce: ``(P,)`` cross-entropy of each positive.
        eta: exponent (paper: 1.75); ``eta = 0`` gives weights 1.

    Returns:
        ``(P,)`` detached weights, in the dtype of ``ce``.
    """
    if ious.shape != ce.shape:
        raise ValueError(f"ious {tuple(ious.shape)} and ce {tuple(ce.shape)} must have the same shape")
    with torch.no_grad():
        dtype = torch.promote_types(ce.dtype, torch.float32)  # at least fp32 (bf16/fp16 CE under autocast)
        u = ious.detach().to(dtype).clamp(0.0, 1.0) ** eta
        c = ce.detach().to(dtype)
        num = c.sum()
        den = (u * c).sum()
        if not bool(den > 0) or not torch.isfinite(den):
            return torch.ones_like(ce).detach()
        return (u * (num / den)).to(ce.dtype)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, pos_ious: torch.Tensor | None,
                        eta: float = 1.75, iou_balance: bool = True, reduction: str = "mean",
                        focal_gamma: float = 0.0, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2: IoU-balanced cross-entropy over the sampled anchors.

    ``L_cls = sum_{i in Pos} w_i CE_i + sum_{i in Neg} CE_i`` with ``w_i`` from Eq. 3
    (:func:`iou_balanced_weights`, computed over the positives given here). Choice: the
    ``mean`` reduction divides the sum by the number of non-ignored anchors (as the sampled
    minibatch of Faster R-CNN's RPN). With ``iou_balance=False`` or ``eta = 0`` this is plain
    cross-entropy (the ablation).

    Note: Eq. 3 normalises the weights so that ``sum_i w_i CE_i = sum_i CE_i``; the loss
    *value* therefore equals plain cross-entropy. What changes is the gradient: each
    positive's pull on its logits is scaled by ``w_i`` (constant), so well-localised
    positives (high IoU) are pushed to higher scores than poorly localised ones.

    Args:
        logits: ``(N, K + 1)`` class logits (class 0 background).
        labels: ``(N,)`` int64 in ``-1..K``; -1 rows are ignored.
        pos_ious: ``(N,)`` IoU of each anchor's decoded box with its ground truth; only the
            positive rows are read. May be None when ``iou_balance`` is False.
        eta: Eq. 3 exponent.
        iou_balance: weight the positives by Eq. 3.
        reduction: ``"mean"`` (over non-ignored anchors), ``"positives"`` (the sum divided by
            the number of positives, at least 1: RetinaNet's normalisation, for losses over
            all anchors), ``"sum"`` or ``"none"`` (``(N,)``, 0 for ignored rows).
        focal_gamma: 0 for cross-entropy (the paper); ``gamma > 0`` multiplies each anchor's
            cross-entropy by ``(1 - p_true)^gamma``, the softmax focal loss (Lin et al. 2017),
            which lets every anchor enter the loss without sampling: easy background anchors
            weigh almost nothing. Eq. 3 then balances the positives' focal terms.
        allowed: optional ``(N, K + 1)`` bool, the classes each anchor may take
            (:func:`rpn_lib.anchors.allowed_classes`); an anchor's term is then
            ``-log sum_{c allowed} p_c`` and rows with label -1 count too. Equal to the
            cross-entropy where exactly the labelled class is allowed.

    Returns:
        scalar loss (or ``(N,)`` for ``"none"``).
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"need logits (N, K+1) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if reduction not in ("mean", "sum", "none", "positives"):
        raise ValueError(f"reduction must be 'mean', 'positives', 'sum' or 'none', got {reduction!r}")
    if focal_gamma < 0:
        raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
    if allowed is None:
        valid = labels >= 0
        ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    else:
        if allowed.shape != logits.shape:
            raise ValueError(f"allowed {tuple(allowed.shape)} must have the shape of logits {tuple(logits.shape)}")
        valid = allowed.any(dim=1)
        masked = logits.masked_fill(~allowed, float("-inf"))
        ce = torch.where(valid, torch.logsumexp(logits, dim=1) - torch.logsumexp(masked, dim=1), torch.zeros_like(logits[:, 0]))
    if focal_gamma > 0:
        p_true = torch.exp(-ce)
        ce = (1.0 - p_true).clamp(min=0.0) ** focal_gamma * ce
    weights = torch.ones_like(ce)
    pos = labels > 0
    if iou_balance and eta != 0 and bool(pos.any()):
        if pos_ious is None:
            raise ValueError("iou_balance needs pos_ious")
        weights = weights.clone()
        weights[pos] = iou_balanced_weights(pos_ious[pos], ce[pos], eta)
    per_anchor = torch.where(valid, weights * ce, torch.zeros_like(ce))
    if reduction == "none":
        return per_anchor
    total = per_anchor.sum()
    if reduction == "sum":
        return total
    if reduction == "positives":
        return total / pos.sum().clamp(min=1)
    return total / valid.sum().clamp(min=1)


def box_regression_loss(pred_deltas: torch.Tensor, target_deltas: torch.Tensor, beta: float = 1.0 / 9) -> torch.Tensor:
    """Smooth-L1 loss between predicted and target deltas of the positive anchors.

    Choice: the smooth-L1 (``beta = 1/9``, the value of torchvision's and Detectron's RPN) is
    summed over the six deltas and averaged over the ``P`` positives, so its scale does not
    depend on how many negatives were sampled (torchvision's RPN divides by the number of
    sampled anchors instead). With no positive the loss is 0 (still attached to the graph).

    Args:
        pred_deltas: ``(P, 6)`` network deltas.
        target_deltas: ``(P, 6)`` :meth:`rpn_lib.boxes.BoxCoder.encode` of anchor and ground truth.
        beta: smooth-L1 transition point.
    """
    if pred_deltas.shape != target_deltas.shape:
        raise ValueError(f"shapes differ: {tuple(pred_deltas.shape)} vs {tuple(target_deltas.shape)}")
    if pred_deltas.shape[0] == 0:
        return pred_deltas.sum() * 0.0
    loss = F.smooth_l1_loss(pred_deltas, target_deltas.to(pred_deltas.dtype), beta=beta, reduction="sum")
    return loss / pred_deltas.shape[0]


def rpn_losses(cls_logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor,
               matched_gt_boxes: torch.Tensor, coder: BoxCoder, eta: float = 1.75, iou_balance: bool = True,
               box_weight: float = 1.0, beta: float = 1.0 / 9, focal_gamma: float = 0.0,
               allowed: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Both RPN losses for the sampled anchors of one volume.

    The IoU of each positive for Eq. 3 is computed between its decoded box
    (``coder.decode(anchor, delta)``) and its ground truth, without gradient.

    Args:
        cls_logits: ``(N, K + 1)`` logits of the sampled anchors.
        deltas: ``(N, 6)`` predicted deltas of the same anchors.
        anchors: ``(N, 6)`` the anchors.
        labels: ``(N,)`` labels (-1 ignored, 0 background, > 0 positive).
        matched_gt_boxes: ``(N, 6)`` ground-truth box of each anchor (read where labels > 0).
        coder: box coder (Eq. 1).
        eta, iou_balance: see :func:`classification_loss`.
        box_weight: factor of the box loss in ``total``.
        allowed: optional ``(N, K + 1)`` allowed classes (the per-class ignore band, see
            :func:`rpn_lib.anchors.allowed_classes`).
        focal_gamma: 0 for the paper's cross-entropy over sampled anchors (mean over them);
            ``> 0`` for the focal loss over all anchors, normalised by the number of positives.

    Returns:
        ``{"cls", "box", "total"}`` scalars with ``total = cls + box_weight * box``.
    """
    pos = labels > 0
    pos_ious = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    if bool(pos.any()):
        with torch.no_grad():
            decoded = coder.decode(anchors[pos].float(), deltas[pos].detach().float())
            pos_ious[pos] = box_iou_pairwise(decoded, matched_gt_boxes[pos].float())
    cls = classification_loss(cls_logits, labels, pos_ious, eta=eta, iou_balance=iou_balance,
                              reduction="positives" if focal_gamma > 0 else "mean", focal_gamma=focal_gamma,
                              allowed=allowed)
    target = coder.encode(anchors[pos], matched_gt_boxes[pos])
    box = box_regression_loss(deltas[pos], target, beta=beta)
    return {"cls": cls, "box": box, "total": cls + box_weight * box}
