"""pyproject.toml and environment.yml pin the same packages at the same versions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> tuple[str, str]:
    name, _, version = req.partition("==")
    name = re.sub(r"\[.*\]", "", name).strip().lower().replace("_", "-")
    return name, version.strip()


def pyproject_pins() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra, items in meta["optional-dependencies"].items():
        reqs += [r for r in items if not r.startswith("rpn-lib")]
    return dict(_norm(r) for r in reqs)


def environment_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_items: list[str] = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict) and "pip" in dep:
            pip_items += dep["pip"]
    return dict(_norm(r) for r in pip_items if not r.startswith("-e"))


def test_every_pin_is_exact() -> None:
    for name, version in {**pyproject_pins(), **environment_pins()}.items():
        assert re.fullmatch(r"\d+(\.\d+)*(\.post\d+)?", version), f"{name} is not pinned exactly: {version!r}"


def test_pyproject_and_environment_agree() -> None:
    assert pyproject_pins() == environment_pins()


def test_torch_pin() -> None:
    assert pyproject_pins()["torch"] == "2.13.0"


def test_environment_python_matches_requires_python() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"].startswith(">=3.11")
