"""Fetal-face phantom: implicit anatomy in millimetres, its landmarks, and tissue maps.

The phantom is a scene of implicit shapes (signed distance functions, SDFs: negative inside,
in mm) that is evaluated on any set of points: on the voxel centres of a grid to render a
volume, or on a few points to label tissues in a test. Landmarks are computed from the very
same SDFs, so they agree with the rendered image at every voxel spacing.

Face-local frame
    The anatomy is modelled in the fetus's own anatomical RAS frame, in "unit" millimetres
    of a reference face (gestational age about 29 weeks, eyebrow-to-chin height about 45):

    * ``+x`` = the fetus's RIGHT, ``+y`` = ANTERIOR (out of the face), ``+z`` = SUPERIOR;
    * the origin is near the midpoint of the two eyeball centres.

    This frame is right-handed and anatomically consistent (superior x anterior = left), so a
    proper rotation (``det = +1``) places the fetus in the world without mirroring it. The
    fetus's LEFT eye therefore sits at NEGATIVE local ``x``. A subject's face is the unit
    face (with its own shape factors) scaled by ``scale`` (:attr:`FaceGeometry.scale`) so
    that its eyebrow-to-chin height is the drawn face height: ``p_local_mm = scale * p_unit``
    and ``p_world = R @ p_local_mm + t``.

Landmarks (in :data:`rpn_lib.landmarks.LANDMARK_NAMES` order)
    * ``left_eye``, ``right_eye``: centres of the fetus's left and right eyeballs;
    * ``middle_eyebrow``: the point of the skin surface straight in front (local ``+y``) of
      the midpoint of the two eyebrows (the glabella);
    * ``nose_tip``: the most anterior point (largest local ``y``) of the skin near the nose;
    * ``chin``: the most anterior-inferior skin point of the chin, i.e. the extreme point in
      the direction ``(0, 1, -1) / sqrt(2)`` (45 degrees between anterior and inferior).

    Skin points are found numerically on the skin SDF (a column search plus bisection), to
    about 0.01 mm.

Tissues and painting
    :class:`Tissue` names the tissue codes. A scene is "painted" layer by layer (maternal
    wall, placenta, fetal skin and soft tissue, brain, midline, bone, eyes, distractors), each
    later layer covering the earlier ones; hard labels use ``sdf <= 0`` and the renderer uses
    a partial-volume occupancy ``clip(0.5 - sdf / spacing, 0, 1)`` so that thin structures
    (skin, skull, falx) survive coarse grids without aliasing. Each shape is evaluated only
    in its own bounding box (plus padding), which keeps a 64^3 grid in tens of milliseconds.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rpn_lib.landmarks import LANDMARK_NAMES

__all__ = [
    "Tissue", "SubjectParams", "FaceGeometry", "Hand", "Cord", "Uterus", "Scene",
    "sample_subject", "random_rotation", "sample_hand", "sample_cord", "sample_uterus",
    "face_height_for_ga", "CHIN_DIRECTION_LOCAL",
]

BIG = np.float32(1e4)
"""SDF value used for "far outside" (finite, so that smooth minima stay finite)."""

CHIN_DIRECTION_LOCAL = np.array([0.0, 1.0, -1.0]) / np.sqrt(2.0)
"""Direction (local frame) in which the chin landmark is the extreme skin point."""

# Smooth-union radii (unit mm) and layer thicknesses (unit mm).
_K_FACE = 2.5
_K_FACE_HEAD = 4.0
_K_BODY = 7.0
_SKIN_MM = 1.0
_SCALP_MM = 2.5
_SKULL_MM = 2.2
_PLATE_MM = 1.4
_FALX_MM = 1.0
_EYE_RIM_MM = 0.8


class Tissue(enum.IntEnum):
    """Tissue codes of the label map (hard labels of :meth:`Scene.tissue_labels`)."""

    FLUID = 0          # amniotic fluid (also the fluid in the open mouth)
    MATERNAL_FAT = 1   # maternal subcutaneous fat (near the probe)
    FASCIA = 2         # thin bright fascia lines in the maternal wall
    UTERUS = 3         # uterine wall (myometrium)
    PLACENTA = 4
    SOFT_TISSUE = 5    # fetal soft tissue under the skin
    SKIN = 6           # fetal skin (outer ~1 mm of the fetal body)
    BRAIN = 7
    MIDLINE = 8        # falx / interhemispheric fissure (the brain's midline echo)
    BONE = 9           # skull, skull base, brow ridge, nasal bone, maxilla, mandible, spine, hand
    EYE_GLOBE = 10     # vitreous (dark)
    EYE_RIM = 11       # sclera (bright rim of the globe)
    LENS = 12
    CORD = 13          # umbilical cord (Wharton's jelly)
    VESSEL = 14        # umbilical vessel (dark)


# --------------------------------------------------------------------------------------------
# Implicit primitives (all operate on unit-mm coordinate arrays of any common shape)
# --------------------------------------------------------------------------------------------


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (smooth union of two SDFs) with blend radius ``k``."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - (h * h) * (k * 0.25)


def _plane(x: np.ndarray, y: np.ndarray, z: np.ndarray, n: np.ndarray, p0: np.ndarray) -> np.ndarray:
    """Signed distance to the plane through ``p0`` with unit normal ``n`` (positive along n)."""
    return (x - p0[0]) * n[0] + (y - p0[1]) * n[1] + (z - p0[2]) * n[2]


@dataclass(frozen=True)
class _Ellipsoid:
    """Ellipsoid with centre ``c`` and semi-axes ``r``, optionally rotated (rows of ``rot``
    are its axes in the parent frame). SDF: the usual first-order approximation
    ``k0 (k0 - 1) / k1`` (exact on the surface, good near it)."""

    c: tuple[float, float, float]
    r: tuple[float, float, float]
    rot: tuple[tuple[float, ...], ...] | None = None

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        dx, dy, dz = x - self.c[0], y - self.c[1], z - self.c[2]
        if self.rot is not None:
            m = self.rot
            dx, dy, dz = (m[0][0] * dx + m[0][1] * dy + m[0][2] * dz,
                          m[1][0] * dx + m[1][1] * dy + m[1][2] * dz,
                          m[2][0] * dx + m[2][1] * dy + m[2][2] * dz)
        ax, ay, az = dx / self.r[0], dy / self.r[1], dz / self.r[2]
        k0 = np.sqrt(ax * ax + ay * ay + az * az)
        bx, by, bz = ax / self.r[0], ay / self.r[1], az / self.r[2]
        k1 = np.sqrt(bx * bx + by * by + bz * bz)
        return k0 * (k0 - 1.0) / (k1 + 1e-6)

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(self.c, float)
        if self.rot is None:
            half = np.asarray(self.r, float)
        else:  # bounding box of the rotated ellipsoid
            m = np.asarray(self.rot, float)
            half = np.sqrt(((m.T * np.asarray(self.r, float)) ** 2).sum(axis=1))
        return c - half, c + half


@dataclass(frozen=True)
class _Sphere:
    c: tuple[float, float, float]
    r: float

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        dx, dy, dz = x - self.c[0], y - self.c[1], z - self.c[2]
        return np.sqrt(dx * dx + dy * dy + dz * dz) - self.r

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(self.c, float)
        return c - self.r, c + self.r


@dataclass(frozen=True)
class _Capsule:
    """Segment ``a``-``b`` swept by a sphere whose radius goes linearly from ``ra`` to ``rb``."""

    a: tuple[float, float, float]
    b: tuple[float, float, float]
    ra: float
    rb: float

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        bax, bay, baz = self.b[0] - self.a[0], self.b[1] - self.a[1], self.b[2] - self.a[2]
        inv = 1.0 / max(bax * bax + bay * bay + baz * baz, 1e-12)
        px, py, pz = x - self.a[0], y - self.a[1], z - self.a[2]
        h = np.clip((px * bax + py * bay + pz * baz) * inv, 0.0, 1.0)
        dx, dy, dz = px - bax * h, py - bay * h, pz - baz * h
        return np.sqrt(dx * dx + dy * dy + dz * dz) - (self.ra + (self.rb - self.ra) * h)

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        a, b = np.asarray(self.a, float), np.asarray(self.b, float)
        r = max(self.ra, self.rb)
        return np.minimum(a, b) - r, np.maximum(a, b) + r


_Prim = _Ellipsoid | _Sphere | _Capsule


def _prim_to_dict(p: _Prim) -> dict[str, Any]:
    d = dataclasses.asdict(p)
    d["kind"] = type(p).__name__.lstrip("_").lower()
    return d


def _tup(v: Sequence[float]) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


# --------------------------------------------------------------------------------------------
# Evaluation domains: a grid (rendering) or a list of points (labels, landmark search)
# --------------------------------------------------------------------------------------------


class _Domain:
    """Where a scene is evaluated. ``block`` returns the slice of the domain's arrays that a
    shape's bounding box touches and the shape-frame coordinates there."""

    shape: tuple[int, ...]
    dtype: type

    def full(self, value: float) -> np.ndarray:
        return np.full(self.shape, value, dtype=self.dtype)

    def block(self, lo: np.ndarray, hi: np.ndarray, pad_unit: float) -> Any:  # pragma: no cover
        raise NotImplementedError

    def world_block(self) -> Any:  # pragma: no cover
        raise NotImplementedError


