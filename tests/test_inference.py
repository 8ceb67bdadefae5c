"""The inference rewrite (rpn_lib.inference): batch norm folded, convolutions on oneDNN; same
values as the network as trained, which itself is left unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rpn_lib.inference import OneDNNConv3d, fold_batch_norm, prepare_for_inference
from rpn_lib.model import IGRPN


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine parameters, as training would."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("channels_last", [False, True])
def test_rewritten_network_gives_the_same_outputs(channels_last: bool) -> None:
    torch.manual_seed(0)
    net = trained_like(IGRPN(width=4, num_anchors=4, stride=4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = prepare_for_inference(net)
    x = torch.randn(1, 1, 32, 32, 32)  # batch 1, one channel: the layers PyTorch keeps off oneDNN
    if channels_last:
        net, fast = (m.to(memory_format=torch.channels_last_3d) for m in (net, fast))
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        a, b = net(x), fast(x)
    torch.testing.assert_close(b.cls_logits, a.cls_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.box_deltas, a.box_deltas, rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in fast.modules())
    assert all(type(m) is not nn.Conv3d for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm3d) for m in net.modules())  # the original is untouched
    for k, v in net.state_dict().items():
        assert torch.equal(v.contiguous(), before[k].contiguous()), k


def test_fold_matches_a_hand_computed_affine() -> None:
    conv = nn.Conv3d(1, 2, 1, bias=False)
    conv.weight.data[:] = torch.tensor([2.0, -1.0]).view(2, 1, 1, 1, 1)
    bn = nn.BatchNorm3d(2)
    bn.running_mean[:] = torch.tensor([1.0, 0.0])
    bn.running_var[:] = torch.tensor([4.0, 1.0]) - bn.eps
    bn.weight.data[:] = torch.tensor([3.0, 1.0])
    bn.bias.data[:] = torch.tensor([0.5, -2.0])
    seq = nn.Sequential(conv, bn).eval()
    assert fold_batch_norm(seq) == 1 and isinstance(seq[1], nn.Identity)
    # channel 0: (2x - 1) / 2 * 3 + 0.5 = 3x - 1; channel 1: -x - 2
    assert torch.allclose(seq[0].weight.flatten(), torch.tensor([3.0, -1.0]))
    assert torch.allclose(seq[0].bias, torch.tensor([-1.0, -2.0]))


def test_fold_refuses_training_mode() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norm(nn.Sequential(nn.Conv3d(1, 1, 3), nn.BatchNorm3d(1)).train())


def test_onednn_conv_falls_back_where_it_must() -> None:
    """With autograd or autocast on, the layer is nn.Conv3d (gradients flow)."""
    torch.manual_seed(1)
    conv = nn.Conv3d(1, 3, 3, padding=1)
    fast = OneDNNConv3d.from_conv(conv)
    assert fast.weight is conv.weight
    x = torch.randn(1, 1, 8, 8, 8, requires_grad=True)
    fast(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    with torch.inference_mode():
        torch.testing.assert_close(fast(x.detach()), conv(x.detach()), rtol=1e-5, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert fast(x.detach()).dtype == torch.bfloat16


def test_rewritten_network_compiles_in_one_graph() -> None:
    """Under torch.compile the oneDNN layers are plain convolutions: the compiler can trace the
    rewritten network whole (it has no shape rule for mkldnn_convolution) and gets the same values."""
    torch.manual_seed(0)
    fast = prepare_for_inference(trained_like(IGRPN(width=2, num_anchors=4, stride=4)))
    compiled = torch.compile(fast, backend="eager", fullgraph=True)  # fullgraph: a graph break fails
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        a, b = fast(x), compiled(x)
    torch.testing.assert_close(b.cls_logits, a.cls_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.box_deltas, a.box_deltas, rtol=1e-5, atol=1e-6)
