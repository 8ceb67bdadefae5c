"""Tests of rpn_lib.paired.score_iou_correlation and rpn_lib.viz.figures.plot_score_iou, on
planted per-case rows (the rows rpn_lib.evaluate.per_case_table writes)."""

from __future__ import annotations

import math

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rpn_lib.landmarks import LANDMARK_NAMES  # noqa: E402
from rpn_lib.paired import score_error_correlation, score_iou_correlation  # noqa: E402
from rpn_lib.viz.figures import plot_score_iou  # noqa: E402


def rows(scores, ious, distances=None):
    distances = distances if distances is not None else [1.0] * len(scores)
    return [{"case": f"case_{i // 5:03d}", "landmark": LANDMARK_NAMES[i % 5], "distance_mm": d, "score": s, "iou": u}
            for i, (s, u, d) in enumerate(zip(scores, ious, distances))]


def test_monotone_rows_give_plus_and_minus_one():
    ious = [0.1, 0.3, 0.5, 0.7, 0.9]
    assert score_iou_correlation(rows([0.2, 0.4, 0.5, 0.8, 0.95], ious)) == pytest.approx(1.0)
    assert score_iou_correlation(rows([0.95, 0.8, 0.5, 0.4, 0.2], ious)) == pytest.approx(-1.0)


def test_hand_computed_value_uses_the_iou_not_the_distance():
    # score ranks 1 3 2 5 4, IoU ranks 1 2 3 4 5: sum d^2 = 4, rho = 1 - 6 * 4 / (5 * (25 - 1)) = 0.8
    planted = rows([0.1, 0.4, 0.3, 0.9, 0.8], [0.2, 0.5, 0.6, 0.7, 0.9], distances=[1.0, 2.0, 3.0, 4.0, 5.0])
    assert score_iou_correlation(planted) == pytest.approx(0.8)
    assert score_error_correlation(planted) == pytest.approx(0.8)  # distance ranks happen to equal IoU ranks
    planted = rows([0.1, 0.4, 0.3, 0.9, 0.8], [0.2, 0.5, 0.6, 0.7, 0.9], distances=[5.0, 4.0, 3.0, 2.0, 1.0])
    assert score_iou_correlation(planted) == pytest.approx(0.8)
    assert score_error_correlation(planted) == pytest.approx(-0.8)


def test_ties_use_average_ranks():
    # scores 0.5 0.5 0.9 -> ranks 1.5 1.5 3; IoUs ranks 1 2 3: Pearson of the ranks = sqrt(3) / 2
    assert score_iou_correlation(rows([0.5, 0.5, 0.9], [0.1, 0.2, 0.3])) == pytest.approx(math.sqrt(3) / 2)


@pytest.mark.parametrize("scores, ious", [
    ([0.5, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4]),   # constant scores
    ([0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 0.0]),   # every box missed
    ([0.1, 0.9], [0.2, 0.8]),                        # too few rows
    ([], []),
])
def test_undefined_correlation_is_nan(scores, ious):
    assert math.isnan(score_iou_correlation(rows(scores, ious)))


def test_plot_score_iou_two_panels_on_the_same_axes():
    a = rows([0.2, 0.4, 0.5, 0.8, 0.95, 0.3], [0.1, 0.3, 0.5, 0.7, 0.9, 0.2])
    b = rows([0.95, 0.8, 0.5, 0.4, 0.2], [0.1, 0.3, 0.5, 0.7, 0.9])
    fig = plot_score_iou({"with": a, "without": b})
    axes = fig.axes
    assert len(axes) == 2
    assert axes[0].get_xlim() == axes[1].get_xlim() == pytest.approx((-0.02, 1.02))
    assert axes[0].get_ylim() == axes[1].get_ylim() == pytest.approx((-0.02, 1.02))
    for ax, planted in zip(axes, (a, b)):
        points = [p for coll in ax.collections for p in coll.get_offsets().tolist()]
        assert sorted(points) == sorted([r["iou"], r["score"]] for r in planted)  # x = IoU, y = score
    assert axes[0].get_title() == "with: 6 boxes, Spearman ρ = 1.00"
    assert axes[1].get_title() == "without: 5 boxes, Spearman ρ = -1.00"
    plt.close(fig)


def test_plot_score_iou_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least one panel"):
        plot_score_iou({})
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="2 panels but 1 axes"):
        plot_score_iou({"a": rows([0.1], [0.2]), "b": rows([0.1], [0.2])}, axes=[ax])
    plt.close(fig)
