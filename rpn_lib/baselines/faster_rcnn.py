"""Faster R-CNN-style two-stage baseline (Table 1): class-agnostic proposals, 3D RoI Align,
and a second stage that classifies each proposal into K+1 classes and refines its box.

Stage 1 is the IG-RPN with one change: its head scores *objectness* (2 classes: background,
any landmark) instead of the K+1 classes, on the same fused map and anchors (Ren et al. 2015).
Stage 2 pools a ``P x P x P`` block of the fused map inside each proposal with 3D RoI Align
(:func:`rpn_lib.baselines.roi_align.roi_align_3d`), and a small fully-connected head gives
K+1 class logits and class-specific Eq. 1 deltas (``K x 6``) relative to the proposal.

Training (approximate joint training, as torchvision's Faster R-CNN):

* Stage 1 is trained as the IG-RPN's head (the same labelling, minibatch and hard-negative
  schedule) with plain cross-entropy on the objectness: the IoU-balanced loss is a property of
  the final class scores, so it is not applied to proposals.
* Proposals: the ``pre_nms_train`` anchors of highest objectness, decoded, clipped to the
  volume, NMS at ``rpn_nms_iou``, the best ``post_nms_train``, detached (no gradient through
  the box coordinates); the ground-truth boxes are added to them.
* Each proposal is labelled with the landmark class of the ground truth it overlaps with
  IoU > ``roi_fg_iou`` (0.5) and background below; ``rois_per_volume`` of them are sampled with
  at most ``roi_pos_fraction`` positives (:func:`rpn_lib.anchors.sample_anchors`, random).
* Stage 2 loss: K+1 cross-entropy, IoU-balanced (Eq. 2-3) when ``iou_balance`` is on, with the
  IoU of each positive's refined box; smooth-L1 on the deltas of the positive's own class,
  encoded with Faster R-CNN's weights ``(10, 10, 10, 5, 5, 5)``.

Detection: proposals (``pre_nms_test``, ``post_nms_test``), stage 2 on each, class
probabilities (softmax) and the box refined for each class; then, per landmark class, as the
IG-RPN: the best boxes, class-wise NMS, the top-k, and the graph prior if ``use_prior``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from rpn_lib.anchors import Matcher, label_anchors, preset_anchor_grid, sample_anchors
from rpn_lib.baselines.common import check_input, top_boxes_after_nms
from rpn_lib.baselines.roi_align import roi_align_3d
from rpn_lib.boxes import BoxCoder, box_iou, box_iou_pairwise, corners_to_cs, cs_to_corners, nms
from rpn_lib.landmarks import NUM_LANDMARKS
from rpn_lib.losses import box_regression_loss, classification_loss, rpn_losses
from rpn_lib.methods import (
    AnchorCache, CandidateSettings, ClassCandidates, Method, StepLosses, TrainContext, box_coder,
    gt_boxes_from_landmarks,
)
from rpn_lib.model import Backbone3d, RPNHead3d
from rpn_lib.presets import Preset

__all__ = ["clip_boxes", "propose", "RoIHead3d", "FasterRCNNOutput", "FasterRCNN3d", "FasterRCNNMethod"]


def clip_boxes(boxes: torch.Tensor, shape_vox: tuple[int, int, int], min_size: float = 1.0) -> torch.Tensor:
    """Clip ``(N, 6)`` boxes (cz, cy, cx, d, h, w voxels) to the volume ``[-0.5, n - 0.5]`` per
    axis, and give every box at least ``min_size`` voxels per side."""
    c = cs_to_corners(boxes)
    hi = torch.tensor(shape_vox, dtype=boxes.dtype, device=boxes.device) - 0.5
    lo = torch.minimum(c[:, :3].clamp(min=-0.5), hi)
    up = torch.maximum(torch.minimum(c[:, 3:], hi), lo)
    out = corners_to_cs(torch.cat([lo, up], dim=1))
    return torch.cat([out[:, :3], out[:, 3:].clamp(min=min_size)], dim=1)


def propose(objectness: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, coder: BoxCoder,
            shape_vox: tuple[int, int, int], pre_nms_top_n: int, nms_iou: float,
            post_nms_top_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-1 proposals of one volume (no gradient).

    Args:
        objectness: ``(N, 2)`` logits (background, landmark) per anchor.
        deltas: ``(N, 6)`` Eq. 1 deltas per anchor.
        anchors: ``(N, 6)`` anchors.
        coder: Eq. 1 box coder of stage 1.
        shape_vox: volume shape, for clipping.
        pre_nms_top_n: anchors of highest objectness decoded.
        nms_iou: class-agnostic NMS threshold.
        post_nms_top_n: proposals kept.

    Returns:
        ``boxes`` ``(P, 6)`` and objectness ``scores`` ``(P,)``, best first, ``P <= post_nms_top_n``.
    """
    with torch.no_grad():
        p = torch.softmax(objectness.detach().float(), dim=-1)[:, 1]
        top = torch.topk(p, min(pre_nms_top_n, p.shape[0]))
        boxes = clip_boxes(coder.decode(anchors[top.indices].float(), deltas[top.indices].detach().float()), shape_vox)
        keep = nms(boxes, top.values, nms_iou, max_keep=post_nms_top_n)
        return boxes[keep], top.values[keep]


