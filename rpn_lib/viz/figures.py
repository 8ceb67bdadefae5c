"""Small helpers behind the book's figures.

:func:`face_rotation` turns two angles a reader can set with sliders (how far the face is
turned away from the probe, and how far it is rolled about its own anterior axis) into the
``rotation`` override of :func:`rpn_lib.data.synth.generate_case`.
:func:`plot_network_diagram` draws the network of Fig. 2 from the arithmetic of
:mod:`rpn_lib.receptive_field` (matplotlib only). :func:`plot_score_iou` sets the final boxes
of several models side by side, score against IoU (chapter *The IoU-balanced loss*).

World frame of the synthetic volumes (:mod:`rpn_lib.data.synth`): array axes 0, 1, 2 are world
x, y, z; the probe sits on the low side of axis 0 and its beams run along +x, so "towards the
probe" is world ``-x``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rpn_lib.landmarks import LANDMARK_NAMES
from rpn_lib.paired import score_iou_correlation
from rpn_lib.viz.planes import CLASS_COLORS

__all__ = ["face_rotation", "plot_network_diagram", "plot_score_iou"]


def _axis_rotation(axis: int, angle_rad: float) -> np.ndarray:
    """``(3, 3)`` right-handed rotation by ``angle_rad`` about coordinate axis 0, 1 or 2."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def face_rotation(tilt_deg: float = 0.0, roll_deg: float = 0.0, azimuth_deg: float = 0.0) -> np.ndarray:
    """Local -> world rotation of a fetal face placed by two (or three) angles.

    At ``tilt_deg = roll_deg = 0`` the face looks straight at the probe (its anterior axis,
    local ``+y``, is world ``-x``) with the top of its head towards world ``+z``; its right
    (local ``+x``) is then world ``+y``. Then, in this order:

    1. ``roll_deg`` turns the face about its own anterior axis (a head tilted towards a
       shoulder; right-handed about local ``+y``);
    2. ``tilt_deg`` turns the anterior axis away from the probe direction by that angle,
       towards world ``+y`` rotated by ``azimuth_deg`` about world ``x`` (``azimuth_deg = 0``:
       the face turns sideways, to world ``+y``; 90: it looks up, to world ``+z``).

    Args:
        tilt_deg: angle (degrees) between the face's anterior axis and the direction to the
            probe, 0-180.
        roll_deg: rotation (degrees) about the face's anterior axis.
        azimuth_deg: direction (degrees) in which the tilt turns the face.

    Returns:
        ``(3, 3)`` proper rotation whose columns are the fetus's right, anterior and superior
        directions in world coordinates (the ``rotation`` of
        :class:`rpn_lib.data.phantom.FaceGeometry`).
    """
    base = np.array([[0.0, -1.0, 0.0],   # columns: right = +y, anterior = -x, superior = +z
                     [1.0, 0.0, 0.0],
                     [0.0, 0.0, 1.0]])
    roll = _axis_rotation(1, np.deg2rad(roll_deg))         # about local anterior (local y)
    # tilt about world z turns -x towards +y; the azimuth turns that tilt axis about world x
    az = _axis_rotation(0, np.deg2rad(azimuth_deg))
    tilt = az @ _axis_rotation(2, -np.deg2rad(tilt_deg)) @ az.T
    return tilt @ base @ roll


