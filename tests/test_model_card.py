"""The shipped model's card is what ``scripts/model_card.py`` writes from the model's files
and the Makefile's recipe: no figure or command in it is edited by hand or left stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "ig-rpn-cpu-small"


def _card_module():  # noqa: ANN202 - a module loaded from scripts/
    spec = importlib.util.spec_from_file_location("model_card", ROOT / "scripts" / "model_card.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_card_is_the_generated_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the card names the folder as the Makefile does, relative to the root
    card = _card_module().card(Path("models") / MODEL.name)
    assert card == (MODEL / "README.md").read_text()


def test_the_recipe_is_the_makefiles_with_make_variables_resolved() -> None:
    recipe = _card_module()._make_model_recipe(Path("models/m"), "fp32")
    assert recipe and not any("$(" in line for line in recipe)
    assert any("rpn-lib train" in line and "--precision fp32" in line for line in recipe)
    assert all(not line.startswith(".venv") for line in recipe)
