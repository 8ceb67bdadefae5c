"""End to end on tiny synthetic data: train, resume exactly, detect, evaluate, load safely."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rpn_lib.checkpoint import load_model
from rpn_lib.data.dataset import LandmarkDataset, write_synthetic_dataset
from rpn_lib.detect import Detector
from rpn_lib.errors import DataError, ModelError
from rpn_lib.evaluate import evaluate
from rpn_lib.presets import Preset
from rpn_lib.train import train

TINY = Preset(name="tiny", spacing_mm=5.2, shape_vox=(32, 32, 32), width=8, steps=40, batch_size=2,
              anchors_per_volume=256, lr=2e-3)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(out, n=8, n_test=2, seed=1, preset=TINY, difficulty="easy", progress=False)
    return out


def test_resume_continues_exactly(tiny_data: Path, tmp_path: Path) -> None:
    """A run interrupted after its step-3 checkpoint and resumed equals an uninterrupted run."""

    class Interrupted(Exception):
        pass

    def stop_at_step_4(step: int, row: dict) -> None:
        if step == 4:
            raise Interrupted

    kw = dict(steps=6, seed=3, checkpoint_every=3, log_every=1, progress=False, device="cpu")
    torch.set_num_threads(1)  # bitwise reproducible reductions for the comparison
    try:
        train(tiny_data, tmp_path / "full", TINY, **kw)
        with pytest.raises(Interrupted):
            train(tiny_data, tmp_path / "part", TINY, callback=stop_at_step_4, **kw)
        assert load_model(tmp_path / "part" / "model.pt").meta["steps"] == 3
        train(tiny_data, tmp_path / "part", TINY, resume=True, **kw)
    finally:
        torch.set_num_threads(2)
    a = load_model(tmp_path / "full" / "model.pt").model.state_dict()
    b = load_model(tmp_path / "part" / "model.pt").model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    def without_timing(path: Path) -> list[list[str]]:  # sec_per_step is wall time
        return [r.split(",")[:-1] for r in path.read_text().splitlines()]
    full_log = without_timing(tmp_path / "full" / "log.csv")
    assert without_timing(tmp_path / "part" / "log.csv") == full_log
    assert [int(r[0]) for r in full_log[1:]] == [1, 2, 3, 4, 5, 6]


def test_a_run_folder_is_not_trained_over_by_accident(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    kw = dict(steps=2, checkpoint_every=1, log_every=1, progress=False, device="cpu", max_cases=2)
    train(tiny_data, run, TINY, seed=0, **kw)
    first = load_model(run / "model.pt").model.state_dict()
    with pytest.raises(DataError, match=r"already holds a training run \(model.pt, checkpoint.pt\)"):
        train(tiny_data, run, TINY, seed=1, **kw)
    with pytest.raises(ValueError, match="exclude each other"):
        train(tiny_data, run, TINY, seed=1, resume=True, overwrite=True, **kw)
    with pytest.raises(DataError, match="dataset folder not found"):  # a failure before training deletes nothing
        train(tmp_path / "nowhere", run, TINY, seed=1, overwrite=True, **kw)
    assert torch.equal(load_model(run / "model.pt").model.state_dict()["head.cls.weight"], first["head.cls.weight"])

    class Stop(Exception):
        pass

    def stop(step: int, row: dict) -> None:
        raise Stop

    # overwrite deletes the old run first: interrupted before its first checkpoint, the folder
    # holds no old checkpoint that a later resume could pick up by mistake
    with pytest.raises(Stop):
        train(tiny_data, run, TINY, seed=1, overwrite=True, callback=stop, **{**kw, "checkpoint_every": 2})
    assert not (run / "checkpoint.pt").exists() and not (run / "model.pt").exists()
    train(tiny_data, run, TINY, seed=1, overwrite=True, **kw)
    second = load_model(run / "model.pt").model.state_dict()
    assert not torch.equal(second["head.cls.weight"], first["head.cls.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rpn", "ssd", "faster-rcnn", "heatmap"])
def test_channels_last_training_is_the_same_training(tiny_data: Path, tmp_path: Path, method: str) -> None:
    """``channels_last`` changes the memory layout only: the losses of a few steps agree."""
    kw = dict(steps=3, seed=5, checkpoint_every=3, log_every=1, progress=False, device="cpu", method=method)
    train(tiny_data, tmp_path / "a", TINY, **kw)
    train(tiny_data, tmp_path / "b", TINY, channels_last=True, **kw)

    def losses(path: Path) -> np.ndarray:
        rows = [r.split(",") for r in path.read_text().splitlines()[1:]]
        return np.array([[float(v) for v in r[2:5]] for r in rows])  # loss, cls, box

    np.testing.assert_allclose(losses(tmp_path / "b" / "log.csv"), losses(tmp_path / "a" / "log.csv"), rtol=1e-3)
    a = load_model(tmp_path / "a" / "model.pt").model.state_dict()
    b = load_model(tmp_path / "b" / "model.pt").model.state_dict()
    assert a.keys() == b.keys()


def test_train_then_detect_beats_chance(tiny_data: Path, tmp_path: Path) -> None:
    """The whole pipeline can learn: train briefly, then find the landmarks of the training
    volumes far better than a constant guess (this checks learning, not generalisation)."""
    run = tmp_path / "run"
    fast = TINY.replace(steps=600, rotation_deg=0.0, flip=False)
    train(tiny_data, run, fast, seed=0, progress=False, device="cpu", checkpoint_every=1000)
    det = Detector.from_file(run / "model.pt", device="cpu")
    cases = LandmarkDataset(tiny_data, split="train")
    ev = evaluate(det, cases, progress=False)
    # Baseline: every landmark guessed at its mean position over these same volumes.
    gt = ev.gt_world
    constant = np.linalg.norm(gt - gt.mean(0, keepdims=True), axis=-1).mean()
    assert ev.metrics["d_mean_mm"] < 0.5 * constant, (ev.metrics, constant)
    assert ev.metrics["dr35"] > 0.5, ev.metrics
    ev_np = evaluate(det, cases, use_prior=False, progress=False)
    assert np.isfinite(ev_np.metrics["d_mean_mm"])


def test_model_file_is_not_unpickled(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):  # noqa: D105
            return (Path.touch, (tmp_path / "pwned",))
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"format": "rpn-lib-model/1", "x": Boom()}, f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ModelError, match="evil.pt"):
            load_model(bad)
    assert not (tmp_path / "pwned").exists()
    assert [str(w.message) for w in caught] == []  # the refusal alone, without torch's pickle warning


def test_bad_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="format"):
        load_model(tmp_path / "other.pt")


def test_cube_anchor_layout_trains_saves_and_detects(tiny_data: Path, tmp_path: Path) -> None:
    """``Preset.anchor_layout = "cubes"``: 4 anchors per cell in the head, in the saved preset
    and in the detector's anchors; methods with their own anchors refuse the setting."""
    cubes = TINY.replace(anchor_layout="cubes", steps=20)
    train(tiny_data, tmp_path / "run", cubes, seed=0, progress=False, device="cpu", checkpoint_every=1000)
    loaded = load_model(tmp_path / "run" / "model.pt")
    assert loaded.preset.anchor_layout == "cubes"
    assert loaded.model.head.num_anchors == 4
    assert loaded.model.head.cls.out_channels == 4 * 6 and loaded.model.head.reg.out_channels == 4 * 6
    det = Detector(loaded, device="cpu")
    ev = evaluate(det, LandmarkDataset(tiny_data, split="test"), progress=False)
    assert np.isfinite(ev.metrics["d_mean_mm"])
    f = det.model.feature_shape(cubes.shape_vox)
    assert det.anchors(f).shape == (int(np.prod(f)) * 4, 6)
    with pytest.raises(ValueError, match="anchor_layout"):
        train(tiny_data, tmp_path / "ssd", cubes, method="ssd", progress=False, device="cpu")
