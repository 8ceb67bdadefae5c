"""Small helpers behind the book's interactive figures.

:func:`face_rotation` turns two angles a reader can set with sliders (how far the face is
turned away from the probe, and how far it is rolled about its own anterior axis) into the
``rotation`` override of :func:`rpn_lib.data.synth.generate_case`.

World frame of the synthetic volumes (:mod:`rpn_lib.data.synth`): array axes 0, 1, 2 are world
x, y, z; the probe sits on the low side of axis 0 and its beams run along +x, so "towards the
probe" is world ``-x``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["face_rotation"]


def _axis_rotation(axis: int, angle_rad: float) -> np.ndarray:
    """``(3, 3)`` right-handed rotation by ``angle_rad`` about coordinate axis 0, 1 or 2."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def face_rotation(tilt_deg: float = 0.0, roll_deg: float = 0.0, azimuth_deg: float = 0.0) -> np.ndarray:
    """Local -> world rotation of a fetal face placed by two (or three) angles.

    At ``tilt_deg = roll_deg = 0`` the face looks straight at the probe (its anterior axis,
    local ``+y``, is world ``-x``) with the top of its head towards world ``+z``; its right
    (local ``+x``) is then world ``+y``. Then, in this order:

    1. ``roll_deg`` turns the face about its own anterior axis (a head tilted towards a
       shoulder; right-handed about local ``+y``);
    2. ``tilt_deg`` turns the anterior axis away from the probe direction by that angle,
       towards world ``+y`` rotated by ``azimuth_deg`` about world ``x`` (``azimuth_deg = 0``:
       the face turns sideways, to world ``+y``; 90: it looks up, to world ``+z``).

    Args:
        tilt_deg: angle (degrees) between the face's anterior axis and the direction to the
            probe, 0-180.
        roll_deg: rotation (degrees) about the face's anterior axis.
        azimuth_deg: direction (degrees) in which the tilt turns the face.

    Returns:
        ``(3, 3)`` proper rotation whose columns are the fetus's right, anterior and superior
        directions in world coordinates (the ``rotation`` of
        :class:`rpn_lib.data.phantom.FaceGeometry`).
    """
    base = np.array([[0.0, -1.0, 0.0],   # columns: right = +y, anterior = -x, superior = +z
                     [1.0, 0.0, 0.0],
                     [0.0, 0.0, 1.0]])
    roll = _axis_rotation(1, np.deg2rad(roll_deg))         # about local anterior (local y)
    # tilt about world z turns -x towards +y; the azimuth turns that tilt axis about world x
    az = _axis_rotation(0, np.deg2rad(azimuth_deg))
    tilt = az @ _axis_rotation(2, -np.deg2rad(tilt_deg)) @ az.T
    return tilt @ base @ roll
