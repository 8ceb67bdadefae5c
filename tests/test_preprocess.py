"""Intensity normalisation: robust percentiles of the voxels inside the field of view, the same
bit for bit on a NumPy array and on a tensor (the detector's GPU path), and a detector that
normalises after the copy to its device finds exactly what one that normalises first finds.
The size of the model grid: a volume far larger than the training grid is refused before it
is resampled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rpn_lib.data import synth
from rpn_lib.data.dataset import LandmarkDataset, write_synthetic_dataset
from rpn_lib.data.geometry import resample_to_spacing, resampled_shape
from rpn_lib.data.io import load_volume, save_volume
from rpn_lib.data.preprocess import check_grid_size, normalize_intensity, prepare_volume
from rpn_lib.detect import Detector
from rpn_lib.errors import DataError
from rpn_lib.train import load_training_set

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "ig-rpn-cpu-small" / "model.pt"


def test_normalisation_maps_the_robust_range_to_0_1_and_keeps_the_outside_at_0() -> None:
    rng = np.random.default_rng(0)
    vol = rng.uniform(1, 101, size=(20, 20, 20)).astype(np.float32)
    vol[:5] = 0.0                                              # outside the sector
    vol[10, 10, 10] = 1e6                                      # one saturated voxel
    out = normalize_intensity(vol)
    assert out.dtype == np.float32 and out.shape == vol.shape
    assert (out[:5] == 0).all() and out.min() == 0.0 and out.max() == 1.0
    lo, hi = np.percentile(vol[vol > 0], [0.5, 99.5])
    inside = (vol > lo) & (vol < hi)
    np.testing.assert_allclose(out[inside], (vol[inside] - lo) / (hi - lo), rtol=1e-6)
    assert (normalize_intensity(np.zeros((4, 4, 4))) == 0).all()
    assert (normalize_intensity(np.full((4, 4, 4), 7.0)) == 0).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_a_tensor_is_normalised_exactly_as_an_array(dtype: type) -> None:
    rng = np.random.default_rng(int(np.dtype(dtype).num))
    for trial in range(60):
        n = int(rng.integers(1, 4000)) if trial % 3 else int(rng.integers(1, 300_000))
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            vol = rng.integers(max(info.min, -50), min(info.max, 3000), n).astype(dtype)
        else:
            vol = (rng.normal(40, 30, n) if trial % 2 else np.round(rng.uniform(-1, 6, n))).astype(dtype)
        low, high = rng.uniform(0, 5), rng.uniform(95, 100)
        expected = normalize_intensity(vol, low, high)
        got = normalize_intensity(torch.from_numpy(vol), low, high)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        assert np.array_equal(got.numpy(), expected), (trial, n)
    assert (normalize_intensity(torch.zeros(3, 3, 3)) == 0).all()
    assert (normalize_intensity(torch.full((3, 3, 3), 7.0)) == 0).all()


def test_prepare_volume_can_leave_the_normalisation_to_later() -> None:
    case = synth.generate_from_preset(2, "cpu-small")
    done = prepare_volume(case.volume, case.affine, 2.6)
    later = prepare_volume(case.volume, case.affine, 2.6, normalize=False)
    assert done.normalized and not later.normalized and later.array.dtype == np.float32
    assert np.array_equal(later.affine, done.affine)
    assert np.array_equal(normalize_intensity(later.array), done.array)


def test_normalising_on_the_device_changes_no_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    det = Detector.from_file(SHIPPED, device="cpu")
    case = synth.generate_from_preset(5, "cpu-small")
    coarse = synth.generate_case(6, 3.2, (56, 56, 56))         # resampled to 2.6 mm first
    volumes, affines = [case.volume, coarse.volume], [case.affine, coarse.affine]
    first = det.detect_batch(volumes, affines)
    assert not det.normalize_on_device                          # on a CPU, NumPy normalises
    monkeypatch.setattr(Detector, "normalize_on_device", property(lambda self: True))
    assert not det.prepare(case.volume, case.affine, normalize=False).normalized
    later = det.detect_batch(volumes, affines) + [det.detect(case.volume, case.affine)]
    monkeypatch.setattr(Detector, "normalize_on_device", property(lambda self: False))  # e.g. Apple's MPS
    raw = det.prepare(case.volume, case.affine, normalize=False)
    later += det.detect_prepared([raw], [case.affine])                              # normalised before the copy
    for a, b in zip(first + first[:1] + first[:1], later, strict=True):
        assert np.array_equal(a.landmarks_world, b.landmarks_world) and np.array_equal(a.scores, b.scores)
        assert [len(c) for c in a.candidates] == [len(c) for c in b.candidates]


def test_only_a_float64_device_normalises_after_the_copy() -> None:
    det = Detector.from_file(SHIPPED, device="cpu")
    for device, on_device in [("cpu", False), ("cuda", True), ("cuda:1", True), ("mps", False)]:
        det.device = torch.device(device)  # the rule reads only the device; nothing runs there
        assert det.normalize_on_device is on_device, device


@pytest.mark.parametrize("spacing, target", [((0.8, 1.3, 2.1), 2.6), ((3.0, 0.5, 1.0), 1.3), ((2.6,) * 3, 2.6)])
def test_resampled_shape_is_the_shape_resampling_gives(spacing: tuple[float, ...], target: float) -> None:
    affine = np.diag([*spacing, 1.0])
    affine[:3, :3] = np.linalg.qr(np.arange(1, 10, dtype=float).reshape(3, 3) + np.eye(3))[0] @ affine[:3, :3]
    volume = np.zeros((23, 31, 17), np.float32)
    assert resampled_shape(volume.shape, affine, target) == resample_to_spacing(volume, affine, target)[0].shape


def test_a_grid_far_larger_than_the_training_grid_is_refused_before_resampling() -> None:
    training = (64, 64, 64)
    # 4 times the training field of view per side: exactly 64 times its voxels, accepted
    assert check_grid_size((256, 256, 256), np.diag([2.6, 2.6, 2.6, 1.0]), 2.6, training) == (256, 256, 256)
    with pytest.raises(DataError, match="more than 64 times") as e:
        check_grid_size((257, 256, 256), np.diag([2.6, 2.6, 2.6, 1.0]), 2.6, training)
    # voxel sizes in the wrong unit: 200 mm voxels, refused with the header's numbers
    with pytest.raises(DataError, match=r"3077 x 3077 x 3077 voxels .* 200 x 200 x 200 mm voxels") as e:
        check_grid_size((40, 40, 40), np.diag([200.0, 200.0, 200.0, 1.0]), 2.6, training)
    assert "header" in str(e.value)


def test_detect_and_training_refuse_a_volume_with_voxel_sizes_not_in_mm(tmp_path: Path) -> None:
    det = Detector.from_file(SHIPPED, device="cpu")
    volume = np.random.default_rng(0).random((40, 40, 40), dtype=np.float32)
    with pytest.raises(DataError, match="Are the voxel sizes in the header in mm"):
        det.detect(volume, spacing_mm=200.0)                      # would need 108 GiB: refused at once
    data = tmp_path / "data"
    write_synthetic_dataset(data, n=2, n_test=1, seed=0, preset=det.preset, progress=False)
    image = next((data / "images").glob("*.nii.gz"))
    vol = load_volume(image)
    save_volume(image, vol.array, vol.affine * np.array([100.0, 100.0, 100.0, 1.0]))  # metres read as cm, say
    with pytest.raises(DataError, match="Are the voxel sizes in the header in mm") as e:
        load_training_set(LandmarkDataset(data, split="train"), det.preset, progress=False)
    assert e.value.path == image
