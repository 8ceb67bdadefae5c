"""The synthetic fetal-face generator: determinism, anatomy of the landmarks, placement,
variability, image formation (speckle, PSF, shadows, sector) and the public API."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpn_lib.data import phantom as ph
from rpn_lib.data import synth
from rpn_lib.data import ultrasound as us
from rpn_lib.landmarks import LANDMARK_NAMES, box_size_vox
from rpn_lib.presets import Preset

LE, MB, RE, NT, CH = (LANDMARK_NAMES.index(n) for n in
                      ("left_eye", "middle_eyebrow", "right_eye", "nose_tip", "chin"))
FOV = [166.4, 166.4, 166.4]


@pytest.fixture(scope="module")
def case7() -> synth.SynthCase:
    return synth.generate_case(7)


@pytest.fixture(scope="module")
def faces() -> list[ph.FaceGeometry]:
    """30 subjects in the identity pose (local frame = world frame)."""
    return [ph.FaceGeometry(ph.sample_subject(np.random.default_rng(1000 + i))) for i in range(30)]


# ---------------------------------------------------------------------------------- API ---

def test_volume_dtype_shape_affine(case7: synth.SynthCase) -> None:
    c = case7
    assert c.volume.dtype == np.uint8 and c.volume.shape == (64, 64, 64)
    assert c.affine.dtype == np.float64 and c.affine.shape == (4, 4)
    np.testing.assert_allclose(np.diag(c.affine), [2.6, 2.6, 2.6, 1.0])
    np.testing.assert_allclose(c.affine @ [31.5, 31.5, 31.5, 1.0], [0, 0, 0, 1], atol=1e-12)
    assert c.landmarks_world.shape == (5, 3) and c.landmarks_vox.shape == (5, 3)
    np.testing.assert_allclose(c.landmarks_vox @ c.affine[:3, :3].T + c.affine[:3, 3], c.landmarks_world)
    assert c.case_id == "synth_7" and c.spacing_mm == 2.6
    back = json.loads(json.dumps(c.params))
    assert back["landmark_names"] == list(LANDMARK_NAMES) and back["seed"] == 7


def test_non_cubic_shape_and_presets() -> None:
    c = synth.generate_case(3, 4.0, (30, 36, 40), "easy", case_id="x")
    assert c.volume.shape == (30, 36, 40) and c.case_id == "x"
    np.testing.assert_allclose(c.affine[:3, 3], [-58.0, -70.0, -78.0])
    p = synth.generate_from_preset(3, "cpu-small")
    assert p.volume.shape == (64, 64, 64) and p.spacing_mm == 2.6
    tiny = synth.generate_from_preset(3, Preset(name="t", spacing_mm=5.2, shape_vox=(32, 32, 32), width=4))
    assert tiny.volume.shape == (32, 32, 32)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="difficulty"):
        synth.generate_case(0, difficulty="brutal")
    with pytest.raises(TypeError, match="override"):
        synth.generate_case(0, colour="blue")
    assert set(synth.DIFFICULTIES) == {"easy", "standard", "hard"}


# -------------------------------------------------------------------------- determinism ---

def test_same_seed_same_bytes_and_no_global_rng(case7: synth.SynthCase) -> None:
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    again = synth.generate_case(7)
    assert np.array_equal(np.random.get_state()[1], state)   # the global RNG is untouched
    assert again.volume.tobytes() == case7.volume.tobytes()
    assert np.array_equal(again.landmarks_world, case7.landmarks_world)
    assert json.dumps(again.params) == json.dumps(case7.params)
    other = synth.generate_case(8)
    assert other.volume.tobytes() != case7.volume.tobytes()
    assert not np.allclose(other.landmarks_world, case7.landmarks_world)


def test_same_geometry_at_both_spacings(case7: synth.SynthCase) -> None:
    fine = synth.generate_case(7, 1.3, (128, 128, 128))
    np.testing.assert_allclose(fine.landmarks_world, case7.landmarks_world, atol=1e-9)
    assert fine.params["subject"] == case7.params["subject"]
    assert fine.params["acquisition"] == case7.params["acquisition"]
    # the same world point is the same anatomical place: compare the images coarsely
    coarse = fine.volume.reshape(64, 2, 64, 2, 64, 2).astype(float).mean(axis=(1, 3, 5))
    r = np.corrcoef(coarse.ravel(), case7.volume.astype(float).ravel())[0, 1]
    assert r > 0.8


# ------------------------------------------------------------------ landmarks = anatomy ---

def test_eye_landmarks_inside_globes(faces: list[ph.FaceGeometry]) -> None:
    for f in faces:
        lab = f.tissue_labels(f.landmarks_world)
        assert lab[LE] == ph.Tissue.EYE_GLOBE and lab[RE] == ph.Tissue.EYE_GLOBE
    # also in complete scenes with forced distractors (a hand or cord never covers an eye)
    for seed in range(4):
        scene, _ = synth.sample_scene(seed, FOV, hand=True, cord=True)
        lab = scene.tissue_labels(scene.face.landmarks_world)
        assert lab[LE] == ph.Tissue.EYE_GLOBE and lab[RE] == ph.Tissue.EYE_GLOBE


def test_skin_landmarks_on_the_skin(faces: list[ph.FaceGeometry]) -> None:
    for f in faces[:10]:
        lm = f.landmarks_world
        sdf = f.skin_sdf(lm[[MB, NT, CH]])
        np.testing.assert_allclose(sdf, 0.0, atol=0.02)
        inward = lm[[MB, NT, CH]] - 0.4 * np.array([[0, 1, 0], [0, 1, 0], [0, 1, -1] / np.sqrt(2)])
        assert np.all(f.tissue_labels(inward) == ph.Tissue.SKIN)


def test_nose_tip_is_most_anterior_skin_point(faces: list[ph.FaceGeometry]) -> None:
    for f in faces[:4]:
        nose = f.landmarks_local[NT]
        y = np.arange(nose[1] - 1.5, nose[1] + 3.0, 0.25)
        xz = np.arange(-40.0, 40.01, 1.0)
        P = np.stack(np.meshgrid(xz, y, xz - 10.0, indexing="ij"), -1).reshape(-1, 3)
        labels = f.tissue_labels(P)     # identity pose: local = world
        fetal = labels != ph.Tissue.FLUID
        assert fetal.any()
        assert P[fetal, 1].max() <= nose[1] + 0.05
        assert labels[np.argmin(np.linalg.norm(P - nose + [0, 0.3, 0], axis=1))] == ph.Tissue.SKIN


def test_chin_is_the_anterior_inferior_extreme(faces: list[ph.FaceGeometry]) -> None:
    d = ph.CHIN_DIRECTION_LOCAL
    for f in faces[:4]:
        chin = f.landmarks_local[CH]
        a = np.arange(-12.0, 12.01, 0.4)
        e1 = np.array([1.0, 0.0, 0.0])
        e2 = np.cross(d, e1)
        t = np.arange(-1.0, 3.0, 0.1)
        P = (chin + a[:, None, None, None] * e1 + a[None, :, None, None] * e2
             + t[None, None, :, None] * d).reshape(-1, 3)
        inside = f.skin_sdf(P) <= 0
        assert (P[inside] @ d).max() <= chin @ d + 0.05


def test_left_eye_is_on_the_fetus_left() -> None:
    for seed in range(10):
        scene, _ = synth.sample_scene(seed, FOV, "hard")
        lw = scene.face.landmarks_world
        superior = lw[MB] - lw[CH]
        anterior = lw[NT] - 0.5 * (lw[LE] + lw[RE])
        left = np.cross(superior, anterior)         # S x A = L in an anatomical RAS frame
        assert (lw[LE] - lw[RE]) @ left > 0
        # and the pose's own axes agree: the left eye is at negative local x (x = right)
        assert scene.face.landmarks_local[LE, 0] < 0 < scene.face.landmarks_local[RE, 0]


def test_eyes_are_dark_in_the_image() -> None:
    inner, around = [], []
    for seed in range(4):
        c = synth.generate_case(seed, difficulty="easy")
        scene, _ = synth.sample_scene(seed, FOV, "easy")
        axes = synth.voxel_axes_mm(2.6, (64, 64, 64))
        P = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        r_eye = scene.face.eye_radius_mm
        for e in (LE, RE):
            d = np.linalg.norm(P - c.landmarks_world[e], axis=1)
            inner.append(c.volume.ravel()[d <= max(0.5 * r_eye, 2.7)].mean())
            near = np.flatnonzero((d > 1.4 * r_eye) & (d < 2.4 * r_eye))
            soft = scene.tissue_labels(P[near]) == ph.Tissue.SOFT_TISSUE
            around.append(c.volume.ravel()[near[soft]].mean())
    assert np.mean(inner) < 0.5 * np.mean(around)


# ------------------------------------------------------------------ placement, variability ---

def test_landmarks_inside_volume_and_sector_with_margin() -> None:
    m_vox = max(box_size_vox(2.6)) / 2 + 3
    for seed in range(8):
        c = synth.generate_case(seed, difficulty="hard")
        assert np.all(c.landmarks_vox >= m_vox) and np.all(c.landmarks_vox <= 63 - m_vox)
        scene, probe = synth.sample_scene(seed, FOV, "hard")
        assert probe.inside_margin_mm(c.landmarks_world).min() >= synth.FACE_MARGIN_MM - 1e-9
        i, j, k = np.round(c.landmarks_vox).astype(int).T
        assert np.all(probe.mask(synth.voxel_axes_mm(2.6, (64, 64, 64)))[i, j, k])


def test_face_height_and_ratio_spread(faces: list[ph.FaceGeometry]) -> None:
    fh = np.array([f.face_height_mm for f in faces])
    assert fh.min() >= 35.0 and fh.max() <= 60.0 and fh.max() - fh.min() > 10.0
    lm = np.stack([f.landmarks_local for f in faces])

    def dist(a: int, b: int) -> np.ndarray:
        return np.linalg.norm(lm[:, a] - lm[:, b], axis=1)

    for ratio in (dist(LE, RE) / dist(LE, CH), dist(MB, NT) / dist(NT, CH), dist(LE, NT) / dist(RE, CH)):
        assert ratio.std() / ratio.mean() > 0.02
    sym = (dist(LE, NT) - dist(RE, NT)) / (dist(LE, NT) + dist(RE, NT))
    assert 0.002 < np.abs(sym).mean() < 0.05          # slight asymmetry, not a caricature


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tilt=st.floats(0.0, 180.0))
def test_random_rotation_is_proper_and_tilted(seed: int, tilt: float) -> None:
    rng = np.random.Generator(np.random.PCG64(seed))
    toward = np.array([-1.0, 0.0, 0.0])
    r = ph.random_rotation(rng, toward, tilt)
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    assert np.degrees(np.arccos(np.clip(r[:, 1] @ toward, -1, 1))) <= tilt + 1e-6


# ------------------------------------------------------------------------ image formation ---

def test_zero_outside_the_sector(case7: synth.SynthCase) -> None:
    _, probe = synth.sample_scene(7, FOV)
    mask = probe.mask(synth.voxel_axes_mm(2.6, (64, 64, 64)))
    assert 0.3 < mask.mean() < 0.95
    assert not case7.volume[~mask].any()
    assert case7.volume[mask].min() >= 1           # 0 means "not imaged" and nothing else
    assert (case7.volume[mask] > 100).mean() > 0.02  # the fetus


def _uniform_envelope(spacing: float, speckle: float = 1.0) -> np.ndarray:
    maps = np.zeros((3, 48, 48, 48), np.float32)
    maps[0] = 0.1
    acq = us.Acquisition(speckle=speckle)
    sig = us.psf_sigmas_vox(acq, spacing)
    re, im = us.scatterer_field(maps, acq, sig, np.random.Generator(np.random.PCG64(0)))
    return us.apply_psf(re, im, sig)[8:-8, 8:-8, 8:-8]


def test_speckle_is_rayleigh_and_psf_is_finer_along_the_beam() -> None:
    env = _uniform_envelope(1.3)
    snr = env.mean() / env.std()
    assert snr == pytest.approx(np.sqrt(np.pi / (4 - np.pi)), rel=0.05)   # Rayleigh: 1.91
    assert np.sqrt((env ** 2).mean()) == pytest.approx(0.1, rel=0.05)       # power = E^2

    def lag1(a: np.ndarray, axis: int) -> float:
        a = a - a.mean()
        return float((a * np.roll(a, 1, axis)).mean() / a.var())

    corr = [lag1(env, ax) for ax in range(3)]
    assert corr[0] < corr[1] - 0.1 and corr[0] < corr[2] - 0.1
    assert _uniform_envelope(1.3, speckle=0.0).std() < 1e-4                   # no speckle


def test_shadow_behind_a_bone_slab() -> None:
    sp = 2.0
    axes = [sp * (np.arange(40) - 19.5)] * 3
    probe = us.Probe(apex_mm=[-60.0, 0.0, 0.0], half_angles_deg=(40.0, 40.0), near_mm=10.0, far_mm=200.0)
    att = np.zeros((40, 40, 40), np.float32)
    att[20] = 3.0                                   # a 2 mm bone plate at slice 20
    a = us.ray_attenuation_db(att, axes, probe)
    centre = a[:, 19:21, 19:21].mean(axis=(1, 2))
    assert np.all(centre[:19] < 0.05)               # nothing in front of the bone
    assert centre[25:] == pytest.approx(3.0 * sp, rel=0.03)
    off = a[30, 5, 20]                              # oblique ray: a longer path through the plate
    assert off > 3.0 * sp * 1.02
    # in a rendered case, bone attenuation darkens what lies behind the skull
    soft = synth.generate_case(5, bone_db_per_mm=0.0)
    hard = synth.generate_case(5, bone_db_per_mm=6.0)
    scene, _ = synth.sample_scene(5, FOV)
    P = np.stack(np.meshgrid(*synth.voxel_axes_mm(2.6, (64, 64, 64)), indexing="ij"), -1).reshape(-1, 3)
    brain = scene.tissue_labels(P) == ph.Tissue.BRAIN
    assert hard.volume.ravel()[brain].mean() < soft.volume.ravel()[brain].mean() - 20


def test_difficulty_levels_order_the_noise() -> None:
    fluid_means = {}
    for d in ("easy", "hard"):
        vals = []
        for seed in range(2):
            c = synth.generate_case(seed, difficulty=d)
            scene, probe = synth.sample_scene(seed, FOV, d)
            axes = synth.voxel_axes_mm(2.6, (64, 64, 64))
            sub = [a[::3] for a in axes]                 # every third voxel is plenty
            P = np.stack(np.meshgrid(*sub, indexing="ij"), -1).reshape(-1, 3)
            fluid = (scene.tissue_labels(P) == ph.Tissue.FLUID) & probe.mask(sub).ravel()
            vals.append(c.volume[::3, ::3, ::3].ravel()[fluid].mean())
        fluid_means[d] = np.mean(vals)
    assert fluid_means["easy"] < fluid_means["hard"]
