"""Heatmap-regression baseline (Payer et al. 2016; Table 1 "Heatmap"): one Gaussian heatmap
per landmark, regressed by an encoder-decoder; the landmark is the heatmap's peak.

Network (:class:`HeatmapNet`): the IG-RPN backbone (Fig. 2, with its fusion at the preset's
stride) as encoder, then a U-Net decoder back to **full resolution**: at each step the map is
up-sampled (trilinear, x2), concatenated with the backbone block of that resolution (block 2,
then block 1) and passed through a 3x3x3 conv + BN + ReLU; a 1x1x1 conv gives K = 5 linear
outputs, ``(B, 1, D, H, W) -> (B, 5, D, H, W)``. Full resolution, because the peak's grid
step bounds the accuracy: at ``cpu-small`` a half-resolution map would have 5.2 mm cells.

Training target (:func:`gaussian_heatmaps`): ``exp(-|q - p|^2 / (2 sigma^2))`` around landmark
``p`` (amplitude 1), ``sigma = sigma_mm`` (default 5.2 mm: 2 voxels at ``cpu-small``, 4 at the
paper's 1.3 mm). Loss: the L2 loss of Payer et al., the squared error summed over the voxels of
each heatmap and averaged over heatmaps and volumes. The augmentation, optimiser and schedule
are the shared loop's (:func:`rpn_lib.train.train` with ``method="heatmap"``).

Landmark from a heatmap -- choice: the **arg-max voxel, refined to sub-voxel precision by a
parabola** fitted along each axis to the log of the heatmap at the peak and its two
neighbours (:func:`refine_peaks`). For a Gaussian, the log is exactly a parabola, so a
Gaussian peak is recovered exactly; the offset is clamped to half a voxel. (A global
soft-arg-max would be pulled towards the centre of the volume by the small values everywhere
else, and arg-max alone is off by up to half a voxel per axis.)

Detection: the candidates of a landmark class are the local maxima of its heatmap (3x3x3),
best first, each with a landmark-sized cubic box centred on it (Sec. 2.2 sizes) and the
heatmap value as its score; the shared class-wise NMS and graph prior (``use_prior``) apply
as for the detectors. The paper reports only d-mean and time for heatmap regression: the box
of every prediction has the ground-truth size, so IoU-based metrics (detection rates, mIoU,
AP) only restate the centre error and are not comparable with the detectors', and the
scores are not probabilities. ``iou_balance`` does not apply (no class scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rpn_lib.baselines.common import block_channels, block_name, check_input, top_boxes_after_nms
from rpn_lib.landmarks import NUM_LANDMARKS, box_size_vox
from rpn_lib.methods import CandidateSettings, ClassCandidates, Method, StepLosses, TrainContext
from rpn_lib.model import Backbone3d, conv_bn_relu
from rpn_lib.presets import Preset

__all__ = ["gaussian_heatmaps", "heatmap_argmax", "refine_peaks", "heatmap_peaks", "HeatmapNet", "HeatmapMethod"]


def gaussian_heatmaps(landmarks_vox: torch.Tensor, shape_vox: tuple[int, int, int], sigma_vox: float,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Target heatmaps: ``exp(-|q - p_k|^2 / (2 sigma^2))`` at every voxel ``q``, one per landmark.

    Args:
        landmarks_vox: ``(B, K, 3)`` landmark voxel coordinates (axes 0, 1, 2; sub-voxel allowed).
        shape_vox: ``(D, H, W)``.
        sigma_vox: standard deviation in voxels.
        dtype: output dtype (float64 for exact checks).

    Returns:
        ``(B, K, D, H, W)``, peak value 1 at a landmark on a voxel centre.
    """
    if landmarks_vox.ndim != 3 or landmarks_vox.shape[-1] != 3:
        raise ValueError(f"landmarks_vox must be (B, K, 3), got shape {tuple(landmarks_vox.shape)}")
    if sigma_vox <= 0:
        raise ValueError(f"sigma_vox must be positive, got {sigma_vox}")
    p = landmarks_vox.to(dtype)
    g = []
    for ax, n in enumerate(shape_vox):  # separable: a product of three 1D Gaussians
        q = torch.arange(n, dtype=dtype, device=p.device)
        g.append(torch.exp(-((q[None, None, :] - p[..., ax, None]) ** 2) / (2 * sigma_vox ** 2)))  # (B, K, n)
    return g[0][..., :, None, None] * g[1][..., None, :, None] * g[2][..., None, None, :]


