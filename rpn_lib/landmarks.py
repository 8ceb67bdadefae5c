"""The five fetal-face landmarks of the paper and their landmark-centred boxes.

Order and names are fixed for the whole library (paper, Fig. 3a): class index ``k`` in
``0..4`` is ``LANDMARK_NAMES[k]``; the detector's class ``k + 1`` is that landmark and class 0
is background. "Left" and "right" are the fetus's own left and right.
"""

from __future__ import annotations

LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "middle_eyebrow", "right_eye", "nose_tip", "chin")
"""Label names, in class order (paper Fig. 3a nodes 1..5)."""

NUM_LANDMARKS: int = len(LANDMARK_NAMES)

BOX_SIZE_MM: tuple[float, ...] = tuple(s * 1.3 for s in (14, 24, 14, 24, 24))
"""Edge of each landmark-centred cubic box in mm (paper Sec. 2.2: eyes 14^3 voxels, the
others 24^3 voxels, at the paper's 1.3 mm spacing)."""

EYES: tuple[int, int] = (0, 2)
"""Landmark indices of the left and the right eye."""

FLIP_PERMUTATION: tuple[int, ...] = (2, 1, 0, 3, 4)
"""Class permutation under a left-right mirror: the eyes swap, the midline stays."""


def box_size_vox(spacing_mm: float) -> tuple[float, ...]:
    """Box edge per landmark in voxels at an isotropic ``spacing_mm`` (14/24 at 1.3 mm)."""
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    return tuple(s / spacing_mm for s in BOX_SIZE_MM)
