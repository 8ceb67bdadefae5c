"""The distance-ratio graph prior (Sec. 2.3, Eq. 4) that picks one candidate per landmark.

The five landmarks (:data:`rpn_lib.landmarks.LANDMARK_NAMES`, 0-based: 0 left eye, 1 middle
eyebrow, 2 right eye, 3 nose tip, 4 chin) are the nodes of a graph with 9 edges
(:data:`EDGES`); an edge's length is the Euclidean distance of its two landmarks. The prior
models ratios of edge lengths (:data:`RATIOS`), each by a Gaussian fitted to the training
landmarks, and scores a set of five points by Eq. 4. Among the ``2^5 = 32`` combinations of
the top-2 candidates per class, the one with the lowest penalty wins
(:func:`select_combination`).

Ratios of distances do not change under translation, rotation, reflection or uniform
scaling, so the points may be given in world mm or in voxels of an *isotropic* grid
(anisotropic voxels would distort them); fit and use the prior in the same kind of frame.
Everything here is numpy float64.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rpn_lib.handedness import name_eye_sides
from rpn_lib.landmarks import EYES, FLIP_PERMUTATION, LANDMARK_NAMES, NUM_LANDMARKS

__all__ = [
    "EDGES", "RATIOS", "RatioDef", "RATIO_NAMES", "edge_lengths", "compute_ratios", "GraphPrior",
    "PriorResult", "select_combination", "PRIOR_RULES", "check_prior_rule", "combination_cost",
    "localisation_sd_from_distances", "MAXWELL_MEDIAN",
]

LE, MB, RE, NT, CH = range(NUM_LANDMARKS)  # left eye, middle eyebrow, right eye, nose tip, chin

EDGES: tuple[tuple[int, int], ...] = (
    (LE, MB), (LE, RE), (LE, NT), (LE, CH), (MB, RE), (MB, NT), (RE, NT), (RE, CH), (NT, CH),
)
"""The 9 edges of Fig. 3a, 0-based node pairs. Choice (NOTES item 3): all 10 pairs of the five
landmarks except middle eyebrow - chin (1-4 here, 2-5 in the paper's 1-based numbering): the
longest midline edge, already fixed by eyebrow-nose and nose-chin."""

_SHORT = ("LE", "MB", "RE", "NT", "CH")

PRIOR_RULES: tuple[str, ...] = ("penalty", "penalty-score")
"""How :func:`select_combination` ranks combinations (:func:`combination_cost`): ``"penalty"``
is the paper's rule (Sec. 2.3), ``"penalty-score"`` a documented deviation that also counts
the detector's scores."""

_MIN_SCORE = 1e-12  # floor of a score before its log: a score of 0 costs 27.6, not infinity


@dataclass(frozen=True)
class RatioDef:
    """One ratio of two edge lengths.

    ``kind == "asym"``: ``Dist(a) / Dist(b)``; ``kind == "sym"``: a left and a right edge,
    ``(Dist(a) - Dist(b)) / (Dist(a) + Dist(b))`` (Sec. 2.3). ``a``, ``b`` index :data:`EDGES`.
    """

    kind: Literal["asym", "sym"]
    a: int
    b: int

    @property
    def name(self) -> str:
        ea, eb = EDGES[self.a], EDGES[self.b]
        sa, sb = f"{_SHORT[ea[0]]}-{_SHORT[ea[1]]}", f"{_SHORT[eb[0]]}-{_SHORT[eb[1]]}"
        return f"{sa}/{sb}" if self.kind == "asym" else f"sym({sa},{sb})"


def _e(i: int, j: int) -> int:
    return EDGES.index((min(i, j), max(i, j)))


_IO = _e(LE, RE)  # interocular edge, the reference length

RATIOS: tuple[RatioDef, ...] = (
    # Symmetric pairs: left vs right counterpart of the eyebrow, nose and chin edges.
    RatioDef("sym", _e(LE, MB), _e(RE, MB)),
    RatioDef("sym", _e(LE, NT), _e(RE, NT)),
    RatioDef("sym", _e(LE, CH), _e(RE, CH)),
    # Every other edge over the interocular distance.
    RatioDef("asym", _e(LE, MB), _IO),
    RatioDef("asym", _e(RE, MB), _IO),
    RatioDef("asym", _e(LE, NT), _IO),
    RatioDef("asym", _e(RE, NT), _IO),
    RatioDef("asym", _e(LE, CH), _IO),
    RatioDef("asym", _e(RE, CH), _IO),
    RatioDef("asym", _e(MB, NT), _IO),
    RatioDef("asym", _e(NT, CH), _IO),
    # Midline proportion: eyebrow-nose over nose-chin.
    RatioDef("asym", _e(MB, NT), _e(NT, CH)),
)
"""The ratios of the prior (NOTES item 4; the paper does not list them). Choice, 12 ratios:

* the 3 symmetric pairs (left eye vs right eye edge to the eyebrow, the nose, the chin),
  as ``(c - d) / (c + d)``: 0 for a symmetric face, whatever its size;
* the 8 other edges over the interocular edge (left eye - right eye), the face's natural
  unit of length: they fix the size of the face's triangles relative to the eyes;
* eyebrow-nose over nose-chin, which does not involve the eyes, so the midline's proportions
  are judged even when an eye candidate is wrong.

Every ratio is scale-invariant; the set is mirror-invariant (swapping left and right maps it
onto itself, the symmetric ratios changing sign); every node and every edge appears."""

RATIO_NAMES: tuple[str, ...] = tuple(r.name for r in RATIOS)
"""The name of each ratio of :data:`RATIOS`, in its order (the columns of a prior's ``mu`` and ``sigma``)."""

# index arrays of EDGES and RATIOS, built once (the prior scores every candidate combination)
_EDGE_FROM = np.array([e[0] for e in EDGES])
_EDGE_TO = np.array([e[1] for e in EDGES])
_RATIO_A = np.array([r.a for r in RATIOS])
_RATIO_B = np.array([r.b for r in RATIOS])
_RATIO_SYM = np.array([r.kind == "sym" for r in RATIOS])

_EPS = 1e-9  # floor of a denominator (coincident points): keeps ratios finite


def edge_lengths(landmarks: np.ndarray) -> np.ndarray:
    """Lengths of the :data:`EDGES`: ``(..., 5, 3)`` points -> ``(..., 9)`` (same unit)."""
    p = np.asarray(landmarks, dtype=np.float64)
    if p.shape[-2:] != (NUM_LANDMARKS, 3):
        raise ValueError(f"landmarks must have shape (..., {NUM_LANDMARKS}, 3), got {p.shape}")
    diff = p[..., _EDGE_FROM, :] - p[..., _EDGE_TO, :]
    return np.sqrt(np.einsum("...i,...i->...", diff, diff))


def compute_ratios(landmarks: np.ndarray) -> np.ndarray:
    """The :data:`RATIOS` of sets of five points: ``(..., 5, 3)`` -> ``(..., R)``.

    Denominators are floored at 1e-9 so that coincident points give large finite ratios
    (and a symmetric ratio of two zero lengths is 0). NaN points give NaN ratios.
    """
    d = edge_lengths(landmarks)
    da, db = d[..., _RATIO_A], d[..., _RATIO_B]
    num = np.where(_RATIO_SYM, da - db, da)
    den = np.where(_RATIO_SYM, da + db, db)
    return num / np.maximum(den, _EPS)


def _logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):  # exp(-big) -> 0 is fine
        s = np.log(np.sum(np.exp(x - m_safe), axis=axis, keepdims=True)) + m_safe
    return np.squeeze(s, axis=axis)


