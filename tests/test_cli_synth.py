"""``rpn-lib synth`` and the command line's error contract (one line, exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rpn_lib import __version__
from rpn_lib.cli import main
from rpn_lib.data import dataset as dsm

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "rpn_lib", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def test_synth_writes_the_dataset_tree(tmp_path: Path) -> None:
    out = tmp_path / "synth3"
    r = run_cli("synth", "--out", str(out), "--n", "3", "--n-test", "1", "--seed", "5", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"wrote 3 cases (2 train, 1 test) to {out}" in r.stdout
    ids = ["case_000", "case_001", "case_002"]
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{c}.nii.gz" for c in ids]
    assert sorted(p.name for p in (out / "landmarks").iterdir()) == [f"{c}.mrk.json" for c in ids]
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits["train"]) == 2 and len(splits["test"]) == 1 and sorted(splits["train"] + splits["test"]) == ids
    assert splits == dsm.random_split(ids, 1, 5)
    card = (out / "README.md").read_text()
    assert "| preset | `cpu-small` |" in card and "| dataset seed | 5 |" in card and "3 (2 train, 1 test)" in card
    ds = dsm.LandmarkDataset(out, split="train")
    case = ds[0]
    assert case.volume.shape == (64, 64, 64) and case.landmarks_world.shape == (5, 3)


@pytest.mark.parametrize("args,what", [
    (["synth", "--out", "{tmp}/x", "--n", "3", "--n-test", "5"], "n_test must be between 0 and n=3"),
    (["synth", "--out", "{tmp}/file.txt", "--n", "2", "--n-test", "1"], "not a folder"),
])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], what: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    argv = [a.format(tmp=tmp_path) for a in args]
    r = run_cli(*argv)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("rpn-lib: error: ") and what in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "x").exists()
    r = run_cli("--debug", *argv)
    assert r.returncode == 2 and "Traceback" in r.stderr and r.stderr.rstrip().splitlines()[-1].startswith("rpn-lib: error: ")


def test_main_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def tiny(seed, preset, difficulty, case_id):
        from types import SimpleNamespace

        vol = np.full((6, 6, 6), 9, np.uint8)
        return SimpleNamespace(volume=vol, affine=np.eye(4), landmarks_world=np.full((5, 3), 2.0), params={})

    monkeypatch.setattr(dsm, "_generate_case", tiny)
    out = tmp_path / "d"
    assert main(["synth", "--out", str(out), "--n", "2", "--n-test", "1", "--no-progress", "--difficulty", "easy"]) == 0
    assert "wrote 2 cases" in capsys.readouterr().out
    assert "| difficulty | `easy` |" in (out / "README.md").read_text()
    # a second run into the same folder is a user error (DataError), not a crash
    assert main(["synth", "--out", str(out), "--n", "2", "--n-test", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"rpn-lib: error: {out}: output folder is not empty (use overwrite=True / --overwrite to replace it)"]
    assert main(["synth", "--out", str(out), "--n", "2", "--n-test", "1", "--no-progress", "--overwrite"]) == 0


def test_argparse_paths(capsys: pytest.CaptureFixture) -> None:
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert main(["synth", "--help"]) == 0
    assert "--n-test" in capsys.readouterr().out
    assert main([]) == 2  # a command is required
    assert main(["synth", "--out", "x", "--preset", "huge"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'huge'" in err and "Traceback" not in err
