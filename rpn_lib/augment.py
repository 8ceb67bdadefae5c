"""Training augmentation of the paper (Sec. 3): random rotation in [-25, 25] degrees and flips,
applied to a volume and its landmarks together.

Choices (the paper gives only the ranges): a rotation is the product of three rotations about
the volume's axes, each by an angle drawn uniformly in ``[-max_deg, max_deg]``, about the
volume centre, with trilinear interpolation and zeros outside. A flip mirrors one array axis
drawn at random with probability 1/2. Any mirror turns a face into its mirror image, so the
fetus's left and right swap: the left- and right-eye labels are exchanged
(:data:`rpn_lib.landmarks.FLIP_PERMUTATION`). A rotation that would push a landmark closer
than ``margin_vox`` to the border is redrawn (up to 10 times, then no rotation).
All randomness comes from one ``torch.Generator``, so a run resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rpn_lib.device import computes_float64
from rpn_lib.landmarks import FLIP_PERMUTATION


def rotation_matrix(angles_rad: torch.Tensor) -> torch.Tensor:
    """``(3, 3)`` rotation ``R0 @ R1 @ R2`` about array axes 0, 1, 2 by the three angles."""
    mats = []
    for axis, a in enumerate(angles_rad.tolist()):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        m = torch.eye(3, dtype=torch.float64)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        mats.append(m)
    return mats[0] @ mats[1] @ mats[2]


def rotate(volume: torch.Tensor, landmarks_vox: torch.Tensor, rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate a ``(D, H, W)`` volume and its ``(K, 3)`` voxel landmarks about the volume centre.

    A landmark at ``p`` moves to ``c + R (p - c)``; each output voxel ``q`` samples the input
    at ``c + R^T (q - c)``.

    The volume is resampled on its own device (a GPU when it is there); the landmarks stay on
    theirs.
    """
    dev = volume.device
    shape = torch.tensor(volume.shape, dtype=torch.float64, device=dev)
    centre = (shape - 1) / 2
    rot_v = rot.to(device=dev, dtype=torch.float64)
    axes = [torch.arange(n, dtype=torch.float64, device=dev) for n in volume.shape]
    q = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (D, H, W, 3)
    src = (q - centre) @ rot_v + centre  # row-vector form of R^T (q - c) + c
    norm = src / (shape - 1) * 2 - 1  # align_corners=True normalisation
    grid = norm.flip(-1).to(volume.dtype)[None]  # grid_sample wants (x, y, z) = axes (2, 1, 0)
    out = F.grid_sample(volume[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    lm_centre = centre.to(landmarks_vox.device)
    new_lm = (landmarks_vox.to(torch.float64) - lm_centre) @ rot.to(landmarks_vox.device, torch.float64).T + lm_centre
    return out[0, 0], new_lm.to(landmarks_vox.dtype)


def flip(volume: torch.Tensor, landmarks_vox: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror array ``axis`` and swap the left/right landmark labels.

    Returns the mirrored volume and ``(K, 3)`` landmarks in class order: the new left eye is
    the mirrored old right eye, and vice versa.
    """
    n = volume.shape[axis]
    out = torch.flip(volume, dims=(axis,))
    lm = landmarks_vox.clone()
    lm[:, axis] = (n - 1) - lm[:, axis]
    return out, lm[list(FLIP_PERMUTATION)]


def augment(
    volume: torch.Tensor,
    landmarks_vox: torch.Tensor,
    generator: torch.Generator,
    max_deg: float = 25.0,
    do_flip: bool = True,
    margin_vox: float = 4.0,
    flip_axes: tuple[int, ...] = (1, 2),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation (Sec. 3: [-25, 25] degrees) and random flip of a volume and its landmarks.

    Args:
        volume: ``(D, H, W)`` float tensor.
        landmarks_vox: ``(K, 3)`` landmark voxel coordinates in class order.
        generator: the only source of randomness.
        max_deg: rotation range per axis; 0 disables rotation.
        do_flip: whether to mirror a random axis with probability 1/2.
        flip_axes: the axes a flip may mirror, one drawn uniformly (the presets use ``(1, 2)``:
            the two axes across the ultrasound beam; mirroring depth would put the probe
            below the face, shadows above bones, which no scan shows).
        margin_vox: landmarks must stay this far inside the volume after rotation.
    """
    if max_deg > 0:
        upper = torch.tensor(volume.shape, dtype=torch.float64) - 1 - margin_vox
        for _ in range(10):
            angles = (torch.rand(3, generator=generator, dtype=torch.float64) * 2 - 1) * math.radians(max_deg)
            rot = rotation_matrix(angles)
            shape = torch.tensor(volume.shape, dtype=torch.float64)
            centre = (shape - 1) / 2
            moved = (landmarks_vox.to(torch.float64) - centre) @ rot.T + centre
            if bool(((moved >= margin_vox) & (moved <= upper)).all()):
                volume, landmarks_vox = rotate(volume, landmarks_vox, rot)
                break
    if do_flip:
        u = torch.rand(1, generator=generator).item()
        axis = flip_axes[int(torch.randint(0, len(flip_axes), (1,), generator=generator).item())]
        if u < 0.5:
            volume, landmarks_vox = flip(volume, landmarks_vox, axis)
    return volume, landmarks_vox


def augmented_batch(
    volumes: Sequence[torch.Tensor] | torch.Tensor,
    landmarks_vox: Sequence[torch.Tensor] | torch.Tensor,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    max_deg: float = 25.0,
    do_flip: bool = True,
    flip_axes: tuple[int, ...] = (1, 2),
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: each volume augmented by :func:`augment` on ``device``, then stacked.

    Each ``(D, H, W)`` volume is copied to ``device`` first, so that on a CUDA GPU the
    rotation runs there and not on the CPU (on a 2-core CPU it takes about 0.4 s for a
    ``paper``-scale batch of two: the ``data`` column of ``rpn-lib bench``'s training table).
    On a device without float64 (Apple's MPS) it stays on the CPU. The random draws are made
    on the CPU from ``generator``, in the same order whatever the device, so a run draws the
    same augmentations everywhere; the resampled volumes agree across devices to float
    rounding.

    Args:
        volumes: the batch's ``(D, H, W)`` float volumes (any device), or one ``(B, D, H, W)``
            tensor of them.
        landmarks_vox: their ``(K, 3)`` landmark voxel coordinates, in class order (or one
            ``(B, K, 3)`` tensor).
        generator: a CPU ``torch.Generator``, the only source of randomness.
        device: where the batch goes.
        max_deg, do_flip, flip_axes: as in :func:`augment` (a preset's ``rotation_deg``,
            ``flip`` and ``flip_axes``).
        channels_last: return the volumes in ``torch.channels_last_3d``.

    Returns:
        ``(B, 1, D, H, W)`` volumes and ``(B, K, 3)`` landmarks, both on ``device``.
    """
    if len(volumes) != len(landmarks_vox) or not len(volumes):
        raise ValueError(f"need as many landmark sets as volumes, at least one: got {len(volumes)} volumes and "
                         f"{len(landmarks_vox)} landmark sets")
    work = device if computes_float64(device) else "cpu"  # the rotation's grid is float64
    vols, lms = [], []
    for vol, lm in zip(volumes, landmarks_vox):
        v, p = augment(vol.to(work), lm.cpu(), generator, max_deg, do_flip, flip_axes=flip_axes)
        vols.append(v)
        lms.append(p)
    x = torch.stack(vols)[:, None].to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x, torch.stack(lms).to(device)
