"""Synthetic 3D fetal-face ultrasound volumes with five landmarks: the project's open benchmark.

The paper's 152 volumes are private; this generator makes volumes of the same kind from a
seed: a fetal-face phantom (:mod:`rpn_lib.data.phantom`) in a random pose, maternal layers,
optional distractors (a hand, a cord), imaged by a simulated 3D probe
(:mod:`rpn_lib.data.ultrasound`: speckle, anisotropic PSF, attenuation and acoustic shadows,
a sector field of view, log compression).

Volume frame
    A volume is ``(D, H, W)`` uint8 at an isotropic ``spacing_mm``, centred at the world
    origin: ``affine = diag(s, s, s, 1)`` with translation ``-s (n - 1) / 2``, i.e. array axis
    0 -> world R (x), 1 -> A (y), 2 -> S (z). The probe sits above the volume on the low-index
    side of axis 0 and its beams run along +axis 0.

Determinism
    ``generate_case(seed, ...)`` returns the same bytes for the same arguments. Three
    independent streams ``Generator(PCG64(SeedSequence(seed, spawn_key=(k,))))`` are used:
    k = 0 the scene (anatomy, pose, probe, maternal layers, distractors; all in mm and
    independent of the voxel grid), k = 1 the imaging parameters, k = 2 speckle and noise.
    The same seed at 1.3 mm / 128^3 and at 2.6 mm / 64^3 (the same 166.4 mm field of view)
    therefore shows the same fetus in the same pose, with the same world landmarks.

Placement
    The face's orientation is random: its anterior axis lies within ``max_tilt_deg`` of the
    direction to the probe (easy 60, standard 110, hard 150 degrees; sonographers aim at the
    face) with a uniform roll; ``max_tilt_deg=180`` gives a uniform rotation. Every landmark
    lies at least ``margin_mm`` (default :data:`FACE_MARGIN_MM` = half the largest landmark
    box + 10 mm) inside the volume and inside the probe's sector, and 8 mm beyond the
    maternal wall. A fixed ``translation_mm`` override skips these checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rpn_lib.data import phantom as ph
from rpn_lib.data import ultrasound as us
from rpn_lib.landmarks import BOX_SIZE_MM, LANDMARK_NAMES
from rpn_lib.presets import Preset, get_preset

__all__ = [
    "SynthCase", "generate_case", "generate_from_preset", "sample_scene", "render",
    "volume_affine", "voxel_axes_mm", "GENERATOR_VERSION", "FACE_MARGIN_MM", "DIFFICULTIES",
]

GENERATOR_VERSION = "1.1"
"""Bumped whenever the same seed would give a different volume."""

FACE_MARGIN_MM = max(BOX_SIZE_MM) / 2.0 + 10.0
"""Least distance (mm) from every landmark to the volume's faces and the sector's boundary:
half the largest landmark box (15.6 mm) plus 10 mm (at 2.6 mm: 3.5 voxels beyond the box from
the outermost voxel centres)."""

DIFFICULTIES = us.DIFFICULTIES
"""The named difficulty levels: :data:`rpn_lib.data.ultrasound.DIFFICULTIES`, here too."""

_SCENE_KEYS = {"ga_weeks", "variability", "distractor_prob", "max_tilt_deg", "rotation",
               "translation_mm", "hand", "cord", "margin_mm"}
_ACQ_KEYS = set(us.Acquisition.__dataclass_fields__)


@dataclass
class SynthCase:
    """One synthetic volume with its landmarks.

    Attributes:
        case_id: name of the case.
        volume: ``(D, H, W)`` uint8, 0 outside the probe's sector.
        affine: ``(4, 4)`` float64, voxel (i, j, k) -> world RAS mm.
        spacing_mm: isotropic voxel spacing.
        landmarks_world: ``(5, 3)`` RAS mm, LANDMARK_NAMES order.
        landmarks_vox: ``(5, 3)`` voxel coordinates (axes 0, 1, 2).
        params: JSON-serialisable subject, pose, probe and imaging parameters.
    """

    case_id: str
    volume: np.ndarray
    affine: np.ndarray
    spacing_mm: float
    landmarks_world: np.ndarray
    landmarks_vox: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


def volume_affine(spacing_mm: float, shape_vox: Sequence[int]) -> np.ndarray:
    """``(4, 4)`` affine of a volume centred at the world origin, axes 0, 1, 2 -> R, A, S."""
    a = np.eye(4)
    for i, n in enumerate(shape_vox):
        a[i, i] = spacing_mm
        a[i, 3] = -spacing_mm * (n - 1) / 2.0
    return a


def voxel_axes_mm(spacing_mm: float, shape_vox: Sequence[int]) -> list[np.ndarray]:
    """World coordinates (mm) of the voxel centres along each axis (see :func:`volume_affine`)."""
    return [spacing_mm * (np.arange(n) - (n - 1) / 2.0) for n in shape_vox]


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(stream,))))


def sample_scene(seed: int, fov_mm: Sequence[float], difficulty: str = "standard",
                 **overrides: Any) -> tuple[ph.Scene, us.Probe]:
    """The imaged scene and probe of a case (stream 0 of ``seed``; no voxel grid involved).

    Args:
        seed: case seed.
        fov_mm: extent of the volume (mm) per axis, centred at the origin.
        difficulty: a key of :data:`~rpn_lib.data.ultrasound.DIFFICULTIES`.
        **overrides: ``ga_weeks``, ``variability`` (of the anatomy), ``distractor_prob``,
            ``max_tilt_deg``, ``rotation`` ((3, 3) local -> world), ``translation_mm``,
            ``hand`` / ``cord`` (bool: force a distractor on or off), ``margin_mm``.

    Raises:
        ValueError: unknown difficulty, or no placement satisfies the margins.
    """
    diff = _difficulty(difficulty)
    rng = _rng(seed, 0)
    fov = np.asarray(fov_mm, dtype=np.float64)
    margin = float(overrides.get("margin_mm", FACE_MARGIN_MM))
    subject = ph.sample_subject(rng, overrides.get("ga_weeks"), overrides.get("variability", 1.0))
    face0 = ph.FaceGeometry(subject)
    probe = us.sample_probe(rng, fov)
    uterus = ph.sample_uterus(rng, probe.apex_mm, probe.beam_dir, probe.near_mm)
    max_tilt = float(overrides.get("max_tilt_deg", diff.max_tilt_deg))
    lm_local = face0.landmarks_local
    rot_fixed = overrides.get("rotation")
    t_fixed = overrides.get("translation_mm")
    placed = None
    for _ in range(60):
        rot = (np.asarray(rot_fixed, float) if rot_fixed is not None
               else ph.random_rotation(rng, -probe.beam_dir, max_tilt))
        lw = lm_local @ rot.T
        lo = -fov / 2 + margin - lw.min(axis=0)
        hi = fov / 2 - margin - lw.max(axis=0)
        if t_fixed is None and np.any(lo > hi):
            continue
        for _ in range(40):
            t = np.asarray(t_fixed, float) if t_fixed is not None else rng.uniform(lo, hi)
            p = lw + t
            r = np.linalg.norm(p - probe.apex_mm, axis=1)
            if t_fixed is not None or (probe.inside_margin_mm(p).min() >= margin
                                       and r.min() >= uterus.inner_radius_mm + 8.0):
                placed = (rot, t)
                break
        if placed is not None:
            break
    if placed is None:
        raise ValueError(f"seed {seed}: no face placement keeps the landmarks {margin} mm inside "
                         f"a {fov.tolist()} mm volume and the probe's sector")
    face = face0.placed(*placed)
    uterus.fit_far_layer(face)
    p_dis = float(overrides.get("distractor_prob", diff.distractor_prob))
    want_hand = rng.uniform() < p_dis
    want_cord = rng.uniform() < p_dis
    want_hand = bool(overrides.get("hand", want_hand))
    want_cord = bool(overrides.get("cord", want_cord))
    hand = ph.sample_hand(rng, face) if want_hand else None
    cord = ph.sample_cord(rng, face) if want_cord else None
    return ph.Scene(face=face, uterus=uterus, hand=hand, cord=cord), probe


def render(scene: ph.Scene, probe: us.Probe, acq: us.Acquisition, spacing_mm: float,
           shape_vox: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Render a scene as a ``shape_vox`` uint8 volume at ``spacing_mm`` (centred grid)."""
    axes = voxel_axes_mm(spacing_mm, shape_vox)
    maps = scene.property_maps(axes, us.tissue_table(acq))
    return us.simulate(maps, axes, probe, acq, rng)