class _PointsDomain(_Domain):
    """Arbitrary points, given in unit-local coordinates (and optionally world mm)."""

    def __init__(self, local_unit: np.ndarray, world_mm: np.ndarray | None = None) -> None:
        p = np.asarray(local_unit, dtype=np.float64)
        self.x, self.y, self.z = p[:, 0], p[:, 1], p[:, 2]
        self.world = None if world_mm is None else np.asarray(world_mm, dtype=np.float64)
        self.shape = (p.shape[0],)
        self.dtype = np.float64

    def block(self, lo: np.ndarray, hi: np.ndarray, pad_unit: float) -> Any:
        return slice(None), self.x, self.y, self.z

    def world_block(self) -> Any:
        if self.world is None:
            raise ValueError("this domain has no world coordinates")
        return slice(None), self.world[:, 0], self.world[:, 1], self.world[:, 2]


class _GridDomain(_Domain):
    """An axis-aligned voxel grid: ``axes_mm`` are the world coordinates of the voxel centres
    along array axes 0, 1, 2 (world x, y, z)."""

    def __init__(self, axes_mm: Sequence[np.ndarray], rotation: np.ndarray, translation: np.ndarray,
                 scale: float) -> None:
        self.axes = [np.asarray(a, dtype=np.float64) for a in axes_mm]
        self.shape = tuple(len(a) for a in self.axes)
        self.dtype = np.float32
        self.rot = np.asarray(rotation, dtype=np.float64)
        self.t = np.asarray(translation, dtype=np.float64)
        self.scale = float(scale)

    def _slices(self, wlo: np.ndarray, whi: np.ndarray) -> tuple[slice, ...] | None:
        sl = []
        for a, lo, hi in zip(self.axes, wlo, whi):
            i0 = int(np.searchsorted(a, lo, side="left"))
            i1 = int(np.searchsorted(a, hi, side="right"))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        return tuple(sl)

    def block(self, lo: np.ndarray, hi: np.ndarray, pad_unit: float) -> Any:
        lo = np.asarray(lo, float) - pad_unit
        hi = np.asarray(hi, float) + pad_unit
        corners = np.array([[lo[0] if i & 1 == 0 else hi[0], lo[1] if i & 2 == 0 else hi[1],
                             lo[2] if i & 4 == 0 else hi[2]] for i in range(8)])
        world = corners * self.scale @ self.rot.T + self.t
        sl = self._slices(world.min(axis=0), world.max(axis=0))
        if sl is None:
            return None
        g = [self.axes[a][sl[a]] - self.t[a] for a in range(3)]
        g0, g1, g2 = g[0][:, None, None], g[1][None, :, None], g[2][None, None, :]
        # local = R^T (p - t) / scale, computed per local axis from broadcast 1-D pieces
        out = []
        for c in range(3):
            r = self.rot[:, c] / self.scale
            out.append((r[0] * g0 + r[1] * g1 + r[2] * g2).astype(np.float32))
        return (sl, *out)

    def world_block(self) -> Any:
        a = self.axes
        return ((slice(None),) * 3, a[0][:, None, None].astype(np.float32),
                a[1][None, :, None].astype(np.float32), a[2][None, None, :].astype(np.float32))


# --------------------------------------------------------------------------------------------
# Painters: hard labels (points) or soft property maps (grid)
# --------------------------------------------------------------------------------------------


class _LabelPainter:
    """Hard labels: a later layer overwrites where its SDF is <= 0."""

    def __init__(self, domain: _Domain) -> None:
        self.labels = np.full(domain.shape, int(Tissue.FLUID), dtype=np.int16)

    def paint(self, tissue: Tissue, sl: Any, sdf_mm: np.ndarray) -> None:
        view = self.labels[sl]
        view[np.broadcast_to(sdf_mm <= 0, view.shape)] = int(tissue)


class _PropertyPainter:
    """Soft property maps (``(P, *grid)``): ``M += o * (value - M)`` with partial-volume
    occupancy ``o = clip(0.5 - sdf / width, 0, 1)``."""

    def __init__(self, domain: _Domain, table: np.ndarray, width_mm: float) -> None:
        self.table = np.asarray(table, dtype=np.float32)
        self.maps = np.empty((self.table.shape[1], *domain.shape), dtype=np.float32)
        for p in range(self.table.shape[1]):
            self.maps[p].fill(self.table[int(Tissue.FLUID), p])
        self.inv_w = np.float32(1.0 / width_mm)

    def paint(self, tissue: Tissue, sl: Any, sdf_mm: np.ndarray) -> None:
        o = np.clip(np.float32(0.5) - sdf_mm * self.inv_w, 0.0, 1.0, dtype=np.float32)
        if not o.any():
            return
        for p in range(self.table.shape[1]):
            view = self.maps[p][sl]
            view += o * (self.table[int(tissue), p] - view)


