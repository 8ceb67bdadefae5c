"""The distance-ratio graph prior (Eq. 4) and the choice among candidate combinations."""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpn_lib.prior import (EDGES, MAXWELL_MEDIAN, PRIOR_RULES, RATIO_NAMES, RATIOS, GraphPrior,
                           combination_cost, compute_ratios, edge_lengths, localisation_sd_from_distances,
                           select_combination)

# A plausible fetal face in mm: eyes at +-17 (axis 0), eyebrow, nose tip, chin on the midline.
FACE = np.array([[17.0, 0, 0], [0, 8, 10], [-17, 0, 0], [0, 18, -12], [0, 10, -40]])


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_faces(n: int, rng: np.random.Generator, noise_mm: float = 1.0) -> np.ndarray:
    """Faces of random size (0.8-1.2), pose and position, with landmark noise."""
    out = []
    for _ in range(n):
        scale = rng.uniform(0.8, 1.2)
        pts = (FACE + rng.normal(0, noise_mm, FACE.shape)) * scale
        out.append(pts @ random_rotation(rng).T + rng.uniform(-50, 50, 3))
    return np.stack(out)


@pytest.fixture(scope="module")
def prior() -> GraphPrior:
    return GraphPrior.fit(random_faces(300, np.random.default_rng(0)))


def test_graph_has_nine_edges_without_eyebrow_chin() -> None:
    assert len(EDGES) == 9 and len(set(EDGES)) == 9
    assert (1, 4) not in EDGES
    assert all(0 <= i < j <= 4 for i, j in EDGES)
    used_edges = {r.a for r in RATIOS} | {r.b for r in RATIOS}
    assert used_edges == set(range(9))  # every edge appears in some ratio
    assert len(set(RATIO_NAMES)) == len(RATIOS)
    assert sum(r.kind == "sym" for r in RATIOS) == 3


def test_ratios_hand_example() -> None:
    r = dict(zip(RATIO_NAMES, compute_ratios(FACE)))
    io = 34.0
    assert r["sym(LE-MB,MB-RE)"] == pytest.approx(0.0, abs=1e-12)  # symmetric face
    assert r["sym(LE-CH,RE-CH)"] == pytest.approx(0.0, abs=1e-12)
    assert r["LE-MB/LE-RE"] == pytest.approx(np.sqrt(17 ** 2 + 8 ** 2 + 10 ** 2) / io)
    assert r["NT-CH/LE-RE"] == pytest.approx(np.sqrt(8 ** 2 + 28 ** 2) / io)
    assert r["MB-NT/NT-CH"] == pytest.approx(np.sqrt(10 ** 2 + 22 ** 2) / np.sqrt(8 ** 2 + 28 ** 2))
    moved = FACE.copy()
    moved[0] = [27.0, 0, 0]  # left eye further out: LE-MB longer than RE-MB -> positive
    d = edge_lengths(moved)
    c, e = d[EDGES.index((0, 1))], d[EDGES.index((1, 2))]
    assert dict(zip(RATIO_NAMES, compute_ratios(moved)))["sym(LE-MB,MB-RE)"] == pytest.approx((c - e) / (c + e))
    assert (c - e) / (c + e) > 0.1


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 10.0), st.booleans())
def test_ratios_are_similarity_invariant(seed: int, scale: float, mirror: bool) -> None:
    rng = np.random.default_rng(seed)
    pts = FACE + rng.normal(0, 2, FACE.shape)
    m = random_rotation(rng) * scale
    if mirror:
        m = m @ np.diag([-1.0, 1, 1])
    moved = pts @ m.T + rng.uniform(-1000, 1000, 3)
    np.testing.assert_allclose(compute_ratios(moved), compute_ratios(pts), atol=1e-9)


