"""A trained network rewritten for inference: batch norm folded away, every convolution on oneDNN.

Two rewrites that change no weight's meaning, only how the arithmetic is scheduled
(:func:`prepare_for_inference`, applied by :class:`rpn_lib.detect.Detector` unless it is
given ``fast_inference=False``):

* **Batch norm folded into the convolution before it.** In eval mode a ``BatchNorm3d`` is a
  per-channel affine map, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``; applied to a
  convolution's output it equals a convolution with scaled weights and a bias. Folding saves
  one pass over every activation (at ``paper`` scale, tensors of 268 MB at full resolution).
* **oneDNN for every fp32 convolution** (:class:`OneDNNConv3d`). At batch 1 PyTorch sends a
  3x3x3 fp32 convolution to oneDNN only when batch x channels x depth x height exceeds 20,480
  (``use_mkldnn`` in ATen's ``Convolution.cpp``); the first layer (one input channel) and the
  deep, small layers fall back to a native path several times slower, and the first one's
  output must then be copied into the channels-last layout of the next. Calling oneDNN
  directly avoids both. Under bf16 autocast PyTorch already takes oneDNN, so the layer then
  does exactly what ``nn.Conv3d`` does.

Values agree with the original network to float rounding (about 5e-7 on the RPN's logits,
checked by the tests); the original module is left untouched (the rewrite works on a copy).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["OneDNNConv3d", "fold_batch_norm", "prepare_for_inference"]


def _onednn_ok(x: torch.Tensor) -> bool:
    # under torch.compile the layer is a plain convolution (the compiler has no shape rule for
    # mkldnn_convolution, and lowers convolutions itself); checked first, so that it traces no other
    return (not torch.compiler.is_compiling() and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and not torch.is_grad_enabled()
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


class OneDNNConv3d(nn.Conv3d):
    """``nn.Conv3d`` that calls oneDNN directly for fp32 CPU inference (no autograd, no
    autocast, not inside ``torch.compile``), whatever the shapes; otherwise exactly ``nn.Conv3d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode == "zeros" and isinstance(self.padding, tuple) and _onednn_ok(x):
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                            self.groups)
        return super().forward(x)

    @classmethod
    def from_conv(cls, conv: nn.Conv3d) -> "OneDNNConv3d":
        """The same layer (same parameter tensors) as a :class:`OneDNNConv3d`."""
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)
        return new


def fold_batch_norm(model: nn.Module) -> int:
    """Fold, in place, every ``BatchNorm3d`` that directly follows a ``Conv3d`` inside an
    ``nn.Sequential`` into that convolution (the norm becomes ``nn.Identity``); ``model``
    must be in eval mode. Returns the number of folds."""
    if model.training:
        raise ValueError("fold_batch_norm needs a model in eval mode (batch statistics are not fixed in training)")
    n = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if type(conv) is nn.Conv3d and type(bn) is nn.BatchNorm3d and bn.track_running_stats:
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
                n += 1
    return n


def prepare_for_inference(model: nn.Module, fold_bn: bool = True, onednn: bool = True) -> nn.Module:
    """A copy of ``model`` in eval mode with batch norm folded (``fold_bn``) and every plain
    ``nn.Conv3d`` turned into :class:`OneDNNConv3d` (``onednn``). ``model`` is not changed."""
    out = copy.deepcopy(model).eval()
    if fold_bn:
        fold_batch_norm(out)
    if onednn:
        for parent in list(out.modules()):
            for name, child in list(parent._modules.items()):
                if type(child) is nn.Conv3d:
                    parent._modules[name] = OneDNNConv3d.from_conv(child)
    return out