# --------------------------------------------------------------------------------------------
# Subject parameters and the unit anatomy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubjectParams:
    """Per-subject anatomy (dimensionless factors around 1, offsets in unit mm).

    Attributes:
        ga_weeks: gestational age; sets ``face_height_mm`` (eyebrow-to-chin, 35-60 mm).
        face_height_mm: target distance middle_eyebrow-chin in mm (sets the scale).
        iod: interocular (eye centre) distance factor (unit 27 mm).
        eye_radius: eyeball radius factor (unit 6 mm).
        nose_length: factor of the nose tip's depth below the eyes (unit 13.5 mm).
        nose_protrusion: factor of the nose tip's protrusion (unit 5 mm beyond its base).
        chin_protrusion: anterior offset of chin and mandible front (unit mm).
        face_width: lateral factor of cheeks, jaw, brow and zygoma.
        lower_face: vertical factor of lips, chin and jaw.
        brow_height: vertical offset of the brow ridge (unit mm).
        head: factors of the cranial vault semi-axes (x, y, z).
        eye_offset_left, eye_offset_right: per-eye centre offsets (unit mm), the asymmetry.
        nose_dx, chin_dx: lateral deviation of nose tip and chin (unit mm).
        cheek_left, cheek_right: per-side cheek fullness factors.
    """

    ga_weeks: float = 29.0
    face_height_mm: float = 45.0
    iod: float = 1.0
    eye_radius: float = 1.0
    nose_length: float = 1.0
    nose_protrusion: float = 1.0
    chin_protrusion: float = 0.0
    face_width: float = 1.0
    lower_face: float = 1.0
    brow_height: float = 0.0
    head: tuple[float, float, float] = (1.0, 1.0, 1.0)
    eye_offset_left: tuple[float, float, float] = (0.0, 0.0, 0.0)
    eye_offset_right: tuple[float, float, float] = (0.0, 0.0, 0.0)
    nose_dx: float = 0.0
    chin_dx: float = 0.0
    cheek_left: float = 1.0
    cheek_right: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SubjectParams:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def face_height_for_ga(ga_weeks: float) -> float:
    """Mean eyebrow-to-chin height (mm) at a gestational age: 35 mm at 22 weeks to 58 mm at
    36 weeks, linear (a modelling choice for the benchmark, not a clinical growth chart)."""
    return 35.0 + (float(ga_weeks) - 22.0) * (23.0 / 14.0)


def sample_subject(rng: np.random.Generator, ga_weeks: float | None = None,
                   variability: float = 1.0) -> SubjectParams:
    """Draw one subject's anatomy.

    Args:
        rng: the generator (the only source of randomness).
        ga_weeks: gestational age; drawn uniformly in [22, 36] weeks when None.
        variability: multiplies every standard deviation (0 gives the mean face).

    Returns:
        :class:`SubjectParams`. The face height is ``face_height_for_ga(ga)`` times a
        N(1, 0.04) factor, clipped to [36, 59] mm.
    """
    v = float(variability)

    def n(sd: float, lim: float) -> float:
        return float(np.clip(rng.normal(0.0, sd * v), -lim * max(v, 1e-9), lim * max(v, 1e-9)))

    ga = float(rng.uniform(22.0, 36.0)) if ga_weeks is None else float(ga_weeks)
    fh = float(np.clip(face_height_for_ga(ga) * (1.0 + n(0.04, 0.1)), 36.0, 59.0))
    return SubjectParams(
        ga_weeks=ga, face_height_mm=fh,
        iod=1.0 + n(0.07, 0.16), eye_radius=1.0 + n(0.06, 0.14),
        nose_length=1.0 + n(0.08, 0.18), nose_protrusion=1.0 + n(0.12, 0.25),
        chin_protrusion=n(1.6, 3.5), face_width=1.0 + n(0.05, 0.12),
        lower_face=1.0 + n(0.06, 0.14), brow_height=n(0.8, 2.0),
        head=(1.0 + n(0.04, 0.1), 1.0 + n(0.04, 0.1), 1.0 + n(0.04, 0.1)),
        eye_offset_left=(n(0.5, 1.2), n(0.5, 1.2), n(0.6, 1.4)),
        eye_offset_right=(n(0.5, 1.2), n(0.5, 1.2), n(0.6, 1.4)),
        nose_dx=n(0.6, 1.5), chin_dx=n(0.8, 2.0),
        cheek_left=1.0 + n(0.05, 0.12), cheek_right=1.0 + n(0.05, 0.12),
    )


