"""Presets: validation, serialisation, and the box coder they define."""

from __future__ import annotations

import pytest
import torch

from rpn_lib.boxes import BoxCoder
from rpn_lib.methods import box_coder
from rpn_lib.presets import PRESETS, Preset, get_preset


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
