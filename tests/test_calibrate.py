"""Calibrating the graph prior to a trained model: library function, model file, detector, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rpn_lib.calibrate import calibrate_prior, paper_prior
from rpn_lib.checkpoint import load_model
from rpn_lib.cli import main
from rpn_lib.data.dataset import LandmarkDataset, write_synthetic_dataset
from rpn_lib.detect import Detector
from rpn_lib.evaluate import evaluate
from rpn_lib.prior import MAXWELL_MEDIAN, GraphPrior
from rpn_lib.presets import Preset
from rpn_lib.train import train

TINY = Preset(name="tiny", spacing_mm=5.2, shape_vox=(32, 32, 32), width=8, steps=30, batch_size=2,
              anchors_per_volume=256, lr=2e-3)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A briefly trained tiny model (``model.pt``) and its dataset folder."""
    data = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(data, n=6, n_test=2, seed=2, preset=TINY, difficulty="easy", progress=False)
    out = tmp_path_factory.mktemp("run")
    train(data, out, TINY, seed=0, progress=False, device="cpu", checkpoint_every=1000)
    return out / "model.pt", data


def test_calibrate_prior_refits_to_the_measured_noise(run: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = run
    before = model.read_bytes()
    out = tmp_path / "calibrated.pt"
    res = calibrate_prior(model, data, out, split="train", device="cpu", progress=False)
    assert model.read_bytes() == before  # the source file is untouched
    assert sorted(q.name for q in tmp_path.iterdir()) == ["calibrated.pt"]  # no temporary file left
    # independent measurement of the same noise: top-1 errors of the original model on the train split
    det = Detector.from_file(model, device="cpu")
    assert det.prior_rule == "penalty"  # an uncalibrated file: the paper's rule
    ev = evaluate(det, LandmarkDataset(data, split="train"), use_prior=False, progress=False)
    dist = np.linalg.norm(ev.pred_world - ev.gt_world, axis=-1)
    assert res.localisation_sd_mm == pytest.approx(np.median(dist) / MAXWELL_MEDIAN, rel=1e-9)
    assert res.n_cases == 4 and res.rule == "penalty-score"
    loaded = load_model(out)
    assert loaded.meta["prior_rule"] == "penalty-score"
    assert loaded.meta["prior_calibration"]["n_cases"] == 4
    assert loaded.meta["method"] == load_model(model).meta["method"]  # the rest of the metadata is kept
    assert loaded.prior.localisation_sd_mm == pytest.approx(res.localisation_sd_mm)
    plain = GraphPrior.fit(ev.gt_world)
    assert np.all(loaded.prior.sigma > plain.sigma)
    for a, b in zip(load_model(model).model.state_dict().values(), loaded.model.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy())  # weights unchanged
    # the detector follows the file's rule unless told otherwise
    assert Detector(loaded, device="cpu").prior_rule == "penalty-score"
    assert Detector(loaded, device="cpu", prior_rule="penalty").prior_rule == "penalty"
    with pytest.raises(ValueError, match="prior rule"):
        Detector(loaded, device="cpu", prior_rule="best")
    # the paper's prior is kept in the file, and a second calibration keeps the first one's
    paper = paper_prior(loaded)
    np.testing.assert_array_equal(paper.sigma, load_model(model).prior.sigma)
    assert paper_prior(load_model(model)).to_dict() == load_model(model).prior.to_dict()  # never calibrated
    calibrate_prior(out, data, tmp_path / "twice.pt", device="cpu", progress=False)
    np.testing.assert_array_equal(paper_prior(load_model(tmp_path / "twice.pt")).sigma, paper.sigma)
    det_cal = Detector(loaded, device="cpu")
    det_paper = det_cal.with_prior(paper, "penalty")
    assert det_paper.model is det_cal.model and det_paper.prior is paper and det_paper.prior_rule == "penalty"
    assert det_cal.prior is loaded.prior and det_cal.prior_rule == "penalty-score"  # the original is unchanged
    m = evaluate(Detector(loaded, device="cpu"), LandmarkDataset(data, split="test"), progress=False).metrics
    assert m["prior_rule"] == "penalty-score" and np.isfinite(m["d_mean_mm"])
    assert "prior_rule" not in evaluate(Detector(loaded, device="cpu"), LandmarkDataset(data, split="test"),
                                        use_prior=False, progress=False).metrics


def test_calibrate_prior_cli(run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data = run
    out = tmp_path / "m.pt"
    assert main(["calibrate-prior", "--model", str(model), "--data", str(data), "--out", str(out),
                 "--rule", "penalty", "--device", "cpu", "--no-progress"]) == 0
    assert "noise" in capsys.readouterr().out
    assert load_model(out).meta["prior_rule"] == "penalty"
    metrics = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--out", str(metrics),
                 "--prior-rule", "penalty-score", "--device", "cpu", "--no-progress"]) == 0
    assert json.loads(metrics.read_text())["prior_rule"] == "penalty-score"
    assert "precision" not in json.loads(metrics.read_text())  # fp32 unless --amp
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--out", str(metrics), "--amp",
                 "--device", "cpu", "--no-progress"]) == 0
    assert json.loads(metrics.read_text())["precision"] == "bf16"
    # bad input: one line, exit 2, nothing written
    capsys.readouterr()
    assert main(["calibrate-prior", "--model", str(tmp_path / "none.pt"), "--data", str(data),
                 "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rpn-lib: error:") and err.count("\n") == 1 and "none.pt" in err
    assert main(["calibrate-prior", "--model", str(model), "--data", str(data), "--split", "nosuch",
                 "--out", str(tmp_path / "y.pt"), "--no-progress"]) == 2
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--out", str(metrics),
                 "--prior-rule", "smallest"]) == 2
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()