class _Anatomy:
    """The unit-mm implicit anatomy of one subject (everything but pose and scale).

    * skin surface: smooth union of the face parts (midface, periorbital regions, brow,
      nasal dorsum, nose tip, alae, lips, cheeks, chin, jaw), the head (cranial vault plus
      scalp, ears) and the body (neck, torso); SKIN is its outer 1 mm, SOFT_TISSUE the rest;
    * cranial vault: an ellipsoid whose front is the forehead; above a tilted skull-base
      plane (just over the eyes, sloping down backwards) it holds the BRAIN with a midline
      echo (falx, ``x = 0``), a 2.2 mm bright skull shell and a bony skull-base plate;
    * facial bones: brow ridge, nasal bone, maxilla, zygomas, lateral orbital rims,
      mandible (symphysis, bodies, rami); spine in the torso;
    * eyes: dark globes (vitreous) with a bright 0.8 mm rim (sclera) and a lens in front;
    * the open mouth: a thin slit of fluid between the lips.
    """

    def __init__(self, sp: SubjectParams) -> None:
        fw, lf = sp.face_width, sp.lower_face
        hx, hy, hz = sp.head
        iod = 27.0 * sp.iod
        re = 6.0 * sp.eye_radius
        cp, ndx, cdx, bh = sp.chin_protrusion, sp.nose_dx, sp.chin_dx, sp.brow_height
        # eyes: the fetus's left eye is at negative x (+x is the fetus's right)
        el = np.array([-iod / 2, 0.0, 0.0]) + np.asarray(sp.eye_offset_left)
        er = np.array([+iod / 2, 0.0, 0.0]) + np.asarray(sp.eye_offset_right)
        self.eye_centres = (el, er)
        self.eye_radius = re
        self.brow_z = 9.0 + bh
        # nose tip (centre of its ellipsoid)
        yt, zt = 9.5 + 5.0 * sp.nose_protrusion, -13.5 * sp.nose_length
        self.nose_tip_guess = np.array([ndx, yt + 4.5, zt])
        self.chin_centre = np.array([cdx, 3.0 + cp, -35.0 * lf])
        ch_r = np.array([10.0 * fw, 8.0, 7.0])
        off = ch_r ** 2 * CHIN_DIRECTION_LOCAL / np.sqrt((ch_r ** 2 * CHIN_DIRECTION_LOCAL ** 2).sum())
        self.chin_guess = self.chin_centre + off

        E, C = _Ellipsoid, _Capsule
        self.face_soft: list[_Prim] = [
            E((0.0, -6.0, -12.0), (24.0 * fw, 15.0, 17.0)),                          # midface
            E(_tup(el + [0.0, 1.5, 0.5]), (9.5, 8.0, 8.5)),                          # periorbital L
            E(_tup(er + [0.0, 1.5, 0.5]), (9.5, 8.0, 8.5)),                          # periorbital R
            C((-17.0 * fw, 4.5, 8.0 + bh), (0.0, 6.5, 9.0 + bh), 5.0, 5.2),         # brow soft L
            C((0.0, 6.5, 9.0 + bh), (17.0 * fw, 4.5, 8.0 + bh), 5.2, 5.0),          # brow soft R
            C((0.0, 7.5, 2.0), (0.6 * ndx, yt - 3.0, zt + 2.0), 3.0, 4.0),          # nasal dorsum
            E((ndx, yt, zt), (4.8, 4.5, 4.2)),                                        # nose tip
            E((ndx - 5.2, yt - 4.5, zt - 0.8), (3.8, 4.0, 3.3)),                     # ala L
            E((ndx + 5.2, yt - 4.5, zt - 0.8), (3.8, 4.0, 3.3)),                     # ala R
            E((0.0, 7.5, -20.5 * lf), (10.0 * fw, 5.5, 4.2)),                        # upper lip
            E((0.3 * cdx, 6.8, -27.0 * lf), (9.0 * fw, 5.5, 3.8)),                   # lower lip
            E((-15.0 * fw, -1.0, -15.0), tuple(np.array([12.0, 10.5, 12.0]) * sp.cheek_left)),  # cheek L
            E((+15.0 * fw, -1.0, -15.0), tuple(np.array([12.0, 10.5, 12.0]) * sp.cheek_right)),  # cheek R
            E(_tup(self.chin_centre), _tup(ch_r)),                                    # chin
            E((0.0, -12.0, -28.0 * lf), (26.0 * fw, 20.0, 11.0)),                    # jaw
        ]
        # cranial vault (outer skull surface) and the skull-base plane
        self.vault_c = np.array([0.0, -37.3, 16.0])
        self.vault_r = np.array([36.0 * hx, 46.0 * hy, 40.0 * hz])
        # keep the forehead just behind the brow when the head's y-size changes
        self.vault_c[1] = 8.5 - 46.0 * hy * np.sqrt(1.0 - (4.0 / (40.0 * hz)) ** 2)
        self.vault = E(_tup(self.vault_c), _tup(self.vault_r))
        self.vault_inner = E(_tup(self.vault_c), _tup(self.vault_r - _SKULL_MM))
        self.scalp = E(_tup(self.vault_c), _tup(self.vault_r + _SCALP_MM))
        n = np.array([0.0, -0.6, 1.0])
        self.base_n = -n / np.linalg.norm(n)  # points to the face side (down/forward)
        self.base_p = np.array([0.0, 0.0, 7.0 + 0.5 * bh])
        self.head_soft: list[_Prim] = [
            self.scalp,
            E((-40.0 * hx, -36.0, -6.0), (3.5, 7.0, 10.0)),                          # ear L
            E((+40.0 * hx, -36.0, -6.0), (3.5, 7.0, 10.0)),                          # ear R
        ]
        self.body_soft: list[_Prim] = [
            C((0.0, -28.0, -30.0), (0.0, -40.0, -72.0), 19.0, 22.0),                # neck
            E((0.0, -45.0, -112.0), (30.0, 28.0, 48.0)),                             # torso
        ]
        # bones (hard union)
        ro = iod / 2 + 8.0
        self.face_bones: list[_Prim] = [
            C((-18.0 * fw, 3.5, 8.0 + bh), (0.0, 6.2, 9.0 + bh), 1.6, 1.7),         # brow ridge L
            C((0.0, 6.2, 9.0 + bh), (18.0 * fw, 3.5, 8.0 + bh), 1.7, 1.6),          # brow ridge R
            C((0.0, 7.6, 3.5), (0.3 * ndx, 8.5 + 1.5 * sp.nose_protrusion, -4.0 * sp.nose_length),
              1.1, 1.0),                                                             # nasal bone
            C((-12.0 * fw, -1.0, -18.0 * lf), (0.0, 3.5, -19.0 * lf), 1.8, 1.9),    # maxilla L
            C((0.0, 3.5, -19.0 * lf), (12.0 * fw, -1.0, -18.0 * lf), 1.9, 1.8),     # maxilla R
            C((-15.0 * fw, 2.0, -7.0), (-30.0 * fw, -12.0, -5.0), 1.8, 1.6),        # zygoma L
            C((15.0 * fw, 2.0, -7.0), (30.0 * fw, -12.0, -5.0), 1.8, 1.6),          # zygoma R
            C((-ro + el[0] + iod / 2, -1.0, 6.0), (-ro - 0.5 + el[0] + iod / 2, -2.0, -6.0), 1.4, 1.4),
            C((ro + er[0] - iod / 2, -1.0, 6.0), (ro + 0.5 + er[0] - iod / 2, -2.0, -6.0), 1.4, 1.4),
            E((cdx, 2.5 + cp, -35.0 * lf), (6.0 * fw, 3.8, 5.0)),                   # symphysis
            C((cdx - 5.0 * fw, 1.5 + cp, -36.0 * lf), (-24.0 * fw, -20.0, -30.0 * lf), 2.2, 2.2),
            C((cdx + 5.0 * fw, 1.5 + cp, -36.0 * lf), (24.0 * fw, -20.0, -30.0 * lf), 2.2, 2.2),
            C((-24.0 * fw, -20.0, -30.0 * lf), (-26.0 * fw, -27.0, -13.0), 2.0, 2.0),  # ramus L
            C((24.0 * fw, -20.0, -30.0 * lf), (26.0 * fw, -27.0, -13.0), 2.0, 2.0),    # ramus R
        ]
        self.body_bones: list[_Prim] = [C((0.0, -60.0, -52.0), (0.0, -68.0, -150.0), 3.5, 3.5)]
        self.mouth = E((0.3 * cdx, 4.0, -23.9 * lf), (8.5 * fw, 9.5, 0.9))
        self.eye_rims = [_Sphere(_tup(c), re) for c in (el, er)]
        self.eye_globes = [_Sphere(_tup(c), re - _EYE_RIM_MM) for c in (el, er)]
        self.lenses = [E(_tup(c + [0.0, 0.62 * re, 0.0]), (0.38 * re, 0.22 * re, 0.38 * re))
                       for c in (el, er)]

    # -- groups -----------------------------------------------------------------------------

    @staticmethod
    def _union(dom: _Domain, prims: Sequence[_Prim], pad: float, k: float | None) -> np.ndarray:
        """(Smooth) union of primitives as a full-domain array, each evaluated in its box."""
        acc = dom.full(BIG)
        for p in prims:
            b = dom.block(*p.bbox(), pad)
            if b is None:
                continue
            sl, x, y, z = b
            d = p.sdf(x, y, z)
            acc[sl] = np.minimum(acc[sl], d) if k is None else _smin(acc[sl], d, k)
        return acc

    def soft_sdf(self, dom: _Domain, pad: float) -> np.ndarray:
        """Unit-mm SDF of the fetal body's outer (skin) surface: face, head, neck, torso."""
        face = self._union(dom, self.face_soft, pad + _K_FACE, _K_FACE)
        head = self._union(dom, self.head_soft, pad + _K_FACE_HEAD, 2.0)
        body = self._union(dom, self.body_soft, pad + _K_BODY, _K_BODY)
        return _smin(_smin(face, head, _K_FACE_HEAD), body, _K_BODY)

    def paint(self, dom: _Domain, painter: Any, scale: float, pad: float) -> np.ndarray:
        """Paint the fetus (without distractors); returns the soft SDF (unit mm)."""
        s = np.float32(scale)
        soft = self.soft_sdf(dom, pad)
        painter.paint(Tissue.SKIN, slice(None), soft * s)
        painter.paint(Tissue.SOFT_TISSUE, slice(None), (soft + np.float32(_SKIN_MM)) * s)
        b = dom.block(*self.mouth.bbox(), pad)
        if b is not None:
            painter.paint(Tissue.FLUID, b[0], self.mouth.sdf(*b[1:]) * s)
        b = dom.block(*self.vault.bbox(), pad)
        if b is not None:
            sl, x, y, z = b
            inner = self.vault_inner.sdf(x, y, z)
            g = _plane(x, y, z, self.base_n, self.base_p)
            brain = np.maximum(inner, g)
            painter.paint(Tissue.BRAIN, sl, brain * s)
            painter.paint(Tissue.MIDLINE, sl, np.maximum(np.abs(x) - 0.5 * _FALX_MM, brain + 1.5) * s)
            skull = np.maximum(np.maximum(self.vault.sdf(x, y, z), -inner), g)
            plate = np.maximum(np.abs(g) - 0.5 * _PLATE_MM, inner)
            painter.paint(Tissue.BONE, sl, np.minimum(skull, plate) * s)
        for group in (self.face_bones, self.body_bones):
            bones = self._union(dom, group, pad, None)
            painter.paint(Tissue.BONE, slice(None), bones * s)
        for tissue, prims in ((Tissue.EYE_RIM, self.eye_rims), (Tissue.EYE_GLOBE, self.eye_globes),
                              (Tissue.LENS, self.lenses)):
            for p in prims:
                b = dom.block(*p.bbox(), pad)
                if b is not None:
                    painter.paint(tissue, b[0], p.sdf(*b[1:]) * s)
        return soft

    # -- landmarks ----------------------------------------------------------------------------

    def _soft_points(self, pts: np.ndarray) -> np.ndarray:
        return self.soft_sdf(_PointsDomain(pts), 0.0)

    def _outermost_along(self, starts: np.ndarray, d: np.ndarray, t0: float, t1: float,
                         step: float, iters: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """For columns ``start + t d`` (t in [t0, t1]) the largest t on the skin (sdf = 0),
        sampled every ``step`` then bisected ``iters`` times; returns (t per column, valid
        mask: the column has an inside sample and ends outside)."""
        ts = np.arange(t0, t1 + 1e-9, step)
        pts = starts[:, None, :] + ts[None, :, None] * d
        sdf = self._soft_points(pts.reshape(-1, 3)).reshape(len(starts), len(ts))
        inside = sdf <= 0
        valid = inside.any(axis=1) & ~inside[:, -1]
        last = len(ts) - 1 - np.argmax(inside[:, ::-1], axis=1)
        last = np.minimum(last, len(ts) - 2)
        lo, hi = ts[last].copy(), ts[last + 1].copy()
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            m = self._soft_points(starts + mid[:, None] * d) <= 0
            lo = np.where(m, mid, lo)
            hi = np.where(m, hi, mid)
        return 0.5 * (lo + hi), valid

    def _extreme_point(self, d: np.ndarray, guess: np.ndarray, half: float) -> np.ndarray:
        """Skin point with the largest projection on unit direction ``d`` near ``guess``."""
        d = d / np.linalg.norm(d)
        e1 = np.cross(d, [1.0, 0.0, 0.0])
        if np.linalg.norm(e1) < 0.1:
            e1 = np.cross(d, [0.0, 0.0, 1.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(d, e1)
        centre = guess - d * float(guess @ d)
        t_guess = float(guess @ d)
        # coarse columns, then fine columns around the best one (bisected to ~1e-5 mm)
        for h, step, span, dt, it in ((half, half / 12.0, 10.0, 0.5, 8),
                                      (half / 6.0, half / 60.0, 1.5, 0.1, 14)):
            a = np.arange(-h, h + 1e-9, step)
            aa, bb = np.meshgrid(a, a, indexing="ij")
            starts = centre + aa.reshape(-1, 1) * e1 + bb.reshape(-1, 1) * e2
            t, valid = self._outermost_along(starts, d, t_guess - span, t_guess + span, dt, it)
            if not valid.any():
                raise RuntimeError("landmark search found no skin surface")
            t = np.where(valid, t, -np.inf)
            best = int(np.argmax(t))
            centre, t_guess = starts[best], float(t[best])
        return centre + t_guess * d

    def landmarks_unit(self) -> np.ndarray:
        """``(5, 3)`` landmarks in unit-local mm, LANDMARK_NAMES order."""
        el, er = self.eye_centres
        mid = 0.5 * (el + er)
        brow_start = np.array([[mid[0], -15.0, self.brow_z + mid[2]]])
        t, valid = self._outermost_along(brow_start, np.array([0.0, 1.0, 0.0]), 0.0, 45.0, 0.25)
        if not valid[0]:
            raise RuntimeError("no skin found in front of the eyebrows")
        brow = brow_start[0] + t[0] * np.array([0.0, 1.0, 0.0])
        nose = self._extreme_point(np.array([0.0, 1.0, 0.0]), self.nose_tip_guess, 6.0)
        chin = self._extreme_point(CHIN_DIRECTION_LOCAL, self.chin_guess, 8.0)
        out = {"left_eye": el, "right_eye": er, "middle_eyebrow": brow, "nose_tip": nose, "chin": chin}
        return np.stack([out[n] for n in LANDMARK_NAMES]).astype(np.float64)


# --------------------------------------------------------------------------------------------
# Pose
# --------------------------------------------------------------------------------------------


def random_rotation(rng: np.random.Generator, toward: np.ndarray | None = None,
                    max_tilt_deg: float = 180.0) -> np.ndarray:
    """Random rotation (local -> world, ``det = +1``) with the face's anterior axis (local
    ``+y``) within ``max_tilt_deg`` of the unit vector ``toward`` and a uniform roll about it.

    ``max_tilt_deg = 180`` gives the uniform (Haar) distribution on SO(3): the anterior axis
    is then uniform on the sphere and the roll uniform.
    """
    toward = np.array([-1.0, 0.0, 0.0]) if toward is None else np.asarray(toward, float)
    toward = toward / np.linalg.norm(toward)
    cmin = np.cos(np.deg2rad(np.clip(max_tilt_deg, 0.0, 180.0)))
    cos_t = rng.uniform(cmin, 1.0)
    phi = rng.uniform(0.0, 2.0 * np.pi)
    roll = rng.uniform(0.0, 2.0 * np.pi)
    u = np.cross(toward, [0.0, 0.0, 1.0])
    if np.linalg.norm(u) < 0.1:
        u = np.cross(toward, [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(toward, u)
    sin_t = np.sqrt(max(0.0, 1.0 - cos_t ** 2))
    ant = cos_t * toward + sin_t * (np.cos(phi) * u + np.sin(phi) * v)
    p = np.cross(ant, [0.0, 0.0, 1.0])
    if np.linalg.norm(p) < 0.1:
        p = np.cross(ant, [1.0, 0.0, 0.0])
    p /= np.linalg.norm(p)
    q = np.cross(ant, p)
    sup = np.cos(roll) * p + np.sin(roll) * q
    right = np.cross(ant, sup)  # x = y cross z in a right-handed frame
    return np.stack([right, ant, sup], axis=1)


# --------------------------------------------------------------------------------------------
# The face geometry: subject + pose
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class FaceGeometry:
    """One fetus placed in the world: subject anatomy, rotation and translation.

    ``p_world = rotation @ (scale * p_unit) + translation_mm`` (world RAS mm). The scale is
    chosen so that the eyebrow-to-chin distance equals ``subject.face_height_mm``.

    Attributes:
        subject: the anatomy parameters.
        rotation: ``(3, 3)`` local -> world rotation; its columns are the fetus's right,
            anterior and superior directions in world coordinates.
        translation_mm: ``(3,)`` world position of the local origin (between the eyes).
        scale: unit face -> millimetres (set from ``subject.face_height_mm``).
    """

    subject: SubjectParams
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        self.rotation = np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)
        self.translation_mm = np.asarray(self.translation_mm, dtype=np.float64).reshape(3)
        if abs(np.linalg.det(self.rotation) - 1.0) > 1e-6:
            raise ValueError("rotation must be a proper rotation matrix (det = +1)")
        self.anatomy = _Anatomy(self.subject)
        self._lm_unit = self.anatomy.landmarks_unit()
        fh_unit = float(np.linalg.norm(self._lm_unit[1] - self._lm_unit[4]))
        self.scale = float(self.subject.face_height_mm) / fh_unit

    def placed(self, rotation: np.ndarray, translation_mm: np.ndarray) -> FaceGeometry:
        """The same subject with another pose (no landmark search repeated)."""
        g = object.__new__(FaceGeometry)
        g.subject, g.anatomy, g._lm_unit, g.scale = self.subject, self.anatomy, self._lm_unit, self.scale
        g.rotation = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
        g.translation_mm = np.asarray(translation_mm, dtype=np.float64).reshape(3)
        return g

    # frames ---------------------------------------------------------------------------------
    def local_to_world(self, points_local_mm: np.ndarray) -> np.ndarray:
        """``(N, 3)`` local mm -> world mm."""
        return np.asarray(points_local_mm, float) @ self.rotation.T + self.translation_mm

    def world_to_local(self, points_world_mm: np.ndarray) -> np.ndarray:
        """``(N, 3)`` world mm -> local mm (fetus's right, anterior, superior)."""
        return (np.asarray(points_world_mm, float) - self.translation_mm) @ self.rotation

    @property
    def axes_world(self) -> dict[str, np.ndarray]:
        """Unit world vectors of the fetus's right, left, anterior and superior directions."""
        r, a, s = self.rotation[:, 0], self.rotation[:, 1], self.rotation[:, 2]
        return {"right": r, "left": -r, "anterior": a, "superior": s}

    # landmarks ------------------------------------------------------------------------------
    @property
    def landmarks_local(self) -> np.ndarray:
        """``(5, 3)`` landmarks in local mm."""
        return self._lm_unit * self.scale

    @property
    def landmarks_world(self) -> np.ndarray:
        """``(5, 3)`` landmarks in world RAS mm, LANDMARK_NAMES order."""
        return self.local_to_world(self.landmarks_local)

    @property
    def face_height_mm(self) -> float:
        """Distance middle_eyebrow - chin in mm."""
        lm = self.landmarks_local
        return float(np.linalg.norm(lm[1] - lm[4]))

    @property
    def eye_radius_mm(self) -> float:
        return self.anatomy.eye_radius * self.scale

    # point queries ---------------------------------------------------------------------------
    def _domain(self, points_world_mm: np.ndarray) -> _PointsDomain:
        pw = np.atleast_2d(np.asarray(points_world_mm, dtype=np.float64))
        return _PointsDomain(self.world_to_local(pw) / self.scale, pw)

    def skin_sdf(self, points_world_mm: np.ndarray) -> np.ndarray:
        """``(N,)`` approximate signed distance (mm) to the fetal skin surface (< 0 inside)."""
        return self.anatomy.soft_sdf(self._domain(points_world_mm), 0.0) * self.scale

    def tissue_labels(self, points_world_mm: np.ndarray) -> np.ndarray:
        """``(N,)`` :class:`Tissue` codes of the fetus alone (FLUID elsewhere)."""
        dom = self._domain(points_world_mm)
        painter = _LabelPainter(dom)
        self.anatomy.paint(dom, painter, self.scale, 0.0)
        return painter.labels.astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject.to_dict(), "rotation": self.rotation.tolist(),
                "translation_mm": self.translation_mm.tolist(), "scale": self.scale,
                "face_height_mm": self.face_height_mm}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaceGeometry:
        return cls(SubjectParams.from_dict(d["subject"]), np.asarray(d["rotation"]),
                   np.asarray(d["translation_mm"]))


# --------------------------------------------------------------------------------------------
# Distractors (unit-local coordinates of the face frame; they scale with the fetus)
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Hand:
    """A fetal hand and forearm resting in front of the face (a distractor).

    ``soft`` and ``bones`` are primitives in unit-local coordinates; the hand never enters
    the face by more than about 0.5 unit mm (it is pushed out along local +y)."""

    soft: list[_Prim]
    bones: list[_Prim]
    target: str

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "soft": [_prim_to_dict(p) for p in self.soft],
                "bones": [_prim_to_dict(p) for p in self.bones]}


@dataclass(eq=False)
class Cord:
    """A stretch of umbilical cord passing in front of the face (a distractor).

    ``centreline`` is ``(M, 3)`` unit-local points; radius and vessel radius in unit mm."""

    centreline: np.ndarray
    radius: float
    vessel_radius: float

    def segments(self, r: float) -> list[_Capsule]:
        c = self.centreline
        return [_Capsule(_tup(c[i]), _tup(c[i + 1]), r, r) for i in range(len(c) - 1)]

    def to_dict(self) -> dict[str, Any]:
        return {"centreline": np.asarray(self.centreline).tolist(), "radius": self.radius,
                "vessel_radius": self.vessel_radius}


def _push_out(face: FaceGeometry, samples: Callable[[np.ndarray], np.ndarray],
              radii: np.ndarray, clearance: float, iters: int = 8) -> np.ndarray:
    """Shift along local +y until the sample spheres clear the skin by ``clearance`` (unit)."""
    shift = np.zeros(3)
    for _ in range(iters):
        pts = samples(shift)
        sdf = face.anatomy._soft_points(pts)
        deficit = float(np.max(radii + clearance - sdf))
        if deficit <= 0.05:
            break
        shift[1] += deficit + 0.2
    return shift


def sample_hand(rng: np.random.Generator, face: FaceGeometry) -> Hand:
    """A hand with its palm towards the face, fingers spread over the cheek, mouth or eye."""
    side = float(rng.choice([-1.0, 1.0]))
    targets = {
        "mouth": np.array([side * 3.0, 13.0, -25.0]),
        "cheek": np.array([side * 15.0, 10.0, -15.0]),
        "eye": np.array([side * 11.0, 11.0, -2.0]),
        "chin": np.array([side * 5.0, 12.0, -36.0]),
    }
    name = str(rng.choice(sorted(targets)))
    centre = targets[name] + rng.normal(0.0, 2.0, 3) + np.array([0.0, 6.0, 0.0])
    ang = np.deg2rad(rng.uniform(-70.0, 70.0))
    f = np.array([np.sin(ang), 0.0, np.cos(ang)])               # finger direction
    tilt = rng.normal(0.0, 0.25, 2)
    nrm = np.array([tilt[0], -1.0, tilt[1]])                    # palm normal, towards the face
    nrm -= f * (nrm @ f)
    nrm /= np.linalg.norm(nrm)
    lat = np.cross(nrm, f)
    palm_rot = (_tup(lat), _tup(nrm), _tup(f))
    palm = (centre, (7.0, 2.8, 8.0))
    wrist = centre - 9.0 * f
    fingers, bones = [], []
    curl = rng.uniform(0.1, 0.5)
    for i, off in enumerate((-4.6, -1.5, 1.5, 4.6)):
        base = centre + 6.5 * f + off * lat
        fd = f + curl * nrm + 0.12 * off / 4.6 * lat * rng.uniform(0.5, 2.0)
        fd /= np.linalg.norm(fd)
        length = (10.0, 12.0, 11.5, 9.0)[i]
        fingers.append((base, base + length * fd, 1.5, 1.2))
        bones.append((base - 6.0 * f, base + (length - 1.0) * fd, 0.55, 0.45))
    tb = centre - 2.0 * f - side * 6.0 * lat
    td = (-side * 0.6 * lat + 0.8 * f + 0.3 * nrm)
    td /= np.linalg.norm(td)
    fingers.append((tb, tb + 9.0 * td, 1.7, 1.4))
    bones.append((tb, tb + 8.0 * td, 0.55, 0.5))
    elbow0 = np.array([side * 22.0, 14.0, -75.0]) + rng.normal(0.0, 3.0, 3)
    shoulder = np.array([side * 27.0, -40.0, -64.0])

    def hand_samples(shift: np.ndarray) -> np.ndarray:
        pts = [centre + shift + a * lat + b * f for a in (-5.0, 0.0, 5.0) for b in (-6.0, 0.0, 6.0)]
        for a, b, _, _ in fingers:
            pts += [a + shift + t * (b - a) for t in np.linspace(0.0, 1.0, 6)]
        return np.array(pts)

    nh = 9
    radii = np.array([2.8] * nh + [1.5] * (len(fingers) * 6))
    shift = _push_out(face, hand_samples, radii, clearance=-0.5)
    w = wrist + shift

    def arm_samples(sh: np.ndarray) -> np.ndarray:
        return np.array([w + t * (elbow0 + sh - w) for t in np.linspace(0.15, 1.0, 10)])

    eshift = _push_out(face, arm_samples, np.full(10, 4.5), clearance=0.5)
    elbow = elbow0 + eshift
    C = _Capsule
    soft: list[_Prim] = [_Ellipsoid(_tup(palm[0] + shift), palm[1], palm_rot)]
    soft += [C(_tup(a + shift), _tup(b + shift), ra, rb) for a, b, ra, rb in fingers]
    soft += [C(_tup(w), _tup(elbow), 3.6, 4.3), C(_tup(elbow), _tup(shoulder), 4.3, 5.2)]
    bone_list: list[_Prim] = [C(_tup(a + shift), _tup(b + shift), ra, rb) for a, b, ra, rb in bones]
    bone_list += [C(_tup(w + 1.3 * lat), _tup(elbow + 1.3 * lat), 0.8, 0.9),
                  C(_tup(w - 1.3 * lat), _tup(elbow - 1.3 * lat), 0.8, 0.9),
                  C(_tup(elbow), _tup(shoulder), 1.2, 1.2)]
    return Hand(soft=soft, bones=bone_list, target=name)


def sample_cord(rng: np.random.Generator, face: FaceGeometry) -> Cord:
    """A cord crossing in front of the face at a random height and angle."""
    zc = rng.uniform(-35.0, 10.0)
    ang = rng.uniform(-0.6, 0.6)
    ctrl = np.array([[-80.0, rng.uniform(0.0, 40.0), zc + rng.uniform(-30, 30)],
                     [-25.0, rng.uniform(14.0, 24.0), zc + rng.uniform(-8, 8)],
                     [25.0, rng.uniform(14.0, 24.0), zc + rng.uniform(-8, 8)],
                     [80.0, rng.uniform(0.0, 40.0), zc + rng.uniform(-30, 30)]])
    c, s = np.cos(ang), np.sin(ang)
    ctrl = ctrl @ np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]]).T  # rotate about local y
    t = np.linspace(0.0, 1.0, 41)[:, None]
    curve = ((1 - t) ** 3 * ctrl[0] + 3 * (1 - t) ** 2 * t * ctrl[1] + 3 * (1 - t) * t ** 2 * ctrl[2]
             + t ** 3 * ctrl[3])
    radius = float(rng.uniform(5.0, 7.0))
    for _ in range(6):  # push each point out of the face, then smooth the curve
        sdf = face.anatomy._soft_points(curve)
        deficit = np.maximum(radius + 1.0 - sdf, 0.0)
        if deficit.max() <= 0.05:
            break
        curve[:, 1] += deficit + 0.2 * (deficit > 0)
        k = np.array([0.25, 0.5, 0.25])
        inner = np.stack([np.convolve(curve[:, i], k, mode="same") for i in range(3)], axis=1)
        curve[1:-1] = np.maximum(curve[1:-1], inner[1:-1]) * [0, 1, 0] + inner[1:-1] * [1, 0, 1]
    return Cord(centreline=curve, radius=radius, vessel_radius=0.3 * radius)


