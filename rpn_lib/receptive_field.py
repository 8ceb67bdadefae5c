"""The IG-RPN layer by layer, by arithmetic: output shapes, receptive fields, parameters, MACs.

Nothing here runs the network: :func:`layer_table` walks the modules of an
:class:`rpn_lib.model.IGRPN` in the order of its ``forward`` (the max-poolings and the
up-sampling are functional calls there, so they are inserted here in the same places) and
applies three textbook recurrences.

Receptive field (per axis, in input voxels): ``rf`` input voxels can reach an output cell,
``jump`` input voxels separate neighbouring cells, and cell ``i`` is centred on input voxel
``start + i * jump``. Up to the up-sampling the field of cell ``i`` is exactly
``start + i * jump +- (rf - 1) / 2``; after it, ``start + i * jump`` is the centre of the
field's *weights*, while the field itself is off it by a quarter of block 4's jump (an
up-sampled cell reads two block-4 cells with weights 0.75 and 0.25).

* a layer with kernel ``k``, stride ``s`` and padding ``p`` on an input described by
  ``(rf, jump, start)`` gives ``rf + (k - 1) * jump``, ``jump * s`` and
  ``start + ((k - 1) / 2 - p) * jump`` (:func:`rf_conv`);
* a linear up-sampling by an integer factor ``f`` with ``align_corners=False`` (output cell
  ``i`` reads the input at ``(i + 0.5) / f - 0.5``, between two input cells) gives
  ``rf + jump``, ``jump / f`` and ``start + (0.5 / f - 0.5) * jump`` (:func:`rf_upsample`);
* a concatenation sees the union of its inputs' fields (:func:`rf_union`).

The receptive field counted this way is the *theoretical* one: every input voxel that can
influence the output cell (how much it does falls off towards the edges). With the
Fig. 2 backbone the fused map's cell ``i`` is centred on input voxel ``4 i + 1.5``, exactly
where :func:`rpn_lib.anchors.anchor_grid` centres that cell's anchors.

Multiply-accumulates (MACs): a 3D convolution computes, for each output voxel and output
channel, ``in_channels / groups * k^3`` products (:func:`conv3d_macs`). Batch normalisation,
ReLU, pooling, interpolation and biases are left out (a few operations per voxel, and BN
folds into the convolution at inference). One MAC is two floating-point operations.

Parameters are counted on the modules themselves (convolution weights and biases, BN scales
and shifts), so they agree with :func:`rpn_lib.model.count_parameters`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

__all__ = [
    "LayerInfo", "BlockInfo", "conv3d_macs", "rf_conv", "rf_upsample", "rf_union", "layer_table",
    "block_table", "BLOCKS",
]

BLOCKS: tuple[str, ...] = ("block1", "block2", "block3", "block4", "fused", "head")
"""Block names of :func:`block_table`; the first five are the keys of
:meth:`rpn_lib.model.Backbone3d.forward`'s output."""


@dataclass(frozen=True)
class LayerInfo:
    """One layer of the network (a conv with its BN and ReLU counts as one layer).

    Attributes:
        name: e.g. ``"block1.conv1"``, ``"pool1"``, ``"up"``, ``"concat"``, ``"head.cls"``.
        block: the block it belongs to (one of :data:`BLOCKS`).
        kind: ``"conv"``, ``"maxpool"``, ``"upsample"`` or ``"concat"``.
        kernel: kernel edge (the up-sampling factor for ``"upsample"``, 0 for ``"concat"``).
        in_channels, out_channels: channels.
        out_shape: ``(f0, f1, f2)`` output cells.
        jump: input voxels between neighbouring output cells (the cumulative stride).
        rf: receptive-field edge in input voxels (isotropic).
        start: input coordinate (voxels, per axis) on which output cell 0 is centred (the
            centre of its field's weights, see the module docstring).
        params: trainable parameters of the layer (conv + BN).
        macs: multiply-accumulates of one forward pass for one volume.
    """

    name: str
    block: str
    kind: str
    kernel: int
    in_channels: int
    out_channels: int
    out_shape: tuple[int, int, int]
    jump: float
    rf: float
    start: float
    params: int
    macs: int


@dataclass(frozen=True)
class BlockInfo:
    """A block of :data:`BLOCKS`: its last layer's output and field, summed params and MACs."""

    name: str
    out_channels: int
    out_shape: tuple[int, int, int]
    jump: float
    rf: float
    start: float
    params: int
    macs: int


