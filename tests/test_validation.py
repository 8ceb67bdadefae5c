"""Validation during training: val.csv at each checkpoint, model_best.pt, training unchanged,
exact resume, and clear refusals."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from rpn_lib.checkpoint import load_model
from rpn_lib.cli import main
from rpn_lib.data.dataset import LandmarkDataset, write_synthetic_dataset
from rpn_lib.errors import DataError
from rpn_lib.evaluate import evaluate
from rpn_lib.presets import Preset
from rpn_lib.train import train
from rpn_lib.validation import BEST_MODEL, VAL_FIELDS, VAL_LOG, best_row, read_val_log

TINY = Preset(name="tiny", spacing_mm=5.2, shape_vox=(32, 32, 32), width=4, steps=6, batch_size=1,
              anchors_per_volume=128, lr=2e-3)
COMMON = dict(preset=TINY, steps=6, checkpoint_every=3, log_every=1, progress=False, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six cases: four to train on, two to validate on (and the writer's test case)."""
    out = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(out, n=7, n_test=1, seed=2, preset=TINY, difficulty="easy", progress=False)
    splits = json.loads((out / "splits.json").read_text())
    splits["val"], splits["train"] = splits["train"][:2], splits["train"][2:]
    (out / "splits.json").write_text(json.dumps(splits))
    return out


@pytest.fixture
def one_thread():
    """Bitwise reproducible reductions for the comparisons of two runs (as in test_train_detect)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path).model.state_dict()


def test_validation_scores_each_checkpoint_and_keeps_the_best(data: Path, tmp_path: Path, one_thread: None) -> None:
    res = train(data, tmp_path / "val", val_data=data, **COMMON)
    rows = read_val_log(tmp_path / "val" / VAL_LOG)
    assert [int(r["step"]) for r in rows] == [3, 6] and set(rows[0]) == set(VAL_FIELDS)
    assert res.val == rows
    # each row is what rpn-lib evaluate says of that checkpoint's model on the val split
    final = evaluate(str(tmp_path / "val" / "model.pt"), data, split="val", progress=False, read_ahead_cases=0)
    assert rows[-1]["d_mean_mm"] == pytest.approx(final.metrics["d_mean_mm"], rel=1e-5)
    best = best_row(rows)
    kept = evaluate(str(tmp_path / "val" / BEST_MODEL), data, split="val", progress=False, read_ahead_cases=0)
    assert kept.metrics["d_mean_mm"] == pytest.approx(best["d_mean_mm"], rel=1e-5)
    assert load_model(tmp_path / "val" / BEST_MODEL).meta["steps"] == int(best["step"])
    info = json.loads((tmp_path / "val" / "train.json").read_text())
    assert info["val_checks"] == 2 and info["val_best"]["step"] == best["step"]
    # validating changes nothing in the training
    train(data, tmp_path / "plain", **COMMON)
    a, b = _weights(tmp_path / "val" / "model.pt"), _weights(tmp_path / "plain" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "plain" / VAL_LOG).exists() and not (tmp_path / "plain" / BEST_MODEL).exists()


def test_a_resumed_run_continues_its_validation_exactly(data: Path, tmp_path: Path, one_thread: None) -> None:
    class Interrupted(Exception):
        pass

    def stop_at_step_4(step: int, row: dict) -> None:
        if step == 4:
            raise Interrupted

    train(data, tmp_path / "whole", val_data=data, **COMMON)
    with pytest.raises(Interrupted):
        train(data, tmp_path / "cut", val_data=data, callback=stop_at_step_4, **COMMON)
    assert [int(r["step"]) for r in read_val_log(tmp_path / "cut" / VAL_LOG)] == [3]
    train(data, tmp_path / "cut", val_data=data, resume=True, **COMMON)
    assert (tmp_path / "cut" / VAL_LOG).read_text() == (tmp_path / "whole" / VAL_LOG).read_text()
    a, b = _weights(tmp_path / "cut" / BEST_MODEL), _weights(tmp_path / "whole" / BEST_MODEL)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_validation_cases_among_the_training_cases_are_named(data: Path, tmp_path: Path) -> None:
    train_cases = LandmarkDataset(data, split="train")
    with pytest.warns(UserWarning, match=r"4 validation case\(s\) are also training cases \(case_"):
        train(data, tmp_path / "run", val_data=train_cases, **{**COMMON, "steps": 3})


def test_an_empty_validation_split_stops_before_training(data: Path, tmp_path: Path) -> None:
    splits = json.loads((data / "splits.json").read_text())
    empty = tmp_path / "empty"
    empty.mkdir()
    for sub in ("images", "landmarks"):
        (empty / sub).symlink_to(data / sub)
    (empty / "splits.json").write_text(json.dumps({**splits, "val": []}))
    with pytest.raises(DataError, match="the validation split has no cases"):
        train(empty, tmp_path / "run", val_data=empty, **COMMON)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_cli_val_split(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--data", str(data), "--preset", "cpu-small", "--steps", "2", "--checkpoint-every", "1",
              "--device", "cpu", "--no-progress", "--set", "shape_vox=32,32,32", "--set", "spacing_mm=5.2",
              "--set", "width=4", "--set", "batch_size=1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the val split is apart from the training split: no warning
        assert main(["train", "--out", str(tmp_path / "run"), "--val-split", "val", *common]) == 0
    out = capsys.readouterr().out
    rows = read_val_log(tmp_path / "run" / VAL_LOG)
    best = best_row(rows)
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert (f"validation (val): d-mean {rows[-1]['d_mean_mm']:.2f} mm at the end, lowest {best['d_mean_mm']:.2f} mm "
            f"at step {int(best['step'])}: {tmp_path / 'run' / BEST_MODEL}") in out
    assert main(["train", "--out", str(tmp_path / "other"), "--val-split", "nope", *common]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