def _paint_distractors(dom: _Domain, painter: Any, scale: float, pad: float, soft_body: np.ndarray,
                       hand: Hand | None, cord: Cord | None) -> None:
    s = np.float32(scale)
    if hand is not None:
        hs = _Anatomy._union(dom, hand.soft, pad + 1.5, 1.5)
        # the arm's skin is drawn only outside the fetal body, its interior over everything
        painter.paint(Tissue.SKIN, slice(None), np.maximum(hs, -(soft_body + _SKIN_MM)) * s)
        painter.paint(Tissue.SOFT_TISSUE, slice(None), (hs + np.float32(_SKIN_MM)) * s)
        painter.paint(Tissue.BONE, slice(None), _Anatomy._union(dom, hand.bones, pad, None) * s)
    if cord is not None:
        tube = _Anatomy._union(dom, cord.segments(cord.radius), pad, None)
        painter.paint(Tissue.CORD, slice(None), tube * s)
        painter.paint(Tissue.VESSEL, slice(None),
                      _Anatomy._union(dom, cord.segments(cord.vessel_radius), pad, None) * s)


# --------------------------------------------------------------------------------------------
# Maternal layers (world frame)
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Uterus:
    """Maternal layers around the amniotic cavity, in world mm.

    Near the probe: concentric shells about ``centre_mm`` (the probe's apex), by radius:
    subcutaneous fat up to ``fat_to_mm``, with bright fascia lines at ``fascia_mm``, uterine
    wall up to ``wall_to_mm``, then (optionally) an anterior placenta up to
    ``anterior_placenta_to_mm``. The radii undulate by ``undulation_mm`` (a product of sines of
    the lateral world coordinates). Far side: beyond the plane ``far_normal . p = far_offset_mm``
    a placenta of ``far_placenta_mm`` (0: none), then uterine wall; the plane lies
    ``far_gap_mm`` beyond the fetal head (:meth:`fit_far_layer`).
    """

    centre_mm: np.ndarray
    fat_to_mm: float
    fascia_mm: list[float]
    wall_to_mm: float
    anterior_placenta_to_mm: float | None
    undulation_mm: float
    undulation_freq: tuple[float, float]
    undulation_phase: tuple[float, float]
    far_normal: np.ndarray
    far_gap_mm: float
    far_offset_mm: float
    far_placenta_mm: float

    def fit_far_layer(self, face: FaceGeometry) -> None:
        """Put the far layer ``far_gap_mm`` beyond the fetal head's farthest point along
        ``far_normal`` (sampled on the scalp ellipsoid and the landmarks)."""
        an = face.anatomy
        k = np.arange(400) + 0.5  # a Fibonacci sphere: deterministic, uniform directions
        phi = np.arccos(1.0 - 2.0 * k / 400.0)
        th = np.pi * (1.0 + 5.0 ** 0.5) * k
        u = np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], axis=1)
        pts = np.concatenate([an.vault_c + u * (an.vault_r + _SCALP_MM), face._lm_unit])
        far = float(np.max(face.local_to_world(pts * face.scale) @ self.far_normal))
        self.far_offset_mm = far + self.far_gap_mm

    @property
    def inner_radius_mm(self) -> float:
        """Radius (from the apex) where the amniotic cavity begins (maximum undulation)."""
        r = self.wall_to_mm if self.anterior_placenta_to_mm is None else self.anterior_placenta_to_mm
        return r + self.undulation_mm

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (np.asarray(v).tolist() if isinstance(v, (np.ndarray, tuple)) else v)
                for k, v in d.items()}

    def paint(self, dom: _Domain, painter: Any) -> None:
        sl, x, y, z = dom.world_block()
        c = self.centre_mm
        r = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
        f1, f2 = self.undulation_freq
        p1, p2 = self.undulation_phase
        r = r + self.undulation_mm * np.sin(y * f1 + p1) * np.sin(z * f2 + p2)
        r = r.astype(dom.dtype)
        painter.paint(Tissue.UTERUS, sl, r - self.wall_to_mm)
        painter.paint(Tissue.MATERNAL_FAT, sl, r - self.fat_to_mm)
        for rf in self.fascia_mm:
            painter.paint(Tissue.FASCIA, sl, np.abs(r - rf) - 0.6)
        if self.anterior_placenta_to_mm is not None:
            painter.paint(Tissue.PLACENTA, sl, np.maximum(r - self.anterior_placenta_to_mm,
                                                          self.wall_to_mm - r))
        n = self.far_normal
        g = (x * n[0] + y * n[1] + z * n[2] - self.far_offset_mm).astype(dom.dtype)
        g = g + (0.5 * self.undulation_mm * np.sin(z * f1 + p2) * np.sin(y * f2 + p1)).astype(dom.dtype)
        painter.paint(Tissue.UTERUS, sl, self.far_placenta_mm - g)
        if self.far_placenta_mm > 0:
            painter.paint(Tissue.PLACENTA, sl, np.maximum(-g, g - self.far_placenta_mm))


