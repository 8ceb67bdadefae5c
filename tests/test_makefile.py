"""The Makefile's install step: a failed pip install stops make, and only pip's noise is hidden.

Each test runs ``make install`` against a stand-in virtual environment whose ``python`` answers
as pip would, so nothing is installed and no network or disk-heavy work is done.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOISE = "WARNING: Location '/wheels' is ignored: it is neither a file nor a directory"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def fake_venv(tmp_path: Path, install_rc: int, message: str) -> Path:
    """A folder with ``bin/python`` that prints pip's noise and ``message``, then exits ``install_rc``
    for ``-m pip install`` and 0 for anything else (``pip check``)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1 $2 $3" = "-m pip install" ]; then\n'
        f"  echo \"{NOISE}\"\n"
        f"  echo \"{message}\" >&2\n"
        f"  exit {install_rc}\n"
        "fi\n"
        "exit 0\n"
    )
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return venv


def make_install(venv: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(
        ["make", "--no-print-directory", "install", f"VENV={venv}", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


def test_failed_pip_install_stops_make(tmp_path: Path) -> None:
    error = "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device"
    venv = fake_venv(tmp_path, install_rc=1, message=error)
    result = make_install(venv)
    assert result.returncode != 0
    assert error in result.stdout + result.stderr
    assert not (venv / ".installed").exists(), "a failed install must not be marked as done"


def test_successful_install_is_stamped_and_noise_hidden(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, install_rc=0, message="installed")
    result = make_install(venv)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (venv / ".installed").exists()
    out = result.stdout + result.stderr
    assert "installed" in out
    assert NOISE not in out


def test_low_disk_space_is_warned(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, install_rc=0, message="installed")
    result = make_install(venv, "NEED_MB=999999999")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MB free on the disk of" in result.stderr
