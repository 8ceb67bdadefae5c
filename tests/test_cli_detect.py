"""``rpn-lib detect`` on a folder of volumes: a bad one is reported and skipped, the rest are
detected; outputs that would overwrite each other are refused before any work; inputs are
checked in a useful order, and warnings are one line naming the case."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from rpn_lib.cli import main
from rpn_lib.data.io import load_landmarks, save_volume
from rpn_lib.data.preprocess import IntensityWarning
from rpn_lib.detect import Detector
from rpn_lib.landmarks import LANDMARK_NAMES
from rpn_lib.errors import DataError

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "ig-rpn-cpu-small" / "model.pt"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from rpn_lib.data.dataset import synthetic_split_cases

    root = tmp_path_factory.mktemp("detect")
    case = synthetic_split_cases("test", n=152, n_test=32, seed=0, preset="cpu-small")[0]
    save_volume(root / "face.nii.gz", case.volume, case.affine)
    save_volume(root / "slab.nii.gz", np.random.default_rng(0).random((3, 90, 90), dtype=np.float32), np.eye(4))
    (root / "broken.nii.gz").write_bytes(b"not a NIfTI")
    zscored = (case.volume - case.volume.mean()) / case.volume.std()
    save_volume(root / "zscored.nii.gz", zscored.astype(np.float32), case.affine)
    save_volume(root / "negative.nii.gz", -np.abs(zscored).astype(np.float32) - 0.1, case.affine)
    return {"face": root / "face.nii.gz", "slab": root / "slab.nii.gz", "broken": root / "broken.nii.gz",
            "zscored": root / "zscored.nii.gz", "negative": root / "negative.nii.gz", "truth": case.landmarks_world}


def test_a_bad_volume_is_skipped_and_the_others_detected(images: dict, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code = main(["detect", "--model", str(SHIPPED), str(images["broken"]), str(images["face"]), str(images["slab"]),
                 "--out", str(out), "--device", "cpu"])
    assert code == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert errors[0] == f"rpn-lib: error: {images['broken']}: cannot read the image (truncated or corrupt file?): " \
                        f"File {images['broken']} is not a gzip file"
    assert errors[1].startswith(f"rpn-lib: error: {images['slab']}: volume of shape (3, 90, 90)")
    assert "too small for this model" in errors[1]
    assert errors[2] == f"rpn-lib: 2 of 3 images failed (above); results for the other 1 are in {out}"
    assert "face: 5 landmarks" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["detections.csv", "face.json", "face.mrk.json"]
    found = load_landmarks(out / "face.mrk.json")
    assert np.linalg.norm(found - images["truth"], axis=1).mean() < 15.0  # the good volume was really detected


def test_all_good_volumes_exit_zero(images: dict, tmp_path: Path) -> None:
    assert main(["detect", "--model", str(SHIPPED), str(images["face"]), "--out", str(tmp_path), "--device", "cpu"]) == 0


def test_one_table_holds_every_landmark_of_the_run(images: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    import csv
    import json
    import shutil

    twin = tmp_path / "in" / "face2.nii.gz"
    twin.parent.mkdir()
    shutil.copy(images["face"], twin)
    out = tmp_path / "out"
    assert main(["detect", "--model", str(SHIPPED), str(images["face"]), str(twin), str(images["broken"]),
                 "--out", str(out), "--device", "cpu"]) == 2
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"all 2 images' landmarks in one table: {out / 'detections.csv'} (")
    assert re.search(r"\(\d+\.\d images/s, reading \d+ ahead, first image's warm-up included\)$", summary)
    with open(out / "detections.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["case", "label", "x", "y", "z", "score", "i", "j", "k"]
    assert [(r["case"], r["label"]) for r in rows] == [(c, n) for c in ("face", "face2") for n in LANDMARK_NAMES]
    for r in rows:
        per_case = json.loads((out / f"{r['case']}.json").read_text())["landmarks"][r["label"]]
        assert [float(r[a]) for a in "xyz"] == pytest.approx(per_case["world_mm_ras"], abs=1e-3)
        assert [float(r[a]) for a in "ijk"] == pytest.approx(per_case["voxel"], abs=1e-3)
        assert float(r["score"]) == pytest.approx(per_case["score"], abs=1e-5)
    table = np.array([[float(r[a]) for a in "xyz"] for r in rows[:5]])
    assert np.abs(table - load_landmarks(out / "face.mrk.json")).max() < 1e-3  # the markups agree


def test_outputs_that_would_overwrite_each_other_are_refused(images: dict, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    twin = other / "face.nii"
    twin.write_bytes(b"never read")
    assert main(["detect", "--model", str(SHIPPED), str(images["face"]), str(twin), "--out", str(tmp_path / "out"),
                 "--device", "cpu"]) == 2
    assert "two images have the case name 'face'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_intensities_that_are_not_b_mode(images: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Voxels <= 0 count as outside the field of view: a z-scored volume is detected with a
    warning naming the case; one with no voxel above 0 is refused."""
    code = main(["detect", "--model", str(SHIPPED), str(images["zscored"]), str(images["negative"]),
                 "--out", str(tmp_path), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"warning: zscored: \d+% of the voxels are negative \(minimum -[\d.]+\); voxels <= 0 count "
                        r"as outside the probe's field of view\. .*", err[0])
    assert err[-2].startswith(f"rpn-lib: error: {images['negative']}: no voxel is above 0 (maximum -0.1")


def test_detector_checks_the_affine_before_the_size() -> None:
    det = Detector.from_file(SHIPPED, device="cpu")
    with pytest.raises(DataError, match="affine is singular"):
        det.detect(np.ones((64, 64, 64), np.float32), np.diag([2.6, 0.0, 2.6, 1.0]))
    with pytest.warns(IntensityWarning, match="50% of the voxels are negative"):
        det.prepare(np.tile(np.array([-1.0, 1.0], np.float32), 64 * 64 * 32).reshape(64, 64, 64), spacing_mm=2.6)


@pytest.mark.parametrize("read_ahead", [0, 2])
def test_detect_files_matches_detect_and_keeps_each_file_to_itself(images: dict, read_ahead: int) -> None:
    """Read in a background thread or not, each file gets detect()'s result; a broken file
    gets its error and the files after it are still detected; a warning is given to the file
    it is about (the z-scored one, read while the face is detected), and none escapes."""
    from rpn_lib.data.io import load_volume

    det = Detector.from_file(SHIPPED, device="cpu")
    order = ["face", "broken", "zscored", "face"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = list(det.detect_files([images[k] for k in order], read_ahead_files=read_ahead))
    assert [g.path for g in got] == [images[k] for k in order]
    face = load_volume(images["face"])
    expected = det.detect(face.array, face.affine)
    for g in (got[0], got[3]):
        assert g.error is None and g.warnings == []
        np.testing.assert_array_equal(g.detection.landmarks_world, expected.landmarks_world)
        np.testing.assert_array_equal(g.detection.scores, expected.scores)
    assert got[1].detection is None and isinstance(got[1].error, DataError)
    assert "not a gzip file" in str(got[1].error)
    assert got[2].error is None and got[2].detection is not None
    assert len(got[2].warnings) == 1 and "of the voxels are negative" in got[2].warnings[0]


def test_read_ahead_is_checked_by_the_command_line(images: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["detect", "--model", str(SHIPPED), str(images["face"]), "--out", str(tmp_path),
                 "--read-ahead", "-1"]) == 2
    assert "--read-ahead: expected an integer >= 0, got '-1'" in capsys.readouterr().err
    assert main(["detect", "--model", str(SHIPPED), str(images["face"]), "--out", str(tmp_path / "a"),
                 "--device", "cpu", "--read-ahead", "0"]) == 0
    assert main(["detect", "--model", str(SHIPPED), str(images["face"]), "--out", str(tmp_path / "b"),
                 "--device", "cpu", "--read-ahead", "3"]) == 0
    assert (tmp_path / "a" / "detections.csv").read_text() == (tmp_path / "b" / "detections.csv").read_text()


def test_command_line_warnings_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    import rpn_lib.cli as cli

    def warns(args: object) -> int:
        warnings.warn("first line\n  second line", UserWarning)
        return 0

    monkeypatch.setattr(cli, "cmd_synth", warns)
    assert main(["synth", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == "warning: first line second line\n"


def test_a_folder_stands_for_the_nifti_files_in_it(images: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "face.nii.gz").write_bytes(images["face"].read_bytes())
    (folder / "notes.txt").write_text("not an image")
    (folder / ".face2.nii.gz.tmp").write_text("an interrupted copy")
    out = tmp_path / "out"
    assert main(["detect", "--model", str(SHIPPED), str(folder), "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["detections.csv", "face.json", "face.mrk.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["detect", "--model", str(SHIPPED), str(empty), "--out", str(out), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{empty}: folder has no NIfTI file (.nii.gz, .nii)")
