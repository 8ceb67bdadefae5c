"""Tests of rpn_lib.viz: box wireframes, orthogonal planes (Agg) and the napari viewer (Xvfb)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from rpn_lib.landmarks import LANDMARK_NAMES  # noqa: E402
from rpn_lib.viz import CLASS_COLORS, box_edges_vox, is_blank, plot_orthogonal_planes  # noqa: E402


# ---------------------------------------------------------------- box_edges_vox

def test_box_edges_hand_example():
    edges = box_edges_vox(np.array([[10.0, 20.0, 30.0, 2.0, 4.0, 6.0]]))
    assert edges.shape == (1, 12, 2, 3)
    e = edges[0]
    delta = e[:, 1] - e[:, 0]
    # Edges 0-3 along axis 0 (d = 2), 4-7 along axis 1 (h = 4), 8-11 along axis 2 (w = 6).
    expected = np.zeros((12, 3))
    expected[0:4, 0], expected[4:8, 1], expected[8:12, 2] = 2.0, 4.0, 6.0
    np.testing.assert_allclose(delta, expected)
    corners = {tuple(c) for c in itertools.product((9.0, 11.0), (18.0, 22.0), (27.0, 33.0))}
    ends = [tuple(p) for p in e.reshape(-1, 3)]
    assert set(ends) == corners
    # every corner is the end of exactly three edges, and no edge repeats
    assert all(ends.count(c) == 3 for c in corners)
    assert len({tuple(sorted(map(tuple, seg))) for seg in e}) == 12


def test_box_edges_several_boxes_keep_order():
    boxes = np.array([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0], [5.0, 5.0, 5.0, 2.0, 2.0, 2.0]])
    edges = box_edges_vox(boxes)
    assert edges.shape == (2, 12, 2, 3)
    np.testing.assert_allclose(edges[1], box_edges_vox(boxes[1])[0])
    np.testing.assert_allclose(edges[1].reshape(-1, 3).min(0), [4.0, 4.0, 4.0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=3, max_size=3), st.lists(st.floats(0.5, 40), min_size=3, max_size=3))
def test_box_edges_properties(centre, size):
    box = np.array([[*centre, *size]])
    e = box_edges_vox(box)[0]
    np.testing.assert_allclose(e.reshape(-1, 3).mean(0), centre, atol=1e-9)
    lengths = np.linalg.norm(e[:, 1] - e[:, 0], axis=1)
    np.testing.assert_allclose(lengths, np.repeat(size, 4), rtol=1e-9)
    np.testing.assert_allclose(e.reshape(-1, 3).max(0) - e.reshape(-1, 3).min(0), size, rtol=1e-9)


# ---------------------------------------------------------------- plot_orthogonal_planes

def _rects(ax, linestyle):
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_linestyle() == linestyle]


def _markers(ax):
    return [ln for ln in ax.lines if ln.get_marker() not in (None, "None", "")]


def test_plot_orthogonal_planes_counts_and_positions():
    s = 1.5
    volume = np.zeros((40, 40, 40), dtype=np.uint8)
    volume[10:30, 10:30, 10:30] = 200
    # class 0 box around the plane point: cut by all three planes;
    # class 1 box at axis-2 range [29, 35]: cut by the planes normal to axes 0 and 1 only.
    gt_boxes = np.array([[20.0, 20.0, 20.0, 10.0, 10.0, 10.0], [20.0, 20.0, 32.0, 6.0, 6.0, 6.0]])
    landmarks = gt_boxes[:, :3].copy()
    # class 0 prediction cut by all planes; class 1 missing (NaN); class 2 far from the planes
    pred_boxes = np.array([[21.0, 20.0, 19.0, 8.0, 8.0, 8.0], [np.nan] * 6, [5.0, 5.0, 5.0, 4.0, 4.0, 4.0]])
    fig = plot_orthogonal_planes(volume, point_vox=(20, 20, 20), landmarks_vox=landmarks, boxes_vox=gt_boxes,
                                 pred_boxes_vox=pred_boxes, spacing_mm=s, title="t")
    try:
        axes = fig.axes
        assert len(axes) == 3
        assert [len(_rects(ax, "-")) for ax in axes] == [2, 2, 1]
        assert [len(_rects(ax, "--")) for ax in axes] == [1, 1, 1]
        # landmark 1 is 12 voxels from the axis-2 plane, more than half its box (3): not drawn
        assert [len(_markers(ax)) for ax in axes] == [2, 2, 1]
        # the class-0 ground-truth rectangle on the axis-0 slice, in mm: rows axis 1, columns axis 2
        r = next(p for p in _rects(axes[0], "-") if np.allclose(p.get_edgecolor(), to_rgba(CLASS_COLORS[0])))
        np.testing.assert_allclose([r.get_x(), r.get_y(), r.get_width(), r.get_height()],
                                   [15 * s, 15 * s, 10 * s, 10 * s])
        # the prediction on the axis-1 slice: rows axis 0 (21 - 4), columns axis 2 (19 - 4)
        r = _rects(axes[1], "--")[0]
        np.testing.assert_allclose([r.get_x(), r.get_y()], [15 * s, 17 * s])
        assert np.allclose(r.get_edgecolor(), to_rgba(CLASS_COLORS[0]))
        # the image spans the volume in mm with voxel centres at integer coordinates
        np.testing.assert_allclose(axes[0].images[0].get_extent(), [-0.5 * s, 39.5 * s, 39.5 * s, -0.5 * s])
        assert [ax.get_title() for ax in axes] == ["axis 0 = 20", "axis 1 = 20", "axis 2 = 20"]
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert labels[:3] == list(LANDMARK_NAMES[:3])
        assert "ground truth" in labels and "prediction" in labels
    finally:
        plt.close(fig)


def test_plot_orthogonal_planes_default_point_and_given_axes():
    volume = np.random.default_rng(0).random((30, 24, 20))
    landmarks = np.array([[10.0, 4.0, 6.0], [14.0, 8.0, 10.0], [np.nan] * 3])
    fig, axes = plt.subplots(1, 3)
    try:
        out = plot_orthogonal_planes(volume, landmarks_vox=landmarks, axes=axes)
        assert out is fig
        assert [ax.get_title() for ax in axes] == ["axis 0 = 12", "axis 1 = 6", "axis 2 = 8"]
    finally:
        plt.close(fig)
    fig = plot_orthogonal_planes(volume)  # no landmarks: volume centre
    try:
        assert [ax.get_title() for ax in fig.axes[:3]] == ["axis 0 = 14", "axis 1 = 12", "axis 2 = 10"]
    finally:
        plt.close(fig)
    with pytest.raises(ValueError):
        plot_orthogonal_planes(volume[0])


def test_class_colors_distinct():
    assert len(CLASS_COLORS) == len(LANDMARK_NAMES) == len({to_rgba(c) for c in CLASS_COLORS})


def test_is_blank():
    black = np.zeros((50, 80, 4), dtype=np.uint8)
    black[..., 3] = 255
    assert is_blank(black)
    img = black.copy()
    img[:5, :5, :3] = 255  # 25 of 4000 pixels: 0.6 %
    assert is_blank(img)
    img[:20, :20, 0] = 200  # 400 pixels: 10 %
    assert not is_blank(img)
    assert not is_blank(np.full((10, 10, 3), 0.5))  # floats in [0, 1]
    with pytest.raises(ValueError):
        is_blank(np.zeros((10, 10)))


def test_import_viz_needs_no_qt():
    code = ("import sys, rpn_lib.viz; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'PyQt6', 'qtpy', 'vispy')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------- napari (needs a display)

@pytest.mark.napari
def test_show_case_screenshot(tmp_path):
    pytest.importorskip("napari")
    if not os.environ.get("DISPLAY"):
        pytest.skip("no display: run pytest with pytest-xvfb (without -p no:xvfb) or under xvfb-run")
    from rpn_lib.viz import close_viewer, screenshot, show_case

    n = 32
    z, y, x = np.mgrid[:n, :n, :n]
    volume = (200.0 * (((z - 16) ** 2 + (y - 16) ** 2 + (x - 16) ** 2) < 8 ** 2)).astype(np.uint8)
    gt_boxes = np.array([[12.0, 14.0, 12.0, 8.0, 8.0, 8.0], [20.0, 18.0, 20.0, 10.0, 10.0, 10.0]])
    candidates = [(gt_boxes[:1] + [[1, 0, 0, 0, 0, 0]], np.array([0.9])),
                  (np.vstack([gt_boxes[1:], gt_boxes[1:] + [3, 3, 3, 0, 0, 0]]), np.array([0.8, 0.2]))]
    viewer = show_case(volume, 1.5, gt_landmarks_vox=gt_boxes[:, :3], gt_boxes_vox=gt_boxes,
                       candidates=candidates, chosen=[0, 1])
    try:
        image = screenshot(viewer, size=(320, 240), angles=(-20, 35, 140))
        assert image.shape == (240, 320, 4) and image.dtype == np.uint8
        assert not is_blank(image)
        assert tuple(viewer.scene.camera.angles) == pytest.approx((-20, 35, 140))

        boxes = viewer.layers["ground truth boxes"]
        assert boxes.nshapes == 24 and set(boxes.shape_type) == {"path"}
        assert all(np.asarray(d).shape == (2, 3) for d in boxes.data)
        np.testing.assert_array_equal(boxes.features["class"], np.repeat([0, 1], 12))
        np.testing.assert_allclose(boxes.edge_color[:12], np.tile(to_rgba(CLASS_COLORS[0]), (12, 1)))
        np.testing.assert_allclose(boxes.edge_color[12:], np.tile(to_rgba(CLASS_COLORS[1]), (12, 1)))
        np.testing.assert_allclose(boxes.scale, (1.5, 1.5, 1.5))

        chosen = viewer.layers["chosen combination"]
        assert chosen.nshapes == 24
        np.testing.assert_allclose(np.concatenate(chosen.data[12:]).mean(0), gt_boxes[1, :3] + 3)  # candidate 1
        cand = viewer.layers["candidates"]
        assert len(cand.data) == 3
        assert cand.size[1] > cand.size[2]  # bigger for the higher score
        assert cand.blending == "translucent_no_depth"

        # a close-up written to PNG (atomically: no temporary file left beside it)
        shot = screenshot(viewer, tmp_path / "shot.png", size=(160, 120), zoom=2.0,
                          center_mm=gt_boxes[0, :3] * 1.5)
        assert [p.name for p in tmp_path.iterdir()] == ["shot.png"]
        saved = plt.imread(tmp_path / "shot.png")
        assert saved.shape == (120, 160, 4)
        np.testing.assert_allclose(saved * 255, shot, atol=0.5)
        np.testing.assert_allclose(viewer.scene.camera.center, gt_boxes[0, :3] * 1.5)

        # the orange of class 0 (no grey volume voxel has it) shows: the boxes are drawn
        rgb = image[..., :3].astype(int)
        orange = np.array(to_rgba(CLASS_COLORS[0])[:3]) * 255
        assert (np.abs(rgb - orange).max(-1) < 40).sum() > 600  # the landmark disc alone gives ~140
    finally:
        close_viewer(viewer)