def test_ratios_are_vectorised_and_guard_coincident_points() -> None:
    batch = random_faces(6, np.random.default_rng(1)).reshape(2, 3, 5, 3)
    r = compute_ratios(batch)
    assert r.shape == (2, 3, len(RATIOS))
    np.testing.assert_allclose(r[1, 2], compute_ratios(batch[1, 2]))
    same = np.zeros((5, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.all(np.isfinite(compute_ratios(same)))


def test_fit_and_serialisation(prior: GraphPrior) -> None:
    faces = random_faces(300, np.random.default_rng(0))
    r = compute_ratios(faces)
    np.testing.assert_allclose(prior.mu, r.mean(0))
    np.testing.assert_allclose(prior.sigma, r.std(0, ddof=1))
    assert prior.n_samples == 300
    back = GraphPrior.from_dict(json.loads(json.dumps(prior.to_dict())))
    np.testing.assert_array_equal(back.mu, prior.mu)
    np.testing.assert_array_equal(back.sigma, prior.sigma)
    bad = prior.to_dict()
    bad["ratios"] = bad["ratios"][::-1]
    with pytest.raises(ValueError):
        GraphPrior.from_dict(bad)
    one = GraphPrior.fit(FACE[None])  # a single face: sigma is the floor
    assert np.all(one.sigma == 1e-3)
    with pytest.raises(ValueError):
        GraphPrior.fit(np.full((2, 5, 3), np.nan))


def test_log_penalty_is_log_of_eq4(prior: GraphPrior) -> None:
    pts = random_faces(4, np.random.default_rng(5), noise_mm=3.0)
    r = compute_ratios(pts)
    direct = (prior.sigma * np.exp((r - prior.mu) ** 2 / (2 * prior.sigma ** 2))).sum(-1)  # Eq. 4
    np.testing.assert_allclose(prior.log_penalty(pts), np.log(direct), rtol=1e-10)
    np.testing.assert_allclose(prior.penalty(pts), direct, rtol=1e-10)
    # the mean face has the smallest possible penalty: every exp term is 1 at r = mu
    assert prior.log_penalty(FACE) > np.log(prior.sigma.sum()) - 1e-9


def test_absurd_candidates_stay_finite(prior: GraphPrior) -> None:
    far = FACE.copy()
    far[4] = [1e6, -1e6, 1e6]
    r = compute_ratios(far)
    with np.errstate(over="ignore"):
        assert np.isinf((prior.sigma * np.exp((r - prior.mu) ** 2 / (2 * prior.sigma ** 2))).sum())  # Eq. 4 overflows
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        lp = prior.log_penalty(far)
        assert np.isfinite(lp) and lp > prior.log_penalty(FACE) + 100
        cands = np.stack([FACE, far], axis=1)  # (5, 2, 3): candidate 1 of the chin is absurd
        res = select_combination(cands, np.ones((5, 2)), prior)
        assert all(np.isfinite(lp_) for _, lp_ in res.ranked)
        assert res.choice[4] == 0


def test_prior_picks_the_anatomical_combination(prior: GraphPrior) -> None:
    rng = np.random.default_rng(7)
    for trial in range(20):
        face = random_faces(1, rng, noise_mm=1.0)[0]
        truth_slot = rng.integers(0, 2, 5)  # where the true candidate sits
        cands = np.zeros((5, 2, 3))
        scores = np.zeros((5, 2))
        for k in range(5):
            wrong = face[k] + rng.normal(0, 1, 3) * 12  # a plausible-looking false positive nearby
            if trial % 3 == 0:
                wrong = face[(k + 2) % 5] + rng.normal(0, 1, 3)  # sits on another landmark
            cands[k, truth_slot[k]] = face[k] + rng.normal(0, 0.5, 3)
            cands[k, 1 - truth_slot[k]] = wrong
            scores[k, truth_slot[k]], scores[k, 1 - truth_slot[k]] = 0.4, 0.9  # wrong ones score higher
        res = select_combination(cands, scores, prior)
        assert res.choice.tolist() == truth_slot.tolist(), trial
        assert len(res.ranked) == 32  # 2^5 combinations, not 25
        lps = [lp for _, lp in res.ranked]
        assert lps == sorted(lps) and lps[0] == res.log_penalty
        np.testing.assert_array_equal(res.centres, cands[np.arange(5), truth_slot])
        assert sorted(c for c, _ in res.ranked) == sorted(itertools.product((0, 1), repeat=5))


def test_missing_candidates_and_ties(prior: GraphPrior) -> None:
    cands = np.stack([FACE, FACE + 5.0], axis=1)
    scores = np.full((5, 2), 0.5)
    cands[2, 1] = np.nan  # right eye has only one candidate
    scores[3, 1] = -np.inf  # so has the nose
    res = select_combination(cands, scores, prior)
    assert len(res.ranked) == 8
    assert res.choice[2] == 0 and res.choice[3] == 0
    # identical candidates: the penalty ties, the higher score wins
    twin = np.stack([FACE, FACE], axis=1)
    s = np.array([[0.2, 0.8]] * 5)
    assert select_combination(twin, s, prior).choice.tolist() == [1] * 5
    cands[0] = np.nan
    with pytest.raises(ValueError, match="left_eye"):
        select_combination(cands, scores, prior)


def test_combination_cost_rules_by_hand() -> None:
    lp = np.array([2.0, 1.0])
    scores = np.array([[0.99] * 5, [0.99, 0.99, 0.02, 0.99, 0.99]])
    np.testing.assert_array_equal(combination_cost(lp, scores, "penalty"), lp)  # the paper: Eq. 4 alone
    want = lp - np.log(scores).sum(axis=1)
    np.testing.assert_allclose(combination_cost(lp, scores, "penalty-score"), want, rtol=1e-12)
    # a 0.02 box instead of a 0.99 one costs log(0.99 / 0.02) = 3.90 more than the log penalty gains
    assert combination_cost(lp, scores, "penalty-score").argmin() == 0
    assert combination_cost(lp, scores, "penalty").argmin() == 1
    zero = combination_cost(np.array([0.0]), np.zeros((1, 5)), "penalty-score")  # score 0: floored, finite
    assert np.isfinite(zero).all() and zero[0] > 100
    with pytest.raises(ValueError, match="prior rule"):
        combination_cost(lp, scores, "lowest")
    assert PRIOR_RULES == ("penalty", "penalty-score")


def test_score_aware_rule_keeps_confident_boxes_and_still_rejects_gross_errors(prior: GraphPrior) -> None:
    rng = np.random.default_rng(3)
    face = random_faces(1, rng, noise_mm=0.0)[0]
    # candidate 0: the truth with 2 mm of noise, scored 0.99; candidate 1: 4 mm off, scored 0.02
    cands = np.stack([face + rng.normal(0, 1.2, face.shape), face + rng.normal(0, 2.3, face.shape)], axis=1)
    scores = np.tile([0.99, 0.02], (5, 1))
    paper = select_combination(cands, scores, prior, rule="penalty")
    aware = select_combination(cands, scores, prior, rule="penalty-score")
    cost = combination_cost(np.array([lp for _, lp in paper.ranked]),
                            scores[np.arange(5), np.array([c for c, _ in paper.ranked])], "penalty-score")
    best = paper.ranked[int(np.argmin(cost))][0]
    assert aware.choice.tolist() == list(best)  # select_combination minimises combination_cost
    # the paper's rule swaps two 0.99 boxes for 0.02 ones to make the face slightly more typical
    assert paper.choice.tolist() == [1, 0, 0, 0, 1]
    assert aware.choice.tolist() == [0] * 5 and aware.log_penalty > paper.log_penalty
    # a top-1 that sits on another landmark is still rejected: its ratios are far off
    cands2 = np.stack([face, face], axis=1).copy()
    cands2[4, 0] = face[3] + 1.0  # the top-1 chin lies on the nose tip
    s2 = np.tile([0.9, 0.3], (5, 1))
    assert select_combination(cands2, s2, prior, rule="penalty-score").choice[4] == 1
    with pytest.raises(ValueError, match="prior rule"):
        select_combination(cands, scores, prior, rule="score")


def test_noise_aware_fit_widens_the_gaussians() -> None:
    faces = random_faces(200, np.random.default_rng(1), noise_mm=0.5)
    plain = GraphPrior.fit(faces)
    same = GraphPrior.fit(faces, localisation_sd_mm=0.0)
    np.testing.assert_array_equal(plain.sigma, same.sigma)
    noisy = GraphPrior.fit(faces, localisation_sd_mm=2.0, draws=16, seed=0)
    assert np.all(noisy.sigma > plain.sigma)
    assert noisy.n_samples == 200 and noisy.localisation_sd_mm == 2.0
    # independent check: the variance of a ratio under noise is about the face variance plus the noise's
    r_noisy = compute_ratios(faces[None] + np.random.default_rng(9).normal(0, 2.0, (16,) + faces.shape))
    np.testing.assert_allclose(noisy.sigma, r_noisy.reshape(-1, len(RATIOS)).std(0, ddof=1), rtol=0.1)
    # reproducible, and saved with the model
    again = GraphPrior.fit(faces, localisation_sd_mm=2.0, draws=16, seed=0)
    np.testing.assert_array_equal(again.sigma, noisy.sigma)
    back = GraphPrior.from_dict(json.loads(json.dumps(noisy.to_dict())))
    assert back.localisation_sd_mm == 2.0
    old = noisy.to_dict()
    del old["localisation_sd_mm"]  # a model file written before the option: the paper's prior
    assert GraphPrior.from_dict(old).localisation_sd_mm == 0.0
    with pytest.raises(ValueError):
        GraphPrior.fit(faces, localisation_sd_mm=-1.0)
    with pytest.raises(ValueError):
        GraphPrior.fit(faces, localisation_sd_mm=1.0, draws=0)


def test_localisation_sd_from_distances_recovers_the_noise() -> None:
    from scipy.special import gammaincinv

    assert MAXWELL_MEDIAN == pytest.approx(np.sqrt(2 * gammaincinv(1.5, 0.5)), rel=1e-6)
    err = np.random.default_rng(4).normal(0, 1.7, (20000, 3))
    d = np.linalg.norm(err, axis=1)
    assert localisation_sd_from_distances(d) == pytest.approx(1.7, rel=0.02)
    d[:500] = 80.0  # 2.5 % of the landmarks on the wrong structure barely move it
    assert localisation_sd_from_distances(d) == pytest.approx(1.7, rel=0.06)
    for bad in ([], [1.0, np.nan], [-1.0]):
        with pytest.raises(ValueError):
            localisation_sd_from_distances(np.array(bad))
