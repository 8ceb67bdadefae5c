"""From a volume on disk to the model's input grid, and back.

The network works on an isotropic grid at the preset's spacing, with sides that are
multiples of 8 (three down-samplings). :func:`prepare_volume` resamples (only when needed),
pads or crops, and normalises intensities; the returned affine maps the model grid's voxels
to world millimetres, so predictions map back to the user's image through world coordinates.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rpn_lib.data.geometry import crop_or_pad_to_shape, resample_to_spacing, resampled_shape, spacing_from_affine
from rpn_lib.errors import DataError


@dataclass
class ModelInput:
    """A volume ready for the network.

    Attributes:
        array: ``(D, H, W)`` float32 intensities in [0, 1] (``normalized``), or as read, on
            the model grid, for :func:`normalize_intensity` to map where the network runs.
        affine: ``(4, 4)`` model-grid voxel -> world RAS mm.
        spacing_mm: isotropic spacing of the grid.
        normalized: whether ``array`` is already normalised.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing_mm: float
    normalized: bool = True


def normalize_intensity(volume: np.ndarray | torch.Tensor, low_pct: float = 0.5,
                        high_pct: float = 99.5) -> np.ndarray | torch.Tensor:
    """Map intensities to [0, 1] by robust percentiles of the non-zero voxels.

    Zero voxels (outside an ultrasound probe's field of view) stay 0. Percentiles instead of
    min/max make a few saturated voxels harmless; a constant volume maps to zeros.

    A NumPy array gives a float32 NumPy array. A tensor gives a float32 tensor on its own
    device (:class:`rpn_lib.detect.Detector` normalises on the GPU this way), equal bit for
    bit to the NumPy result: the same order statistics, NumPy's linear interpolation between
    them, and the same float64 arithmetic.
    """
    if isinstance(volume, torch.Tensor):
        return _normalize_intensity_tensor(volume, low_pct, high_pct)
    v = np.asarray(volume, dtype=np.float32)
    inside = v[v > 0]
    if inside.size == 0:
        return np.zeros_like(v)
    lo, hi = np.percentile(inside, [low_pct, high_pct])
    if hi <= lo:
        return np.zeros_like(v)
    out = np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    out[v <= 0] = 0.0
    return out.astype(np.float32)


def _percentiles_tensor(values: torch.Tensor, pcts: tuple[float, ...]) -> list[float]:
    """``np.percentile(values, pcts)`` (method "linear") of a 1-D tensor, as NumPy computes it."""
    n = values.numel()
    ordered = torch.sort(values).values
    out = []
    for q in np.true_divide(np.asarray(pcts, dtype=np.float64), 100):
        virtual = (n - 1) * q
        prev = int(np.floor(virtual))
        if prev >= n - 1:
            out.append(float(ordered[n - 1]))
            continue
        a, b = ordered[prev], ordered[prev + 1]
        gamma = virtual - prev
        diff = float(b - a)  # in the values' dtype, as NumPy's ``b - a``
        out.append(float(b) - diff * (1 - gamma) if gamma >= 0.5 else float(a) + diff * gamma)
    return out


def _normalize_intensity_tensor(volume: torch.Tensor, low_pct: float, high_pct: float) -> torch.Tensor:
    v = volume.to(torch.float32)
    inside = v[v > 0]
    if inside.numel() == 0:
        return torch.zeros_like(v)
    lo, hi = _percentiles_tensor(inside, (low_pct, high_pct))
    if hi <= lo:
        return torch.zeros_like(v)
    out = ((v.double() - lo) / (hi - lo)).clamp_(0.0, 1.0)
    out[v <= 0] = 0.0
    return out.to(torch.float32)


class IntensityWarning(UserWarning):
    """A volume whose intensities do not look like B-mode ultrasound (many negative voxels)."""


NEGATIVE_WARN_FRACTION = 0.01
""":func:`intensity_warning` gives a warning when more than this fraction of the voxels is negative."""


def intensity_warning(volume: np.ndarray) -> str | None:
    """Check that ``volume`` fits :func:`normalize_intensity`'s convention: B-mode intensities
    are >= 0, and voxels <= 0 count as outside the probe's field of view.

    Returns:
        The text of an :class:`IntensityWarning` when more than
        :data:`NEGATIVE_WARN_FRACTION` of the voxels are negative (signed or z-scored data:
        they would all be treated as outside the field of view), else None.

    Raises:
        DataError: no voxel is above 0 (nothing would be left to detect in).
    """
    v = np.asarray(volume)
    if not (v > 0).any():
        raise DataError(f"no voxel is above 0 (maximum {float(v.max()):.4g}): voxels <= 0 count as outside the "
                        "probe's field of view, so nothing is left to detect in; B-mode intensities start at 0")
    negative = float((v < 0).mean())
    if negative <= NEGATIVE_WARN_FRACTION:
        return None
    return (f"{negative:.0%} of the voxels are negative (minimum {float(v.min()):.4g}); voxels <= 0 count as "
            "outside the probe's field of view. B-mode intensities start at 0: shift or rescale signed or "
            "z-scored data to start at 0 first.")


