"""Orthogonal slices of a volume with landmarks and box cross-sections (matplotlib only).

The figure of the paper's Fig. 1, first row: three orthogonal planes through one point. Ground
truth is drawn solid, predictions dashed, every landmark class in its colour of
:data:`CLASS_COLORS` (the palette of every figure of the book and of the napari viewer).

Conventions: boxes are ``(N, 6)`` rows ``(cz, cy, cx, d, h, w)`` in voxels, landmarks ``(N, 3)``
in voxels, both in the volume's axis order 0, 1, 2; a voxel's centre sits at integer
coordinates. In the plotting functions row ``k`` of a landmark or box array is landmark class
``k`` (``LANDMARK_NAMES`` order); rows holding NaN (a class not found) are skipped.

This module never imports napari, so it works without Qt.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from rpn_lib.landmarks import LANDMARK_NAMES, box_size_vox

CLASS_COLORS: tuple[str, ...] = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#CC79A7")
"""One colour per landmark class, ``LANDMARK_NAMES`` order: orange, sky blue, bluish green,
yellow, reddish purple. From the Okabe-Ito palette, which stays distinct under the common
colour-vision deficiencies; its dark blue and vermillion are left out (the first is hard to see
on dark ultrasound, the second too close to orange)."""

GT_LINESTYLE = "-"
"""Line style of ground-truth boxes."""

PRED_LINESTYLE = "--"
"""Line style of predicted boxes."""

# The 8 corners of a box as signs of the half-size, and the 12 edges as pairs of corner
# indices: the corners of an edge differ along exactly one axis. Edges 0-3 run along axis 0,
# 4-7 along axis 1, 8-11 along axis 2.
_CORNER_SIGNS = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))  # (8, 3)
_EDGE_PAIRS = np.array(
    [(i, j) for axis in range(3) for i in range(8) for j in range(8)
     if _CORNER_SIGNS[i, axis] < 0 < _CORNER_SIGNS[j, axis]
     and np.count_nonzero(_CORNER_SIGNS[i] != _CORNER_SIGNS[j]) == 1]
)  # (12, 2)


def box_edges_vox(boxes_vox: np.ndarray) -> np.ndarray:
    """The 12 edges of each box as segments.

    Args:
        boxes_vox: ``(N, 6)`` as cz, cy, cx, d, h, w (voxels).

    Returns:
        ``(N, 12, 2, 3)`` segment end points in voxels, axis order 0, 1, 2. Edges 0-3 run along
        axis 0 (length d), 4-7 along axis 1 (length h), 8-11 along axis 2 (length w); each
        segment goes from the lower to the higher coordinate.
    """
    boxes = np.asarray(boxes_vox, dtype=float).reshape(-1, 6)
    centre, half = boxes[:, None, :3], boxes[:, None, 3:] / 2.0
    corners = centre + _CORNER_SIGNS[None] * half  # (N, 8, 3)
    return corners[:, _EDGE_PAIRS]  # (N, 12, 2, 3)


def _rows(values: np.ndarray | None, width: int) -> np.ndarray:
    """``values`` as a float ``(K, width)`` array (``(0, width)`` for None)."""
    if values is None:
        return np.zeros((0, width))
    return np.asarray(values, dtype=float).reshape(-1, width)


def _in_plane_axes(axis: int) -> tuple[int, int]:
    """The (row, column) volume axes shown on a slice normal to ``axis``."""
    return tuple(a for a in range(3) if a != axis)  # type: ignore[return-value]


def plot_slice_with_boxes(
    volume: np.ndarray,
    axis: int,
    index: int,
    ax,
    landmarks_vox: np.ndarray | None = None,
    boxes_vox: np.ndarray | None = None,
    pred_landmarks_vox: np.ndarray | None = None,
    pred_boxes_vox: np.ndarray | None = None,
    spacing_mm: float = 1.0,
    clim: tuple[float, float] | None = None,
):
    """Draw one slice of ``volume`` normal to ``axis`` with landmarks and box cross-sections.

    The slice is shown with the lower of the two other volume axes as rows (top to bottom) and
    the higher as columns (left to right), as napari shows it; tick labels are millimetres
    (``spacing_mm`` is isotropic), so the aspect is true.

    A landmark is drawn when it lies within half its box of the slice (half the class's box
    edge, :func:`rpn_lib.landmarks.box_size_vox`, or half the given box along ``axis``): filled
    when within half a voxel, hollow otherwise; ground truth as circles, predictions as crosses.
    A box is drawn as the rectangle where the slice cuts it: solid for ground truth, dashed for
    predictions.

    Args:
        volume: ``(D, H, W)`` intensities.
        axis: 0, 1 or 2, the axis normal to the slice.
        index: slice index along ``axis`` (voxels).
        ax: a matplotlib Axes to draw on.
        landmarks_vox, pred_landmarks_vox: ``(K, 3)`` voxels, row k = class k.
        boxes_vox, pred_boxes_vox: ``(K, 6)`` as cz, cy, cx, d, h, w, row k = class k.
        spacing_mm: isotropic voxel spacing in mm.
        clim: grey-level limits (default: 1st and 99.5th percentile of the whole volume).

    Returns:
        ``ax``.
    """
    from matplotlib.patches import Rectangle

    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be (D, H, W), got shape {volume.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    index = int(np.clip(round(index), 0, volume.shape[axis] - 1))
    row_axis, col_axis = _in_plane_axes(axis)
    image = np.take(volume, index, axis=axis)  # (shape[row_axis], shape[col_axis])
    if clim is None:
        clim = _percentile_limits(volume)
    s = float(spacing_mm)
    n_rows, n_cols = image.shape
    # Voxel centres at integer coordinates: voxel j covers [j - 0.5, j + 0.5].
    extent = (-0.5 * s, (n_cols - 0.5) * s, (n_rows - 0.5) * s, -0.5 * s)
    ax.imshow(image, cmap="gray", vmin=clim[0], vmax=clim[1], extent=extent,
              interpolation="nearest", origin="upper")
    ax.set_aspect("equal")

    default_half = np.asarray(box_size_vox(s)) / 2.0
    for points, boxes, is_gt in ((landmarks_vox, boxes_vox, True),
                                 (pred_landmarks_vox, pred_boxes_vox, False)):
        pts, bxs = _rows(points, 3), _rows(boxes, 6)
        for k, box in enumerate(bxs):
            if np.isnan(box).any():
                continue
            if abs(index - box[axis]) > box[3 + axis] / 2.0:
                continue  # the slice misses this box
            lo_r, lo_c = box[row_axis] - box[3 + row_axis] / 2.0, box[col_axis] - box[3 + col_axis] / 2.0
            ax.add_patch(Rectangle(
                (lo_c * s, lo_r * s), box[3 + col_axis] * s, box[3 + row_axis] * s,
                fill=False, edgecolor=CLASS_COLORS[k % len(CLASS_COLORS)],
                linestyle=GT_LINESTYLE if is_gt else PRED_LINESTYLE,
                linewidth=1.6 if is_gt else 1.4))
        for k, point in enumerate(pts):
            if np.isnan(point).any():
                continue
            if k < len(bxs) and not np.isnan(bxs[k]).any():
                half = bxs[k, 3 + axis] / 2.0
            else:
                half = default_half[k % len(default_half)]
            distance = abs(index - point[axis])
            if distance > half:
                continue
            colour = CLASS_COLORS[k % len(CLASS_COLORS)]
            in_plane = distance <= 0.5
            if is_gt:
                ax.plot(point[col_axis] * s, point[row_axis] * s, marker="o", markersize=7,
                        markerfacecolor=colour if in_plane else "none", markeredgecolor=colour,
                        markeredgewidth=1.5, linestyle="none")
            else:
                ax.plot(point[col_axis] * s, point[row_axis] * s, marker="X" if in_plane else "x",
                        markersize=8, color=colour, markeredgecolor="black" if in_plane else colour,
                        markeredgewidth=0.6 if in_plane else 1.5, linestyle="none")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel(f"axis {col_axis} (mm)")
    ax.set_ylabel(f"axis {row_axis} (mm)")
    ax.set_title(f"axis {axis} = {index}")
    return ax


def _percentile_limits(volume: np.ndarray, low: float = 1.0, high: float = 99.5) -> tuple[float, float]:
    """Grey-level limits from percentiles (on a strided sample of large volumes, for speed)."""
    flat = np.asarray(volume).ravel()
    if flat.size > 2_000_000:
        flat = flat[:: flat.size // 1_000_000]
    lo, hi = np.percentile(flat, [low, high])
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def plot_orthogonal_planes(
    volume: np.ndarray,
    point_vox: np.ndarray | None = None,
    landmarks_vox: np.ndarray | None = None,
    boxes_vox: np.ndarray | None = None,
    pred_landmarks_vox: np.ndarray | None = None,
    pred_boxes_vox: np.ndarray | None = None,
    spacing_mm: float = 1.0,
    names: Sequence[str] = LANDMARK_NAMES,
    axes=None,
    title: str | None = None,
):
    """Three orthogonal slices through one point, with landmarks and boxes (paper Fig. 1, row 1).

    Slice ``a`` is normal to volume axis ``a`` (0, 1, 2, left to right); see
    :func:`plot_slice_with_boxes` for what is drawn on each. Which anatomical plane each is
    (coronal, transverse, sagittal in the paper) depends on the volume's orientation, so the
    panels are named by axis.

    Args:
        volume: ``(D, H, W)`` intensities.
        point_vox: ``(3,)`` voxel the three planes pass through. Default: the mean of the
            (ground-truth, else predicted) landmarks, else the volume centre.
        landmarks_vox, pred_landmarks_vox: ``(K, 3)`` voxels, row k = class k.
        boxes_vox, pred_boxes_vox: ``(K, 6)`` as cz, cy, cx, d, h, w, row k = class k.
        spacing_mm: isotropic voxel spacing in mm (tick labels are mm).
        names: landmark names for the legend, class order.
        axes: three matplotlib Axes to draw on (default: a new 1 x 3 figure).
        title: figure title.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be (D, H, W), got shape {volume.shape}")
    if point_vox is None:
        for candidate in (landmarks_vox, pred_landmarks_vox):
            pts = _rows(candidate, 3)
            pts = pts[~np.isnan(pts).any(axis=1)]
            if len(pts):
                point_vox = pts.mean(axis=0)
                break
        else:
            point_vox = (np.asarray(volume.shape) - 1) / 2.0
    point = np.clip(np.round(np.asarray(point_vox, dtype=float)), 0, np.asarray(volume.shape) - 1).astype(int)

    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), layout="constrained")
    else:
        if len(axes) != 3:
            raise ValueError(f"need 3 axes, got {len(axes)}")
        fig = axes[0].figure
    clim = _percentile_limits(volume)
    for axis, ax in enumerate(axes):
        plot_slice_with_boxes(volume, axis, point[axis], ax, landmarks_vox=landmarks_vox,
                              boxes_vox=boxes_vox, pred_landmarks_vox=pred_landmarks_vox,
                              pred_boxes_vox=pred_boxes_vox, spacing_mm=spacing_mm, clim=clim)

    n_classes = max(len(_rows(a, w)) for a, w in ((landmarks_vox, 3), (boxes_vox, 6),
                                                  (pred_landmarks_vox, 3), (pred_boxes_vox, 6)))
    handles = [Line2D([], [], color=CLASS_COLORS[k % len(CLASS_COLORS)], marker="s", linestyle="none",
                      markersize=9, label=names[k] if k < len(names) else f"class {k}")
               for k in range(n_classes)]
    has_gt = landmarks_vox is not None or boxes_vox is not None
    has_pred = pred_landmarks_vox is not None or pred_boxes_vox is not None
    if has_gt:
        handles.append(Line2D([], [], color="0.3", linestyle=GT_LINESTYLE, marker="o",
                              markerfacecolor="none", label="ground truth"))
    if has_pred:
        handles.append(Line2D([], [], color="0.3", linestyle=PRED_LINESTYLE, marker="x",
                              label="prediction"))
    if handles:
        # "outside" placement needs a constrained layout (ours; maybe not the caller's figure).
        engine = fig.get_layout_engine()
        constrained = engine is not None and type(engine).__name__ == "ConstrainedLayoutEngine"
        fig.legend(handles=handles, loc="outside lower center" if constrained else "lower center",
                   ncol=len(handles), frameon=False)
    if title is not None:
        fig.suptitle(title)
    return fig
