"""Validation during training: the run's model scored on held-out cases at each checkpoint.

The paper splits its 152 volumes into 120 for training and 32 for testing (Sec. 3) and names no
validation split. On data of one's own, the number of steps and the learning rate are
guesses, and the test split must not be what corrects them. :class:`Validator` scores the
``model.pt`` that :func:`rpn_lib.train.train` has just written on a validation split (the
detection as :func:`rpn_lib.evaluate.evaluate` runs it, graph prior included), appends a row to
``val.csv`` in the run folder, and keeps the model with the lowest validation d-mean as
``model_best.pt``. It runs at checkpoints only, so training itself is unchanged (a run with
validation takes the same steps as one without), and a resumed run continues ``val.csv`` and
its best model.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rpn_lib.data.dataset import LandmarkDataset
from rpn_lib.errors import DataError
from rpn_lib.fileio import atomic_write

VAL_FIELDS: tuple[str, ...] = ("step", "d_mean_mm", "dr50", "miou")
"""Columns of ``val.csv``: the step and the validation split's d-mean (mm), DR50 and mIoU."""

VAL_LOG = "val.csv"
BEST_MODEL = "model_best.pt"


def read_val_log(path: str | Path, upto_step: float = math.inf) -> list[dict[str, float]]:
    """The rows of a ``val.csv`` (:data:`VAL_FIELDS`) up to ``upto_step``; none when it is missing."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if k in VAL_FIELDS} for r in csv.DictReader(f)]
    return [r for r in rows if r["step"] <= upto_step]


def best_row(rows: Sequence[dict[str, float]]) -> dict[str, float] | None:
    """The ``val.csv`` row with the lowest d-mean (the earliest among equals), or None."""
    return min(rows, key=lambda r: (r["d_mean_mm"], r["step"])) if rows else None


class Validator:
    """Scores a run folder's ``model.pt`` on validation cases and keeps the best model.

    Args:
        data: the validation cases: a :class:`~rpn_lib.data.dataset.LandmarkDataset`
            (e.g. ``LandmarkDataset(root, split="val")``). Every case is read once here, so a
            case that cannot be used stops the run before training starts.
        out: the run folder.
        device: the device to detect on (the training device).
        start_step: the step a resumed run continues from: rows of ``val.csv`` after it are
            dropped (the run will make them again); 0 starts a new log.
        train_ids: case ids of the training split; validation cases among them are named in a
            warning (their scores would flatter the model).

    Raises:
        DataError: the validation split is empty, or a case cannot be read.
    """

    def __init__(self, data: LandmarkDataset, out: str | Path, device: torch.device | str = "cpu",
                 start_step: int = 0, train_ids: Sequence[str] = ()) -> None:
        if len(data) == 0:
            raise DataError("the validation split has no cases", getattr(data, "root", None))
        self.cases = [data[i] for i in range(len(data))]
        shared = sorted({c.case_id for c in self.cases} & set(train_ids))
        if shared:
            warnings.warn(f"{len(shared)} validation case(s) are also training cases ({', '.join(shared[:5])}"
                          f"{', ...' if len(shared) > 5 else ''}): their scores flatter the model",
                          UserWarning, stacklevel=3)
        self.out = Path(out)
        self.device = device
        self.rows = read_val_log(self.out / VAL_LOG, start_step) if start_step else []

    @property
    def best(self) -> dict[str, float] | None:
        """The row with the lowest d-mean so far (:func:`best_row`)."""
        return best_row(self.rows)

    def __call__(self, step: int) -> dict[str, float]:
        """Score ``out/model.pt`` (written at ``step``), log it, and copy it to
        ``model_best.pt`` when its d-mean is the lowest so far. Returns the new row."""
        from rpn_lib.detect import Detector
        from rpn_lib.evaluate import evaluate

        model_path = self.out / "model.pt"
        detector = Detector.from_file(model_path, device=self.device)
        m = evaluate(detector, self.cases, split=None, progress=False, read_ahead_cases=0).metrics
        # rounded as val.csv writes them, so that a resumed run compares the same numbers
        row = {"step": float(step), **{k: float(f"{float(m[k]):.6g}") for k in VAL_FIELDS[1:]}}
        self.rows = [r for r in self.rows if r["step"] < step] + [row]
        if self.best is row:
            atomic_write(self.out / BEST_MODEL, model_path.read_bytes())
        self._write()
        return row

    def _write(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=VAL_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: (int(r[k]) if k == "step" else f"{r[k]:.6g}") for k in VAL_FIELDS})
        atomic_write(self.out / VAL_LOG, buf.getvalue())

    def summary(self) -> dict[str, Any]:
        """What ``train.json`` records: the rows' count and the best step with its scores."""
        return {"val_checks": len(self.rows), "val_best": dict(self.best) if self.best else None}
