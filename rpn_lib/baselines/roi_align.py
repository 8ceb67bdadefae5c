"""3D RoI Align (Mask R-CNN's RoI Align, in three dimensions) with ``torch.nn.functional.grid_sample``.

A region of interest, a box ``(cz, cy, cx, d, h, w)`` in input voxels, is divided into
``P x P x P`` bins; each bin's value is the mean of ``S x S x S`` trilinearly interpolated
samples of the feature map, evenly spaced inside the bin (no rounding of the box to the
feature grid, which is the point of RoI Align).

Frames: feature cell ``i`` of a map at ``stride`` covers input voxels
``[i * stride, (i + 1) * stride)`` and sits at its centre, ``i * stride + (stride - 1) / 2``
(the anchors' convention, :func:`rpn_lib.anchors.anchor_grid`), so an input-voxel coordinate
``v`` is the feature coordinate ``f = (v - (stride - 1) / 2) / stride``.

Choice: samples outside the feature map are interpolated with zeros beyond it
(``padding_mode="zeros"``); a sample within half a cell of the edge still sees the edge cell.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["roi_align_3d", "roi_sample_points"]


def roi_sample_points(rois: torch.Tensor, stride: int, output_size: int, sampling_ratio: int) -> torch.Tensor:
    """Feature-map coordinates of every sample of every RoI.

    Along each axis the box ``[c - s/2, c + s/2]`` (input voxels) is cut into ``P`` bins of
    ``s / P``; bin ``j`` holds the ``S`` samples ``c - s/2 + (j + (t + 0.5) / S) * s / P`` for
    ``t = 0 .. S-1``; each is then mapped to feature coordinates (module docstring).

    Args:
        rois: ``(R, 6)`` boxes as cz, cy, cx, d, h, w in input voxels.
        stride: input voxels per feature cell.
        output_size: ``P`` bins per axis.
        sampling_ratio: ``S`` samples per bin and axis.

    Returns:
        ``(R, 3, P * S)`` feature coordinates along axes 0, 1, 2.
    """
    if rois.ndim != 2 or rois.shape[1] != 6:
        raise ValueError(f"rois must be (R, 6) as cz, cy, cx, d, h, w, got shape {tuple(rois.shape)}")
    n = output_size * sampling_ratio
    t = (torch.arange(n, dtype=rois.dtype, device=rois.device) + 0.5) / n  # (n,) in (0, 1)
    lo = rois[:, :3] - rois[:, 3:] / 2  # (R, 3)
    v = lo[:, :, None] + t[None, None, :] * rois[:, 3:, None]  # (R, 3, n) input voxels
    return (v - (stride - 1) / 2) / stride


def roi_align_3d(features: torch.Tensor, rois: torch.Tensor, stride: int, output_size: int = 4,
                 sampling_ratio: int = 2) -> torch.Tensor:
    """Pool a fixed-size feature block for each region of interest of one volume.

    Differentiable with respect to ``features`` (the boxes are treated as constants, as in
    Faster R-CNN's approximate joint training).

    Args:
        features: ``(C, f0, f1, f2)`` feature map of one volume.
        rois: ``(R, 6)`` boxes as cz, cy, cx, d, h, w in input voxels.
        stride: input voxels per feature cell.
        output_size: ``P`` bins per axis.
        sampling_ratio: ``S`` samples per bin and axis (``S^3`` samples averaged per bin).

    Returns:
        ``(R, C, P, P, P)`` pooled features, in float32 (float64 for float64 features): low
        precision features (bf16 under autocast) are sampled in float32, with float32 coordinates.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (C, f0, f1, f2), got shape {tuple(features.shape)}")
    if output_size < 1 or sampling_ratio < 1 or stride < 1:
        raise ValueError("output_size, sampling_ratio and stride must be >= 1")
    c = features.shape[0]
    p, s = output_size, sampling_ratio
    n = p * s
    r = rois.shape[0]
    if r == 0:
        return features.new_zeros((0, c, p, p, p), dtype=torch.promote_types(features.dtype, torch.float32))
    dtype = torch.promote_types(features.dtype, torch.float32)  # coordinates at least in fp32
    f = roi_sample_points(rois.detach().to(device=features.device, dtype=dtype), stride, p, s)  # (R, 3, n)
    sizes = torch.tensor(features.shape[1:], dtype=f.dtype, device=f.device)
    g = (2 * f + 1) / sizes[None, :, None] - 1  # align_corners=False normalisation, (R, 3, n)
    gz, gy, gx = g[:, 0], g[:, 1], g[:, 2]  # (R, n) each
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, None, :], gy[:, None, :, None], gz[:, :, None, None]),
                       dim=-1)  # (R, n, n, n, 3) with (x, y, z) = array axes (2, 1, 0), as grid_sample wants
    grid = grid.reshape(1, r * n, n, n, 3)
    samples = F.grid_sample(features[None].to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    samples = samples[0].reshape(c, r, n, n, n).transpose(0, 1)  # (R, C, n, n, n)
    return F.avg_pool3d(samples, kernel_size=s) if s > 1 else samples
