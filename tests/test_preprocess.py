"""Intensity normalisation: robust percentiles of the voxels inside the field of view, the same
bit for bit on a NumPy array and on a tensor (the detector's GPU path), and a detector that
normalises after the copy to its device finds exactly what one that normalises first finds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rpn_lib.data import synth
from rpn_lib.data.preprocess import normalize_intensity, prepare_volume
from rpn_lib.detect import Detector

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
