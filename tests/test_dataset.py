"""The dataset folder format: the synthetic writer and the lazy, validating reader."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rpn_lib.data import dataset as dsm
from rpn_lib.data.dataset import LandmarkDataset, case_seeds, random_split, write_synthetic_dataset
from rpn_lib.data.geometry import voxel_to_world, world_to_voxel
from rpn_lib.data.io import load_landmarks, save_landmarks
from rpn_lib.errors import DataError
from rpn_lib.landmarks import LANDMARK_NAMES
from rpn_lib.presets import Preset

AFFINE = np.array([[0.0, 0.0, 2.0, -20.0], [-1.5, 0.0, 0.0, 15.0], [0.0, 1.8, 0.0, -9.0], [0, 0, 0, 1]])


def fake_case(seed: int, preset, difficulty: str, case_id: str) -> SimpleNamespace:
    """A tiny stand-in for rpn_lib.data.synth.generate_from_preset."""
    rng = np.random.default_rng(seed)
    vol = rng.integers(1, 200, (12, 14, 10)).astype(np.uint8)
    vox = rng.uniform(2, 8, (5, 3))
    return SimpleNamespace(case_id=case_id, volume=vol, affine=AFFINE, spacing_mm=1.0,
                           landmarks_world=voxel_to_world(vox, AFFINE), landmarks_vox=vox,
                           params={"seed": seed, "pose_deg": np.array([1.0, 2.0]), "difficulty": difficulty})


@pytest.fixture
def fake_synth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dsm, "_generate_case", fake_case)


@pytest.fixture
def five(tmp_path: Path, fake_synth: None) -> Path:
    return write_synthetic_dataset(tmp_path / "ds", n=5, n_test=2, seed=7, preset="cpu-small", progress=False)


def test_writer_tree_splits_card_and_reader(five: Path) -> None:
    ids = [f"case_{i:03d}" for i in range(5)]
    assert sorted(p.name for p in (five / "images").iterdir()) == [f"{c}.nii.gz" for c in ids]
    assert sorted(p.name for p in (five / "landmarks").iterdir()) == [f"{c}.mrk.json" for c in ids]
    assert sorted(p.name for p in five.iterdir()) == ["README.md", "images", "landmarks", "splits.json", "synth.json"]
    splits = json.loads((five / "splits.json").read_text())
    assert set(splits) == {"train", "test"} and len(splits["test"]) == 2 and len(splits["train"]) == 3
    assert sorted(splits["train"] + splits["test"]) == ids and splits["test"] == sorted(splits["test"])
    card = (five / "README.md").read_text()
    for needle in ("cpu-small", "| dataset seed | 7 |", "5 (3 train, 2 test)", "2.6 mm", "--seed 7", "generator"):
        assert needle in card
    meta = json.loads((five / "synth.json").read_text())
    assert [c["seed"] for c in meta["cases"]] == case_seeds(7, 5)
    assert meta["cases"][0]["params"]["pose_deg"] == [1.0, 2.0] and meta["preset"]["name"] == "cpu-small"

    ds = LandmarkDataset(five)
    assert len(ds) == 5 and ds.case_ids == ids and ds.card_path == five / "README.md"
    seeds = case_seeds(7, 5)
    for i, case in enumerate(ds):
        ref = fake_case(seeds[i], "cpu-small", "standard", ids[i])
        assert case.case_id == ids[i] and case.volume.dtype == np.float32
        np.testing.assert_array_equal(case.volume, ref.volume)
        np.testing.assert_allclose(case.affine, AFFINE, atol=1e-5)
        np.testing.assert_allclose(case.landmarks_world, ref.landmarks_world, atol=1e-9)
        np.testing.assert_allclose(case.landmarks_vox, ref.landmarks_vox, atol=1e-5)
    assert ds[-1].case_id == "case_004"
    with pytest.raises(IndexError):
        ds[5]
    test = LandmarkDataset(five, split="test")
    assert test.case_ids == splits["test"] and "split='test'" in repr(test)


def test_writer_is_deterministic_and_seeds_are_prefix_stable(tmp_path: Path, fake_synth: None) -> None:
    a = write_synthetic_dataset(tmp_path / "a", n=4, n_test=1, seed=3, progress=False)
    b = write_synthetic_dataset(tmp_path / "b", n=4, n_test=1, seed=3, progress=False)
    for sub in ("images/case_002.nii.gz", "landmarks/case_002.mrk.json", "splits.json"):
        assert (a / sub).read_bytes() == (b / sub).read_bytes()
    assert case_seeds(3, 2) == case_seeds(3, 5)[:2] and case_seeds(3, 2) != case_seeds(4, 2)
    ids = [f"c{i}" for i in range(152)]
    s = random_split(ids, 32, 0)
    assert len(s["test"]) == 32 and len(s["train"]) == 120 and not set(s["test"]) & set(s["train"])
    assert random_split(ids, 32, 1) != s


def test_writer_refuses_non_empty_folder_and_overwrites_on_request(tmp_path: Path, five: Path) -> None:
    with pytest.raises(DataError, match="not empty") as e:
        write_synthetic_dataset(five, n=2, n_test=1, progress=False)
    assert str(five) in str(e.value)
    (five / "notes.txt").write_text("mine")
    write_synthetic_dataset(five, n=2, n_test=1, progress=False, overwrite=True)
    assert len(LandmarkDataset(five)) == 2 and (five / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kw", [{"n": 0}, {"n": 3, "n_test": 4}, {"n": 3, "n_test": -1}, {"preset": "huge"}])
def test_writer_bad_arguments_write_nothing(tmp_path: Path, fake_synth: None, kw: dict) -> None:
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path / "x", progress=False, **{"n": 3, "n_test": 1, **kw})
    assert not (tmp_path / "x").exists()


def test_label_map_and_csv_landmarks(five: Path) -> None:
    short = dict(zip(["LE", "MEB", "RE", "NT", "CH"], LANDMARK_NAMES))
    lm = load_landmarks(five / "landmarks" / "case_001.mrk.json")
    (five / "landmarks" / "case_001.mrk.json").unlink()
    save_landmarks(five / "landmarks" / "case_001.csv", lm, names=list(short))
    with pytest.raises(DataError, match="missing landmark"):
        LandmarkDataset(five)[1]
    np.testing.assert_allclose(LandmarkDataset(five, label_map=short)[1].landmarks_world, lm)


def _break(root: Path, how: str) -> Path:
    """Damage a valid dataset ``root``; return the path the error must name."""
    if how == "missing folder":
        shutil.rmtree(root)
        return root
    if how == "no images folder":
        shutil.rmtree(root / "images")
        return root
    if how == "empty images":
        for f in (root / "images").iterdir():
            f.unlink()
        return root / "images"
    if how == "image without landmarks":
        (root / "landmarks" / "case_003.mrk.json").unlink()
        return root
    if how == "two landmark files":
        save_landmarks(root / "landmarks" / "case_003.csv", np.zeros((5, 3)))
        return root / "landmarks"
    if how == "two images":
        shutil.copy(root / "images" / "case_000.nii.gz", root / "images" / "case_000.nii")
        return root / "images"
    if how in ("unknown split", "no splits file"):
        if how == "no splits file":
            (root / "splits.json").unlink()
            return root
        return root / "splits.json"
    if how == "split lists missing case":
        (root / "splits.json").write_text(json.dumps({"train": ["case_000", "case_999"], "test": []}))
        return root / "splits.json"
    if how == "invalid splits":
        (root / "splits.json").write_text('{"train": "case_000"}')
        return root / "splits.json"
    raise AssertionError(how)


@pytest.mark.parametrize("how,what", [
    ("missing folder", "not found"),
    ("no images folder", "no images/ folder"),
    ("empty images", "no images"),
    ("image without landmarks", "without a landmark file.*case_003"),
    ("two landmark files", "two landmark files"),
    ("two images", "two images"),
    ("unknown split", "unknown split 'validation'"),
    ("no splits file", "no splits.json"),
    ("split lists missing case", "case_999"),
    ("invalid splits", "expected"),
])
def test_bad_dataset_folders(five: Path, how: str, what: str) -> None:
    named = _break(five, how)
    split = "validation" if how == "unknown split" else ("train" if "split" in how else None)
    with pytest.raises(DataError, match=what) as e:
        LandmarkDataset(five, split=split)
    assert e.value.path == named


def test_landmark_outside_volume_fails_on_access(five: Path) -> None:
    path = five / "landmarks" / "case_002.mrk.json"
    lm = load_landmarks(path)
    lm[4] = voxel_to_world(np.array([5.0, 30.0, 5.0]), AFFINE)  # axis 1 has 14 voxels
    save_landmarks(path, lm)
    ds = LandmarkDataset(five)  # construction is cheap and lazy
    ds[1]
    with pytest.raises(DataError, match="outside the volume.*chin") as e:
        ds[2]
    assert e.value.path == path
    with pytest.raises(DataError):
        ds.validate()


def test_real_synth_writes_consistent_geometry(tmp_path: Path) -> None:
    """With the real phantom generator: the affine written maps its landmarks to its voxels."""
    from rpn_lib.data.synth import generate_from_preset

    tiny = Preset(name="tiny", spacing_mm=5.2, shape_vox=(32, 32, 32), width=4)
    out = write_synthetic_dataset(tmp_path / "real", n=2, n_test=1, seed=11, preset=tiny, progress=False)
    ds = LandmarkDataset(out)
    for i, s in enumerate(case_seeds(11, 2)):
        ref = generate_from_preset(s, tiny, "standard", f"case_{i:03d}")
        case = ds[i]
        assert case.volume.shape == (32, 32, 32)
        np.testing.assert_array_equal(case.volume, np.asarray(ref.volume, dtype=np.float32))
        np.testing.assert_allclose(case.landmarks_world, ref.landmarks_world, atol=1e-9)
        np.testing.assert_allclose(world_to_voxel(case.landmarks_world, case.affine), ref.landmarks_vox, atol=1e-3)
    assert len(LandmarkDataset(out, split="train")) == 1


def test_synthetic_split_cases_match_the_written_dataset(tmp_path) -> None:
    """The in-memory test split equals the files write_synthetic_dataset writes."""
    import numpy as np

    from rpn_lib.data.dataset import LandmarkDataset, synthetic_split_cases, write_synthetic_dataset
    from rpn_lib.presets import Preset

    tiny = Preset(name="tiny", spacing_mm=5.2, shape_vox=(32, 32, 32), width=4)
    write_synthetic_dataset(tmp_path / "d", n=5, n_test=2, seed=4, preset=tiny, progress=False)
    on_disk = LandmarkDataset(tmp_path / "d", split="test")
    in_memory = synthetic_split_cases("test", n=5, n_test=2, seed=4, preset=tiny)
    assert [c.case_id for c in in_memory] == on_disk.case_ids
    for mem, i in zip(in_memory, range(len(on_disk))):
        disk = on_disk[i]
        assert np.array_equal(np.asarray(mem.volume, dtype=np.float32), disk.volume)
        assert np.allclose(mem.landmarks_world, disk.landmarks_world, atol=1e-4)


def test_a_split_sharing_cases_with_train_is_warned_about(five: Path) -> None:
    splits = json.loads((five / "splits.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # disjoint splits: no warning
        LandmarkDataset(five, split="test")
        LandmarkDataset(five, split="train")
    leaked = splits["train"][:2]
    (five / "splits.json").write_text(json.dumps({**splits, "test": splits["test"] + leaked}))
    with pytest.warns(UserWarning, match=rf"2 case\(s\) of split 'test' are also in 'train' \({leaked[0]}, {leaked[1]}\)"):
        test = LandmarkDataset(five, split="test")
    assert len(test) == 4                                    # still loaded: the warning informs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LandmarkDataset(five, split="train")                 # train itself is not warned about
        LandmarkDataset(five)                                # nor every case
    (five / "splits.json").write_text(json.dumps({**splits, "val": leaked}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LandmarkDataset(five, split="val")                   # rpn_lib.validation checks validation cases
