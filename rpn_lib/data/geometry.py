"""Voxels, millimetres and grids: the geometry every volume and landmark goes through.

A volume is an array ``(D, H, W)`` with an affine ``A`` (4, 4) that maps a voxel index
``(i, j, k)`` (array axes 0, 1, 2; voxel centres at integer indices) to world RAS millimetres:
``world = A[:3, :3] @ vox + A[:3, 3]``. This is NIfTI's (and nibabel's) convention. The
columns of ``A[:3, :3]`` are the world directions of the array axes scaled by the voxel
spacing; they may be rotated, anisotropic and even sheared, and every function here is exact
for all of these.

Landmarks live in world millimetres, so resampling, cropping or padding a volume never
changes them: only the affine changes, and :func:`world_to_voxel` with the new affine gives
their new voxel coordinates.
"""

from __future__ import annotations

from pathlib import Path
from typing import overload

import numpy as np
from scipy import ndimage

from rpn_lib.errors import DataError

_LPS_FLIP = np.array([-1.0, -1.0, 1.0])


def _as_points(points: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(N, 3)`` float64 view of ``points`` (a single ``(3,)`` point is accepted)."""
    p = np.asarray(points, dtype=np.float64)
    single = p.ndim == 1
    p = np.atleast_2d(p)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3) or (3,), got {np.shape(points)}")
    return p, single


def voxel_to_world(points_vox: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel coordinates -> world millimetres.

    Args:
        points_vox: ``(N, 3)`` (or ``(3,)``) voxel coordinates in array axis order (i, j, k).
        affine: ``(4, 4)`` voxel -> world affine.

    Returns:
        ``(N, 3)`` (or ``(3,)``) world coordinates in mm, in the affine's frame (RAS here).
    """
    p, single = _as_points(points_vox)
    a = np.asarray(affine, dtype=np.float64)
    out = p @ a[:3, :3].T + a[:3, 3]
    return out[0] if single else out


def world_to_voxel(points_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World millimetres -> (fractional) voxel coordinates, through the inverse affine.

    Exact for rotated, anisotropic and sheared affines (the full 3x3 part is inverted).

    Args:
        points_mm: ``(N, 3)`` (or ``(3,)``) world coordinates in mm.
        affine: ``(4, 4)`` voxel -> world affine (non-singular).

    Returns:
        ``(N, 3)`` (or ``(3,)``) voxel coordinates (i, j, k), not rounded.
    """
    p, single = _as_points(points_mm)
    a = np.asarray(affine, dtype=np.float64)
    out = np.linalg.solve(a[:3, :3], (p - a[:3, 3]).T).T
    return out[0] if single else out


def ras_to_lps(points: np.ndarray) -> np.ndarray:
    """RAS mm -> LPS mm (negate x and y). ``(N, 3)`` or ``(3,)`` in, same shape out."""
    return np.asarray(points, dtype=np.float64) * _LPS_FLIP


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """LPS mm -> RAS mm (negate x and y; the map is its own inverse)."""
    return np.asarray(points, dtype=np.float64) * _LPS_FLIP


def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing in mm along each array axis: ``(3,)`` norms of the affine's columns."""
    a = np.asarray(affine, dtype=np.float64)
    return np.linalg.norm(a[:3, :3], axis=0)


def check_affine(affine: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Validate a voxel -> world affine and return it as ``(4, 4)`` float64.

    Raises:
        DataError: (naming ``path``) if the affine is not 4x4, has a non-finite entry, a last
            row other than ``0 0 0 1``, or a singular (or numerically singular) 3x3 part.
    """
    a = np.asarray(affine)
    if a.shape != (4, 4):
        raise DataError(f"affine must be 4x4, got shape {a.shape}", path)
    try:
        a = a.astype(np.float64)
    except (TypeError, ValueError):
        raise DataError("affine is not numeric", path) from None
    if not np.all(np.isfinite(a)):
        raise DataError("affine has NaN or infinite entries", path)
    if not np.allclose(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise DataError(f"affine's last row must be 0 0 0 1, got {a[3].tolist()}", path)
    spacing = spacing_from_affine(a)
    if np.any(spacing == 0) or np.linalg.cond(a[:3, :3] / spacing) > 1e8:
        raise DataError(
            f"affine is singular (voxel axes are degenerate; spacing {spacing.round(6).tolist()})", path
        )
    return a


def grid_affine(affine: np.ndarray, spacing_mm: float) -> np.ndarray:
    """The affine of an isotropic grid with the same axis directions and field-of-view corner.

    Each column of ``affine[:3, :3]`` is normalised and scaled by ``spacing_mm`` (rotation,
    flips and any shear of the original axes are kept). The origin moves so that the outer
    corner of voxel 0 (index -0.5 on every axis) stays at the same world point.
    """
    a = check_affine(affine)
    spacing = spacing_from_affine(a)
    directions = a[:3, :3] / spacing
    out = np.eye(4)
    out[:3, :3] = directions * spacing_mm
    out[:3, 3] = a[:3, 3] + directions @ (0.5 * (spacing_mm - spacing))
    return out


def resampled_shape(shape: tuple[int, ...], affine: np.ndarray, spacing_mm: float) -> tuple[int, int, int]:
    """The shape ``(D', H', W')`` that :func:`resample_to_spacing` gives a volume of ``shape``
    voxels with ``affine``: axis ``a`` gets ``max(1, round(n_a * s_a / spacing_mm))`` voxels,
    ``s_a`` its spacing in mm. Computed without touching any voxel, so that a caller can
    refuse a grid too large to hold before allocating it."""
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 sides, got {tuple(shape)}")
    spacing = spacing_from_affine(check_affine(affine))
    return tuple(max(1, int(round(n * s / spacing_mm))) for n, s in zip(shape, spacing))  # type: ignore[return-value]


@overload
def resample_to_spacing(
    volume: np.ndarray, affine: np.ndarray, spacing_mm: float, landmarks_world: None = None,
    order: int = 1, antialias: bool = True,
) -> tuple[np.ndarray, np.ndarray]: ...


@overload
def resample_to_spacing(
    volume: np.ndarray, affine: np.ndarray, spacing_mm: float, landmarks_world: np.ndarray,
    order: int = 1, antialias: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def resample_to_spacing(
    volume: np.ndarray,
    affine: np.ndarray,
    spacing_mm: float,
    landmarks_world: np.ndarray | None = None,
    order: int = 1,
    antialias: bool = True,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a volume to an isotropic grid of ``spacing_mm``, keeping its axis directions.

    The new grid (see :func:`grid_affine`) has the original axes' directions and covers the
    same world extent: axis ``a`` gets ``round(n_a * s_a / spacing_mm)`` voxels, with the
    field-of-view corner fixed. Intensities are interpolated with
    ``scipy.ndimage.affine_transform`` (spline ``order``; edges extended by the nearest
    voxel). Choice: when an axis is down-sampled by a factor ``f > 1`` and ``antialias`` is
    set, the volume is first smoothed along it with a Gaussian of sigma ``(f - 1) / 2``
    voxels (as scikit-image's ``resize`` does), so that speckle does not alias.

    Landmarks in world mm do not change under resampling: they are world coordinates. Only
    their voxel coordinates change; pass ``landmarks_world`` to get them on the new grid
    (they equal ``world_to_voxel(landmarks_world, new_affine)``).

    Args:
        volume: ``(D, H, W)`` intensities.
        affine: ``(4, 4)`` voxel -> world RAS mm of ``volume``.
        spacing_mm: the new isotropic spacing.
        landmarks_world: optional ``(N, 3)`` world points (RAS mm).
        order: spline order of the interpolation (0 nearest, 1 linear, 3 cubic).
        antialias: smooth before down-sampling (see above).

    Returns:
        ``(new_volume float32 (D', H', W'), new_affine (4, 4))``, plus the landmarks' ``(N, 3)``
        voxel coordinates on the new grid when ``landmarks_world`` is given.
    """
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3D (D, H, W), got shape {vol.shape}")
    a = check_affine(affine)
    spacing = spacing_from_affine(a)
    new_aff = grid_affine(a, spacing_mm)
    new_shape = resampled_shape(vol.shape, a, spacing_mm)
    # new voxel -> old voxel. The axes keep their directions, so this is diagonal up to
    # round-off; the general matrix is used anyway.
    m = np.linalg.solve(a, new_aff)
    if antialias:
        factors = spacing_mm / spacing
        sigma = np.maximum(0.0, (factors - 1.0) / 2.0)
        if np.any(sigma > 0):
            vol = ndimage.gaussian_filter(vol, sigma=sigma, mode="nearest")
    out = ndimage.affine_transform(
        vol, m[:3, :3], offset=m[:3, 3], output_shape=new_shape, order=order, mode="nearest",
        output=np.float32,
    )
    if landmarks_world is None:
        return out, new_aff
    return out, new_aff, world_to_voxel(landmarks_world, new_aff)


def crop_or_pad_to_shape(
    volume: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    center_vox: np.ndarray | None = None,
    fill: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut or pad a volume to exactly ``shape`` and return the matching affine.

    Voxel ``j`` of the result is voxel ``j + start`` of the input, with
    ``start = floor(center_vox - (shape - 1) / 2 + 0.5)`` per axis (``center_vox`` defaults to
    the volume's centre ``(n - 1) / 2``), so the requested centre lands on the result's centre
    ``(shape - 1) / 2``, rounded to a voxel (an integer centre goes to the lower of the two
    middle voxels of an even side; the default centre crops and pads symmetrically when
    ``n - shape`` is even). Voxels outside the input are ``fill``. World coordinates are unchanged: the new
    affine is ``affine @ translate(start)``.

    Args:
        volume: ``(D, H, W)`` array.
        affine: ``(4, 4)`` voxel -> world mm.
        shape: output ``(D', H', W')``.
        center_vox: ``(3,)`` input voxel coordinate to centre on.
        fill: value of padded voxels.

    Returns:
        ``(new_volume (D', H', W') same dtype, new_affine (4, 4))``.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3D (D, H, W), got shape {vol.shape}")
    shape_arr = np.asarray(shape, dtype=np.int64)
    if shape_arr.shape != (3,) or np.any(shape_arr < 1):
        raise ValueError(f"shape must be three positive integers, got {shape}")
    n = np.asarray(vol.shape, dtype=np.int64)
    centre = (n - 1) / 2.0 if center_vox is None else np.asarray(center_vox, dtype=np.float64)
    start = np.floor(centre - (shape_arr - 1) / 2.0 + 0.5).astype(np.int64)
    out = np.full(tuple(shape_arr), fill, dtype=vol.dtype)
    src_lo = np.clip(start, 0, n)
    src_hi = np.clip(start + shape_arr, 0, n)
    if np.all(src_hi > src_lo):
        dst_lo = src_lo - start
        dst_hi = dst_lo + (src_hi - src_lo)
        out[tuple(slice(lo, hi) for lo, hi in zip(dst_lo, dst_hi))] = vol[
            tuple(slice(lo, hi) for lo, hi in zip(src_lo, src_hi))
        ]
    shift = np.eye(4)
    shift[:3, 3] = start
    return out, np.asarray(affine, dtype=np.float64) @ shift


def reorient_axes(
    volume: np.ndarray,
    affine: np.ndarray,
    order: tuple[int, int, int] = (0, 1, 2),
    flip: tuple[int, ...] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Permute and reverse array axes without moving anything in the world.

    Axis ``i`` of the result is axis ``order[i]`` of the input; then each axis of the result
    listed in ``flip`` runs backwards. The new affine is chosen so that every voxel keeps its
    world position: landmarks in world mm stay valid, and no value is interpolated.

    Why it matters: an ultrasound volume's look depends on where the probe is (shadows and
    attenuation run along the beams), and a network sees the array, not the world. The
    synthetic volumes of :mod:`rpn_lib.data.synth` put the probe on the low-index side of array
    axis 0 with the beams along ``+axis 0``, and a model trained on them expects that layout; a
    volume whose beams run along another axis, or backwards, must be brought to it first
    (``Detector(..., axis_order=..., flip_axes=...)``, ``rpn-lib detect --axis-order/--flip-axes``).

    Args:
        volume: ``(D, H, W)`` array.
        affine: ``(4, 4)`` voxel -> world mm.
        order: a permutation of ``(0, 1, 2)``.
        flip: result axes (after ``order``) to reverse, each 0, 1 or 2 at most once.

    Returns:
        ``(new_volume, new_affine)``; the volume is a copy (contiguous).

    Raises:
        ValueError: ``order`` is not a permutation or ``flip`` names an axis twice or out of range.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3D (D, H, W), got shape {vol.shape}")
    order_t = tuple(int(a) for a in order)
    if sorted(order_t) != [0, 1, 2]:
        raise ValueError(f"order must be a permutation of (0, 1, 2), got {tuple(order)}")
    flip_t = tuple(int(a) for a in flip)
    if any(a not in (0, 1, 2) for a in flip_t) or len(set(flip_t)) != len(flip_t):
        raise ValueError(f"flip must name distinct axes among 0, 1, 2, got {tuple(flip)}")
    a = check_affine(affine)
    out = np.transpose(vol, order_t)
    # new voxel v -> old voxel: old[order[i]] = v[i] (or n_i - 1 - v[i] on a flipped axis)
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    for i, src in enumerate(order_t):
        if i in flip_t:
            m[src, i], m[src, 3] = -1.0, out.shape[i] - 1
        else:
            m[src, i] = 1.0
    if flip_t:
        out = np.flip(out, axis=flip_t)
    return np.ascontiguousarray(out), a @ m
