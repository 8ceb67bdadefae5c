"""Augmentation moves volume and landmarks together, and a mirror swaps the eyes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rpn_lib.augment import augment, augmented_batch, flip, rotate, rotation_matrix
from rpn_lib.landmarks import LANDMARK_NAMES


def _dots(shape: tuple[int, int, int], points: torch.Tensor) -> torch.Tensor:
    """A volume with a small Gaussian blob at each point."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"), -1)
    vol = torch.zeros(shape)
    for p in points:
        vol += torch.exp(-((grid - p) ** 2).sum(-1) / (2 * 1.5 ** 2))
    return vol


def _blob_centre(vol: torch.Tensor, near: torch.Tensor, radius: int = 4) -> torch.Tensor:
    lo = (near.round().long() - radius).clamp(min=0)
    hi = near.round().long() + radius + 1
    sub = vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in sub.shape], indexing="ij"), -1)
    return (grid * sub[..., None]).sum((0, 1, 2)) / sub.sum() + lo


def test_rotation_matrix_is_orthonormal() -> None:
    r = rotation_matrix(torch.tensor([0.3, -0.2, 0.4], dtype=torch.float64))
    assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert math.isclose(torch.linalg.det(r).item(), 1.0, abs_tol=1e-12)


def test_rotation_moves_image_and_landmarks_together() -> None:
    pts = torch.tensor([[10.0, 12.0, 20.0], [22.0, 16.0, 9.0], [16.0, 24.0, 14.0]])
    vol = _dots((32, 32, 32), pts)
    rot = rotation_matrix(torch.tensor([0.35, -0.25, 0.4], dtype=torch.float64))
    out, moved = rotate(vol, pts, rot)
    for p in moved:
        assert torch.allclose(_blob_centre(out, p), p, atol=0.3)


def test_flip_mirrors_and_swaps_eyes() -> None:
    lm = torch.tensor([[5.0, 6, 7], [8, 9, 10], [11, 12, 13], [14, 15, 16], [17, 18, 19]])
    vol = torch.arange(20 * 21 * 22, dtype=torch.float32).reshape(20, 21, 22)
    out, new = flip(vol, lm, axis=2)
    assert torch.equal(out, vol.flip(2))
    left, right = LANDMARK_NAMES.index("left_eye"), LANDMARK_NAMES.index("right_eye")
    assert torch.equal(new[left], torch.tensor([11.0, 12, 21 - 13]))
    assert torch.equal(new[right], torch.tensor([5.0, 6, 21 - 7]))
    nose = LANDMARK_NAMES.index("nose_tip")
    assert torch.equal(new[nose], torch.tensor([14.0, 15, 21 - 16]))


def test_augment_is_reproducible_and_keeps_landmarks_inside() -> None:
    pts = torch.tensor([[10.0, 12, 20], [22, 16, 9], [16, 24, 14], [14, 14, 14], [18, 18, 18]])
    vol = _dots((32, 32, 32), pts)
    a = augment(vol, pts, torch.Generator().manual_seed(3))
    b = augment(vol, pts, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for seed in range(20):
        _, lm = augment(vol, pts, torch.Generator().manual_seed(seed), margin_vox=4)
        assert bool(((lm >= 4) & (lm <= 27)).all())


def test_augment_flips_about_half_the_time() -> None:
    pts = torch.tensor([[10.0, 12, 20], [22, 16, 9], [16, 24, 14], [14, 14, 14], [18, 18, 18]])
    vol = torch.zeros(32, 32, 32)
    g = torch.Generator().manual_seed(0)
    swapped = 0
    for _ in range(200):
        _, lm = augment(vol, pts, g, max_deg=0.0)
        # without rotation, an unflipped left eye stays put
        swapped += int(not torch.equal(lm[0], pts[0]))
    assert 70 < swapped < 130


def _batch_inputs() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    pts = torch.tensor([[10.0, 12, 20], [22, 16, 9], [16, 24, 14], [14, 14, 14], [18, 18, 18]])
    return [_dots((32, 32, 32), pts), _dots((32, 32, 32), pts.flip(-1))], [pts, pts.flip(-1)]


def test_augmented_batch_is_augment_on_each_volume_in_turn() -> None:
    vols, lms = _batch_inputs()
    x, lm_b = augmented_batch(vols, lms, torch.Generator().manual_seed(5), "cpu", 25.0, True, (1, 2))
    g = torch.Generator().manual_seed(5)
    for i in range(2):
        v, lm = augment(vols[i], lms[i], g, 25.0, True, flip_axes=(1, 2))
        assert torch.equal(x[i, 0], v) and torch.equal(lm_b[i], lm)
    assert x.shape == (2, 1, 32, 32, 32) and lm_b.shape == (2, 5, 3)
    cl, _ = augmented_batch(vols, lms, torch.Generator().manual_seed(5), "cpu", channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(cl, x)
    with pytest.raises(ValueError, match="as many landmark sets"):
        augmented_batch(vols, lms[:1], torch.Generator())

