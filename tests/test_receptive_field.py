"""Tests of rpn_lib.receptive_field against hand counts and against the real network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rpn_lib.anchors import anchor_grid
from rpn_lib.model import IGRPN, count_parameters
from rpn_lib.receptive_field import (
    BLOCKS,
    block_table,
    conv3d_macs,
    layer_table,
    rf_conv,
    rf_union,
    rf_upsample,
)


def test_conv3d_macs_hand_count():
    # Conv3d(1, 2, 3) on a 4^3 output: 64 voxels x 2 channels x 1 x 27 taps.
    assert conv3d_macs(1, 2, 3, (4, 4, 4)) == 3456
    assert conv3d_macs(4, 6, (1, 1, 1), (2, 3, 5)) == 30 * 6 * 4
    assert conv3d_macs(4, 6, 3, (1, 1, 1), groups=2) == 6 * 2 * 27
    with pytest.raises(ValueError):
        conv3d_macs(3, 4, 3, (1, 1, 1), groups=2)


def test_rf_steps_hand_values():
    # two 3x3x3 convs (padding 1): 1 -> 3 -> 5, centre unchanged
    f = rf_conv(*rf_conv(1.0, 1.0, 0.0, 3, 1, 1), 3, 1, 1)
    assert f == (5.0, 1.0, 0.0)
    # 2x2x2 max-pool stride 2: field 6, jump 2, cell 0 centred between voxels 0 and 1
    assert rf_conv(*f, 2, 2, 0) == (6.0, 2.0, 0.5)
    # x2 up-sampling of a jump-8 map centred at 3.5: jump 4, centre 3.5 - 2 = 1.5, one cell more
    assert rf_upsample(68.0, 8.0, 3.5, 2) == (76.0, 4.0, 1.5)
    assert rf_upsample(5.0, 2.0, 1.0, 1) == (5.0, 2.0, 1.0)
    assert rf_union([(76.0, 4.0, 1.5), (32.0, 4.0, 1.5)]) == (76.0, 4.0, 1.5)
    with pytest.raises(ValueError):
        rf_union([(5.0, 4.0, 1.5), (5.0, 2.0, 1.5)])


def test_hand_count_first_layers_width1():
    layers = layer_table(IGRPN(width=1), (16, 16, 16))
    first = layers[0]
    assert (first.name, first.out_shape, first.rf, first.jump) == ("block1.conv1", (16, 16, 16), 3.0, 1.0)
    assert first.macs == 16 ** 3 * 1 * 1 * 27
    assert first.params == 27 + 2  # conv weight (no bias) + BN scale and shift
    pool1 = layers[2]
    assert (pool1.kind, pool1.out_shape, pool1.rf, pool1.jump, pool1.start) == ("maxpool", (8, 8, 8), 6.0, 2.0, 0.5)


def test_block_rf_values_paper_network():
    blocks = {b.name: b for b in block_table(layer_table(IGRPN(width=4), (128, 128, 128)))}
    assert [b for b in blocks] == list(BLOCKS)
    assert {n: blocks[n].rf for n in BLOCKS} == {"block1": 5, "block2": 14, "block3": 32,
                                                  "block4": 68, "fused": 84, "head": 92}
    assert {n: blocks[n].jump for n in BLOCKS} == {"block1": 1, "block2": 2, "block3": 4,
                                                    "block4": 8, "fused": 4, "head": 4}
    assert blocks["fused"].out_shape == (32, 32, 32) and blocks["head"].out_channels == 64 * 6


def test_fused_cell_centres_match_anchor_centres():
    fused = block_table(layer_table(IGRPN(width=2), (64, 64, 64)))[4]
    anchors = anchor_grid(fused.out_shape, 4, [8.0])  # one anchor per cell
    cell = (3, 5, 7)
    row = (cell[0] * 16 + cell[1]) * 16 + cell[2]
    expected = torch.tensor([fused.start + fused.jump * i for i in cell])
    assert torch.allclose(anchors[row, :3], expected)


def test_shapes_params_and_macs_match_the_real_network():
    torch.manual_seed(0)
    model = IGRPN(width=2).eval()
    shape = (24, 32, 16)
    layers = layer_table(model, shape)
    # params: every parameter is counted once, and per block as on the modules
    assert sum(r.params for r in layers) == count_parameters(model)
    blocks = {b.name: b for b in block_table(layers)}
    for name in ("block1", "block2", "block3", "block4"):
        assert blocks[name].params == count_parameters(getattr(model.backbone, name))
    assert blocks["fused"].params == count_parameters(model.backbone.fuse)
    assert blocks["head"].params == count_parameters(model.head)
    # MACs and output shapes: forward hooks on every Conv3d of a real forward pass
    seen: list[tuple[tuple[int, ...], int]] = []

    def hook(mod: nn.Conv3d, inp, out):  # noqa: ANN001
        k = mod.kernel_size
        seen.append((tuple(out.shape[2:]),
                     out[0].numel() * mod.in_channels // mod.groups * k[0] * k[1] * k[2]))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv3d)]
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 1, *shape))
        model.head(feats["fused"])
    for h in handles:
        h.remove()
    convs = [r for r in layers if r.kind == "conv"]
    assert [(r.out_shape, r.macs) for r in convs] == seen
    for name in ("block1", "block2", "block3", "block4", "fused"):
        assert blocks[name].out_shape == tuple(feats[name].shape[2:])
        assert blocks[name].out_channels == feats[name].shape[1]


def _measured_fields(model: IGRPN, size: int, cells: dict[str, int]) -> dict[str, tuple[int, float]]:
    """Per block, along axis 0: the extent of the input voxels whose gradient reaches the
    given cell (the same index on every axis), and the gradient's centre of mass."""
    x = torch.ones(1, 1, size, size, size, dtype=torch.float64, requires_grad=True)
    feats = dict(model.backbone(x))
    feats["head"] = model.head.cls(model.head.conv(feats["fused"]))
    pos = torch.arange(size, dtype=torch.float64)
    out = {}
    for name, cell in cells.items():
        (g,) = torch.autograd.grad(feats[name][0, :, cell, cell, cell].sum(), x, retain_graph=True)
        g = g[0, 0].abs().sum(dim=(1, 2))
        idx = torch.nonzero(g > 0).squeeze(1)
        out[name] = (int(idx.max() - idx.min()) + 1, float((g * pos).sum() / g.sum()))
    return out