@dataclass
class GraphPrior:
    """Gaussian distribution of each ratio, fitted on training landmarks.

    Attributes:
        mu: ``(R,)`` mean of each ratio.
        sigma: ``(R,)`` standard deviation of each ratio (NOTES item 6: the paper calls it the
            variance, but uses it as a standard deviation).
        names: ``R`` ratio names (:data:`RATIO_NAMES`); stored so that a saved prior made with
            another ratio set is rejected.
        n_samples: number of landmark sets the prior was fitted on.
        localisation_sd_mm: the localisation noise the Gaussians include, per axis in mm
            (:meth:`fit`); 0 for the paper's prior, fitted on the true landmarks alone.
    """

    mu: np.ndarray
    sigma: np.ndarray
    names: tuple[str, ...] = RATIO_NAMES
    n_samples: int = 0
    localisation_sd_mm: float = 0.0

    def __post_init__(self) -> None:
        self.mu = np.asarray(self.mu, dtype=np.float64)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        self.names = tuple(self.names)
        r = len(RATIOS)
        if self.mu.shape != (r,) or self.sigma.shape != (r,):
            raise ValueError(f"mu and sigma must have shape ({r},), got {self.mu.shape}, {self.sigma.shape}")
        if self.names != RATIO_NAMES:
            raise ValueError(f"prior made for ratios {self.names}, this library uses {RATIO_NAMES}")
        if not (np.all(np.isfinite(self.mu)) and np.all(np.isfinite(self.sigma)) and np.all(self.sigma > 0)):
            raise ValueError("mu must be finite and sigma finite and positive")
        self.localisation_sd_mm = float(self.localisation_sd_mm)
        if not (np.isfinite(self.localisation_sd_mm) and self.localisation_sd_mm >= 0):
            raise ValueError(f"localisation_sd_mm must be finite and >= 0, got {self.localisation_sd_mm}")

    @classmethod
    def fit(cls, landmarks: np.ndarray, min_sigma: float = 1e-3, localisation_sd_mm: float = 0.0,
            draws: int = 32, seed: int = 0) -> "GraphPrior":
        """Fit a Gaussian to each ratio of ``landmarks`` ``(N, 5, 3)`` (training set, mm).

        ``sigma`` is the sample standard deviation (``ddof = 1``; 0 for one sample), floored at
        ``min_sigma`` (ratios are dimensionless, ~0.1 to 2) so that a ratio that never varies
        in the training data cannot make the penalty infinitely sharp.

        ``localisation_sd_mm > 0`` (a deviation from the paper, which fits the true landmarks):
        the Gaussians describe the ratios of *detected* landmarks, each off its true place by
        isotropic normal noise of this standard deviation per axis. The fit then uses
        ``draws`` noisy copies of every training set (Monte Carlo, seeded by ``seed``, so the
        fit is reproducible). Why: the prior scores detections, not true points. Fitted on the
        true points of faces that vary little, a ratio's ``sigma`` can be smaller than what a
        2-3 mm localisation error does to it, and Eq. 4 then ranks combinations by detection
        noise (chapter *The graph prior* measures this). :func:`localisation_sd_from_distances`
        estimates the noise from a detector's errors; ``landmarks`` must be in mm for it.
        """
        p = np.asarray(landmarks, dtype=np.float64)
        if p.ndim != 3 or p.shape[1:] != (NUM_LANDMARKS, 3) or p.shape[0] == 0:
            raise ValueError(f"landmarks must have shape (N >= 1, {NUM_LANDMARKS}, 3), got {p.shape}")
        if not np.all(np.isfinite(p)):
            raise ValueError("landmarks contain NaN or infinite values")
        if not (np.isfinite(localisation_sd_mm) and localisation_sd_mm >= 0):
            raise ValueError(f"localisation_sd_mm must be finite and >= 0, got {localisation_sd_mm}")
        if localisation_sd_mm > 0:
            if draws < 1:
                raise ValueError(f"draws must be >= 1, got {draws}")
            rng = np.random.default_rng(seed)
            noisy = p[None] + rng.normal(0.0, localisation_sd_mm, (draws,) + p.shape)
            r = compute_ratios(noisy.reshape(-1, NUM_LANDMARKS, 3))
        else:
            r = compute_ratios(p)
        mu = r.mean(axis=0)
        sigma = r.std(axis=0, ddof=1) if len(r) > 1 else np.zeros_like(mu)
        return cls(mu, np.maximum(sigma, min_sigma), RATIO_NAMES, int(len(p)), float(localisation_sd_mm))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (stored in the model file)."""
        return {"ratios": list(self.names), "mu": self.mu.tolist(), "sigma": self.sigma.tolist(),
                "n_samples": self.n_samples, "localisation_sd_mm": self.localisation_sd_mm,
                "edges": [list(e) for e in EDGES], "landmarks": list(LANDMARK_NAMES)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GraphPrior":
        """Inverse of :meth:`to_dict`; a prior made with other edges or ratios raises ValueError."""
        if "edges" in d and [tuple(e) for e in d["edges"]] != list(EDGES):
            raise ValueError(f"prior made for edges {d['edges']}, this library uses {list(EDGES)}")
        return cls(np.asarray(d["mu"]), np.asarray(d["sigma"]), tuple(d["ratios"]), int(d.get("n_samples", 0)),
                   float(d.get("localisation_sd_mm", 0.0)))

    def log_penalty_from_ratios(self, ratios: np.ndarray) -> np.ndarray:
        """Eq. 4 in log space: ``log(sum_i sigma_i * exp((r_i - mu_i)^2 / (2 sigma_i^2)))``.

        ``ratios`` ``(..., R)`` -> ``(...)``. Computed as a log-sum-exp of
        ``log sigma_i + z_i^2 / 2`` with ``z_i = (r_i - mu_i) / sigma_i`` (NOTES item 5): Eq. 4
        itself overflows float64 once a ratio is ~38 sigma from its mean, while its logarithm
        stays finite for any finite ratio, and only the order of penalties matters.
        """
        r = np.asarray(ratios, dtype=np.float64)
        z = (r - self.mu) / self.sigma
        return _logsumexp(np.log(self.sigma) + 0.5 * z * z, axis=-1)

    def log_penalty(self, landmarks: np.ndarray) -> np.ndarray:
        """Log of the Eq. 4 penalty of sets of five points: ``(..., 5, 3)`` -> ``(...)``."""
        return self.log_penalty_from_ratios(compute_ratios(landmarks))

    def penalty(self, landmarks: np.ndarray) -> np.ndarray:
        """Eq. 4 penalty itself, ``exp`` of :meth:`log_penalty` (``inf`` when it overflows)."""
        with np.errstate(over="ignore"):
            return np.exp(self.log_penalty(landmarks))


MAXWELL_MEDIAN = 1.5381722
"""Median of the length of a 3D vector of independent standard normal components (the
Maxwell distribution with scale 1): ``sqrt(2 * gammaincinv(1.5, 0.5))``."""


def localisation_sd_from_distances(distances_mm: np.ndarray) -> float:
    """Per-axis standard deviation of isotropic normal localisation noise, from the distances
    of detected landmarks to the true ones (any shape, mm): ``median / 1.538``.

    Under that noise a distance follows a Maxwell distribution whose median is
    :data:`MAXWELL_MEDIAN` times the per-axis standard deviation. The median, not the mean,
    so that the few landmarks found on the wrong structure (tens of mm off), which the noise
    model does not describe, do not inflate it.
    """
    d = np.asarray(distances_mm, dtype=np.float64).ravel()
    if d.size == 0 or not np.all(np.isfinite(d)) or np.any(d < 0):
        raise ValueError("need at least one finite, non-negative distance")
    return float(np.median(d) / MAXWELL_MEDIAN)


def check_prior_rule(rule: str) -> str:
    """``rule`` itself when it is one of :data:`PRIOR_RULES`, else ``ValueError``."""
    if rule not in PRIOR_RULES:
        raise ValueError(f"prior rule must be one of {PRIOR_RULES}, got {rule!r}")
    return rule


def combination_cost(log_penalty: np.ndarray, scores: np.ndarray, rule: str = "penalty") -> np.ndarray:
    """What :func:`select_combination` minimises, per combination.

    Args:
        log_penalty: ``(C,)`` log of Eq. 4 of each combination (:meth:`GraphPrior.log_penalty`).
        scores: ``(C, 5)`` the detector's scores (class probabilities) of each combination's
            five candidates.
        rule: ``"penalty"``: the paper's rule (Sec. 2.3, "the combination with the lowest
            L_penalty is treated as our final prediction"): ``log L_penalty``, the scores
            left out. ``"penalty-score"`` (a deviation): ``log L_penalty - sum_k log s_k``.

    Why the deviation. The paper's rule ignores how sure the detector is: a second candidate
    with a score of 0.02 replaces a first one of 0.99 whenever it makes the face's ratios
    slightly more typical (chapter *The graph prior* shows such swaps on the shipped model).
    Eq. 4 sums the reciprocals of the ratios' normal densities (up to a factor), so
    ``log L_penalty`` acts as a negative log-likelihood of the face's shape, led by its least
    typical ratio; ``-log s_k`` is the negative log-probability the detector gives box ``k``.
    Their sum ranks shape and boxes together, the usual way to combine a shape prior with
    detections, and has no parameter to tune. A swap must now pay for its loss of score with
    a more plausible face: a box of 0.02 instead of 0.99 costs ``log(0.99 / 0.02) = 3.9``,
    the log-penalty of a ratio about 2.8 standard deviations off.

    Returns:
        ``(C,)`` cost; lower is better.
    """
    lp = np.asarray(log_penalty, dtype=np.float64)
    if check_prior_rule(rule) == "penalty":
        return lp
    s = np.clip(np.asarray(scores, dtype=np.float64), _MIN_SCORE, None)
    return lp - np.log(s).sum(axis=-1)


@dataclass
class PriorResult:
    """Outcome of :func:`select_combination`.

    Attributes:
        choice: ``(5,)`` chosen candidate index per class.
        centres: ``(5, 3)`` the chosen points.
        log_penalty: log of Eq. 4 for the choice.
        ranked: every combination as ``(indices, log_penalty)``, best first.
    """

    choice: np.ndarray
    centres: np.ndarray
    log_penalty: float
    ranked: list[tuple[tuple[int, ...], float]]


def _combinations(options: tuple[tuple[int, ...], ...], pooled_eyes: bool) -> np.ndarray:
    """``(C, 5)`` combinations of one candidate per class, ``options[k]`` the usable candidates
    of class ``k``, in ``itertools.product`` order (candidate 0 of each class first, the last
    class varying fastest). With ``pooled_eyes`` the two eye slots take two different shared
    eye candidates: every eye pair ``(a, b)``, ``a < b``, each with every choice of the other
    classes. A copy of a cached array (the same few option sets recur for every volume)."""
    return _combinations_cached(options, pooled_eyes).copy()


@functools.lru_cache(maxsize=256)
def _combinations_cached(options: tuple[tuple[int, ...], ...], pooled_eyes: bool) -> np.ndarray:
    if not pooled_eyes:
        return np.array(list(itertools.product(*options)), dtype=np.int64).reshape(-1, NUM_LANDMARKS)
    others = [k for k in range(NUM_LANDMARKS) if k not in EYES]
    rows = []
    for a, b in itertools.combinations(options[EYES[0]], 2):
        for rest in itertools.product(*(options[k] for k in others)):
            row = [0] * NUM_LANDMARKS
            row[EYES[0]], row[EYES[1]] = a, b
            for k, v in zip(others, rest):
                row[k] = v
            rows.append(row)
    return np.array(rows, dtype=np.int64).reshape(-1, NUM_LANDMARKS)


def select_combination(cand_centres: np.ndarray, cand_scores: np.ndarray, prior: GraphPrior,
                       pooled_eyes: bool = False, rule: str = "penalty") -> PriorResult:
    """Pick one candidate per landmark with the graph prior (Sec. 2.3).

    Every combination of one candidate per class is scored by Eq. 4
    (:meth:`GraphPrior.log_penalty`); with ``rule="penalty"`` (the paper) the lowest penalty
    wins, with ``rule="penalty-score"`` the lowest penalty once the candidates' scores are counted
    (:func:`combination_cost` says how, and why). Ties are broken by the higher sum of
    candidate scores, then by enumeration order (candidate 0 of each class first). With the
    top-2 candidates of 5 classes there are ``2^5 = 32`` combinations (NOTES item 2: the
    paper's "25" is a slip).

    Args:
        cand_centres: ``(5, k, 3)`` candidate centres, world mm or isotropic voxels (the frame
            the prior was fitted in, up to a similarity). A class with fewer than ``k``
            candidates marks the missing ones with NaN centres (or ``-inf`` scores); it then
            contributes fewer combinations.
        cand_scores: ``(5, k)`` candidate scores (class probabilities).
        prior: fitted :class:`GraphPrior`.
        rule: ``"penalty"`` or ``"penalty-score"`` (:data:`PRIOR_RULES`).
        pooled_eyes: ``Preset.eye_sides == "geometry"``: the two eye classes hold the same
            candidates (places of "an eye"). Each combination then takes two different ones,
            and the face's handedness (:func:`rpn_lib.handedness.name_eye_sides`, from the
            combination's own eyebrow, nose and chin) says which is the left eye; ``choice``
            and ``ranked`` index that shared list. With ``k`` eye candidates there are
            ``k (k - 1) / 2`` eye pairs.

    Raises:
        ValueError: a class has no candidate at all, or an unknown ``rule``.
    """
    check_prior_rule(rule)
    c = np.asarray(cand_centres, dtype=np.float64)
    s = np.asarray(cand_scores, dtype=np.float64)
    if c.ndim != 3 or c.shape[0] != NUM_LANDMARKS or c.shape[2] != 3 or s.shape != c.shape[:2]:
        raise ValueError(f"need cand_centres (5, k, 3) and cand_scores (5, k), got {c.shape} and {s.shape}")
    valid = np.all(np.isfinite(c), axis=-1) & ~(np.isneginf(s) | np.isnan(s))
    options = tuple(tuple(np.flatnonzero(v).tolist()) for v in valid)
    missing = [LANDMARK_NAMES[k] for k, o in enumerate(options) if len(o) == 0]
    if missing:
        raise ValueError(f"no candidate for {', '.join(missing)}")
    rows = np.arange(NUM_LANDMARKS)
    if pooled_eyes:
        combos = _combinations(options, pooled_eyes=True)
        if len(combos) == 0:
            raise ValueError("need two different eye candidates")
        pts = c[rows[None, :], combos]
        swap = name_eye_sides(pts)
        combos[swap] = combos[swap][:, list(FLIP_PERMUTATION)]
    else:
        combos = _combinations(options, pooled_eyes=False)  # (C, 5)
    pts = c[rows[None, :], combos]  # (C, 5, 3)
    lp = prior.log_penalty(pts)  # (C,)
    combo_scores = s[rows[None, :], combos]  # (C, 5)
    cost = combination_cost(lp, combo_scores, rule)
    order = np.lexsort((np.arange(len(combos)), -combo_scores.sum(axis=1), cost))
    ranked = list(zip(map(tuple, combos[order].tolist()), lp[order].tolist()))
    best = combos[order[0]]
    return PriorResult(best.copy(), pts[order[0]].copy(), float(lp[order[0]]), ranked)