MAX_GRID_FACTOR = 64
"""A volume whose model grid would hold more than this many times the voxels of the preset's
training grid is refused by :func:`check_grid_size`: 64 times is 4 times the field of view per
side (666 mm at both presets), more than any ultrasound volume spans, and such a grid almost
always means voxel sizes that are not in mm in the header."""


def check_grid_size(shape: tuple[int, ...], affine: np.ndarray, spacing_mm: float,
                    training_shape_vox: tuple[int, int, int],
                    path: str | Path | None = None) -> tuple[int, int, int]:
    """Refuse a volume too large for the model grid before it is resampled.

    Args:
        shape: ``(D, H, W)`` voxels of the volume as read.
        affine: its ``(4, 4)`` voxel -> world RAS mm.
        spacing_mm: the model's isotropic spacing.
        training_shape_vox: the preset's training grid ``(D, H, W)``.
        path: the volume's file, named in the error.

    Returns:
        The shape of the volume on the model grid (:func:`~rpn_lib.data.geometry.resampled_shape`).

    Raises:
        DataError: the model grid would hold more than :data:`MAX_GRID_FACTOR` times the
            training grid's voxels; the message gives the header's voxel size and field of view.
    """
    grid = resampled_shape(shape, affine, spacing_mm)
    n_grid = float(np.prod(np.asarray(grid, dtype=np.float64)))
    limit = MAX_GRID_FACTOR * float(np.prod(training_shape_vox))
    if n_grid > limit:
        spacing = spacing_from_affine(affine)
        extent = np.asarray(shape) * spacing
        x = " x ".join
        raise DataError(
            f"on the model's grid of {spacing_mm:g} mm voxels this volume would be "
            f"{x(str(n) for n in grid)} voxels ({n_grid * 4 / 2**30:,.1f} GiB as float32), more than "
            f"{MAX_GRID_FACTOR} times the {x(str(n) for n in training_shape_vox)} voxels of the training grid. "
            f"Are the voxel sizes in the header in mm? It gives {x(f'{v:g}' for v in spacing.round(4))} mm "
            f"voxels, a field of view of {x(f'{v:g}' for v in extent.round(1))} mm. Fix the header's "
            f"voxel size, or crop the volume around the face.", path)
    return grid


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def prepare_volume(
    volume: np.ndarray,
    affine: np.ndarray,
    spacing_mm: float,
    shape_vox: tuple[int, int, int] | None = None,
    multiple: int = 8,
    normalize: bool = True,
) -> ModelInput:
    """Resample ``volume`` to an isotropic ``spacing_mm`` grid and fit it to the network.

    Args:
        volume: ``(D, H, W)`` image of any spacing and orientation.
        affine: ``(4, 4)`` voxel -> world RAS mm of ``volume``.
        spacing_mm: the model's isotropic spacing (the preset's).
        shape_vox: crop or pad (centred) to exactly this shape; when None, pad each side up
            to a multiple of ``multiple`` (the network is fully convolutional).
        multiple: side multiple required by the network.
        normalize: map intensities with :func:`normalize_intensity`; False leaves that to the
            caller (for example on a GPU, after the copy) and returns float32 intensities as read.

    Returns:
        A :class:`ModelInput` whose ``affine`` maps the new grid to the same world frame.
    """
    spacing = spacing_from_affine(affine)
    if np.allclose(spacing, spacing_mm, rtol=1e-3, atol=1e-4):
        vol, aff = np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=np.float64)
    else:
        vol, aff = resample_to_spacing(volume, affine, spacing_mm, order=1)
    target = shape_vox if shape_vox is not None else tuple(_round_up(s, multiple) for s in vol.shape)
    if tuple(vol.shape) != tuple(target):
        vol, aff = crop_or_pad_to_shape(vol, aff, target)
    if not normalize:
        return ModelInput(np.asarray(vol, dtype=np.float32), aff, float(spacing_mm), normalized=False)
    return ModelInput(normalize_intensity(vol), aff, float(spacing_mm))