class RoIHead3d(nn.Module):
    """Second stage: pooled ``(R, C, P, P, P)`` features -> two fully connected layers (ReLU) ->
    K+1 class logits and ``K x 6`` class-specific deltas.

    Initialisation as Faster R-CNN: class and box layers from N(0, 0.01) and N(0, 0.001), zero bias.
    """

    def __init__(self, in_channels: int, roi_size: int, hidden: int = 256, num_classes: int = NUM_LANDMARKS + 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * roi_size ** 3, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.cls = nn.Linear(hidden, num_classes)
        self.reg = nn.Linear(hidden, (num_classes - 1) * 6)
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.reg.weight, std=0.001)
        nn.init.zeros_(self.cls.bias)
        nn.init.zeros_(self.reg.bias)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R, C, P, P, P)`` -> logits ``(R, K+1)``, deltas ``(R, K, 6)``."""
        h = self.fc(pooled)
        return self.cls(h), self.reg(h).reshape(-1, self.num_classes - 1, 6)


@dataclass
class FasterRCNNOutput:
    """Stage 1 of :class:`FasterRCNN3d` for a batch.

    Attributes:
        features: ``(B, C, f0, f1, f2)`` the fused map (stage 2 pools from it).
        objectness: ``(B, N, 2)`` logits per anchor (background, landmark).
        box_deltas: ``(B, N, 6)`` Eq. 1 deltas per anchor.
        feature_shape: ``(f0, f1, f2)``.
    """

    features: torch.Tensor
    objectness: torch.Tensor
    box_deltas: torch.Tensor
    feature_shape: tuple[int, int, int]


class FasterRCNN3d(nn.Module):
    """The IG-RPN backbone (Fig. 2), an objectness RPN head, and a RoI head.

    Args:
        width: first block width ``w``.
        stride: stride of the fused map (the preset's).
        num_anchors: anchors per cell (64).
        num_classes: ``K + 1``.
        roi_size: ``P``, RoI Align bins per axis.
        sampling_ratio: RoI Align samples per bin and axis.
        hidden: width of the RoI head's fully connected layers.
    """

    def __init__(self, width: int = 32, stride: int = 4, num_anchors: int = 64, num_classes: int = NUM_LANDMARKS + 1,
                 roi_size: int = 4, sampling_ratio: int = 2, hidden: int = 256) -> None:
        super().__init__()
        self.width = width
        self.stride = stride
        self.roi_size = roi_size
        self.sampling_ratio = sampling_ratio
        self.backbone = Backbone3d(width, stride=stride)
        self.rpn = RPNHead3d(self.backbone.out_channels, num_anchors, num_classes=2)
        self.roi_head = RoIHead3d(self.backbone.out_channels, roi_size, hidden, num_classes)

    def forward(self, x: torch.Tensor) -> FasterRCNNOutput:
        """Stage 1 on ``x`` ``(B, 1, D, H, W)`` (sides multiples of 8)."""
        check_input(x)
        fused = self.backbone(x)["fused"]
        objectness, deltas = self.rpn(fused)
        return FasterRCNNOutput(fused, objectness, deltas, tuple(fused.shape[-3:]))  # type: ignore[arg-type]

    def classify(self, features: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2 for one volume: ``features`` ``(C, f0, f1, f2)``, ``rois`` ``(R, 6)`` input voxels
        -> logits ``(R, K+1)``, class-specific deltas ``(R, K, 6)``."""
        pooled = roi_align_3d(features, rois, self.stride, self.roi_size, self.sampling_ratio)
        return self.roi_head(pooled.to(features.dtype))


@dataclass
class FasterRCNNMethod(Method):
    """The Faster R-CNN baseline as a :class:`~rpn_lib.methods.Method`; the fields are its options
    (module docstring; defaults follow torchvision's Faster R-CNN, scaled to five objects)."""

    name: ClassVar[str] = "faster-rcnn"
    title: ClassVar[str] = "Faster R-CNN"
    uses_anchor_layout: ClassVar[bool] = True

    roi_size: int = 4
    sampling_ratio: int = 2
    hidden: int = 256
    rpn_nms_iou: float = 0.7
    pre_nms_train: int = 512
    post_nms_train: int = 64
    pre_nms_test: int = 512
    post_nms_test: int = 64
    rois_per_volume: int = 64
    roi_pos_fraction: float = 0.25
    roi_fg_iou: float = 0.5
    roi_box_weights: tuple[float, ...] = (10.0, 10.0, 10.0, 5.0, 5.0, 5.0)

    def __post_init__(self) -> None:
        counts = ("roi_size", "sampling_ratio", "hidden", "pre_nms_train", "post_nms_train", "pre_nms_test",
                  "post_nms_test", "rois_per_volume")
        bad = [f"{k}={getattr(self, k)!r}" for k in counts if getattr(self, k) < 1]
        bad += [f"{k}={getattr(self, k)!r}" for k in ("rpn_nms_iou", "roi_pos_fraction", "roi_fg_iou")
                if not 0 <= getattr(self, k) <= 1]
        if bad:
            raise ValueError(f"Faster R-CNN options out of range: {', '.join(bad)} (counts >= 1, fractions in [0, 1])")
        self._anchors = AnchorCache()
        self._roi_coder = BoxCoder(weights=self.roi_box_weights)

    def build(self, preset: Preset) -> nn.Module:
        return FasterRCNN3d(preset.width, preset.stride, num_anchors=preset.num_anchors,
                            roi_size=self.roi_size, sampling_ratio=self.sampling_ratio, hidden=self.hidden)

    def anchors(self, out: FasterRCNNOutput, stride: int, preset: Preset) -> torch.Tensor:
        """Anchors of the fused map (the IG-RPN's), cached."""
        dev = out.objectness.device
        key = (out.feature_shape, stride, preset.anchor_base_vox, preset.anchor_layout, str(dev))
        return self._anchors.get(key, lambda: preset_anchor_grid(out.feature_shape, stride, preset, device=dev))

    def training_losses(self, model: nn.Module, x: torch.Tensor, landmarks_vox: torch.Tensor,
                        ctx: TrainContext) -> StepLosses:
        preset = ctx.preset
        with ctx.autocast():
            out: FasterRCNNOutput = model(x)
        anchors = self.anchors(out, model.stride, preset)
        rpn_matcher = Matcher(preset.pos_iou, preset.neg_iou, allow_low_quality_matches=True,
                              min_positives=preset.min_positives)
        roi_matcher = Matcher(self.roi_fg_iou, self.roi_fg_iou, allow_low_quality_matches=False)
        classes = torch.arange(NUM_LANDMARKS, device=anchors.device)
        shape = tuple(x.shape[-3:])
        cls_terms, box_terms, n_pos = [], [], 0.0
        for b in range(x.shape[0]):
            gt = gt_boxes_from_landmarks(landmarks_vox[b].to(anchors), preset.spacing_mm)
            # stage 1: objectness (any landmark vs background) on the sampled anchors
            labels, matched = label_anchors(anchors, gt, classes, rpn_matcher)
            obj_labels = labels.clamp(max=1)
            hard = None
            if preset.hard_negative_fraction > 0 and ctx.hard_mining:
                hard = out.objectness[b].detach().float().softmax(-1)[:, 1]
            pos_idx, neg_idx = sample_anchors(obj_labels.cpu(), preset.anchors_per_volume, preset.max_pos_fraction,
                                              ctx.generator, hard_negative_scores=hard,
                                              hard_fraction=preset.hard_negative_fraction)
            idx = torch.cat([pos_idx, neg_idx]).to(anchors.device)
            rpn = rpn_losses(out.objectness[b, idx].float(), out.box_deltas[b, idx].float(), anchors[idx],
                             obj_labels[idx], gt[matched.clamp(min=0)[idx]], box_coder(ctx.preset), iou_balance=False)
            n_pos += pos_idx.numel()
            # stage 2: sampled proposals (plus the ground truths) -> K+1 classes and refined boxes
            props, _ = propose(out.objectness[b], out.box_deltas[b], anchors, box_coder(ctx.preset), shape,
                               self.pre_nms_train, self.rpn_nms_iou, self.post_nms_train)
            rois = torch.cat([props, gt])
            m = roi_matcher(box_iou(gt, rois))
            roi_labels = torch.where(m >= 0, classes[m.clamp(min=0)] + 1,
                                     torch.where(m == Matcher.BELOW_LOW_THRESHOLD, 0, -1))
            rpos, rneg = sample_anchors(roi_labels.cpu(), self.rois_per_volume, self.roi_pos_fraction, ctx.generator)
            ridx = torch.cat([rpos, rneg]).to(rois.device)
            rois, lab, gt_r = rois[ridx], roi_labels[ridx], gt[m.clamp(min=0)[ridx]]
            with ctx.autocast():
                logits, deltas = model.classify(out.features[b], rois)
            pos = lab > 0
            d_pos = deltas[pos, lab[pos] - 1].float()  # (P, 6): the deltas of each positive's own class
            pos_ious = torch.zeros(lab.shape, dtype=torch.float32, device=lab.device)
            if bool(pos.any()):
                with torch.no_grad():
                    pos_ious[pos] = box_iou_pairwise(self._roi_coder.decode(rois[pos], d_pos.detach()), gt_r[pos])
            cls2 = classification_loss(logits.float(), lab, pos_ious, eta=preset.eta, iou_balance=ctx.iou_balance)
            box2 = box_regression_loss(d_pos, self._roi_coder.encode(rois[pos], gt_r[pos]))
            cls_terms.append(rpn["cls"] + cls2)
            box_terms.append(rpn["box"] + box2)
        cls_loss = torch.stack(cls_terms).mean()
        box_loss = torch.stack(box_terms).mean()
        return StepLosses(cls_loss + box_loss, float(cls_loss.detach()), float(box_loss.detach()), n_pos / x.shape[0])

    def forward(self, model: nn.Module, x: torch.Tensor,
                preset: Preset) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Both stages: per volume, the refined boxes ``(R, K, 6)`` of every proposal for every
        landmark class and the class probabilities ``(R, K)``."""
        out: FasterRCNNOutput = model(x)
        anchors = self.anchors(out, model.stride, preset)
        shape = tuple(x.shape[-3:])
        results = []
        for b in range(x.shape[0]):
            props, _ = propose(out.objectness[b], out.box_deltas[b], anchors, box_coder(preset), shape,
                               self.pre_nms_test, self.rpn_nms_iou, self.post_nms_test)
            logits, deltas = model.classify(out.features[b], props)
            r, k = deltas.shape[:2]
            probs = torch.softmax(logits.float(), dim=-1)[:, 1:]
            boxes = self._roi_coder.decode(props[:, None].expand(r, k, 6).reshape(-1, 6),
                                           deltas.float().reshape(-1, 6)).reshape(r, k, 6)
            results.append((boxes, probs))
        return results

    def candidates(self, model: nn.Module, out: list[tuple[torch.Tensor, torch.Tensor]], index: int,
                   preset: Preset, settings: CandidateSettings) -> ClassCandidates:
        boxes, probs = out[index]
        return [top_boxes_after_nms(boxes[:, k], probs[:, k], settings.pre_nms_top_n, settings.nms_iou, settings.keep)
                for k in range(probs.shape[1])]
