"""The command line on a dataset of one's own: ``--label-map`` reads landmark files whose labels
are not the library's names (as ``label_map=`` does in Python), and ``--split all`` uses a
folder without ``splits.json``."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rpn_lib.checkpoint import load_model
from rpn_lib.cli import _label_map_arg, main
from rpn_lib.data.dataset import LandmarkDataset, write_synthetic_dataset
from rpn_lib.data.io import save_landmarks, save_volume
from rpn_lib.landmarks import LANDMARK_NAMES
from rpn_lib.train import train

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "ig-rpn-cpu-small" / "model.pt"
THEIR_NAMES = ["LE", "G", "RE", "PRN", "PG"]  # in LANDMARK_NAMES order
MAP_TEXT = ",".join(f"{a}={b}" for a, b in zip(THEIR_NAMES, LANDMARK_NAMES))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same two synthetic cases with the library's labels and with a tool's own labels."""
    ours = tmp_path_factory.mktemp("ours")
    write_synthetic_dataset(ours, n=2, n_test=1, seed=3, preset="cpu-small", progress=False)
    theirs = tmp_path_factory.mktemp("theirs")
    shutil.copytree(ours / "images", theirs / "images")
    shutil.copy(ours / "splits.json", theirs / "splits.json")
    for case in LandmarkDataset(ours):
        save_landmarks(theirs / "landmarks" / f"{case.case_id}.csv", case.landmarks_world, names=THEIR_NAMES)
    return ours, theirs


def test_parsing() -> None:
    assert _label_map_arg(MAP_TEXT) == dict(zip(THEIR_NAMES, LANDMARK_NAMES))
    assert _label_map_arg(" LE = left_eye , ") == {"LE": "left_eye"}
    for bad, why in [("LE", "LABEL=name pairs"), ("LE=left_eyes", "unknown landmark name"), (",", "empty label map"),
                     ("missing.json", "cannot read missing.json")]:
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            _label_map_arg(bad)


def test_json_file(tmp_path: Path) -> None:
    f = tmp_path / "map.json"
    f.write_text(json.dumps(dict(zip(THEIR_NAMES, LANDMARK_NAMES))))
    assert _label_map_arg(str(f)) == dict(zip(THEIR_NAMES, LANDMARK_NAMES))
    f.write_text(json.dumps(["LE", "left_eye"]))
    with pytest.raises(argparse.ArgumentTypeError, match="JSON object"):
        _label_map_arg(str(f))


