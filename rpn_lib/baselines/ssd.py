"""SSD-style one-stage baseline ("IG-SSD" in Table 1): anchor heads on several backbone maps.

Where the IG-RPN puts one head on the fused map (block 4 up-sampled into block 3, Fig. 2),
an SSD puts a head on each of several feature maps of the encoder, with small anchors on the
fine maps and large anchors on the coarse ones, and no fusion (Liu et al. 2016). Everything
else is the IG-RPN's: the VGG blocks, K+1 class logits and Eq. 1 deltas per anchor, anchor
labelling and sampling, the IoU-balanced loss (``iou_balance``), candidates and the graph
prior (``use_prior``) -- so the four Table 2 rows of SSD are flags, as for the IG-RPN.

Choices (the paper names SSD without details):

* **Levels.** Two maps: the block at the preset's stride ``s`` (the fused map's stride) and
  the block at ``2 s``. ``cpu-small`` at ``stride=2``: blocks 2 and 3 (strides 2, 4); the
  paper's scale (``stride=4``): blocks 3 and 4 (strides 4, 8). The finest level has the
  IG-RPN's anchor spacing, so the small (eye) boxes are matched as densely as by the IG-RPN;
  a third level at ``4 s`` would space anchors 4 s voxels apart, where a landmark box
  overlaps no anchor with IoU > 0.5 for most positions. (At ``stride=2`` block 4 is not used
  and not built.)
* **Anchors per level.** The preset's base sizes sorted and split in halves: the smaller half
  on the fine level, the larger half on the coarse level, every combination of that level's
  sizes along the three axes (paper sizes 13, 16 | 20, 28 voxels at 1.3 mm: ``2^3 = 8``
  anchors per cell and level, against the IG-RPN's 64 on one map).
* **Heads.** The IG-RPN's head (:class:`rpn_lib.model.RPNHead3d`: 3x3x3 conv, two sibling
  1x1x1 convs, the same initialisation), one per level, on the block's features.
* **Order.** All anchors of level 0 (in :func:`rpn_lib.anchors.anchor_grid` order), then level
  1; the outputs are concatenated in the same order, so the IG-RPN's loss
  (:func:`rpn_lib.methods.compute_losses`) and candidate selection
  (:func:`rpn_lib.candidates.select_candidates`) run unchanged on the concatenation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from rpn_lib.anchors import Matcher, anchor_grid
from rpn_lib.baselines.common import VGGEncoder3d, block_channels, block_index, block_name, check_input
from rpn_lib.candidates import select_candidates
from rpn_lib.landmarks import NUM_LANDMARKS
from rpn_lib.methods import (
    AnchorCache, CandidateSettings, ClassCandidates, Method, StepLosses, TrainContext, box_coder, compute_losses,
)
from rpn_lib.model import RPNHead3d
from rpn_lib.presets import Preset

__all__ = ["ssd_level_strides", "ssd_level_base_sizes", "ssd_anchors", "SSDOutput", "SSD3d", "SSDMethod"]


def ssd_level_strides(stride: int) -> tuple[int, int]:
    """Strides of the two SSD levels for a preset stride ``s``: ``(s, 2 s)`` (module docstring)."""
    if stride not in (1, 2, 4):
        raise ValueError(f"the SSD's finest level needs a stride of 1, 2 or 4, got {stride}")
    return stride, 2 * stride


def ssd_level_base_sizes(base_sizes_vox: Sequence[float], n_levels: int = 2) -> list[tuple[float, ...]]:
    """Split the sorted anchor base sizes into ``n_levels`` consecutive groups, smallest first
    (``(13, 16, 20, 28)`` -> ``[(13, 16), (20, 28)]``); earlier groups get the extra size when
    the split is uneven."""
    base = sorted(float(s) for s in base_sizes_vox)
    if len(base) < n_levels:
        raise ValueError(f"{len(base)} base sizes cannot be split over {n_levels} levels")
    q, r = divmod(len(base), n_levels)
    out, i = [], 0
    for lvl in range(n_levels):
        n = q + (1 if lvl < r else 0)
        out.append(tuple(base[i:i + n]))
        i += n
    return out


def ssd_anchors(feature_shapes: Sequence[Sequence[int]], strides: Sequence[int],
                level_base_sizes: Sequence[Sequence[float]], device: torch.device | str | None = None) -> torch.Tensor:
    """All anchors of all levels, level by level, each in :func:`~rpn_lib.anchors.anchor_grid` order.

    Returns:
        ``(sum_l f_l * A_l, 6)`` anchors as cz, cy, cx, d, h, w in input voxels.
    """
    return torch.cat([anchor_grid(tuple(fs), st, bs, device=device)
                      for fs, st, bs in zip(feature_shapes, strides, level_base_sizes, strict=True)])


@dataclass
class SSDOutput:
    """What :class:`SSD3d` returns for a batch.

    Attributes:
        cls_logits: ``(B, N, K+1)`` class logits of all anchors of all levels (class 0 background).
        box_deltas: ``(B, N, 6)`` Eq. 1 deltas of the same anchors.
        feature_shapes: ``(f0, f1, f2)`` of each level's map.
        strides: input voxels per cell of each level.
    """

    cls_logits: torch.Tensor
    box_deltas: torch.Tensor
    feature_shapes: tuple[tuple[int, int, int], ...]
    strides: tuple[int, ...]


class SSD3d(nn.Module):
    """VGG blocks of Fig. 2 + one anchor head per level (module docstring).

    Args:
        width: first block width ``w``.
        stride: the preset's stride ``s``; levels at ``s`` and ``2 s``.
        anchors_per_level: anchors per cell of each level (``len(level sizes)^3``).
        num_classes: ``K + 1``.
    """

    def __init__(self, width: int = 32, stride: int = 4, anchors_per_level: Sequence[int] = (8, 8),
                 num_classes: int = NUM_LANDMARKS + 1) -> None:
        super().__init__()
        self.width = width
        self.stride = stride
        self.level_strides = ssd_level_strides(stride)
        if len(anchors_per_level) != len(self.level_strides):
            raise ValueError(f"need anchors for {len(self.level_strides)} levels, got {anchors_per_level}")
        self.level_blocks = tuple(block_name(s) for s in self.level_strides)
        self.encoder = VGGEncoder3d(width, depth=block_index(self.level_strides[-1]))
        self.heads = nn.ModuleList(RPNHead3d(block_channels(width, s), a, num_classes)
                                   for s, a in zip(self.level_strides, anchors_per_level, strict=True))

    def forward(self, x: torch.Tensor) -> SSDOutput:
        """``x``: ``(B, 1, D, H, W)`` with D, H, W multiples of 8."""
        check_input(x)
        feats = self.encoder(x)
        logits, deltas, shapes = [], [], []
        for name, head in zip(self.level_blocks, self.heads, strict=True):
            f = feats[name]
            lg, dl = head(f)
            logits.append(lg)
            deltas.append(dl)
            shapes.append(tuple(f.shape[-3:]))
        return SSDOutput(torch.cat(logits, dim=1), torch.cat(deltas, dim=1), tuple(shapes), self.level_strides)


@dataclass
class SSDMethod(Method):
    """The SSD baseline as a :class:`~rpn_lib.methods.Method` (no options of its own)."""

    name: ClassVar[str] = "ssd"
    title: ClassVar[str] = "SSD"
    pools_eyes: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self._anchors = AnchorCache()

    def build(self, preset: Preset) -> nn.Module:
        levels = ssd_level_base_sizes(preset.anchor_base_vox)
        return SSD3d(preset.width, preset.stride, tuple(len(b) ** 3 for b in levels))

    def anchors(self, out: SSDOutput, preset: Preset, device: torch.device) -> torch.Tensor:
        """Anchors of all levels of ``out``, in its row order (cached)."""
        levels = ssd_level_base_sizes(preset.anchor_base_vox)
        key = (out.feature_shapes, out.strides, tuple(levels), str(device))
        return self._anchors.get(key, lambda: ssd_anchors(out.feature_shapes, out.strides, levels, device))

    def training_losses(self, model: nn.Module, x: torch.Tensor, landmarks_vox: torch.Tensor,
                        ctx: TrainContext) -> StepLosses:
        with ctx.autocast():
            out: SSDOutput = model(x)
        anchors = self.anchors(out, ctx.preset, x.device)
        matcher = Matcher(ctx.preset.pos_iou, ctx.preset.neg_iou, allow_low_quality_matches=True,
                          min_positives=ctx.preset.min_positives)
        return compute_losses(out.cls_logits, out.box_deltas, anchors, landmarks_vox, ctx.preset, box_coder(ctx.preset),
                              matcher, ctx.generator, ctx.iou_balance, hard_mining=ctx.hard_mining)

    def candidates(self, model: nn.Module, out: SSDOutput, index: int, preset: Preset,
                   settings: CandidateSettings) -> ClassCandidates:
        anchors = self.anchors(out, preset, out.cls_logits.device)
        per_class = select_candidates(out.cls_logits[index], out.box_deltas[index], anchors,
                                      box_coder(preset), pre_nms_top_n=settings.pre_nms_top_n, nms_iou=settings.nms_iou,
                                      top_k=settings.keep,
                                      pool_eyes=preset.eye_sides == "geometry")
        return [(boxes, scores) for boxes, scores, _ in per_class]
