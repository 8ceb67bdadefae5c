"""Pieces the baselines share: the backbone's VGG blocks without the fusion, and per-class
candidate selection from precomputed boxes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rpn_lib.boxes import nms
from rpn_lib.model import VGGBlock3d

__all__ = ["BLOCK_STRIDES", "block_channels", "block_index", "block_name", "VGGEncoder3d", "check_input", "top_boxes_after_nms"]

BLOCK_STRIDES: dict[str, int] = {"block1": 1, "block2": 2, "block3": 4, "block4": 8}
"""Input voxels per cell of each block's feature map (Fig. 2: three max-pool down-samplings)."""


def block_channels(width: int, stride: int) -> int:
    """Channels of the block at ``stride`` (1, 2, 4, 8) of a width-``width`` backbone: ``w * stride``."""
    if stride not in BLOCK_STRIDES.values():
        raise ValueError(f"no backbone block has stride {stride}; strides are {sorted(BLOCK_STRIDES.values())}")
    return width * stride


def block_index(stride: int) -> int:
    """1 ... 4: the block whose map has ``stride`` 1 ... 8."""
    block_channels(1, stride)  # validates
    return int(math.log2(stride)) + 1


def block_name(stride: int) -> str:
    """``"block1"`` ... ``"block4"`` for stride 1 ... 8."""
    return f"block{block_index(stride)}"


class VGGEncoder3d(nn.Module):
    """The first ``depth`` VGG blocks of the IG-RPN backbone (:class:`rpn_lib.model.Backbone3d`:
    widths w, 2w, 4w, 8w, a 2x max-pool before each block after the first), without its
    fusion step: the one-stage SSD baseline puts its heads on these block maps directly.

    Parameter names (``block1`` ...) are those of :class:`~rpn_lib.model.Backbone3d`.

    Args:
        width: channels of block 1.
        depth: number of blocks, 1 to 4 (blocks deeper than the coarsest map used are not built).
        in_channels: input channels.
    """

    def __init__(self, width: int = 32, depth: int = 4, in_channels: int = 1) -> None:
        super().__init__()
        if not 1 <= depth <= 4:
            raise ValueError(f"depth must be 1 to 4, got {depth}")
        self.depth = depth
        ch = in_channels
        for d in range(depth):
            out = width * 2 ** d
            self.add_module(f"block{d + 1}", VGGBlock3d(ch, out))
            ch = out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, D, H, W)`` -> ``{"block1": (B, w, D, H, W), "block2": (B, 2w, D/2, H/2, W/2), ...}``."""
        out: dict[str, torch.Tensor] = {}
        f = x
        for d in range(self.depth):
            if d > 0:
                f = nn.functional.max_pool3d(f, 2)
            f = getattr(self, f"block{d + 1}")(f)
            out[f"block{d + 1}"] = f
        return out


def check_input(x: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, 1, D, H, W)`` with sides multiples of 8."""
    if x.ndim != 5 or x.shape[1] != 1:
        raise ValueError(f"expected a (B, 1, D, H, W) tensor, got shape {tuple(x.shape)}")
    if any(s % 8 for s in x.shape[-3:]):
        raise ValueError(f"volume sides must be multiples of 8 (three down-samplings), got {tuple(x.shape[-3:])}")


def top_boxes_after_nms(boxes: torch.Tensor, scores: torch.Tensor, pre_nms_top_n: int, nms_iou: float,
                        keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` best boxes of one class after NMS, as the IG-RPN's candidates (NOTES item 9).

    Args:
        boxes: ``(M, 6)`` boxes of the class, cz, cy, cx, d, h, w voxels.
        scores: ``(M,)`` their scores.
        pre_nms_top_n: only the best this many enter NMS.
        nms_iou: NMS threshold.
        keep: boxes kept after NMS.

    Returns:
        ``boxes`` ``(k', 6)`` and ``scores`` ``(k',)`` by decreasing score, ``k' <= keep``.
    """
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {scores.shape[0]} scores")
    n = min(pre_nms_top_n, scores.shape[0])
    top = torch.topk(scores.float(), n)
    b, s = boxes[top.indices].float(), top.values
    kept = nms(b, s, nms_iou, max_keep=keep)
    return b[kept], s[kept]