def plot_network_diagram(blocks: Sequence[Any], input_shape: Sequence[int], ax=None,
                         num_anchors: int = 64, num_classes: int = 6):
    """Draw the IG-RPN of Fig. 2 as a block diagram, left to right.

    Each block of :func:`rpn_lib.receptive_field.block_table` is a rectangle whose height
    follows its spatial size (halving with every max-pooling) and whose width its channels
    (log scale). Straight arrows are the forward path (input, blocks 1-4, the up-sampling to
    the fused map, the head); the arc is the U-Net-like skip connection that concatenates
    block 3 with the up-sampled block 4. Labels give channels x spatial size, the stride
    (input voxels per cell) and the receptive field (RF, input voxels).

    Args:
        blocks: rows with ``name``, ``out_channels``, ``out_shape``, ``jump``, ``rf``
            (:class:`rpn_lib.receptive_field.BlockInfo`) for the names of
            :data:`rpn_lib.receptive_field.BLOCKS`.
        input_shape: ``(D, H, W)`` of the input volume.
        ax: matplotlib Axes (default: a new figure).
        num_anchors, num_classes: ``A`` and ``K + 1`` for the head's labels.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Rectangle

    by_name = {b.name: b for b in blocks}
    missing = [n for n in ("block1", "block2", "block3", "block4", "fused", "head") if n not in by_name]
    if missing:
        raise ValueError(f"blocks lack {missing}")
    if ax is None:
        _, ax = plt.subplots(figsize=(13, 4.2), layout="constrained")
    fig = ax.figure
    n0 = float(input_shape[0])
    max_ch = max(b.out_channels for b in blocks if b.name != "head")
    a, c = num_anchors, num_classes
    label_y = -1.25

    def rect(name: str, x: float, y: float, shape0: float, channels: int, colour: str) -> tuple[float, float]:
        h = 0.3 + 1.7 * shape0 / n0
        w = 0.1 + 0.45 * np.log2(channels + 1) / np.log2(max_ch + 1)
        ax.add_patch(Rectangle((x - w / 2, y - h / 2), w, h, facecolor=colour, edgecolor="0.2", lw=1.0,
                               label=name))
        return w, h

    def arrow(p, q, text="", rad=0.0, colour="0.25", dy=0.06):
        ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=11, lw=1.2, color=colour,
                                     connectionstyle=f"arc3,rad={rad}"))
        if text:
            ax.text((p[0] + q[0]) / 2, (p[1] + q[1]) / 2 + dy, text, ha="center", va="bottom",
                    fontsize=7.5, color=colour)

    spec = [("input", 1, tuple(int(v) for v in input_shape), None)]
    spec += [(n, by_name[n].out_channels, by_name[n].out_shape, by_name[n]) for n in
             ("block1", "block2", "block3", "block4", "fused")]
    xs = {"input": 0.0, "block1": 1.7, "block2": 3.4, "block3": 5.1, "block4": 6.8, "fused": 8.6}
    geo: dict[str, tuple[float, float]] = {}
    for name, ch, shape, info in spec:
        colour = "0.85" if info is None else ("#fdd0a2" if name == "fused" else "#9ecae1")
        geo[name] = rect(name, xs[name], 0.0, shape[0], ch, colour)
        dims = "×".join(str(v) for v in shape)
        text = f"{name}\n{ch} × {dims}" + ("" if info is None else f"\nstride {info.jump:g}, RF {info.rf:g}")
        ax.text(xs[name], label_y, text, ha="center", va="top", fontsize=8)
    order = ["input", "block1", "block2", "block3", "block4", "fused"]
    ops = ["2 × conv3³", "max-pool 2\n2 × conv3³", "max-pool 2\n2 × conv3³", "max-pool 2\n2 × conv3³",
           "trilinear\nup ×2"]
    for (u, v), op in zip(zip(order[:-1], order[1:]), ops):
        colour = "#d94801" if v == "fused" else "0.25"
        arrow((xs[u] + geo[u][0] / 2, 0.0), (xs[v] - geo[v][0] / 2, 0.0), op, colour=colour)
    top3, topf = geo["block3"][1] / 2, geo["fused"][1] / 2
    arrow((xs["block3"], top3), (xs["fused"], topf), "", rad=-0.35, colour="#d94801")
    ax.text((xs["block3"] + xs["fused"]) / 2, 1.0, "concatenate, conv3³", ha="center", va="bottom",
            fontsize=7.5, color="#d94801")
    head = by_name["head"]
    xh = 10.9
    dims = "×".join(str(v) for v in head.out_shape)
    for k, (name, per_anchor) in enumerate((("classes", c), ("deltas", 6))):
        y = 0.62 if k == 0 else -0.62
        w, h = rect(name, xh, y, head.out_shape[0], a * per_anchor, "#c7e9c0")
        ax.text(xh + w / 2 + 0.1, y, f"{name}\n{a * per_anchor} × {dims}\n= {a} anchors × {per_anchor}",
                ha="left", va="center", fontsize=8)
        arrow((xs["fused"] + geo["fused"][0] / 2, 0.0), (xh - w / 2, y))
    ax.text((xs["fused"] + xh) / 2, 0.0, f"head: conv3³,\nconv1³ × 2\nRF {head.rf:g}", ha="center",
            va="center", fontsize=7.5, color="0.25", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.set_xlim(-0.6, 12.6)
    ax.set_ylim(label_y - 0.75, 1.45)
    ax.set_aspect("equal")
    ax.set_axis_off()
    return fig


def plot_score_iou(panels: Mapping[str, Sequence[Mapping[str, Any]]], axes: Sequence[Any] | None = None):
    """Score against IoU of the final boxes, one panel per model, all on the same axes.

    Each point is one landmark of one test volume: its final box's class score (y) and that
    box's IoU with the true box (x), coloured by landmark (:data:`rpn_lib.viz.planes.CLASS_COLORS`).
    Both axes span [0, 1] in every panel, so the panels compare directly. Each title gives the
    model's name, the number of boxes and Spearman's rho (:func:`rpn_lib.paired.score_iou_correlation`).

    Args:
        panels: ``{name: rows}`` in panel order, rows as :func:`rpn_lib.evaluate.per_case_table`
            writes them (``landmark``, ``score``, ``iou`` read).
        axes: one matplotlib Axes per panel (default: a new figure, panels in one row).

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: no panel, or not one Axes per panel.
    """
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("need at least one panel")
    if axes is None:
        _, axs = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), layout="constrained", squeeze=False)
        axes = list(axs[0])
    if len(axes) != len(panels):
        raise ValueError(f"{len(panels)} panels but {len(axes)} axes")
    for ax, (name, rows) in zip(axes, panels.items()):
        for k, landmark in enumerate(LANDMARK_NAMES):
            mine = [r for r in rows if r["landmark"] == landmark]
            ax.scatter([float(r["iou"]) for r in mine], [float(r["score"]) for r in mine], s=14, alpha=0.75,
                       color=CLASS_COLORS[k], label=landmark)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("IoU of the final box with the true box")
        ax.set_ylabel("class score")
        ax.set_title(f"{name}: {len(rows)} boxes, Spearman ρ = {score_iou_correlation(rows):.2f}", fontsize=10)
    axes[0].legend(fontsize=7, loc="upper left")
    return axes[0].figure