def sample_uterus(rng: np.random.Generator, apex_mm: np.ndarray, beam_dir: np.ndarray,
                  near_radius_mm: float) -> Uterus:
    """Maternal layers for a probe at ``apex_mm`` whose image starts at ``near_radius_mm``.

    The far layer is placed later, around the fetus, by :meth:`Uterus.fit_far_layer`.
    """
    fat = near_radius_mm + rng.uniform(4.0, 10.0)
    wall = fat + rng.uniform(6.0, 12.0)
    fascia = sorted(float(v) for v in rng.uniform(near_radius_mm + 1.0, wall - 1.0, 2))
    ant = wall + rng.uniform(12.0, 25.0) if rng.uniform() < 0.3 else None
    und = float(rng.uniform(1.0, 4.0))
    freq = tuple(float(v) for v in rng.uniform(0.02, 0.06, 2))
    phase = tuple(float(v) for v in rng.uniform(0.0, 2 * np.pi, 2))
    b = np.asarray(beam_dir, float) / np.linalg.norm(beam_dir)
    tilt = rng.normal(0.0, 0.25, 3)
    n = b + tilt - b * (tilt @ b)
    n /= np.linalg.norm(n)
    return Uterus(
        centre_mm=np.asarray(apex_mm, float), fat_to_mm=float(fat), fascia_mm=fascia,
        wall_to_mm=float(wall), anterior_placenta_to_mm=None if ant is None else float(ant),
        undulation_mm=und, undulation_freq=freq, undulation_phase=phase, far_normal=n,
        far_gap_mm=float(rng.uniform(3.0, 25.0)), far_offset_mm=float("nan"),
        far_placenta_mm=float(rng.uniform(15.0, 30.0)) if rng.uniform() < 0.6 else 0.0,
    )