def test_evaluate_with_a_label_map_scores_like_the_library_names(datasets: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    ours, theirs = datasets
    common = ["--model", str(SHIPPED), "--split", "all", "--device", "cpu", "--no-progress"]
    assert main(["evaluate", "--data", str(ours), "--out", str(tmp_path / "ours.json"), *common]) == 0
    assert main(["evaluate", "--data", str(theirs), "--out", str(tmp_path / "theirs.json"), *common]) == 2
    assert "--label-map LE=left_eye" in capsys.readouterr().err  # the hint names the option
    assert main(["evaluate", "--data", str(theirs), "--out", str(tmp_path / "theirs.json"), "--label-map", MAP_TEXT,
                 *common]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("ours", "theirs"))
    assert a["n_cases"] == b["n_cases"] == 2
    assert b["d_mean_mm"] == pytest.approx(a["d_mean_mm"], abs=1e-9)


def test_train_with_a_label_map(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    _, theirs = datasets
    assert main(["train", "--data", str(theirs), "--out", str(tmp_path / "run"), "--steps", "1", "--device", "cpu",
                 "--no-progress", "--label-map", MAP_TEXT]) == 0
    assert (tmp_path / "run" / "model.pt").is_file()


def test_a_folder_without_splits_json(datasets: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    ours, _ = datasets
    plain = tmp_path / "plain"
    shutil.copytree(ours / "images", plain / "images")
    shutil.copytree(ours / "landmarks", plain / "landmarks")
    common = ["--steps", "1", "--device", "cpu", "--no-progress"]
    assert main(["train", "--data", str(plain), "--out", str(tmp_path / "a"), *common]) == 2
    assert "no splits.json: use every case (split=None; on the command line --split all)" in capsys.readouterr().err
    assert main(["train", "--data", str(plain), "--out", str(tmp_path / "a"), "--split", "all", *common]) == 0
    # the Python API: split=None trains on every case too, the same run as the command line's
    train(plain, tmp_path / "b", "cpu-small", steps=1, split=None, progress=False, device="cpu")
    a, b = (load_model(tmp_path / r / "model.pt").model.state_dict() for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_volume_larger_than_the_training_grid(datasets: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """Training crops every volume to the preset's grid, centred: landmarks that the crop would
    cut off are refused (naming the case) instead of training on boxes outside the input."""
    ours, _ = datasets
    big = tmp_path / "big"
    shutil.copytree(ours, big)
    case = LandmarkDataset(ours)[0]
    padded = np.pad(case.volume, ((0, 100), (0, 0), (0, 0)))  # the face ends up far from the centre
    save_volume(big / "images" / f"{case.case_id}.nii.gz", padded, case.affine)
    assert main(["train", "--data", str(big), "--out", str(tmp_path / "run"), "--split", "all", "--steps", "1",
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{case.case_id}.nii.gz: the training grid of preset 'cpu-small' ([166.4, 166.4, 166.4] mm" in err
    assert "crop the volume around the face first" in err
    # or a grid that holds the padded volume: 100 more voxels of 2.6 mm along axis 0
    fits = err.split("--set ")[1].split(")")[0]
    assert fits == "shape_vox=168,64,64"
    assert main(["train", "--data", str(big), "--out", str(tmp_path / "run"), "--split", "all", "--steps", "1",
                 "--device", "cpu", "--no-progress", "--set", fits, "--set", "width=4"]) == 0


def test_train_on_a_grid_of_ones_own_with_set(datasets: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """``--set`` changes the preset's fields: the model is trained and detects on that grid,
    the model file records the settings, and ``--resume`` refuses other values by name."""
    ours, _ = datasets
    run = tmp_path / "run"
    settings = ["--set", "shape_vox=48,48,40", "--set", "spacing_mm=4.2", "--set", "width=4",
                "--set", "batch-size=1", "--set", "lr=5e-4"]
    common = ["--data", str(ours), "--out", str(run), "--device", "cpu", "--no-progress"]
    assert main(["train", *common, "--steps", "1", *settings]) == 0
    assert capsys.readouterr().out.startswith("preset cpu-small, with spacing_mm 2.6 -> 4.2; shape_vox 64,64,64 -> "
                                              "48,48,40; width 16 -> 4; batch_size 2 -> 1; lr 0.001 -> 0.0005\n")
    loaded = load_model(run / "model.pt")
    assert loaded.preset.shape_vox == (48, 48, 40) and loaded.preset.spacing_mm == 4.2
    assert loaded.preset.width == 4 and loaded.preset.batch_size == 1 and loaded.preset.lr == 5e-4
    assert loaded.preset.name == "cpu-small"
    assert main(["info", str(run / "model.pt"), "--json", "--no-flops"]) == 0
    changed = json.loads(capsys.readouterr().out)["changed"]
    assert changed == {"spacing_mm": [2.6, 4.2], "shape_vox": [[64, 64, 64], [48, 48, 40]], "width": [16, 4],
                       "batch_size": [2, 1], "lr": [1e-3, 5e-4]}
    # the model's grid is the one it was trained on
    case = LandmarkDataset(ours)[0]
    assert main(["detect", "--model", str(run / "model.pt"), "--out", str(tmp_path / "det"), "--device", "cpu",
                 str(ours / "images" / f"{case.case_id}.nii.gz")]) == 0
    assert (tmp_path / "det" / f"{case.case_id}.mrk.json").is_file()
    # resuming needs the run's own settings; the refusal names what differs
    capsys.readouterr()
    assert main(["train", *common, "--steps", "2", "--resume", *settings[:-2]]) == 2
    err = capsys.readouterr().err
    assert "lr 0.0005 in the checkpoint, 0.001 now" in err and "width" not in err
    assert main(["train", *common, "--steps", "2", "--resume", *settings]) == 0
    assert json.loads((run / "train.json").read_text())["steps"] == 2


@pytest.mark.parametrize("setting, message", [
    ("lrr=1e-3", "'lrr' is not a preset setting (did you mean lr?); settings: spacing_mm,"),
    ("shape_vox=100,96,96", "each a positive multiple of 8"),
    ("shape_vox=96,96", "shape_vox needs 3 comma-separated values"),
    ("lr", "a setting is FIELD=VALUE"),
])
def test_a_bad_setting_stops_before_the_data_are_read(setting: str, message: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--set", setting,
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "missing" not in err
    assert not (tmp_path / "run").exists()