def conv3d_macs(in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                out_shape: Sequence[int], groups: int = 1) -> int:
    """Multiply-accumulates of one 3D convolution for one volume.

    ``prod(out_shape) * out_channels * (in_channels / groups) * kd * kh * kw``; the bias is
    not counted. Example: ``Conv3d(1, 2, 3)`` giving a ``4^3`` output does
    ``64 * 2 * 1 * 27 = 3456`` MACs.
    """
    k = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"channels ({in_channels}, {out_channels}) must be multiples of groups={groups}")
    n_out = 1
    for s in out_shape:
        n_out *= int(s)
    return n_out * int(out_channels) * (int(in_channels) // groups) * k[0] * k[1] * k[2]


def rf_conv(rf: float, jump: float, start: float, kernel: int, stride: int = 1,
            padding: int = 0) -> tuple[float, float, float]:
    """``(rf, jump, start)`` after a convolution or pooling (kernel, stride, padding)."""
    return (rf + (kernel - 1) * jump, jump * stride, start + ((kernel - 1) / 2.0 - padding) * jump)


def rf_upsample(rf: float, jump: float, start: float, factor: int) -> tuple[float, float, float]:
    """``(rf, jump, start)`` after linear up-sampling by ``factor`` (``align_corners=False``).

    Output cell ``i`` interpolates the two input cells on either side of the input position
    ``(i + 0.5) / factor - 0.5``: its field is one input ``jump`` wider than theirs, and the
    centre of its weights is that position (``start`` follows it).
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if factor == 1:
        return rf, jump, start
    return rf + jump, jump / factor, start + (0.5 / factor - 0.5) * jump


def rf_union(fields: Sequence[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Field of a concatenation of maps on the same grid: the union of the inputs' fields.

    Raises:
        ValueError: the inputs' cells are on different grids (jump or cell centres differ).
    """
    jumps = {f[1] for f in fields}
    if len(jumps) != 1:
        raise ValueError(f"cannot concatenate maps with different jumps {sorted(jumps)}")
    lo = min(f[2] - (f[0] - 1) / 2.0 for f in fields)
    hi = max(f[2] + (f[0] - 1) / 2.0 for f in fields)
    centres = {f[2] for f in fields}
    if len(centres) != 1:
        raise ValueError(f"cannot concatenate maps whose cells are centred differently: {sorted(centres)}")
    return hi - lo + 1.0, fields[0][1], (lo + hi) / 2.0


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def layer_table(model: nn.Module, shape_vox: Sequence[int]) -> list[LayerInfo]:
    """Every layer of an :class:`rpn_lib.model.IGRPN` for one ``(D, H, W)`` input.

    Follows :meth:`rpn_lib.model.Backbone3d.forward` and :meth:`rpn_lib.model.RPNHead3d.forward`:
    four blocks of two conv-BN-ReLU layers with a 2x2x2 max-pooling (stride 2) before blocks
    2-4; block 4 up-sampled (trilinear) to block 3's grid, concatenated with block 3, a fused
    conv; the head's 3x3x3 conv and its two sibling 1x1x1 convs (``head.cls``, ``head.reg``,
    which read the same map and are listed one after the other).

    Args:
        model: an ``IGRPN`` (its ``backbone`` and ``head`` are read).
        shape_vox: input ``(D, H, W)``, each a multiple of 8.

    Returns:
        The layers in forward order.
    """
    shape = tuple(int(s) for s in shape_vox)
    if len(shape) != 3 or any(s < 8 or s % 8 for s in shape):
        raise ValueError(f"shape_vox must be three multiples of 8, got {shape_vox}")
    bb, head = model.backbone, model.head
    rows: list[LayerInfo] = []
    field = (1.0, 1.0, 0.0)
    ch = bb.block1[0][0].in_channels

    def add_conv(name: str, block: str, unit: nn.Module, conv: nn.Conv3d, f: tuple[float, float, float],
                 cur_shape: tuple[int, int, int]) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        out = tuple((n + 2 * p - k) // s + 1 for n in cur_shape)
        f = rf_conv(*f, kernel=k, stride=s, padding=p)
        rows.append(LayerInfo(name, block, "conv", k, conv.in_channels, conv.out_channels, out,  # type: ignore[arg-type]
                              f[1], f[0], f[2], _params(unit),
                              conv3d_macs(conv.in_channels, conv.out_channels, conv.kernel_size, out, conv.groups)))
        return f, out  # type: ignore[return-value]

    cur = shape
    block_fields: dict[str, tuple[tuple[float, float, float], tuple[int, int, int], int]] = {}
    for b in range(1, 5):
        name = f"block{b}"
        block = getattr(bb, name)
        if b > 1:
            field = rf_conv(*field, kernel=2, stride=2, padding=0)
            cur = tuple(n // 2 for n in cur)  # type: ignore[assignment]
            rows.append(LayerInfo(f"pool{b - 1}", name, "maxpool", 2, ch, ch, cur, field[1], field[0], field[2], 0, 0))
        for u, unit in enumerate(block):
            field, cur = add_conv(f"{name}.conv{u + 1}", name, unit, unit[0], field, cur)
            ch = unit[0].out_channels
        block_fields[name] = (field, cur, ch)

    f3, s3, c3 = block_fields["block3"]
    factor = s3[0] // cur[0]
    field = rf_upsample(*field, factor=factor)
    rows.append(LayerInfo("up", "fused", "upsample", factor, ch, ch, s3, field[1], field[0], field[2], 0, 0))
    field = rf_union([field, f3])
    rows.append(LayerInfo("concat", "fused", "concat", 0, ch + c3, ch + c3, s3, field[1], field[0], field[2], 0, 0))
    field, cur = add_conv("fuse", "fused", bb.fuse, bb.fuse[0], field, s3)
    field, cur = add_conv("head.conv", "head", head.conv, head.conv[0], field, cur)
    add_conv("head.cls", "head", head.cls, head.cls, field, cur)
    add_conv("head.reg", "head", head.reg, head.reg, field, cur)
    return rows


def block_table(layers: Sequence[LayerInfo]) -> list[BlockInfo]:
    """One row per block of :data:`BLOCKS`: the output (channels, shape) and field of its last
    layer (for ``head``: of ``head.cls``; ``head.reg`` has the same field), and the sums of
    its layers' parameters and MACs."""
    out = []
    for name in BLOCKS:
        rows = [r for r in layers if r.block == name]
        if not rows:
            continue
        last = next((r for r in rows if r.name == "head.cls"), rows[-1]) if name == "head" else rows[-1]
        out.append(BlockInfo(name, last.out_channels, last.out_shape, last.jump, last.rf, last.start,
                             sum(r.params for r in rows), sum(r.macs for r in rows)))
    return out
