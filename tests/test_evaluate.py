"""``evaluate`` reads the cases of a dataset folder ahead while the network detects: the
results do not depend on how far ahead it reads, warnings name their case and come from the
caller's thread, and a case that fails stops the reading."""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from rpn_lib.cli import main
from rpn_lib.data.dataset import Case, LandmarkDataset, write_synthetic_dataset
from rpn_lib.data.io import load_volume, save_volume
from rpn_lib.data.preprocess import IntensityWarning
from rpn_lib.detect import Detector
from rpn_lib.errors import DataError
from rpn_lib.evaluate import evaluate, summary
from rpn_lib.landmarks import LANDMARK_NAMES
from rpn_lib.readahead import READ_AHEAD

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "ig-rpn-cpu-small" / "model.pt"
TIMINGS = ("time_ms", "volumes_per_s", "read_ahead_cases")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset folder of four cpu-small cases."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("eval") / "data", n=4, n_test=1, seed=3,
                                   preset="cpu-small", progress=False)


@pytest.fixture(scope="module")
def det() -> Detector:
    return Detector.from_file(SHIPPED, device="cpu")


def _same(a, b) -> None:  # noqa: ANN001 - two Evaluations
    assert a.case_ids == b.case_ids
    for x, y in ((a.pred_boxes, b.pred_boxes), (a.gt_boxes, b.gt_boxes), (a.pred_world, b.pred_world)):
        np.testing.assert_array_equal(x, y)
    assert {k: v for k, v in a.metrics.items() if k not in TIMINGS} == \
           {k: v for k, v in b.metrics.items() if k not in TIMINGS}


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rpn-lib-read-ahead")]


@pytest.mark.parametrize("depth", [1, 3])
def test_reading_ahead_gives_the_same_results(data: Path, det: Detector, depth: int) -> None:
    ds = LandmarkDataset(data, split=None)
    alone = evaluate(det, ds, split=None, progress=False, read_ahead_cases=0)
    ahead = evaluate(det, ds, split=None, progress=False, read_ahead_cases=depth)
    _same(alone, ahead)
    assert alone.metrics["read_ahead_cases"] == 0 and ahead.metrics["read_ahead_cases"] == depth
    assert ahead.metrics["volumes_per_s"] > 0 and ahead.metrics["time_ms"] > 0
    # and they are Detector.detect's, case by case
    for i, d in enumerate(ahead.detections):
        ref = det.detect(ds[i].volume, ds[i].affine)
        np.testing.assert_array_equal(d.landmarks_world, ref.landmarks_world)
        np.testing.assert_array_equal(d.boxes_vox, ref.boxes_vox)
    assert _wait_no_threads()


def _wait_no_threads(timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while _read_ahead_threads() and time.monotonic() < end:
        time.sleep(0.02)
    return _read_ahead_threads() == []


def test_cases_in_memory_are_not_read_ahead(data: Path, det: Detector) -> None:
    cases = list(LandmarkDataset(data, split=None))
    ev = evaluate(det, cases, progress=False, read_ahead_cases=3)
    assert ev.metrics["read_ahead_cases"] == 0
    _same(ev, evaluate(det, LandmarkDataset(data, split=None), split=None, progress=False, read_ahead_cases=3))


def test_a_warning_names_its_case_and_is_given_in_the_callers_thread(data: Path, det: Detector,
                                                                     tmp_path: Path) -> None:
    ds = LandmarkDataset(data, split=None)
    bad_id = ds.case_ids[2]
    vol = load_volume(ds.image_path(2))
    # the same folder, with case 2's image z-scored (many voxels negative)
    copy = tmp_path / "data"
    (copy / "images").mkdir(parents=True)
    (copy / "landmarks").symlink_to(data / "landmarks")
    (copy / "splits.json").write_text((data / "splits.json").read_text())
    for i in range(len(ds)):
        src = ds.image_path(i)
        if i == 2:
            zscored = (vol.array - vol.array.mean()) / vol.array.std()
            save_volume(copy / "images" / src.name, zscored.astype(np.float32), vol.affine)
        else:
            (copy / "images" / src.name).symlink_to(src)
    with warnings.catch_warnings(record=True) as caught:  # would miss a warning given in another thread
        warnings.simplefilter("always")
        evaluate(det, LandmarkDataset(copy, split=None), split=None, progress=False, read_ahead_cases=3)
    intensity = [w for w in caught if issubclass(w.category, IntensityWarning)]
    assert len(intensity) == 1
    assert str(intensity[0].message).startswith(f"case {bad_id}: ")
    assert "negative" in str(intensity[0].message)
    assert intensity[0].filename == __file__  # points at the caller of evaluate


class _FailingAt(LandmarkDataset):
    """Twenty cases (the four of the folder, repeated); case ``bad`` cannot be read."""

    def __init__(self, root: Path, bad: int) -> None:
        super().__init__(root, split=None)
        self.bad, self.asked = bad, []

    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int) -> Case:
        self.asked.append(i)
        if i == self.bad:
            raise DataError("cannot read the image (planted)", Path(f"case{i}.nii.gz"))
        return super().__getitem__(i % 4)