# --------------------------------------------------------------------------------------------
# The scene
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Scene:
    """Everything that is imaged: the fetus, the maternal layers and the distractors."""

    face: FaceGeometry
    uterus: Uterus | None = None
    hand: Hand | None = None
    cord: Cord | None = None

    def _paint(self, dom: _Domain, painter: Any, pad_unit: float) -> None:
        if self.uterus is not None:
            self.uterus.paint(dom, painter)
        soft = self.face.anatomy.paint(dom, painter, self.face.scale, pad_unit)
        _paint_distractors(dom, painter, self.face.scale, pad_unit, soft, self.hand, self.cord)

    def tissue_labels(self, points_world_mm: np.ndarray) -> np.ndarray:
        """``(N,)`` :class:`Tissue` code at each world point (hard labels, the same layers
        and order as the rendered maps)."""
        dom = self.face._domain(points_world_mm)
        painter = _LabelPainter(dom)
        self._paint(dom, painter, 0.0)
        return painter.labels.astype(np.int64)

    def property_maps(self, axes_mm: Sequence[np.ndarray], table: np.ndarray) -> np.ndarray:
        """Soft (partial-volume) tissue property maps on a grid.

        Args:
            axes_mm: world coordinates (mm) of the voxel centres along array axes 0, 1, 2;
                uniform spacing (the occupancy ramp is one voxel wide).
            table: ``(len(Tissue), P)`` property values per tissue code.

        Returns:
            ``(P, D, H, W)`` float32 maps.
        """
        spacing = float(abs(axes_mm[0][1] - axes_mm[0][0])) if len(axes_mm[0]) > 1 else 1.0
        dom = _GridDomain(axes_mm, self.face.rotation, self.face.translation_mm, self.face.scale)
        painter = _PropertyPainter(dom, table, spacing)
        self._paint(dom, painter, 1.5 * spacing / self.face.scale)
        return painter.maps

    def to_dict(self) -> dict[str, Any]:
        return {"face": self.face.to_dict(),
                "uterus": None if self.uterus is None else self.uterus.to_dict(),
                "hand": None if self.hand is None else self.hand.to_dict(),
                "cord": None if self.cord is None else self.cord.to_dict()}
