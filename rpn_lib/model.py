"""The IG-RPN network: a 3D VGG-style backbone with U-Net-like fusion (Fig. 2) and a 3D RPN head.

Shapes for an input of ``(B, 1, D, H, W)`` and first width ``w``:

=========  ==========================  =============
block      output                      stride
=========  ==========================  =============
block 1    ``(B, w,  D,   H,   W)``     1
block 2    ``(B, 2w, D/2, H/2, W/2)``   2
block 3    ``(B, 4w, D/4, H/4, W/4)``   4
block 4    ``(B, 8w, D/8, H/8, W/8)``   8
fusion     ``(B, 4w, D/4, H/4, W/4)``   4  (block 4 up-sampled, concatenated with block 3,
                                            then a 3x3x3 conv)
fusion 2   ``(B, w,  D/2, H/2, W/2)``   2  (only with ``stride=2``: the fused map up-sampled,
                                            concatenated with block 2, then a 3x3x3 conv)
=========  ==========================  =============

``stride=4`` is the paper's network, and every preset's. ``stride=2`` adds one more U-Net step,
an option for coarse voxels: at the ``cpu-small`` spacing (2.6 mm) neighbouring stride-4 anchors
are 10.4 mm apart, and at stride 2 they are 5.2 mm apart, as in the paper (1.3 mm x 4). The
``cpu-small`` preset keeps stride 4 and takes positives from a lower IoU instead
(:data:`rpn_lib.presets.PRESETS` says why).

``block1_convs=1`` (a documented deviation, off by default) gives block 1 one conv-BN-ReLU layer
instead of two. Block 1 runs at the full input resolution, so its second ``w -> w`` conv is the
most expensive layer of the network (116 of the 394 GFLOP at the paper's scale, 3.6 of the 12.3
GFLOP at ``cpu-small``'s: 29 %); chapter *Performance* measures the time saved and the accuracy.

The RPN head (Sec. 2.2) is a 3x3x3 conv followed by two sibling 1x1x1 convs: ``A * (K + 1)``
class logits and ``A * 6`` box deltas per feature cell, with ``A = 64`` anchors and ``K = 5``
landmarks. Both outputs are flattened in the anchor order of :func:`rpn_lib.anchors.anchor_grid`
by :func:`rpn_lib.anchors.flatten_head_output`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rpn_lib.anchors import flatten_head_output
from rpn_lib.landmarks import NUM_LANDMARKS


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    """A 3x3x3 convolution (padding 1, no bias), batch normalisation and ReLU (Sec. 2.1)."""
    return nn.Sequential(
        nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm3d(out_ch),
        nn.ReLU(inplace=True),
    )


class VGGBlock3d(nn.Sequential):
    """``convs`` :func:`conv_bn_relu` layers (Fig. 2: two): one block of Fig. 2."""

    def __init__(self, in_ch: int, out_ch: int, convs: int = 2) -> None:
        if convs < 1:
            raise ValueError(f"a block needs at least one conv, got convs={convs}")
        super().__init__(conv_bn_relu(in_ch, out_ch), *(conv_bn_relu(out_ch, out_ch) for _ in range(convs - 1)))


class Backbone3d(nn.Module):
    """Fig. 2 backbone: four VGG blocks (w, 2w, 4w, 8w), three max-pool down-samplings, and
    block 4 up-sampled (trilinear) and concatenated with block 3, then a 3x3x3 conv.

    Args:
        width: channels of block 1 (``w``; the paper's Fig. 2 uses 32).
        in_channels: input channels (1 for B-mode ultrasound).
        stride: 4 (the paper) or 2 (one more fusion step with block 2; see the module docstring).
        block1_convs: conv layers of block 1: 2 (the paper) or 1 (a deviation that saves the
            costliest layer; see the module docstring).
    """

    def __init__(self, width: int = 32, in_channels: int = 1, stride: int = 4, block1_convs: int = 2) -> None:
        super().__init__()
        if stride not in (2, 4):
            raise ValueError(f"stride must be 2 or 4, got {stride}")
        if block1_convs not in (1, 2):
            raise ValueError(f"block1_convs must be 1 or 2, got {block1_convs}")
        self.stride = stride
        self.block1_convs = block1_convs
        w = width
        self.block1 = VGGBlock3d(in_channels, w, convs=block1_convs)
        self.block2 = VGGBlock3d(w, 2 * w)
        self.block3 = VGGBlock3d(2 * w, 4 * w)
        self.block4 = VGGBlock3d(4 * w, 8 * w)
        self.fuse = conv_bn_relu(8 * w + 4 * w, 4 * w)
        self.out_channels = 4 * w
        if stride == 2:
            self.fuse2 = conv_bn_relu(4 * w + 2 * w, w)
            self.out_channels = w

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the feature maps of every block and the fused map (key ``"fused"``)."""
        f1 = self.block1(x)
        f2 = self.block2(F.max_pool3d(f1, 2))
        f3 = self.block3(F.max_pool3d(f2, 2))
        f4 = self.block4(F.max_pool3d(f3, 2))
        up = F.interpolate(f4, size=f3.shape[-3:], mode="trilinear", align_corners=False)
        fused = self.fuse(torch.cat([up, f3], dim=1))
        out = {"block1": f1, "block2": f2, "block3": f3, "block4": f4, "fused": fused}
        if self.stride == 2:
            out["fused4"] = fused
            up2 = F.interpolate(fused, size=f2.shape[-3:], mode="trilinear", align_corners=False)
            out["fused"] = self.fuse2(torch.cat([up2, f2], dim=1))
        return out


class RPNHead3d(nn.Module):
    """Sec. 2.2 head: 3x3x3 conv + ReLU, then sibling 1x1x1 convs for K+1 class logits and 6
    box deltas per anchor.

    The class bias starts so that every anchor is background with probability ``1 - prior``
    (as in RetinaNet), which keeps the first steps' loss from being dominated by millions of
    easy negatives; the box layer starts near zero (anchors as they are).
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int = NUM_LANDMARKS + 1,
                 hidden: int | None = None, foreground_prior: float = 0.01) -> None:
        super().__init__()
        hidden = hidden or in_channels
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.conv = nn.Sequential(nn.Conv3d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.cls = nn.Conv3d(hidden, num_anchors * num_classes, 1)
        self.reg = nn.Conv3d(hidden, num_anchors * 6, 1)
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.reg.weight, std=0.001)
        nn.init.zeros_(self.reg.bias)
        # Background logit 0, each landmark logit b with K e^b / (1 + K e^b) = prior.
        b = math.log(foreground_prior / ((num_classes - 1) * (1 - foreground_prior)))
        bias = torch.full((num_anchors, num_classes), b)
        bias[:, 0] = 0.0
        with torch.no_grad():
            self.cls.bias.copy_(bias.reshape(-1))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ``(B, C, f0, f1, f2)`` features to class logits ``(B, f0*f1*f2*A, K+1)`` and box
        deltas ``(B, f0*f1*f2*A, 6)`` in :func:`rpn_lib.anchors.anchor_grid` order."""
        # channels-last output makes the flattening below a view instead of a copy of the
        # (B, N, K+1) and (B, N, 6) tensors (N = 2.1 M anchors at the paper's scale)
        h = self.conv(features).contiguous(memory_format=torch.channels_last_3d)
        logits = flatten_head_output(self.cls(h), self.num_anchors)
        deltas = flatten_head_output(self.reg(h), self.num_anchors)
        return logits, deltas


@dataclass
class RPNOutput:
    """What :class:`IGRPN` returns for a batch.

    Attributes:
        cls_logits: ``(B, N, K+1)`` class logits per anchor (class 0 = background).
        box_deltas: ``(B, N, 6)`` Eq. 1 deltas ``(tz, ty, tx, td, th, tw)`` per anchor.
        feature_shape: ``(f0, f1, f2)`` of the map the anchors live on.
    """

    cls_logits: torch.Tensor
    box_deltas: torch.Tensor
    feature_shape: tuple[int, int, int]


class IGRPN(nn.Module):
    """Backbone + 3D RPN head (Fig. 2). IoU-balance and the graph prior are not layers: they
    live in the loss (:mod:`rpn_lib.losses`) and in inference (:mod:`rpn_lib.prior`).

    Args:
        width: first block width ``w`` (paper: 32; ``cpu-small`` preset: 16).
        num_anchors: anchors per feature cell (paper: 64).
        num_classes: ``K + 1`` (paper: 6).
        stride: voxels per cell of the map the head runs on: 4 (paper) or 2 (``cpu-small``).
        block1_convs: conv layers of block 1: 2 (paper) or 1 (a deviation, see the module docstring).
    """

    def __init__(self, width: int = 32, num_anchors: int = 64, num_classes: int = NUM_LANDMARKS + 1,
                 stride: int = 4, block1_convs: int = 2) -> None:
        super().__init__()
        self.width = width
        self.backbone = Backbone3d(width, stride=stride, block1_convs=block1_convs)
        self.head = RPNHead3d(self.backbone.out_channels, num_anchors, num_classes)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> RPNOutput:
        """``x``: ``(B, 1, D, H, W)`` with D, H, W multiples of 8."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected a (B, 1, D, H, W) tensor, got shape {tuple(x.shape)}")
        if any(s % 8 for s in x.shape[-3:]):
            raise ValueError(f"volume sides must be multiples of 8 (three down-samplings), got {tuple(x.shape[-3:])}")
        fused = self.backbone(x)["fused"]
        logits, deltas = self.head(fused)
        return RPNOutput(logits, deltas, tuple(fused.shape[-3:]))  # type: ignore[arg-type]

    def feature_shape(self, shape_vox: tuple[int, int, int]) -> tuple[int, int, int]:
        """Feature-map shape for an input of ``shape_vox`` voxels."""
        return tuple(s // self.stride for s in shape_vox)  # type: ignore[return-value]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