def test_a_case_that_cannot_be_read_stops_the_evaluation_and_its_threads(data: Path, det: Detector) -> None:
    ds = _FailingAt(data, bad=3)
    with pytest.raises(DataError, match="planted") as err:
        evaluate(det, ds, progress=False, read_ahead_cases=2)
    assert "case3.nii.gz" in str(err.value)
    assert _wait_no_threads()  # the pool is shut down though the traceback still holds the frame
    time.sleep(0.1)
    assert max(ds.asked) <= 3 + 2  # nothing read beyond the cases already ahead
    del err


def test_a_negative_read_ahead_is_refused(data: Path, det: Detector) -> None:
    with pytest.raises(ValueError, match="depth must be >= 0"):
        evaluate(det, LandmarkDataset(data, split=None), progress=False, read_ahead_cases=-1)


def test_cli_read_ahead_writes_the_same_metrics(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["evaluate", "--model", str(SHIPPED), "--data", str(data), "--split", "all", "--device", "cpu",
              "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "a.json"), "--read-ahead", "0"]) == 0
    assert main([*common, "--out", str(tmp_path / "b.json")]) == 0  # the default reads ahead
    out = capsys.readouterr().out
    assert "volumes/s, reading included" in out
    a, b = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "ab")
    assert out.splitlines()[-8:] == [*summary(b).splitlines(), f"metrics -> {tmp_path / 'b.json'}"]
    assert a["read_ahead_cases"] == 0 and b["read_ahead_cases"] == READ_AHEAD
    assert {k: v for k, v in a.items() if k not in TIMINGS} == {k: v for k, v in b.items() if k not in TIMINGS}
    assert main([*common, "--out", str(tmp_path / "two.json"), "--max-cases", "2"]) == 0
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["n_cases"] == 2 and len(two["per_case"]) == 2 * len(LANDMARK_NAMES)
    assert two["per_case"] == a["per_case"][: len(two["per_case"])]  # the split's first two cases
    assert main([*common, "--out", str(tmp_path / "c.json"), "--max-cases", "0"]) == 2
    assert main([*common, "--out", str(tmp_path / "c.json"), "--read-ahead", "-1"]) == 2
    assert "--read-ahead" in capsys.readouterr().err and not (tmp_path / "c.json").exists()


def test_summary_reports_every_landmark_from_the_numbers() -> None:
    per = {n: {"d_mean_mm": 1.0 + i, "d_std_mm": 0.5, "dr35": 1.0, "dr50": 0.75, "dr75": 0.125 * i, "miou": 0.6}
           for i, n in enumerate(LANDMARK_NAMES)}
    m = {"n_cases": 8, "d_mean_mm": 3.0, "d_std_mm": 1.25, "dr35": 1.0, "dr50": 0.75, "dr75": 0.25, "miou": 0.6,
         "ap_coco": 0.421, "time_ms": 123.4, "per_landmark": per}
    lines = summary(m).splitlines()
    assert lines[0] == ("8 cases: d-mean 3.00 +- 1.25 mm, DR35/50/75 100.0/75.0/25.0 %, mIoU 60.0 %, "
                        "AP(COCO) 42.1 %, 123 ms/volume")  # a file from before volumes_per_s
    assert lines[1].split() == ["landmark", "d-mean", "mm", "DR35", "%", "DR50", "%", "DR75", "%", "mIoU", "%"]
    assert [r.split()[0] for r in lines[2:]] == list(LANDMARK_NAMES)
    assert lines[2 + 3].split() == ["nose_tip", "4.00", "+-", "0.50", "100.0", "75.0", "37.5", "60.0"]
    assert "(2.5 volumes/s, reading included)" in summary({**m, "volumes_per_s": 2.5}).splitlines()[0]
