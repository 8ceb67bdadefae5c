"""What runs on a CUDA GPU gives what runs on the CPU. Skipped where no GPU is visible.

``scripts/bench_cuda.sh`` runs this file on a GPU machine before the benchmark. Every CUDA
path of the library that the CPU tests cannot reach is checked here: augmentation on the
device, intensity normalisation on the device, detection, evaluation and detection in files
with the next cases read ahead, a model of each method trained on the GPU that loads and
detects on the CPU and on the GPU, training with validation at its checkpoints, and the
RetinaNet peer's training.
``RPN_LIB_TEST_DEVICE=cpu`` runs the same checks with the CPU in the GPU's place (a dry run of
this file, as ``BENCH_DEVICE=cpu`` is of the script).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rpn_lib.augment import augmented_batch
from rpn_lib.data import synth
from rpn_lib.data.preprocess import normalize_intensity
from rpn_lib.detect import Detector
from rpn_lib.device import resolve_device
from rpn_lib.errors import DeviceError
from rpn_lib.methods import METHOD_NAMES

DEVICE = os.environ.get("RPN_LIB_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "ig-rpn-cpu-small" / "model.pt"


def test_the_gpu_is_found_and_a_missing_one_refused() -> None:
    assert resolve_device("auto").type == DEVICE
    if DEVICE == "cuda":
        assert resolve_device("cuda:0").type == "cuda"
    with pytest.raises(DeviceError):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_augmentation_on_the_gpu_draws_the_same_augmentations() -> None:
    case = synth.generate_from_preset(1, "cpu-small")
    vols = [torch.from_numpy(case.volume.astype(np.float32))] * 3
    lms = [torch.from_numpy(case.landmarks_vox).float()] * 3
    x_cpu, lm_cpu = augmented_batch(vols, lms, torch.Generator().manual_seed(5), "cpu")
    x_gpu, lm_gpu = augmented_batch(vols, lms, torch.Generator().manual_seed(5), DEVICE)
    assert x_gpu.device.type == DEVICE and lm_gpu.device.type == DEVICE
    assert torch.equal(lm_gpu.cpu(), lm_cpu)
    assert torch.allclose(x_gpu.cpu(), x_cpu, atol=1e-3)


def test_normalisation_on_the_gpu_is_the_cpus_bit_for_bit() -> None:
    for seed, preset in [(2, "cpu-small"), (3, "paper")]:
        vol = synth.generate_from_preset(seed, preset).volume
        on_gpu = normalize_intensity(torch.from_numpy(vol).to(DEVICE))
        assert on_gpu.device.type == DEVICE
        assert np.array_equal(on_gpu.cpu().numpy(), normalize_intensity(vol))


def test_detection_on_the_gpu_finds_what_the_cpu_finds() -> None:
    cpu = Detector.from_file(SHIPPED, device="cpu")
    gpu = Detector.from_file(SHIPPED, device=DEVICE)
    assert gpu.normalize_on_device == (DEVICE != "cpu") and not cpu.normalize_on_device
    for seed in (4, 5, 6):
        case = synth.generate_from_preset(seed, "cpu-small")
        a, b = cpu.detect(case.volume, case.affine), gpu.detect(case.volume, case.affine)
        assert np.abs(a.landmarks_world - b.landmarks_world).max() < 0.1, seed
        np.testing.assert_allclose(b.scores, a.scores, atol=0.01)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rpn_lib.data.dataset import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("gpu") / "data", n=4, n_test=1, seed=0,
                                   preset="cpu-small", progress=False)


def test_reading_ahead_on_the_gpu_changes_nothing(tiny_dataset: Path) -> None:
    from rpn_lib.data.dataset import LandmarkDataset
    from rpn_lib.evaluate import evaluate

    gpu = Detector.from_file(SHIPPED, device=DEVICE)
    ds = LandmarkDataset(tiny_dataset, split=None)
    ahead = evaluate(gpu, ds, split=None, progress=False, read_ahead_cases=3)
    alone = evaluate(gpu, ds, split=None, progress=False, read_ahead_cases=0)
    np.testing.assert_allclose(ahead.pred_world, alone.pred_world, atol=1e-3)
    on_cpu = evaluate(Detector.from_file(SHIPPED, device="cpu"), ds, split=None, progress=False)
    assert np.abs(ahead.pred_world - on_cpu.pred_world).max() < 0.1
    files = [ds.image_path(i) for i in range(len(ds))]
    found = list(gpu.detect_files(files, read_ahead_files=3))
    assert [f.error for f in found] == [None] * len(ds)
    np.testing.assert_allclose(np.stack([f.detection.landmarks_world for f in found]), ahead.pred_world, atol=1e-3)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_a_model_trained_on_the_gpu_detects_on_the_cpu_and_the_gpu(method: str, tiny_dataset: Path,
                                                                     tmp_path: Path) -> None:
    from rpn_lib.train import train

    res = train(tiny_dataset, tmp_path / "run", steps=3, device=DEVICE, progress=False, checkpoint_every=3,
                method=method)
    assert np.isfinite(res.final_loss)
    case = synth.generate_from_preset(7, "cpu-small")
    for device in ("cpu", DEVICE):
        found = Detector.from_file(res.run_dir / "model.pt", device=device).detect(case.volume, case.affine)
        assert found.landmarks_world.shape == (5, 3) and np.isfinite(found.landmarks_world).all(), device


def test_the_retinanet_peer_trains_on_the_gpu(tiny_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("monai")
    from rpn_lib.baselines.retinanet_peer import train_retinanet

    res = train_retinanet(tiny_dataset, tmp_path / "run", steps=3, device=DEVICE, progress=False, checkpoint_every=3)
    assert np.isfinite(res.final_loss)


def test_validation_during_training_on_the_gpu(tiny_dataset: Path, tmp_path: Path) -> None:
    from rpn_lib.data.dataset import LandmarkDataset
    from rpn_lib.evaluate import evaluate
    from rpn_lib.train import train
    from rpn_lib.validation import BEST_MODEL, VAL_LOG, read_val_log

    val = LandmarkDataset(tiny_dataset, split="test")
    res = train(tiny_dataset, tmp_path / "run", steps=4, device=DEVICE, progress=False, checkpoint_every=2,
                val_data=val)
    rows = read_val_log(res.run_dir / VAL_LOG)
    assert [int(r["step"]) for r in rows] == [2, 4] and res.val == rows
    assert (res.run_dir / BEST_MODEL).is_file()
    again = evaluate(Detector.from_file(res.run_dir / "model.pt", device=DEVICE), val, split=None, progress=False)
    assert rows[-1]["d_mean_mm"] == pytest.approx(again.metrics["d_mean_mm"], rel=1e-4)