@pytest.mark.slow
def test_receptive_fields_match_gradients(monkeypatch):
    # Max-pooling passes gradient to one voxel per window only; average pooling has the same
    # window, so it shows the whole theoretical field.
    monkeypatch.setattr(F, "max_pool3d", lambda x, k: F.avg_pool3d(x, k))
    model = IGRPN(width=1).double().eval()
    with torch.no_grad():  # positive weights: nothing inside the field cancels or is cut by ReLU
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
    size = 104
    blocks = {b.name: b for b in block_table(layer_table(model, (size,) * 3))}
    # a cell near the middle, odd (after the up-sampling odd and even cells differ)
    cells = {n: int(round((size / 2 - b.start) / b.jump)) | 1 for n, b in blocks.items()}
    measured = _measured_fields(model, size, cells)
    for name in BLOCKS:
        info = blocks[name]
        extent, centre = measured[name]
        assert extent == info.rf, name
        assert centre == pytest.approx(info.start + cells[name] * info.jump), name
    # the support of an up-sampled cell is off its weighted centre by a quarter of block 4's
    # jump: cell 13 of the fused map sees voxels 10..93 (centre 51.5, weighted centre 53.5)
    x = torch.ones(1, 1, size, size, size, dtype=torch.float64, requires_grad=True)
    model.backbone(x)["fused"][0, :, 13, 13, 13].sum().backward()
    idx = torch.nonzero(x.grad[0, 0].abs().sum(dim=(1, 2)) > 0).squeeze(1)
    assert (int(idx.min()), int(idx.max())) == (10, 93)


def test_layer_table_rejects_bad_shapes():
    with pytest.raises(ValueError):
        layer_table(IGRPN(width=1), (20, 16, 16))