def _difficulty(name: str) -> us.Difficulty:
    try:
        return DIFFICULTIES[name]
    except KeyError:
        raise ValueError(f"unknown difficulty {name!r}; choose one of {sorted(DIFFICULTIES)}") from None


def generate_case(seed: int, spacing_mm: float = 2.6, shape_vox: Sequence[int] = (64, 64, 64),
                  difficulty: str = "standard", case_id: str | None = None,
                  **overrides: Any) -> SynthCase:
    """Generate one synthetic volume and its landmarks.

    Args:
        seed: integer seed; the same arguments give the same bytes.
        spacing_mm: isotropic voxel spacing (2.6 mm for ``cpu-small``, 1.3 mm for ``paper``).
        shape_vox: ``(D, H, W)``.
        difficulty: ``"easy"``, ``"standard"`` or ``"hard"`` (see :data:`~rpn_lib.data.ultrasound.DIFFICULTIES`).
        case_id: name stored in the case (default ``"synth_<seed>"``).
        **overrides: scene overrides of :func:`sample_scene` and any field of
            :class:`rpn_lib.data.ultrasound.Acquisition` (e.g. ``speckle=0.0``).

    Returns:
        a :class:`SynthCase`.
    """
    unknown = set(overrides) - _SCENE_KEYS - _ACQ_KEYS
    if unknown:
        raise TypeError(f"unknown override(s) {sorted(unknown)}; allowed: {sorted(_SCENE_KEYS | _ACQ_KEYS)}")
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    shape = tuple(int(n) for n in shape_vox)
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"shape_vox must be three sizes >= 2, got {shape_vox}")
    diff = _difficulty(difficulty)
    fov = [spacing_mm * n for n in shape]
    scene_kw = {k: v for k, v in overrides.items() if k in _SCENE_KEYS}
    scene, probe = sample_scene(seed, fov, difficulty, **scene_kw)
    acq = us.sample_acquisition(_rng(seed, 1), diff)
    for k, v in overrides.items():
        if k in _ACQ_KEYS:
            setattr(acq, k, float(v))
    volume = render(scene, probe, acq, spacing_mm, shape, _rng(seed, 2))
    affine = volume_affine(spacing_mm, shape)
    lw = scene.face.landmarks_world
    lv = (lw - affine[:3, 3]) / spacing_mm
    face = scene.face
    params = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "difficulty": difficulty,
        "spacing_mm": float(spacing_mm),
        "shape_vox": list(shape),
        "field_of_view_mm": [float(f) for f in fov],
        "landmark_names": list(LANDMARK_NAMES),
        "gestational_age_weeks": face.subject.ga_weeks,
        "face_height_mm": face.face_height_mm,
        "scale": face.scale,
        "eye_radius_mm": face.eye_radius_mm,
        "subject": face.subject.to_dict(),
        "pose": {"rotation": face.rotation.tolist(), "translation_mm": face.translation_mm.tolist(),
                 "anterior": face.rotation[:, 1].tolist(), "superior": face.rotation[:, 2].tolist()},
        "probe": probe.to_dict(),
        "uterus": None if scene.uterus is None else scene.uterus.to_dict(),
        "distractors": {"hand": None if scene.hand is None else scene.hand.target,
                        "cord": scene.cord is not None},
        "acquisition": acq.to_dict(),
        "overrides": {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
                      for k, v in overrides.items()},
    }
    return SynthCase(case_id=case_id if case_id is not None else f"synth_{seed}", volume=volume,
                     affine=affine, spacing_mm=float(spacing_mm), landmarks_world=lw,
                     landmarks_vox=lv, params=params)


def generate_from_preset(seed: int, preset: str | Preset = "cpu-small", difficulty: str = "standard",
                         case_id: str | None = None) -> SynthCase:
    """:func:`generate_case` at a preset's ``spacing_mm`` and ``shape_vox``."""
    p = get_preset(preset)
    return generate_case(seed, p.spacing_mm, p.shape_vox, difficulty, case_id)
