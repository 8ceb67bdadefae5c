"""Every option of every ``rpn-lib`` command explains itself and states its default once."""

from __future__ import annotations

import argparse
import re

import pytest

from rpn_lib.cli import HelpFormatter, command_parsers


COMMANDS = sorted(command_parsers())


def test_every_command_is_listed() -> None:
    assert COMMANDS == sorted(["synth", "train", "detect", "evaluate", "calibrate-prior", "info", "view", "bench",
                               "replicate"])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_one_default(command: str) -> None:
    parser = command_parsers()[command]
    assert parser.formatter_class is HelpFormatter
    for action in parser._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
    text = " ".join(parser.format_help().split())
    assert not re.search(r"\(default: (None|True|False|\(\)|\[\])\)", text), text
    for entry in re.split(r"\s(?=--?[a-z0-9])", text):  # one option's usage and help
        assert entry.lower().count("default") <= 1, entry


def test_defaults_print_as_they_are_typed() -> None:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds")
    p.add_argument("--axes", default=(2, 1, 0), help="axes")
    p.add_argument("--rate", type=float, default=0.5, help="rate 100%% of the time")
    p.add_argument("--flag", action="store_true", help="a flag")
    p.add_argument("--off", dest="on", action="store_false", help="switch off")
    p.add_argument("--steps", type=int, default=None, help="steps")
    p.add_argument("--mode", default="fast", help="mode (default: the model's)")
    text = " ".join(p.format_help().split())
    assert "seeds (default: 0 1 2)" in text and "axes (default: 2,1,0)" in text
    assert "rate 100% of the time (default: 0.5)" in text
    assert "a flag --off" in text and "switch off --steps" in text and "steps --mode" in text
    assert text.endswith("mode (default: the model's)")


def test_written_out_choices_match_the_library() -> None:
    from rpn_lib.data.ultrasound import DIFFICULTIES

    difficulty = next(a for a in command_parsers()["synth"]._actions if a.dest == "difficulty")
    assert sorted(difficulty.choices) == sorted(DIFFICULTIES)
