"""The CPU allocator setting (rpn_lib.allocator): validation, the environment switch, and that
it changes timings only, never values."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rpn_lib import allocator
from rpn_lib.cli import main

GLIBC = allocator.allocator_setting()["libc"] is not None


@pytest.mark.parametrize("bad", [0, -1, 2048, 1.5, "1024"])
def test_top_pad_must_be_a_sensible_integer(bad) -> None:
    with pytest.raises(ValueError, match="top_pad_mb"):
        allocator.retain_freed_memory(bad)


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_retain_is_recorded() -> None:
    assert allocator.retain_freed_memory(allocator.DEFAULT_TOP_PAD_MB) is True
    s = allocator.allocator_setting()
    assert s["libc"].startswith("glibc ") and s["retain_freed_memory"] is True
    assert s["top_pad_mb"] == allocator.DEFAULT_TOP_PAD_MB


def test_environment_switch(monkeypatch) -> None:
    monkeypatch.setenv(allocator.ENV_VAR, "default")
    assert allocator.configure_from_env() is False
    monkeypatch.setenv(allocator.ENV_VAR, "Retain ")
    assert allocator.configure_from_env() is GLIBC
    monkeypatch.setenv(allocator.ENV_VAR, "jemalloc")
    with pytest.raises(ValueError, match=allocator.ENV_VAR):
        allocator.configure_from_env()


def test_command_line_reports_a_bad_setting_in_one_line(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setenv(allocator.ENV_VAR, "sometimes")
    assert main(["synth", "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    assert not (tmp_path / "d").exists()  # nothing ran
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and allocator.ENV_VAR in err


_CHILD = """
import json, sys, torch
from rpn_lib import allocator
allocator.configure_from_env()
from rpn_lib.candidates import top_class_probabilities
from rpn_lib.model import IGRPN
torch.manual_seed(0)
net = IGRPN(width=2, num_anchors=4, stride=4).eval()
with torch.inference_mode():
    out = net(torch.randn(1, 1, 32, 32, 32))
    v, i = top_class_probabilities(out.cls_logits[0], 8)
print(json.dumps({"sum": float(out.cls_logits.double().sum()), "idx": i.tolist(), "v": v.tolist(),
                  "setting": allocator.allocator_setting()}))
"""


def _run_child(mode: str) -> dict:
    env = {**os.environ, allocator.ENV_VAR: mode}
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_same_values_with_either_setting() -> None:
    kept, plain = _run_child("retain"), _run_child("default")
    assert kept["setting"]["retain_freed_memory"] is True and plain["setting"]["retain_freed_memory"] is False
    assert kept["sum"] == plain["sum"] and kept["idx"] == plain["idx"] and kept["v"] == plain["v"]
