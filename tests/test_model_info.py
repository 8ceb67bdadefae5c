"""``rpn-lib info`` and :func:`rpn_lib.model_info.model_info`: what a model file holds, read
from the file itself, and a clear refusal of a file that is not one."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch

from rpn_lib.bench import count_flops
from rpn_lib.calibrate import paper_prior
from rpn_lib.checkpoint import load_model, save_model
from rpn_lib.cli import main
from rpn_lib.errors import ModelError
from rpn_lib.methods import method_from_dict
from rpn_lib.model_info import model_info
from rpn_lib.presets import Preset

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "ig-rpn-cpu-small"
SHIPPED = MODEL_DIR / "model.pt"


def test_the_shipped_model_described_from_its_file() -> None:
    info = model_info(SHIPPED)
    loaded = load_model(SHIPPED)
    train = json.loads((MODEL_DIR / "train.json").read_text())
    assert (info.method, info.method_title, info.method_options) == ("rpn", "IG-RPN", {})
    assert info.preset == loaded.preset.to_dict() and info.preset["name"] == "cpu-small"
    assert info.changed == {"anchor_layout": ["all", "cubes"], "eye_sides": ["learned", "geometry"]}
    assert info.parameters == sum(p.numel() for p in loaded.model.parameters())
    assert info.gflop == pytest.approx(count_flops(loaded.model, (1, 1, 64, 64, 64)) / 1e9)
    assert 5 < info.gflop < 20  # the chapter Performance's order of magnitude at 64^3, width 16
    assert info.training == {k: train[k] for k in ("steps", "seed", "precision", "iou_balance")}
    cal = loaded.meta["prior_calibration"]
    assert info.prior_rule == "penalty-score"
    assert info.prior_calibration == {k: v for k, v in cal.items() if k != "previous_prior"}
    assert info.file_mb == pytest.approx(SHIPPED.stat().st_size / 1e6)
    text = str(info).splitlines()
    assert [line.split()[0] for line in text] == ["file", "method", "scale", "unlike", "network", "training",
                                                  "graph", "prior"]
    assert "64x64x64 voxels at 2.6 mm (166, 166, 166 mm), width 16" in text[2]
    assert text[3].endswith("anchor_layout all -> cubes; eye_sides learned -> geometry")
    assert text[6].endswith(f"calibrated: noise {cal['localisation_sd_mm']:.2f} mm per axis, from 120 train volumes")
    assert text[7].split() == ["prior", "rule", "penalty-score"]
    assert model_info(SHIPPED, flops=False).gflop is None


def test_a_model_of_no_named_preset_with_the_papers_prior(tmp_path: Path) -> None:
    preset = Preset(name="mine", spacing_mm=4.0, shape_vox=(32, 48, 32), width=8)
    net = method_from_dict({}).build(preset)  # an IG-RPN
    path = tmp_path / "model.pt"
    save_model(path, net, preset, paper_prior(load_model(SHIPPED)), meta={"steps": 7})
    info = model_info(path)
    assert info.changed == {} and info.training == {"steps": 7} and info.prior_calibration is None
    assert info.prior_rule == "penalty" and info.method == "rpn"
    assert info.parameters == sum(p.numel() for p in net.parameters())
    text = str(info)
    assert "unlike" not in text and "32x48x32 voxels at 4.0 mm (128, 192, 128 mm), width 8" in text
    assert text.endswith("fitted on the true landmarks (the paper's)\nprior rule   penalty")


def test_cli_prints_the_description_or_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(SHIPPED), "--no-flops"]) == 0
    assert capsys.readouterr().out.strip() == str(model_info(SHIPPED, flops=False))
    assert main(["info", str(SHIPPED), "--json", "--no-flops"]) == 0
    assert json.loads(capsys.readouterr().out) == model_info(SHIPPED, flops=False).to_dict()


class _Thing:
    """An object that only a full unpickler would rebuild."""


def test_files_that_are_not_models_are_refused_in_one_line(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"format": "rpn-lib-model/1", "x": _Thing()}, tmp_path / "objects.pt")
    (tmp_path / "text.pt").write_text("# not a model\n")
    data = SHIPPED.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    torch.save({"format": "rpn-lib-checkpoint/1"}, tmp_path / "checkpoint.pt")
    expected = {"checkpoint.pt": "a training checkpoint; the run folder's model.pt is its model",
                "objects.pt": "holds pickled Python objects, which rpn-lib never loads",
                "text.pt": "not a readable rpn-lib file", "cut.pt": "truncated or damaged?",
                "missing.pt": "model file not found"}
    for name, text in expected.items():
        with pytest.raises(ModelError, match=name):
            model_info(tmp_path / name)
        assert main(["info", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and text in err and "weights_only" not in err, err


class _ClosedPipe(io.StringIO):
    """A stdout whose reader has gone (as after ``| head``): every write fails."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        return self._fd


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "stdout", "w") as f:
        monkeypatch.setattr(sys, "stdout", _ClosedPipe(f.fileno()))
        assert main(["info", str(SHIPPED), "--no-flops"]) == 141  # 128 + SIGPIPE, no traceback


def test_long_values_wrap_under_their_column(tmp_path: Path) -> None:
    method = method_from_dict({"method": "faster-rcnn"})  # a method with many options
    preset = Preset(name="mine", spacing_mm=4.0, shape_vox=(32, 32, 32), width=8)
    path = tmp_path / "frcnn.pt"
    save_model(path, method.build(preset), preset, paper_prior(load_model(SHIPPED)),
               meta={"method": method.name, "method_options": method.options()})
    lines = str(model_info(path, flops=False)).splitlines()
    assert max(map(len, lines)) <= 88
    first = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert lines[first].startswith("method       Faster R-CNN (faster-rcnn; ")
    end = next(i for i in range(first + 1, len(lines)) if not lines[i].startswith(" "))
    continued = lines[first + 1:end]
    assert continued and all(line.startswith(" " * 13) and line[13] != " " for line in continued)
    joined = " ".join(line.strip() for line in lines[first:end])
    assert "roi_box_weights=[10.0, 10.0, 10.0, 5.0, 5.0, 5.0])" in joined  # nothing lost in the wrapping


def test_cli_prints_a_presets_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from rpn_lib.presets import PRESETS, settings_text

    monkeypatch.chdir(tmp_path)
    assert main(["info", "paper"]) == 0
    assert capsys.readouterr().out.strip() == settings_text("paper")
    assert main(["info", "cpu-small", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == PRESETS["cpu-small"].to_dict()
    # a file of that name is a model file, and is read as one
    (tmp_path / "paper").write_bytes(b"not a model")
    assert main(["info", "paper"]) == 2
    assert "not a readable rpn-lib file" in capsys.readouterr().err
