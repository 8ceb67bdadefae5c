"""Eye sides from the face's handedness (``Preset.eye_sides = "geometry"``): the rule, the merged
eye classes in the loss, the pooled eye candidates, the prior's eye pairs, training and detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rpn_lib.anchors import labels_as_allowed, merge_classes
from rpn_lib.boxes import BoxCoder
from rpn_lib.candidates import select_candidates
from rpn_lib.data.dataset import LandmarkDataset, write_synthetic_dataset
from rpn_lib.detect import Detector
from rpn_lib.evaluate import evaluate
from rpn_lib.handedness import eye_side_sign, name_eye_sides, right_direction
from rpn_lib.landmarks import EYES, FLIP_PERMUTATION
from rpn_lib.losses import classification_loss
from rpn_lib.presets import Preset, get_preset
from rpn_lib.prior import GraphPrior, select_combination
from rpn_lib.train import train

# A fetal face in RAS mm (x to the fetus's right, y anterior, z superior): left eye at -x.
FACE_RAS = np.array([[-17.0, 0, 0], [0, 8, 10], [17, 0, 0], [0, 18, -12], [0, 10, -40]])


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _faces(n: int, rng: np.random.Generator, noise_mm: float = 1.0) -> np.ndarray:
    """Proper (unmirrored) faces at random pose, scale and position."""
    return np.stack([((FACE_RAS + rng.normal(0, noise_mm, (5, 3))) * rng.uniform(0.8, 1.2)) @ _rotation(rng).T
                     + rng.uniform(-50, 50, 3) for _ in range(n)])


def test_rule_on_a_hand_example() -> None:
    np.testing.assert_allclose(right_direction(FACE_RAS), [1.0, 0.0, 0.0], atol=1e-12)
    assert eye_side_sign(FACE_RAS) == pytest.approx(34.0)
    assert not name_eye_sides(FACE_RAS)
    assert name_eye_sides(FACE_RAS[list(FLIP_PERMUTATION)])  # eyes in the wrong slots


def test_rule_is_pose_invariant_and_mirror_sensitive() -> None:
    faces = _faces(200, np.random.default_rng(0), noise_mm=2.0)
    assert not name_eye_sides(faces).any()
    assert name_eye_sides(faces[:, list(FLIP_PERMUTATION)]).all()
    mirrored = faces * np.array([-1.0, 1.0, 1.0])  # a mirror image: the labels no longer fit
    assert name_eye_sides(mirrored).all()


def test_rule_matches_the_synthetic_faces(tmp_path: Path) -> None:
    tiny = Preset(name="tiny", spacing_mm=5.2, shape_vox=(32, 32, 32), width=8)
    write_synthetic_dataset(tmp_path, n=6, n_test=1, seed=3, preset=tiny, difficulty="hard", progress=False)
    lm = np.stack([c.landmarks_world for c in LandmarkDataset(tmp_path)])
    assert not name_eye_sides(lm).any()
    assert name_eye_sides(lm[:, list(FLIP_PERMUTATION)]).all()


def test_merged_eye_classes_in_the_loss() -> None:
    labels = torch.tensor([0, 1, 3, 2, -1])
    allowed = merge_classes(labels_as_allowed(labels, 6), (1, 3))
    assert allowed.tolist() == [[True, False, False, False, False, False],
                                [False, True, False, True, False, False],
                                [False, True, False, True, False, False],
                                [False, False, True, False, False, False],
                                [False] * 6]
    # an anchor on the left eye: all its eye mass on the *right* eye class costs the same
    # as on the left eye class once the eyes are merged, and far more when they are not
    on_left = torch.tensor([[0.0, 5.0, 0.0, 0.0, 0.0, 0.0]])
    on_right = torch.tensor([[0.0, 0.0, 0.0, 5.0, 0.0, 0.0]])
    lab = torch.tensor([1])
    merged = merge_classes(labels_as_allowed(lab, 6), (1, 3))
    a = classification_loss(on_left, lab, None, iou_balance=False, allowed=merged)
    b = classification_loss(on_right, lab, None, iou_balance=False, allowed=merged)
    assert float(a) == pytest.approx(float(b))
    assert float(classification_loss(on_right, lab, None, iou_balance=False)) > float(a) + 4


def test_pooled_eye_candidates_share_one_list() -> None:
    g = torch.Generator().manual_seed(0)
    n = 200
    anchors = torch.cat([torch.rand(n, 3, generator=g) * 60, torch.full((n, 3), 6.0)], dim=1)
    logits = torch.randn(n, 6, generator=g)
    deltas = torch.zeros(n, 6)
    coder = BoxCoder()
    pooled = select_candidates(logits, deltas, anchors, coder, top_k=4, pool_eyes=True)
    plain = select_candidates(logits, deltas, anchors, coder, top_k=4)
    left, right = pooled[EYES[0]], pooled[EYES[1]]
    torch.testing.assert_close(left[0], right[0])
    torch.testing.assert_close(left[1], right[1])
    probs = logits.softmax(1)
    torch.testing.assert_close(left[1], probs[left[2], 1] + probs[left[2], 3])
    assert left[1][0] == pytest.approx(float((probs[:, 1] + probs[:, 3]).max()))
    for k in (1, 3, 4):  # the midline classes are untouched
        torch.testing.assert_close(pooled[k][0], plain[k][0])


def test_prior_picks_two_eyes_and_names_their_sides() -> None:
    rng = np.random.default_rng(5)
    prior = GraphPrior.fit(_faces(300, rng))
    for trial in range(15):
        face = _faces(1, rng)[0]
        # four shared eye candidates: the two eyes in random slots, a stray point, and a
        # near-copy of the nose; the midline classes have the truth and a stray each
        eyes = [face[0], face[2], face[1] + rng.normal(0, 1, 3) * 15, face[3] + rng.normal(0, 1, 3)]
        order = rng.permutation(4)
        cands = np.full((5, 4, 3), np.nan)
        scores = np.full((5, 4), -np.inf)
        for m, o in enumerate(order):
            cands[EYES[0], m] = cands[EYES[1], m] = eyes[o]
            scores[EYES[0], m] = scores[EYES[1], m] = 0.9 - 0.1 * m
        for k in (1, 3, 4):
            cands[k, 0], cands[k, 1] = face[k], face[k] + rng.normal(0, 1, 3) * 12
            scores[k, :2] = 0.5
        res = select_combination(cands, scores, prior, pooled_eyes=True)
        assert len(res.ranked) == 6 * 8  # 4 * 3 / 2 eye pairs, 2^3 for the rest
        assert order[res.choice[EYES[0]]] == 0 and order[res.choice[EYES[1]]] == 1, trial
        np.testing.assert_allclose(res.centres, face)


def test_geometry_needs_a_pooling_method(tmp_path: Path) -> None:
    preset = get_preset("cpu-small").replace(eye_sides="geometry")
    with pytest.raises(ValueError, match="pools the eye classes"):
        train(tmp_path / "data", tmp_path / "run", preset, method="heatmap", progress=False)
    with pytest.raises(ValueError, match="eye_sides"):
        get_preset("cpu-small").replace(eye_sides="mirror")


def test_train_and_detect_with_geometric_eye_sides(tmp_path: Path) -> None:
    """A tiny run with pooled eyes: the detector returns one eye per side, named by the rule,
    with the candidates split by side, with and without the prior."""
    tiny = Preset(name="tiny", spacing_mm=5.2, shape_vox=(32, 32, 32), width=8, steps=30, batch_size=2,
                  anchors_per_volume=256, lr=2e-3, eye_sides="geometry")
    data = tmp_path / "data"
    write_synthetic_dataset(data, n=4, n_test=1, seed=1, preset=tiny, difficulty="easy", progress=False)
    train(data, tmp_path / "run", tiny, seed=0, progress=False, device="cpu", checkpoint_every=1000)
    det = Detector.from_file(tmp_path / "run" / "model.pt", device="cpu")
    assert det.pooled_eyes and det.eye_pool_size == 4
    cases = LandmarkDataset(data, split="train")
    for use_prior in (True, False):
        ev = evaluate(det, cases, use_prior=use_prior, progress=False)
        for d in ev.detections:
            assert d.eye_candidates is not None and len(d.eye_candidates) >= 2
            assert not name_eye_sides(d.landmarks_world)
            left, right = d.candidates[EYES[0]], d.candidates[EYES[1]]
            assert len(left) + len(right) == len(d.eye_candidates)
            np.testing.assert_allclose(left[d.choice[EYES[0]]].world_mm, d.landmarks_world[EYES[0]])
            np.testing.assert_allclose(right[d.choice[EYES[1]]].world_mm, d.landmarks_world[EYES[1]])
            js = d.to_dict()
            assert len(js["eye_candidates"]) == len(d.eye_candidates)
            assert all(max(r["choice"][k] for k in EYES) < len(d.eye_candidates) for r in js["ranked_combinations"])
