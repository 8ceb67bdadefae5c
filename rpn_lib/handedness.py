"""Which eye is the left one: the handedness of a face, from its five landmarks.

A left-right mirror turns a left eye into a right eye, and an ultrasound volume shows the face
at any orientation, so no small patch of image tells the two eyes apart: only the rest of the
face does. With ``Preset.eye_sides = "geometry"`` the network detects "an eye" twice and this
module names the sides.

The rule, in world (RAS) millimetres, where the face is not mirrored: let ``sup`` be the unit
vector from the chin to the middle of the eyebrows, and ``ant`` the vector from the midpoint of
the eyes to the nose tip with its ``sup`` component removed (the face's forward direction).
Then ``ant x sup`` points to the fetus's right (in RAS: anterior x superior = right), and the
left eye is the one further from that direction. Equivalently, with the eyes ``a`` and ``b``:
``a`` is the left eye when ``(b - a) . (ant x sup) > 0``. On the synthetic benchmark the rule
names both eyes right in all 152 cases (``tests/test_handedness.py`` checks it).

The rule needs world coordinates: a voxel grid may be mirrored (an affine with a negative
determinant), a world frame is not.
"""

from __future__ import annotations

import numpy as np

from rpn_lib.landmarks import EYES

__all__ = ["right_direction", "eye_side_sign", "name_eye_sides"]

_BROW, _NOSE, _CHIN = 1, 3, 4


def right_direction(points_mm: np.ndarray) -> np.ndarray:
    """Unit vector towards the fetus's right, ``ant x sup`` of the module docstring.

    Args:
        points_mm: ``(..., 5, 3)`` landmarks in ``LANDMARK_NAMES`` order, world mm. Only the
            eyebrow, the nose tip, the chin and the midpoint of the two eyes are read, so the
            order of the two eyes does not matter.

    Returns:
        ``(..., 3)`` unit vectors (zeros where the face is degenerate: collinear points).
    """
    p = np.asarray(points_mm, dtype=np.float64)
    if p.shape[-2:] != (5, 3):
        raise ValueError(f"need (..., 5, 3) landmarks, got {p.shape}")
    sup = p[..., _BROW, :] - p[..., _CHIN, :]
    sup = sup / np.maximum(_norm(sup), 1e-12)
    ant = p[..., _NOSE, :] - 0.5 * (p[..., EYES[0], :] + p[..., EYES[1], :])
    ant = ant - np.sum(ant * sup, axis=-1, keepdims=True) * sup
    # ant x sup, written out (np.cross costs several times more on small arrays)
    right = ant[..., [1, 2, 0]] * sup[..., [2, 0, 1]] - ant[..., [2, 0, 1]] * sup[..., [1, 2, 0]]
    norm = _norm(right)
    return np.where(norm > 1e-12, right / np.maximum(norm, 1e-12), 0.0)


def _norm(v: np.ndarray) -> np.ndarray:
    """Euclidean length along the last axis, kept as a length-1 axis."""
    return np.sqrt(np.sum(v * v, axis=-1, keepdims=True))


def eye_side_sign(points_mm: np.ndarray) -> np.ndarray:
    """``(b - a) . right``: positive where the point in the left-eye slot is the left eye.

    Args:
        points_mm: ``(..., 5, 3)`` landmarks, world mm; ``a`` is slot ``EYES[0]`` (left eye),
            ``b`` slot ``EYES[1]`` (right eye).

    Returns:
        ``(...,)`` signed distance in mm along :func:`right_direction` from ``a`` to ``b``.
    """
    p = np.asarray(points_mm, dtype=np.float64)
    right = right_direction(p)
    return np.sum((p[..., EYES[1], :] - p[..., EYES[0], :]) * right, axis=-1)


def name_eye_sides(points_mm: np.ndarray) -> np.ndarray:
    """Which faces have their eyes in the wrong slots.

    Args:
        points_mm: ``(..., 5, 3)`` landmarks, world mm, two eyes in any order.

    Returns:
        ``(...,)`` bool, True where the two eye slots must be swapped so that slot
        ``EYES[0]`` holds the left eye.
    """
    return eye_side_sign(points_mm) < 0
