"""Presets: validation, serialisation, and the box coder they define."""

from __future__ import annotations

import pytest
import torch

from rpn_lib.boxes import BoxCoder
from rpn_lib.methods import box_coder
from rpn_lib.presets import (PRESETS, SETTABLE, Preset, format_setting, get_preset, parse_setting, preset_changes,
                             settings_text, with_settings)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trip_through_json_dict(name: str) -> None:
    p = get_preset(name)
    assert Preset.from_dict(p.to_dict()) == p


def test_a_dict_from_before_box_weights_loads_with_eq1() -> None:
    d = get_preset("cpu-small").to_dict()
    del d["box_weights"]
    assert Preset.from_dict(d).box_weights == (1.0,) * 6


@pytest.mark.parametrize("change, match", [
    ({"stride": 3}, "stride"),
    ({"ambiguous": "maybe"}, "ambiguous"),
    ({"focal_gamma": -1.0}, "focal_gamma"),
    ({"flip_axes": (3,)}, "flip_axes"),
    ({"neg_iou": 0.6}, "neg_iou"),
    ({"box_weights": (1.0,) * 5}, "box_weights"),
    ({"box_weights": (10.0, 10.0, 10.0, 5.0, 5.0, 0.0)}, "box_weights"),
    ({"spacing_mm": 0.0}, "spacing_mm"),
    ({"spacing_mm": float("nan")}, "spacing_mm"),
    ({"shape_vox": (64, 64)}, "shape_vox"),
    ({"shape_vox": (64, 60, 64)}, "multiple of 8"),
    ({"shape_vox": (0, 64, 64)}, "shape_vox"),
    ({"anchor_base_mm": ()}, "anchor_base_mm"),
    ({"anchor_base_mm": (10.0, -1.0)}, "anchor_base_mm"),
    ({"width": 0}, "width"),
    ({"steps": 0}, "steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"min_positives": 0}, "min_positives"),
    ({"top_k": 0}, "top_k"),
    ({"anchors_per_volume": -1}, "anchors_per_volume"),
    ({"max_pos_fraction": 1.5}, "max_pos_fraction"),
    ({"hard_negative_start": -0.1}, "hard_negative_start"),
    ({"nms_iou": 2.0}, "nms_iou"),
    ({"lr": 0.0}, "lr"),
    ({"lr": float("inf")}, "lr"),
    ({"weight_decay": -1e-4}, "weight_decay"),
    ({"eta": float("nan")}, "eta"),
    ({"rotation_deg": 200.0}, "rotation_deg"),
])
def test_invalid_settings_are_refused(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_preset("cpu-small").replace(**change)


def test_box_coder_scales_the_eq1_deltas_by_the_preset_weights() -> None:
    weights = (10.0, 10.0, 10.0, 5.0, 5.0, 5.0)
    p = get_preset("cpu-small").replace(box_weights=weights)
    anchors = torch.tensor([[10.0, 12.0, 14.0, 6.0, 8.0, 10.0]], dtype=torch.float64)
    gt = torch.tensor([[11.0, 11.0, 15.0, 9.0, 8.0, 5.0]], dtype=torch.float64)
    plain = BoxCoder().encode(anchors, gt)
    scaled = box_coder(p).encode(anchors, gt)
    torch.testing.assert_close(scaled, plain * torch.tensor(weights, dtype=torch.float64))
    torch.testing.assert_close(box_coder(p).decode(anchors, scaled), gt)


@pytest.mark.parametrize("text, expected", [
    ("lr=5e-4", ("lr", 5e-4)),
    (" batch-size = 4 ", ("batch_size", 4)),
    ("shape_vox=96,96,80", ("shape_vox", (96, 96, 80))),
    ("anchor_base_mm=10, 20.5", ("anchor_base_mm", (10.0, 20.5))),
    ("flip_axes=2", ("flip_axes", (2,))),
    ("flip=No", ("flip", False)),
    ("flip=1", ("flip", True)),
    ("eye_sides=geometry", ("eye_sides", "geometry")),
])
def test_a_setting_is_typed_as_its_field(text: str, expected: tuple) -> None:
    name, value = parse_setting(text)
    assert (name, value) == expected
    assert type(value) is type(expected[1])
    if isinstance(value, tuple):
        assert [type(v) for v in value] == [type(v) for v in expected[1]]


@pytest.mark.parametrize("text, message", [
    ("lr", "FIELD=VALUE"),
    ("=3", "FIELD=VALUE"),
    ("name=mine", "'name' is not a preset setting"),
    ("extra={}", "'extra' is not a preset setting"),
    ("with=2", "settings: spacing_mm, shape_vox"),
    ("widht=8", r"'widht' is not a preset setting \(did you mean width\?\); settings"),
    ("width=8.5", "width needs an integer, got '8.5'"),
    ("lr=fast", "lr needs a number"),
    ("flip=maybe", "flip is true or false"),
    ("shape_vox=64,64", "shape_vox needs 3 comma-separated values"),
    ("box_weights=", "box_weights needs one or more comma-separated values"),
])
def test_a_malformed_setting_is_refused_with_its_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_setting(text)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_field_but_the_name_can_be_set_and_round_trips_as_text(preset: str) -> None:
    assert set(SETTABLE) == set(Preset.__dataclass_fields__) - {"name", "extra"}
    p = get_preset(preset)
    for name in SETTABLE:
        value = getattr(p, name)
        parsed = parse_setting(f"{name}={format_setting(value)}")
        assert parsed[0] == name and preset_changes({name: value}, dict([parsed])) == {}
    assert preset_changes(p, with_settings(preset, [f"{n}={format_setting(getattr(p, n))}" for n in SETTABLE])) == {}


def test_format_setting() -> None:
    assert format_setting(13 * 1.3) == "16.9"
    assert format_setting((64, 64, 32)) == "64,64,32"
    assert format_setting(True) == "true" and format_setting(0.0) == "0"
    assert format_setting("cubes") == "cubes"


def test_settings_text_lists_every_setting_in_set_syntax() -> None:
    lines = settings_text("cpu-small").splitlines()
    assert lines[0].startswith("preset cpu-small:")
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == list(SETTABLE)
    assert preset_changes("cpu-small", with_settings("cpu-small", [f"{k}={v}" for k, v in rows])) == {}


def test_with_settings_applies_them_in_order_and_keeps_the_name() -> None:
    p = with_settings("cpu-small", ["lr=5e-4", "width=8", "lr=2e-4"])
    assert (p.name, p.lr, p.width) == ("cpu-small", 2e-4, 8)
    assert with_settings("cpu-small", {"width": 8}) == get_preset("cpu-small").replace(width=8)
    assert with_settings("cpu-small") == get_preset("cpu-small")
    with pytest.raises(ValueError, match="multiple of 8"):
        with_settings("cpu-small", ["shape_vox=64,64,60"])
    with pytest.raises(ValueError, match="not preset settings: name"):
        with_settings("cpu-small", {"name": "x"})


def test_preset_changes_lists_the_fields_that_differ() -> None:
    a = get_preset("cpu-small")
    b = a.replace(lr=5e-4, shape_vox=(96, 96, 96))
    assert preset_changes(a, b) == {"shape_vox": [[64, 64, 64], [96, 96, 96]], "lr": [1e-3, 5e-4]}
    assert preset_changes(a.to_dict(), b) == preset_changes(a, b)
    assert preset_changes(a, a) == {}
    # numbers equal to 9 digits are the same setting; types and lengths are not
    assert preset_changes(a, a.replace(spacing_mm=2.6 + 1e-13)) == {}
    assert preset_changes({"x": 1.0}, {"x": 1.0001}) == {"x": [1.0, 1.0001]}
    assert preset_changes({"x": [1.0, 2.0]}, {"x": [1.0]}) == {"x": [[1.0, 2.0], [1.0]]}
    assert preset_changes({"x": True}, {"x": 1.0}) == {"x": [True, 1.0]}
