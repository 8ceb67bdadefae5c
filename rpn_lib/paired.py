"""Paired comparisons of two detectors (or two settings of one) on the same test landmarks.

With 32 test volumes x 5 landmarks, a detection rate moves in steps of 0.6 points and a
difference of one or two landmarks is noise. The comparisons here use the per-landmark
distances that :func:`rpn_lib.evaluate.per_case_table` writes, paired by (case, landmark):

* the unit is one (case, landmark); its difference is ``d_A - d_B`` (mm) averaged over the
  seeds both sides have (seed ``k`` of A with seed ``k`` of B), so seeds are pooled without
  counting one landmark three times;
* a two-sided Wilcoxon signed-rank test on those differences (:func:`scipy.stats.wilcoxon`,
  its default ``zero_method="wilcox"``: exact ties are left out, as when the graph prior keeps
  the same box);
* a paired bootstrap 95 % confidence interval of the mean difference that resamples whole
  *cases* (the five landmarks of a volume are not independent), percentile method.

Negative differences mean A is closer to the truth. :func:`prior_changes` counts what the
graph prior changed in one run, landmark by landmark and case by case.
:func:`score_error_correlation` and :func:`score_iou_correlation` say, for one run, how well the
final boxes' scores rank their errors and their IoUs (what the IoU-balanced loss aims at).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "Key", "distances_by_key", "paired_comparison", "prior_changes", "score_error_correlation",
    "score_iou_correlation",
]

Key = tuple[str, str]
"""``(case id, landmark name)``."""

TIE_MM = 1e-6
"""Two distances closer than this (mm) are the same box (the prior kept the candidate)."""


def distances_by_key(per_case: Sequence[Mapping[str, Any]]) -> dict[Key, float]:
    """Rows of :func:`rpn_lib.evaluate.per_case_table` -> ``{(case, landmark): distance_mm}``."""
    out: dict[Key, float] = {}
    for r in per_case:
        key = (str(r["case"]), str(r["landmark"]))
        if key in out:
            raise ValueError(f"duplicate row for case {key[0]!r}, landmark {key[1]!r}")
        out[key] = float(r["distance_mm"])
    return out


def _bootstrap_ci(diff: np.ndarray, cases: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile 95 % CI of the mean of ``diff`` (units) resampling whole cases."""
    uniq, inv = np.unique(cases, return_inverse=True)
    sums = np.bincount(inv, weights=diff, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
    means = sums[pick].sum(1) / counts[pick].sum(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def paired_comparison(a: Mapping[int, Mapping[Key, float]], b: Mapping[int, Mapping[Key, float]],
                      n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Compare the per-landmark distances of A and B (see the module docstring).

    Args:
        a, b: per seed, ``{(case, landmark): distance_mm}`` (:func:`distances_by_key`).
        n_boot: bootstrap resamples.
        seed: seed of the bootstrap.

    Returns:
        ``seeds`` (paired), ``n_pairs`` (units), ``mean_a_mm``, ``mean_b_mm``,
        ``mean_diff_mm`` (A - B), ``ci95_mm`` ``[lo, hi]``, ``wilcoxon_statistic``,
        ``p_value`` (1.0 and statistic None when every difference is zero), ``a_better``,
        ``b_better``, ``ties`` (units), ``per_seed_mean_diff_mm``.

    Raises:
        ValueError: no seed in common, or the seeds cover different (case, landmark) sets.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the two sides share no seed")
    keys = sorted(a[seeds[0]])
    for s in seeds:
        if set(a[s]) != set(keys) or set(b[s]) != set(keys):
            raise ValueError(f"seed {s}: A and B were evaluated on different cases or landmarks")
    da = np.array([[a[s][k] for k in keys] for s in seeds])  # (S, U)
    db = np.array([[b[s][k] for k in keys] for s in seeds])
    diff = (da - db).mean(0)  # (U,)
    ties = np.abs(diff) <= TIE_MM
    diff[ties] = 0.0  # float noise on an unchanged box is a tie, which the test leaves out
    if ties.all():
        statistic, p = None, 1.0
    else:
        res = stats.wilcoxon(diff)
        statistic, p = float(res.statistic), float(res.pvalue)
    cases = np.array([k[0] for k in keys])
    return {
        "seeds": seeds, "n_pairs": len(keys), "mean_a_mm": float(da.mean()), "mean_b_mm": float(db.mean()),
        "mean_diff_mm": float(diff.mean()), "ci95_mm": list(_bootstrap_ci(diff, cases, n_boot, seed)),
        "wilcoxon_statistic": statistic, "p_value": p,
        "a_better": int(((diff < 0) & ~ties).sum()), "b_better": int(((diff > 0) & ~ties).sum()),
        "ties": int(ties.sum()),
        "per_seed_mean_diff_mm": [float(v) for v in (da - db).mean(1)],
    }


def prior_changes(with_prior: Mapping[Key, float], without_prior: Mapping[Key, float]) -> dict[str, Any]:
    """What the graph prior changed in one run: landmarks and cases, for better and worse.

    A landmark "changed" when its distance differs by more than :data:`TIE_MM` (the prior
    chose another candidate than the top-scoring one); "better" when it got closer. A case
    changed when any of its landmarks did; it is better (worse) when its mean distance fell
    (rose).

    Returns:
        ``landmarks``, ``landmarks_changed``, ``landmarks_better``, ``landmarks_worse``,
        ``cases``, ``cases_changed``, ``cases_better``, ``cases_worse``,
        ``mean_change_mm`` (mean over all landmarks of with - without).
    """
    keys = sorted(without_prior)
    if set(with_prior) != set(keys):
        raise ValueError("the runs with and without the prior cover different cases or landmarks")
    d = np.array([with_prior[k] - without_prior[k] for k in keys])
    changed = np.abs(d) > TIE_MM
    cases = sorted({k[0] for k in keys})
    by_case = {c: [i for i, k in enumerate(keys) if k[0] == c] for c in cases}
    case_changed = [c for c in cases if changed[by_case[c]].any()]
    case_delta = {c: float(d[by_case[c]].mean()) for c in case_changed}
    return {
        "landmarks": len(keys), "landmarks_changed": int(changed.sum()),
        "landmarks_better": int((changed & (d < 0)).sum()), "landmarks_worse": int((changed & (d > 0)).sum()),
        "cases": len(cases), "cases_changed": len(case_changed),
        "cases_better": sum(v < 0 for v in case_delta.values()), "cases_worse": sum(v > 0 for v in case_delta.values()),
        "mean_change_mm": float(d.mean()) if len(d) else float("nan"),
    }


def score_error_correlation(per_case: Sequence[Mapping[str, Any]]) -> float:
    """Spearman correlation between a final box's score and its landmark error (mm).

    The IoU-balanced loss is meant to make scores track localisation quality (Sec. 2.2):
    the more negative, the better high scores predict small errors. NaN when undefined
    (fewer than 3 rows, or constant scores).
    """
    return _spearman(per_case, "score", "distance_mm")


def score_iou_correlation(per_case: Sequence[Mapping[str, Any]]) -> float:
    """Spearman correlation between a final box's score and its IoU with the true box.

    The quantity the IoU-balanced loss aims at (Sec. 2.2, chapter *The IoU-balanced loss*):
    the more positive, the better a high score predicts a well-fitting box. Unlike
    :func:`score_error_correlation` it judges the whole box (centre and size), as the loss's
    weights do. NaN when undefined (fewer than 3 rows, or constant scores or IoUs).

    Args:
        per_case: rows of :func:`rpn_lib.evaluate.per_case_table` (``score`` and ``iou`` read).
    """
    return _spearman(per_case, "score", "iou")


def _spearman(rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str) -> float:
    """Spearman correlation of two fields of ``rows``; NaN for < 3 rows or a constant field."""
    x = np.array([float(r[x_key]) for r in rows])
    y = np.array([float(r[y_key]) for r in rows])
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)