def heatmap_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """Arg-max voxel of each heatmap: ``(..., D, H, W)`` -> ``(..., 3)`` int64 indices (first on ties)."""
    d, h, w = heatmaps.shape[-3:]
    flat = heatmaps.reshape(*heatmaps.shape[:-3], -1).argmax(dim=-1)
    return torch.stack([flat // (h * w), (flat // w) % h, flat % w], dim=-1)


def refine_peaks(heatmap: torch.Tensor, idx: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Sub-voxel peak positions: a parabola through the log-heatmap at each peak and its two
    neighbours along each axis; its vertex is ``p + (l[-1] - l[+1]) / (2 (l[-1] - 2 l[0] + l[+1]))``.

    Exact for a Gaussian (its log is a parabola along each axis). The offset is 0 on the
    volume's border or where the log is not strictly concave there (a plateau, values <= 0),
    and clamped to [-0.5, 0.5] (the peak voxel is the arg-max).

    Only the 7 heatmap values each peak needs are read on the heatmap's device; the fit runs
    in float64 on the CPU, which every device can hand values to (Apple's MPS has no float64,
    and a float64 copy of a whole GPU heatmap would cost more than the fit).

    Args:
        heatmap: ``(D, H, W)`` one heatmap, on any device, in any float dtype.
        idx: ``(M, 3)`` int64 peak voxels, on the heatmap's device.
        eps: heatmap values are clamped to at least ``eps`` before the log.

    Returns:
        ``(M, 3)`` float64 positions in voxels, on the CPU.
    """
    shape = torch.tensor(heatmap.shape)
    out = idx.detach().cpu().to(torch.float64)
    if idx.shape[0] == 0:
        return out
    # (7, M, 3): each peak, then its lower and upper neighbour along z, y and x (clamped to the volume).
    upper = torch.tensor(heatmap.shape, device=idx.device) - 1
    probes = [idx]
    for ax in range(3):
        lo, hi = idx.clone(), idx.clone()
        lo[:, ax] = (idx[:, ax] - 1).clamp(min=0)
        hi[:, ax] = torch.minimum(idx[:, ax] + 1, upper[ax])
        probes += [lo, hi]
    at = torch.stack(probes)
    values = heatmap.detach()[at[..., 0], at[..., 1], at[..., 2]].cpu().to(torch.float64)
    logs = torch.log(values.clamp(min=eps))
    l0, peaks = logs[0], out.to(torch.int64)
    for ax in range(3):
        lm, lp = logs[1 + 2 * ax], logs[2 + 2 * ax]
        inside = (peaks[:, ax] > 0) & (peaks[:, ax] < shape[ax] - 1)
        den = lm - 2 * l0 + lp
        ok = inside & (den < 0)
        off = torch.where(ok, (lm - lp) / (2 * torch.where(ok, den, torch.ones_like(den))), torch.zeros_like(den))
        out[:, ax] += off.clamp(-0.5, 0.5)
    return out


def heatmap_peaks(heatmap: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` highest local maxima (3x3x3 neighbourhood) of one heatmap, refined.

    Args:
        heatmap: ``(D, H, W)``.
        n: peaks wanted (fewer if the heatmap has fewer local maxima).

    Returns:
        ``points`` ``(M, 3)`` float64 voxel positions on the CPU (:func:`refine_peaks`) and
        ``values`` ``(M,)`` the heatmap at the peak voxels, on its device, best first; the
        first is the arg-max.
    """
    h = heatmap.detach().float()
    is_max = F.max_pool3d(h[None, None], 3, stride=1, padding=1)[0, 0] == h
    vals = torch.where(is_max, h, torch.full_like(h, -torch.inf)).reshape(-1)
    top = torch.topk(vals, min(n, vals.numel()))
    keep = torch.isfinite(top.values)
    flat, values = top.indices[keep], top.values[keep]
    _, hh, ww = h.shape
    idx = torch.stack([flat // (hh * ww), (flat // ww) % hh, flat % ww], dim=-1)
    return refine_peaks(h, idx), values


class HeatmapNet(nn.Module):
    """IG-RPN backbone + U-Net decoder to full resolution + 1x1x1 conv (module docstring).

    ``(B, 1, D, H, W) -> (B, K, D, H, W)`` heatmaps (linear outputs), D, H, W multiples of 8.

    Args:
        width: first block width ``w`` (the preset's).
        stride: stride of the backbone's fused map, 4 or 2 (the preset's); the decoder has
            ``log2(stride)`` up-sampling steps.
        num_landmarks: ``K`` heatmaps.
    """

    def __init__(self, width: int = 32, stride: int = 4, num_landmarks: int = NUM_LANDMARKS) -> None:
        super().__init__()
        self.width = width
        self.stride = stride
        self.backbone = Backbone3d(width, stride=stride)
        steps, ch, s = [], self.backbone.out_channels, stride
        self.skips: list[str] = []
        while s > 1:
            s //= 2
            skip = block_channels(width, s)
            steps.append(conv_bn_relu(ch + skip, skip))
            self.skips.append(block_name(s))
            ch = skip
        self.decoder = nn.ModuleList(steps)
        self.head = nn.Conv3d(ch, num_landmarks, kernel_size=1)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W)`` -> ``(B, K, D, H, W)``."""
        check_input(x)
        feats = self.backbone(x)
        h = feats["fused"]
        for name, step in zip(self.skips, self.decoder, strict=True):
            skip = feats[name]
            h = F.interpolate(h, size=skip.shape[-3:], mode="trilinear", align_corners=False)
            h = step(torch.cat([h, skip], dim=1))
        return self.head(h)


@dataclass
class HeatmapMethod(Method):
    """Heatmap regression as a :class:`~rpn_lib.methods.Method`.

    Attributes:
        sigma_mm: standard deviation of the target Gaussians, mm.
    """

    name: ClassVar[str] = "heatmap"
    title: ClassVar[str] = "heatmap regression"

    sigma_mm: float = 5.2

    def __post_init__(self) -> None:
        if not self.sigma_mm > 0:
            raise ValueError(f"sigma_mm must be positive, got {self.sigma_mm}")

    def build(self, preset: Preset) -> nn.Module:
        return HeatmapNet(preset.width, preset.stride)

    def training_losses(self, model: nn.Module, x: torch.Tensor, landmarks_vox: torch.Tensor,
                        ctx: TrainContext) -> StepLosses:
        with ctx.autocast():
            pred = model(x)
        target = gaussian_heatmaps(landmarks_vox, tuple(x.shape[-3:]), self.sigma_mm / ctx.preset.spacing_mm)
        loss = ((pred.float() - target) ** 2).sum(dim=(2, 3, 4)).mean()
        return StepLosses(loss, float(loss.detach()), 0.0, 0.0)

    def candidates(self, model: nn.Module, out: torch.Tensor, index: int, preset: Preset,
                   settings: CandidateSettings) -> ClassCandidates:
        sizes = box_size_vox(preset.spacing_mm)
        result = []
        for k in range(out.shape[1]):
            pts, vals = heatmap_peaks(out[index, k], settings.pre_nms_top_n)
            pts = pts.to(torch.float32).to(vals.device)
            boxes = torch.cat([pts, torch.full_like(pts, float(sizes[k]))], dim=1)
            result.append(top_boxes_after_nms(boxes, vals, settings.pre_nms_top_n, settings.nms_iou, settings.keep))
        return result
