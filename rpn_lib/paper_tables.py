"""The paper's own numbers (Tables 1 and 2), as data, to print beside the replication.

Source: Chen, Yang et al., "Region proposal network with graph prior and IoU-balance loss for
landmark detection in 3D ultrasound", ISBI 2020, Sec. 3, Table 1 ("Quantitative comparison
among methods") and Table 2 ("Ablation study of IoU-balance loss and graph prior on AP in
different IoU threshold"). Measured on the authors' private data (32 test volumes) on an
unnamed GPU: the numbers are comparable with each other, not with the open benchmark's.

Units as printed: the "AP" columns and mIoU in percent (the "AP"s behave as detection rates,
NOTES item 1), d-mean in mm, time in ms. Keys are the metric names of
:func:`rpn_lib.metrics.paper_metrics` (``dr_50_95`` is the paper's "AP", ``dr35`` its AP35 ...).

Table 2's check marks are garbled in the text the project works from; the rows of each group
are read as "neither, IoU-balance, prior, both" (NOTES), which matches every difference the
paper's text quotes (SSD mIoU +1.0 / +0.8 / +1.2 points, RPN AP +3.1 / +3.1 / +4.3 points).
Two printed values look like typos and are kept as printed: SSD "prior" AP75 22.88 is not a
multiple of 100/160, and RPN AP50 is 81.87 in one row and 81.88 in the next.
"""

from __future__ import annotations

from typing import Any

PAPER_CITATION = (
    "Chen, Yang et al., Region proposal network with graph prior and IoU-balance loss for landmark "
    "detection in 3D ultrasound, IEEE ISBI 2020, Tables 1 and 2"
)

METRIC_KEYS: tuple[str, ...] = ("dr_50_95", "dr35", "dr50", "dr75", "miou", "d_mean_mm", "time_ms")
"""The paper's columns, in its order: AP, AP35, AP50, AP75, mIoU, d-mean (mm), time (ms)."""


def _row(*values: float | None) -> dict[str, float | None]:
    return dict(zip(METRIC_KEYS, values, strict=True))


PAPER_TABLE1: dict[str, dict[str, float | None]] = {
    "Faster R-CNN": _row(80.63, 94.38, 81.25, 26.87, 62.87, 4.74, 575),
    "IG-SSD": _row(80.00, 92.50, 80.00, 22.50, 61.46, 5.21, 449),
    "Heatmap": _row(None, None, None, None, None, 5.30, 1100),
    "IG-RPN": _row(82.50, 95.00, 82.50, 27.50, 63.77, 4.38, 515),
}
"""Table 1: methods, by the paper's row names (Heatmap: d-mean and time only)."""

PAPER_TABLE2: dict[tuple[str, bool, bool], dict[str, float | None]] = {
    ("SSD", False, False): _row(78.12, 90.00, 78.75, 20.62, 60.29, 5.42, 419),
    ("SSD", True, False): _row(78.12, 91.25, 78.12, 22.50, 61.31, 5.38, 419),
    ("SSD", False, True): _row(77.50, 90.62, 77.50, 22.88, 61.10, 5.28, 449),
    ("SSD", True, True): _row(80.00, 92.50, 80.00, 22.50, 61.46, 5.21, 449),
    ("RPN", False, False): _row(78.12, 95.00, 78.12, 24.37, 62.24, 4.77, 484),
    ("RPN", True, False): _row(81.25, 95.00, 81.87, 26.87, 63.54, 4.43, 484),
    ("RPN", False, True): _row(81.25, 95.63, 81.88, 28.13, 63.74, 4.52, 515),
    ("RPN", True, True): _row(82.50, 95.00, 82.50, 27.50, 63.77, 4.38, 515),
}
"""Table 2: ablation, keyed by ``(detector, iou_balance, prior)``."""


def paper_tables() -> dict[str, Any]:
    """Both tables as JSON-ready data with the citation."""
    return {
        "citation": PAPER_CITATION,
        "units": "AP columns and mIoU in percent, d-mean in mm, time in ms (their GPU)",
        "table1": PAPER_TABLE1,
        "table2": [{"detector": d, "iou_balance": i, "prior": p, **v} for (d, i, p), v in PAPER_TABLE2.items()],
    }
