"""Device names are checked once, up front, with one clear error (rpn_lib.device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rpn_lib.checkpoint import load_model
from rpn_lib.cli import main
from rpn_lib.device import resolve_device
from rpn_lib.errors import DeviceError

MODEL = Path(__file__).resolve().parents[1] / "models" / "ig-rpn-cpu-small" / "model.pt"


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", ["gpu", "", "cuda:x", "meta", "cpu:0:1"])
def test_names_that_are_not_devices(name: str) -> None:
    with pytest.raises(DeviceError, match="use auto, cpu, cuda, cuda:N or mps"):
        resolve_device(name)


def test_cuda_on_a_build_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(DeviceError, match="built without CUDA"):
        resolve_device("cuda")


def test_cuda_build_without_a_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(DeviceError, match="no CUDA GPU is visible"):
        resolve_device("cuda:0")


def test_cuda_index_beyond_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("CUDA:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"only 2 CUDA GPU\(s\) are visible \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


def test_mps_where_metal_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="Metal backend is not available"):
        resolve_device("mps")


def test_load_model_checks_the_device() -> None:
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        load_model(MODEL, device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("command", ["detect", "evaluate"])
def test_cli_refuses_a_missing_gpu_in_one_line(command: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    img = tmp_path / "case.nii.gz"  # never read: the device is checked first
    args = {"detect": ["detect", "--model", str(MODEL), str(img), "--out", str(tmp_path / "out")],
            "evaluate": ["evaluate", "--model", str(MODEL), "--data", str(tmp_path), "--out", str(tmp_path / "out")]}[command]
    assert main([*args, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rpn-lib: error: device 'cuda' asked for") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_float64_devices() -> None:
    from rpn_lib.device import computes_float64

    assert computes_float64("cpu") and computes_float64("cuda") and computes_float64(torch.device("cuda", 1))
    assert not computes_float64("mps")
