"""Which precision runs natively, the "auto" choice and the warning on emulated bf16."""

from __future__ import annotations

import json
import platform
import warnings
from pathlib import Path

import numpy as np
import pytest
from rpn_lib import precision
from rpn_lib.precision import EmulatedPrecisionWarning


def _cpuinfo_flags() -> set[str] | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or _cpuinfo_flags() is None,
                    reason="needs an x86 Linux CPU (/proc/cpuinfo)")
def test_cpu_bf16_instructions_agree_with_the_kernel() -> None:
    """torch's instruction checks against the kernel's own CPU flags (an independent source)."""
    flags = _cpuinfo_flags()
    found = precision.cpu_bf16_instructions()
    assert ("AVX512-BF16" in found) == ("avx512_bf16" in flags)
    # AMX also needs the kernel's permission for the process (which a sandbox may refuse):
    # torch may say no where the CPU lists it, never yes where it does not
    assert "AMX" not in found or "amx_tile" in flags
    assert precision.bf16_native("cpu") == bool(found)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_and_warning(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: ["AMX"] if native else [])
    assert precision.bf16_native("cpu") is native
    assert precision.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert precision.resolve_precision("fp32", "cpu") == "fp32" and precision.resolve_precision("bf16", "cpu") == "bf16"
    assert precision.autocast_precisions("cpu") == (["bf16"] if native else [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert precision.warn_if_emulated("fp32", "cpu") is False
        assert precision.warn_if_emulated("bf16", "cpu") is (not native)
    assert [w.category for w in caught] == ([] if native else [EmulatedPrecisionWarning])
    if not native:
        assert "neither AVX512-BF16 nor AMX" in str(caught[0].message) and "fp32" in str(caught[0].message)


def test_resolve_precision_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="'auto', 'fp32' or 'bf16'"):
        precision.resolve_precision("fp16", "cpu")


def test_detector_amp_warns_where_bf16_is_emulated(monkeypatch) -> None:
    from rpn_lib.bench import quick_preset, untrained_detector

    p = quick_preset("cpu-small")
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: [])
    with pytest.warns(EmulatedPrecisionWarning):
        untrained_detector(p, "cpu", amp=True)
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: ["AVX512-BF16"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmulatedPrecisionWarning)
        untrained_detector(p, "cpu", amp=True)
        untrained_detector(p, "cpu", amp=False)


def test_train_auto_precision_is_recorded(monkeypatch, tmp_path) -> None:
    """``precision="auto"`` trains in what the device runs natively and records that choice."""
    from rpn_lib.data.dataset import write_synthetic_dataset
    from rpn_lib.presets import get_preset
    from rpn_lib.train import train

    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: [])
    write_synthetic_dataset(tmp_path / "data", n=2, n_test=1, seed=0, preset="cpu-small", progress=False)
    p = get_preset("cpu-small").replace(shape_vox=(32, 32, 32), spacing_mm=5.2, width=2, batch_size=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmulatedPrecisionWarning)  # fp32 was chosen: no warning
        res = train(tmp_path / "data", tmp_path / "run", p, steps=1, precision="auto", device="cpu", progress=False)
    assert json.loads((res.run_dir / "train.json").read_text())["precision"] == "fp32"
    with pytest.raises(ValueError, match="precision"):
        train(tmp_path / "data", tmp_path / "run2", p, steps=1, precision="fp16", device="cpu", progress=False)
    assert not (tmp_path / "run2").exists()  # refused before anything was written
    assert np.isfinite(res.final_loss)
