"""The network's shapes, parameter count and output order."""

from __future__ import annotations

import pytest
import torch

from rpn_lib.anchors import anchor_grid
from rpn_lib.model import IGRPN, count_parameters


def test_output_shapes_follow_fig2() -> None:
    model = IGRPN(width=4).eval()
    x = torch.randn(2, 1, 32, 40, 48)
    out = model(x)
    f = (8, 10, 12)
    assert out.feature_shape == f
    n = f[0] * f[1] * f[2] * 64
    assert out.cls_logits.shape == (2, n, 6)
    assert out.box_deltas.shape == (2, n, 6)
    assert anchor_grid(f, model.stride, (3, 4, 5, 7)).shape == (n, 6)


def test_backbone_widths_and_fusion() -> None:
    model = IGRPN(width=8).eval()
    feats = model.backbone(torch.zeros(1, 1, 16, 16, 16))
    assert feats["block1"].shape == (1, 8, 16, 16, 16)
    assert feats["block2"].shape == (1, 16, 8, 8, 8)
    assert feats["block3"].shape == (1, 32, 4, 4, 4)
    assert feats["block4"].shape == (1, 64, 2, 2, 2)
    assert feats["fused"].shape == (1, 32, 4, 4, 4)


def test_parameter_count_matches_hand_count() -> None:
    w = 4
    def conv(i: int, o: int, k: int = 3, bias: bool = False) -> int:
        return i * o * k ** 3 + (o if bias else 0)
    def cbr(i: int, o: int) -> int:
        return conv(i, o) + 2 * o  # conv without bias + BN affine
    backbone = (cbr(1, w) + cbr(w, w) + cbr(w, 2 * w) + cbr(2 * w, 2 * w) + cbr(2 * w, 4 * w)
                + cbr(4 * w, 4 * w) + cbr(4 * w, 8 * w) + cbr(8 * w, 8 * w) + cbr(12 * w, 4 * w))
    head = conv(4 * w, 4 * w, bias=True) + conv(4 * w, 64 * 6, 1, True) + conv(4 * w, 64 * 6, 1, True)
    assert count_parameters(IGRPN(width=w)) == backbone + head


def test_initial_background_probability() -> None:
    model = IGRPN(width=4).eval()
    with torch.no_grad():
        p = model(torch.rand(1, 1, 16, 16, 16)).cls_logits.softmax(-1)
    assert p[..., 0].mean() > 0.95


def test_rejects_bad_input() -> None:
    model = IGRPN(width=4)
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.zeros(1, 1, 20, 16, 16))
    with pytest.raises(ValueError, match="B, 1, D, H, W"):
        model(torch.zeros(1, 16, 16, 16))


def test_one_conv_first_block_drops_exactly_the_second_conv() -> None:
    """``block1_convs=1`` (a deviation): the same network less block 1's second conv-BN-ReLU."""
    w = 4
    two, one = IGRPN(width=w), IGRPN(width=w, block1_convs=1)
    assert len(two.backbone.block1) == 2 and len(one.backbone.block1) == 1
    assert count_parameters(two) - count_parameters(one) == w * w * 27 + 2 * w
    out = one.eval()(torch.zeros(1, 1, 16, 16, 16))
    assert out.cls_logits.shape == two.eval()(torch.zeros(1, 1, 16, 16, 16)).cls_logits.shape
    with pytest.raises(ValueError, match="block1_convs"):
        IGRPN(width=w, block1_convs=3)


def test_one_conv_first_block_is_a_preset_field() -> None:
    from rpn_lib.methods import get_method
    from rpn_lib.presets import Preset, get_preset
    from rpn_lib.train import train

    p = get_preset("cpu-small")
    assert p.block1_convs == 2  # the paper
    one = p.replace(block1_convs=1)
    assert Preset.from_dict(one.to_dict()) == one
    assert len(get_method("rpn").build(one).backbone.block1) == 1
    legacy = p.to_dict()
    del legacy["block1_convs"]  # checkpoints written before the field existed
    assert Preset.from_dict(legacy).block1_convs == 2
    with pytest.raises(ValueError, match="block1_convs"):
        p.replace(block1_convs=0)
    with pytest.raises(ValueError, match="rpn only"):
        train("unused", "unused", preset=one, method="ssd")
