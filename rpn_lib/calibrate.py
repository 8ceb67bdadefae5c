"""Calibrating the graph prior to a trained detector (a documented deviation from the paper).

The paper fits one Gaussian per distance ratio on the training landmarks and ranks the
combinations of candidates by Eq. 4 alone (:mod:`rpn_lib.prior`). Two things go wrong once
the detector is good (chapter *The graph prior* measures both on the shipped model):

1. The Gaussians describe true landmarks, but the prior scores *detected* ones. Where faces
   vary little, a 2-3 mm localisation error moves a ratio by several of its standard
   deviations, so the penalty of even the right combination is dominated by detection noise.
2. Eq. 4 ignores the scores, so a box of score 0.02 replaces one of 0.99 for a slightly more
   typical face.

:func:`calibrate_prior` answers both, without retraining: it measures the detector's
localisation error on a split of the training data (top-scoring candidate per class, no
prior), refits the Gaussians with that noise included (``GraphPrior.fit(...,
localisation_sd_mm=...)``) and records in the model file the rule the prior should rank
combinations with (``"penalty-score"``: :func:`rpn_lib.prior.combination_cost`). A
:class:`rpn_lib.detect.Detector` reads that rule from the file unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rpn_lib.checkpoint import LoadedModel, load_model, save_model
from rpn_lib.data.dataset import LandmarkDataset
from rpn_lib.detect import Detector
from rpn_lib.evaluate import evaluate
from rpn_lib.prior import GraphPrior, check_prior_rule, localisation_sd_from_distances

__all__ = ["PriorCalibration", "calibrate_prior", "calibrated_prior", "paper_prior"]


@dataclass
class PriorCalibration:
    """What :func:`calibrate_prior` measured and wrote.

    Attributes:
        prior: the refitted prior.
        rule: the prior rule recorded in the model file.
        localisation_sd_mm: per-axis noise the prior now includes (mm).
        median_error_mm: median distance of the top-scoring candidates to the truth (mm).
        mean_error_mm: mean of the same distances (outliers included).
        n_cases: volumes measured.
        split: the split measured (None: every case).
        out: the model file written (None: :func:`calibrated_prior`, which writes none).
    """

    prior: GraphPrior
    rule: str
    localisation_sd_mm: float
    median_error_mm: float
    mean_error_mm: float
    n_cases: int
    split: str | None
    out: Path | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (stored in the model file's metadata as ``prior_calibration``, with
        ``previous_prior``: the prior before the first calibration, see :func:`paper_prior`)."""
        return {"rule": self.rule, "localisation_sd_mm": round(self.localisation_sd_mm, 4),
                "median_error_mm": round(self.median_error_mm, 4), "mean_error_mm": round(self.mean_error_mm, 4),
                "n_cases": self.n_cases, "split": self.split, "draws": _DRAWS}


_DRAWS = 32
"""Noisy copies of each training set in the refit (:meth:`GraphPrior.fit`'s ``draws``)."""


def calibrate_prior(model: str | Path, data: str | Path | LandmarkDataset, out: str | Path,
                    split: str | None = "train", rule: str = "penalty-score", device: str = "auto",
                    progress: bool = True, seed: int = 0) -> PriorCalibration:
    """Refit a model's graph prior to its own localisation noise and write the model to ``out``.

    Args:
        model: a ``model.pt`` written by training (the IG-RPN or a baseline of this library).
        data: a dataset folder or :class:`~rpn_lib.data.dataset.LandmarkDataset`; the prior is refitted on the
            landmarks of ``split`` and the noise measured on its volumes. Use data the model
            was trained on (the default ``train`` split) and keep the test split for testing:
            the error there is somewhat smaller than on new volumes, so the noise is, if
            anything, underestimated.
        out: the model file to write (atomically; it may be ``model`` itself). Weights,
            preset and labels are unchanged.
        split: split of ``data`` (None: every case).
        rule: prior rule to record (:data:`rpn_lib.prior.PRIOR_RULES`).
        device, progress: as for :func:`rpn_lib.evaluate.evaluate`.
        seed: seeds the Monte Carlo refit.

    Raises:
        ModelError: ``model`` is not a readable model file.
        DataError: ``data`` has no case in ``split``.
        ValueError: unknown ``rule``.
    """
    check_prior_rule(rule)
    loaded = load_model(model)
    result = calibrated_prior(Detector(loaded, device=device), data, split, rule, progress, seed)
    result = replace(result, out=Path(out))
    previous = loaded.meta.get("prior_calibration", {}).get("previous_prior", loaded.prior.to_dict())
    meta = {**loaded.meta, "prior_rule": rule, "prior_calibration": {**result.to_dict(), "previous_prior": previous}}
    save_model(Path(out), loaded.model, loaded.preset, result.prior, tuple(loaded.label_names), meta)
    return result


def calibrated_prior(detector: Detector, data: str | Path | LandmarkDataset, split: str | None = "train",
                     rule: str = "penalty-score", progress: bool = True, seed: int = 0) -> PriorCalibration:
    """The measurement and refit of :func:`calibrate_prior` for any detector (e.g. the MONAI
    peer's ``RetinaNetPeerDetector``), without writing a file: use the result with
    ``detector.with_prior(result.prior, result.rule)``.

    The detector's localisation error is measured on ``split`` of ``data`` (top-scoring
    candidate per class, no prior), and the Gaussians refitted on that split's true landmarks
    with that noise included (``GraphPrior.fit(..., localisation_sd_mm=...)``).
    """
    check_prior_rule(rule)
    ds = data if isinstance(data, LandmarkDataset) else LandmarkDataset(data, split=split)
    ev = evaluate(detector, ds, split=split, use_prior=False, progress=progress)
    dist = np.linalg.norm(ev.pred_world - ev.gt_world, axis=-1)
    sd = localisation_sd_from_distances(dist)
    prior = GraphPrior.fit(ev.gt_world, localisation_sd_mm=sd, draws=_DRAWS, seed=seed)
    return PriorCalibration(prior, rule, sd, float(np.median(dist)), float(dist.mean()), len(ev.case_ids), split,
                            None)


def paper_prior(loaded: LoadedModel) -> GraphPrior:
    """The prior a model had before any calibration: the paper's, fitted on the true training
    landmarks (``previous_prior`` of the calibration record; the model's own prior when it was
    never calibrated). Use it with ``Detector.with_prior(paper_prior(...), "penalty")`` to
    compare the paper's prior with the calibrated one on the same network."""
    previous = loaded.meta.get("prior_calibration", {}).get("previous_prior") if isinstance(loaded.meta, dict) else None
    return GraphPrior.from_dict(previous) if previous is not None else loaded.prior
