"""Detection methods behind one training loop and one detector: the IG-RPN and the baselines.

:func:`rpn_lib.train.train` and :class:`rpn_lib.detect.Detector` know nothing of a particular
network. A :class:`Method` supplies what differs between methods:

* :meth:`Method.build`: the network for a preset (seeded by the caller);
* :meth:`Method.training_losses`: one batch of augmented volumes and their landmarks -> the
  losses (:class:`StepLosses`), drawing every random number from the run's generator so that
  a run resumes exactly;
* :meth:`Method.forward` and :meth:`Method.candidates`: at inference, the network pass (timed
  as "network") and, per volume, a few scored boxes per landmark class (timed as
  "candidates"); the detector then applies the graph prior (or takes the best box) the same
  way for every method.

Methods (:data:`METHOD_NAMES`):

=============== =========================================== ==========================
name            what                                        module
=============== =========================================== ==========================
``rpn``         IG-RPN: RPN head on the fused map (Fig. 2)  here, :mod:`rpn_lib.model`
``ssd``         SSD-style one-stage, multi-scale heads      :mod:`rpn_lib.baselines.ssd`
``faster-rcnn`` two-stage: proposals, 3D RoI Align, head    :mod:`rpn_lib.baselines.faster_rcnn`
``heatmap``     Gaussian heatmap regression (Payer 2016)    :mod:`rpn_lib.baselines.heatmap`
=============== =========================================== ==========================

The ablations stay flags: ``iou_balance`` (training) and ``use_prior`` (detection) apply to
every method that has class scores to balance. A method's own options (e.g. the heatmap's
Gaussian width) are fields of its dataclass; they are written to ``model.pt`` as JSON
(:meth:`Method.options`) and rebuilt from it by :func:`get_method`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from rpn_lib.anchors import (Matcher, allowed_classes, label_anchors, labels_as_allowed, merge_classes,
                             preset_anchor_grid, sample_anchors)
from rpn_lib.boxes import BoxCoder, box_iou
from rpn_lib.candidates import select_candidates
from rpn_lib.landmarks import EYES, NUM_LANDMARKS, box_size_vox
from rpn_lib.losses import rpn_losses
from rpn_lib.model import IGRPN, RPNOutput
from rpn_lib.presets import Preset

__all__ = [
    "METHOD_NAMES", "Method", "RPNMethod", "StepLosses", "TrainContext", "CandidateSettings",
    "ClassCandidates", "AnchorCache", "get_method", "method_from_dict", "gt_boxes_from_landmarks",
    "compute_losses", "box_coder",
]

ClassCandidates = list[tuple[torch.Tensor, torch.Tensor]]
"""Per landmark class (``LANDMARK_NAMES`` order): ``boxes`` ``(k', 6)`` as cz, cy, cx, d, h, w
on the model grid (voxels) and ``scores`` ``(k',)``, best first."""


@dataclass
class StepLosses:
    """Losses of one step (batch means).

    Attributes:
        total: the scalar that is back-propagated.
        cls: the classification term (heatmap regression: the heatmap loss).
        box: the box-regression term (0 for heatmap regression).
        positives: positive anchors per volume (first stage for Faster R-CNN; 0 for heatmaps).
    """

    total: torch.Tensor
    cls: float
    box: float
    positives: float


@dataclass
class TrainContext:
    """What a method needs from the training loop for one step.

    Attributes:
        preset: the run's preset.
        generator: the run's only random generator (CPU); sampling must draw from it.
        iou_balance: use the IoU-balanced classification loss (Eq. 2-3).
        hard_mining: hard-negative mining is on at this step (``Preset.hard_negative_start``).
        device: the training device.
        precision: ``"fp32"`` or ``"bf16"`` (autocast of the forward pass).
    """

    preset: Preset
    generator: torch.Generator
    iou_balance: bool
    hard_mining: bool
    device: torch.device
    precision: str = "fp32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of the forward pass (a no-op in fp32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


@dataclass
class CandidateSettings:
    """How many candidates a method keeps per landmark class at inference.

    Attributes:
        pre_nms_top_n: best-scoring boxes per class considered before NMS.
        nms_iou: class-wise NMS threshold (the preset's ``nms_iou``).
        keep: candidates kept per class after NMS (at least the preset's ``top_k``).
    """

    pre_nms_top_n: int
    nms_iou: float
    keep: int


def box_coder(preset: Preset) -> BoxCoder:
    """The Eq. 1 box coder of a preset (its ``box_weights``), shared by training and inference."""
    return BoxCoder(weights=preset.box_weights)


def gt_boxes_from_landmarks(landmarks_vox: torch.Tensor, spacing_mm: float) -> torch.Tensor:
    """``(5, 3)`` landmark voxels -> ``(5, 6)`` landmark-centred cubic boxes (Sec. 2.2 sizes)."""
    sizes = torch.tensor(box_size_vox(spacing_mm), dtype=landmarks_vox.dtype, device=landmarks_vox.device)
    return torch.cat([landmarks_vox, sizes[:, None].expand(-1, 3)], dim=1)


def compute_losses(
    out_logits: torch.Tensor,
    out_deltas: torch.Tensor,
    anchors: torch.Tensor,
    landmarks_vox: torch.Tensor,
    preset: Preset,
    coder: BoxCoder,
    matcher: Matcher,
    generator: torch.Generator,
    iou_balance: bool = True,
    hard_mining: bool = True,
) -> StepLosses:
    """Eq. 2-3 classification loss + smooth-L1 box loss for a batch of anchor outputs.

    Used by the IG-RPN (anchors of the fused map) and the SSD baseline (anchors of several
    maps, concatenated). Per volume: label every anchor against the five landmark-centred
    boxes, sample ``preset.anchors_per_volume`` of them (:func:`~rpn_lib.anchors.sample_anchors`), and take
    :func:`~rpn_lib.losses.rpn_losses`; the batch loss is the mean over volumes.

    Args:
        out_logits: ``(B, N, K+1)`` network class logits.
        out_deltas: ``(B, N, 6)`` network box deltas.
        anchors: ``(N, 6)`` anchors, in the row order of the outputs.
        landmarks_vox: ``(B, 5, 3)`` ground-truth landmarks on the model grid.
        iou_balance: weight positives by Eq. 3 (False: plain cross-entropy, the ablation).
        hard_mining: draw ``preset.hard_negative_fraction`` of the negatives as the hardest.
    """
    classes = torch.arange(NUM_LANDMARKS, device=anchors.device)
    eye_columns = tuple(k + 1 for k in EYES)
    cls_terms, box_terms, n_pos = [], [], 0.0
    for b in range(out_logits.shape[0]):
        gt = gt_boxes_from_landmarks(landmarks_vox[b].to(anchors), preset.spacing_mm)
        iou = box_iou(gt, anchors)
        labels, matched = label_anchors(anchors, gt, classes, matcher, iou=iou)
        allowed = None
        pool = labels
        if preset.ambiguous == "partial":
            allowed = allowed_classes(iou, labels, classes, preset.neg_iou, out_logits.shape[-1])
            pool = labels.clamp(min=0)  # band anchors are drawn with the negatives
        if preset.eye_sides == "geometry":  # "an eye": either eye class is right on an eye
            if allowed is None:
                allowed = labels_as_allowed(labels, out_logits.shape[-1])
            allowed = merge_classes(allowed, eye_columns)
        hard = None
        if preset.hard_negative_fraction > 0 and hard_mining:
            # hardness of a negative: its highest probability of a class it may not take
            # (it would win that class's top-k)
            # (class-major: a softmax over a last axis of six entries is about 4x slower on a CPU)
            prob = out_logits[b].detach().float().t().contiguous().softmax(0)[1:]  # (K, N)
            if allowed is not None:
                prob = prob.masked_fill(allowed[:, 1:].t(), 0.0)
            hard = prob.amax(0)
        pos_idx, neg_idx = sample_anchors(pool.cpu(), preset.anchors_per_volume, preset.max_pos_fraction, generator,
                                          hard_negative_scores=hard, hard_fraction=preset.hard_negative_fraction)
        pos_idx, neg_idx = pos_idx.to(anchors.device), neg_idx.to(anchors.device)
        idx = torch.cat([pos_idx, neg_idx])
        gt_of_anchor = gt[matched.clamp(min=0)[idx]]
        losses = rpn_losses(out_logits[b, idx].float(), out_deltas[b, idx].float(), anchors[idx], labels[idx],
                            gt_of_anchor, coder, eta=preset.eta, iou_balance=iou_balance,
                            focal_gamma=preset.focal_gamma, allowed=None if allowed is None else allowed[idx])
        cls_terms.append(losses["cls"])
        box_terms.append(losses["box"])
        n_pos += pos_idx.numel()
    cls_loss = torch.stack(cls_terms).mean()
    box_loss = torch.stack(box_terms).mean()
    return StepLosses(cls_loss + box_loss, float(cls_loss.detach()), float(box_loss.detach()), n_pos / out_logits.shape[0])


@dataclass
class Method:
    """Base class of a detection method (see the module docstring). Subclasses are dataclasses
    whose fields are the method's options (JSON numbers, strings, lists)."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    pools_eyes: ClassVar[bool] = False
    """Whether training and candidates honour ``Preset.eye_sides = "geometry"``."""
    uses_anchor_layout: ClassVar[bool] = False
    """Whether the method's anchors follow ``Preset.anchor_layout``."""
    uses_block1_convs: ClassVar[bool] = False
    """Whether the method's network follows ``Preset.block1_convs``."""

    def options(self) -> dict[str, Any]:
        """The method's options, JSON-ready (written to ``model.pt`` and ``train.json``)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    def build(self, preset: Preset) -> nn.Module:
        """The untrained network for ``preset`` (the caller seeds torch first)."""
        raise NotImplementedError

    def training_losses(self, model: nn.Module, x: torch.Tensor, landmarks_vox: torch.Tensor,
                        ctx: TrainContext) -> StepLosses:
        """Losses of one batch: ``x`` ``(B, 1, D, H, W)``, ``landmarks_vox`` ``(B, 5, 3)`` on the
        model grid. The forward pass runs under ``ctx.autocast()``."""
        raise NotImplementedError

    def forward(self, model: nn.Module, x: torch.Tensor, preset: Preset) -> Any:
        """Inference network pass on ``(B, 1, D, H, W)``; the result goes to :meth:`candidates`."""
        return model(x)

    def candidates(self, model: nn.Module, out: Any, index: int, preset: Preset,
                   settings: CandidateSettings) -> ClassCandidates:
        """Scored boxes of each landmark class for volume ``index`` of the batch ``out``."""
        raise NotImplementedError


class AnchorCache:
    """Anchors of a feature-map layout, computed once per layout, device and sizes."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], torch.Tensor] = {}

    def get(self, key: tuple[Any, ...], make: Any) -> torch.Tensor:
        """The cached anchors for ``key``, made by ``make()`` the first time."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


@dataclass
class RPNMethod(Method):
    """The IG-RPN (Fig. 2, Sec. 2.2): one RPN head on the fused feature map, trained with
    :func:`compute_losses`, candidates by :func:`rpn_lib.candidates.select_candidates`."""

    name: ClassVar[str] = "rpn"
    title: ClassVar[str] = "IG-RPN"
    pools_eyes: ClassVar[bool] = True
    uses_anchor_layout: ClassVar[bool] = True
    uses_block1_convs: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self._anchors = AnchorCache()

    def build(self, preset: Preset) -> nn.Module:
        return IGRPN(width=preset.width, num_anchors=preset.num_anchors, stride=preset.stride,
                     block1_convs=preset.block1_convs)

    def anchors(self, feature_shape: tuple[int, int, int], stride: int, preset: Preset,
                device: torch.device) -> torch.Tensor:
        """``(f0 * f1 * f2 * A, 6)`` anchors of the fused map (:func:`~rpn_lib.anchors.preset_anchor_grid`; ``A = 64``
        in the paper, 4 with ``Preset.anchor_layout = "cubes"``)."""
        return self._anchors.get((tuple(feature_shape), stride, preset.anchor_base_vox, preset.anchor_layout, str(device)),
                                 lambda: preset_anchor_grid(feature_shape, stride, preset, device=device))

    def training_losses(self, model: nn.Module, x: torch.Tensor, landmarks_vox: torch.Tensor,
                        ctx: TrainContext) -> StepLosses:
        with ctx.autocast():
            out: RPNOutput = model(x)
        anchors = self.anchors(out.feature_shape, model.stride, ctx.preset, x.device)
        matcher = Matcher(ctx.preset.pos_iou, ctx.preset.neg_iou, allow_low_quality_matches=True,
                          min_positives=ctx.preset.min_positives)
        return compute_losses(out.cls_logits, out.box_deltas, anchors, landmarks_vox, ctx.preset, box_coder(ctx.preset),
                              matcher, ctx.generator, ctx.iou_balance, hard_mining=ctx.hard_mining)

    def candidates(self, model: nn.Module, out: RPNOutput, index: int, preset: Preset,
                   settings: CandidateSettings) -> ClassCandidates:
        anchors = self.anchors(out.feature_shape, model.stride, preset, out.cls_logits.device)
        per_class = select_candidates(out.cls_logits[index], out.box_deltas[index], anchors,
                                      box_coder(preset), pre_nms_top_n=settings.pre_nms_top_n, nms_iou=settings.nms_iou,
                                      top_k=settings.keep,
                                      pool_eyes=preset.eye_sides == "geometry")
        return [(boxes, scores) for boxes, scores, _ in per_class]


_REGISTRY: dict[str, str] = {
    "rpn": "rpn_lib.methods:RPNMethod",
    "ssd": "rpn_lib.baselines.ssd:SSDMethod",
    "faster-rcnn": "rpn_lib.baselines.faster_rcnn:FasterRCNNMethod",
    "heatmap": "rpn_lib.baselines.heatmap:HeatmapMethod",
}

METHOD_NAMES: tuple[str, ...] = tuple(_REGISTRY)
"""Names accepted by :func:`get_method`, ``train(method=...)`` and ``rpn-lib train --method``."""


def get_method(name: str, options: dict[str, Any] | None = None) -> Method:
    """A fresh :class:`Method` by name, with its options (defaults for those not given).

    Raises:
        ValueError: unknown method or option.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {list(METHOD_NAMES)}")
    module, attr = _REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module), attr)
    opts = dict(options or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ValueError(f"method {name!r} has no option(s) {unknown}; its options are {sorted(known)}")
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    kw = {}
    for k, v in opts.items():
        v = tuple(v) if isinstance(v, list) else v
        if not _same_kind(v, defaults[k]):
            raise ValueError(f"method {name!r}: option {k}={v!r} should be like {defaults[k]!r}")
        kw[k] = v
    return cls(**kw)


def _same_kind(value: Any, default: Any) -> bool:
    """Whether an option read from JSON has the kind of its default (bool, number, str, tuple)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, tuple):
        return isinstance(value, tuple) and all(isinstance(u, (int, float)) and not isinstance(u, bool) for u in value)
    return isinstance(value, type(default))


def method_from_dict(meta: dict[str, Any]) -> Method:
    """The method recorded in a model's or checkpoint's JSON settings (``method``,
    ``method_options``); files from before the baselines existed hold an IG-RPN."""
    name = meta.get("method", "rpn")
    options = meta.get("method_options", {})
    if not isinstance(name, str) or not isinstance(options, dict):
        raise ValueError(f"bad method settings: method={name!r}, method_options={options!r}")
    return get_method(name, options)

