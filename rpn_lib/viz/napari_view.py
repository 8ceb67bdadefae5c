"""The napari viewer of the book and the command line: a volume, its landmarks and 3D boxes.

napari is imported inside the functions, so ``import rpn_lib.viz`` works without Qt or a
display. Without a screen, run under Xvfb (``xvfb-run -a -s "-screen 0 1280x1024x24"``, or
pytest-xvfb); ``QT_QPA_PLATFORM=offscreen`` gives black images. ``napari.Viewer(show=False)``
also gives black screenshots under Xvfb, so viewers made here are always shown.

Layers are placed in millimetres: every layer gets ``scale = (spacing_mm,) * 3``, so volume,
boxes and points line up and napari's scale bar reads mm. Boxes are ``(N, 6)`` rows
``(cz, cy, cx, d, h, w)`` in voxels, points ``(N, 3)`` voxels, both in the volume's axis
order (napari's dims 0, 1, 2). Colours come from :data:`rpn_lib.viz.planes.CLASS_COLORS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import to_rgba

from rpn_lib.fileio import atomic_path
from rpn_lib.landmarks import LANDMARK_NAMES
from rpn_lib.viz.planes import CLASS_COLORS, box_edges_vox

DEFAULT_ANGLES: tuple[float, float, float] = (-20.0, 35.0, 140.0)
"""Camera Euler angles (degrees) of the default oblique 3D view of :func:`screenshot`."""

BLANK_LEVEL = 20
"""A pixel is "dark" when its brightest RGB channel is below this (of 255), see :func:`is_blank`."""


def _class_rgba(classes: np.ndarray, alpha: np.ndarray | float = 1.0) -> np.ndarray:
    """``(N, 4)`` RGBA in [0, 1] of class indices ``(N,)`` from :data:`~rpn_lib.viz.planes.CLASS_COLORS`."""
    classes = np.asarray(classes, dtype=int).reshape(-1)
    palette = np.array([to_rgba(c) for c in CLASS_COLORS])
    rgba = palette[classes % len(CLASS_COLORS)].copy()
    rgba[:, 3] = np.broadcast_to(np.asarray(alpha, dtype=float), classes.shape)
    return rgba


def _class_names(classes: np.ndarray) -> list[str]:
    return [LANDMARK_NAMES[c] if 0 <= c < len(LANDMARK_NAMES) else f"class {c}" for c in classes]


def _score_alpha(scores: np.ndarray | None, n: int, low: float = 0.35) -> np.ndarray:
    """Opacity per item from scores in [0, 1]: ``low`` at score 0, 1 at score 1 (1 without scores)."""
    if scores is None:
        return np.ones(n)
    return low + (1.0 - low) * np.clip(np.asarray(scores, dtype=float).reshape(-1), 0.0, 1.0)


def add_volume(viewer, volume: np.ndarray, spacing_mm: float = 1.0, name: str = "ultrasound",
               rendering: str = "attenuated_mip", percentiles: tuple[float, float] = (50.0, 99.8)):
    """Add ``volume`` ``(D, H, W)`` as a grey image layer in mm, returned.

    Contrast limits are the given percentiles of the intensities. The default lower limit, the
    median, maps the darker half of the voxels (mostly background speckle around the head) to
    black, which keeps the 3D rendering free of fog; in 2D it shows the tissue with a black
    background. Pass ``percentiles=(1, 99.8)`` to see the speckle. ``rendering="attenuated_mip"`` (default) shows the nearest bright surface in
    3D, the look of an ultrasound volume rendering; ``"mip"`` shows the brightest voxel along
    each ray. In 2D display the rendering is irrelevant.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be (D, H, W), got shape {volume.shape}")
    flat = volume.ravel()
    if flat.size > 2_000_000:
        flat = flat[:: flat.size // 1_000_000]
    lo, hi = (float(v) for v in np.percentile(flat, percentiles))
    if not hi > lo:
        hi = lo + 1.0
    layer = viewer.add_image(volume, name=name, scale=(spacing_mm,) * 3, colormap="gray",
                             contrast_limits=(lo, hi), rendering=rendering, blending="translucent",
                             interpolation3d="linear")
    if rendering == "attenuated_mip":
        layer.attenuation = 0.15
    return layer


def add_boxes(viewer, boxes_vox: np.ndarray, classes: np.ndarray | Sequence[int], name: str = "boxes",
              spacing_mm: float = 1.0, scores: np.ndarray | None = None, prediction: bool = False,
              edge_width_mm: float | None = None):
    """Add boxes as 3D wireframes (a Shapes layer), returned.

    Each box becomes 12 shapes of type ``path``, one 2-point path per edge
    (:func:`rpn_lib.viz.planes.box_edges_vox`, in that order): drawn as tubes in 3D, visible
    from every angle. (One polyline doubling back over edges breaks vispy's tube geometry.)

    Colour: the layer's ``features`` hold ``class`` (index), ``landmark`` (name), ``box`` (row
    of ``boxes_vox``) and ``score`` per shape; ``edge_color`` is the class colour of
    :data:`~rpn_lib.viz.planes.CLASS_COLORS` set per shape (direct colours rather than napari's categorical
    cycle, so that the colour of a class never depends on which classes a layer holds, and
    so that the alpha can carry the score: 0.35 at score 0 to 1 at score 1).

    Predictions (``prediction=True``; napari draws no dashed 3D lines) are thinner and the
    layer is 0.8 opaque; ground truth is drawn thicker and opaque.

    Args:
        boxes_vox: ``(N, 6)`` as cz, cy, cx, d, h, w (voxels). Rows holding NaN are skipped.
        classes: ``(N,)`` landmark class index of each box.
        scores: optional ``(N,)`` scores in [0, 1].
        edge_width_mm: tube width (default 0.4 voxel for ground truth, 0.25 for predictions).
    """
    boxes = np.asarray(boxes_vox, dtype=float).reshape(-1, 6)
    classes = np.asarray(classes, dtype=int).reshape(-1)
    if len(classes) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(classes)} classes")
    score_arr = None if scores is None else np.asarray(scores, dtype=float).reshape(-1)
    if score_arr is not None and len(score_arr) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(score_arr)} scores")
    keep = ~np.isnan(boxes).any(axis=1)
    rows = np.flatnonzero(keep)
    edges = box_edges_vox(boxes[keep]).reshape(-1, 2, 3)  # (12 M, 2, 3)
    per_edge = np.repeat(np.arange(len(rows)), 12)
    edge_classes = classes[keep][per_edge]
    edge_scores = (np.full(len(rows), np.nan) if score_arr is None else score_arr[keep])[per_edge]
    alpha = _score_alpha(None if score_arr is None else score_arr[keep], len(rows))[per_edge]
    if edge_width_mm is None:
        edge_width_mm = (0.25 if prediction else 0.4) * spacing_mm
    features = {
        "class": edge_classes,
        "landmark": _class_names(edge_classes),
        "box": rows[per_edge],
        "score": edge_scores,
    }
    return viewer.add_shapes(
        list(edges), shape_type="path", name=name, scale=(spacing_mm,) * 3,
        features=features, edge_color=_class_rgba(edge_classes, alpha),
        edge_width=edge_width_mm / spacing_mm,  # napari widths are in data units (voxels)
        opacity=0.8 if prediction else 1.0, blending="translucent_no_depth",
    )


def add_points(viewer, points_vox: np.ndarray, classes: np.ndarray | Sequence[int], name: str = "landmarks",
               spacing_mm: float = 1.0, size: float | np.ndarray = 3.0, scores: np.ndarray | None = None,
               border_color: str = "white", symbol: str = "disc"):
    """Add points ``(N, 3)`` (voxels) coloured by class as a Points layer, returned.

    ``blending="translucent_no_depth"`` keeps them visible inside a rendered volume. ``size``
    is the diameter in voxels (one value or ``(N,)``); ``scores`` in [0, 1] set the opacity
    (0.35 to 1). ``features`` hold ``class``, ``landmark`` and ``score``. Rows holding NaN are
    skipped.
    """
    points = np.asarray(points_vox, dtype=float).reshape(-1, 3)
    classes = np.asarray(classes, dtype=int).reshape(-1)
    if len(classes) != len(points):
        raise ValueError(f"{len(points)} points but {len(classes)} classes")
    keep = ~np.isnan(points).any(axis=1)
    score_arr = None if scores is None else np.asarray(scores, dtype=float).reshape(-1)[keep]
    sizes = np.broadcast_to(np.asarray(size, dtype=float), (len(points),))[keep]
    features = {
        "class": classes[keep],
        "landmark": _class_names(classes[keep]),
        "score": np.full(int(keep.sum()), np.nan) if score_arr is None else score_arr,
    }
    return viewer.add_points(
        points[keep], name=name, scale=(spacing_mm,) * 3, size=sizes, features=features,
        face_color=_class_rgba(classes[keep], _score_alpha(score_arr, int(keep.sum()))),
        border_color=border_color, border_width=0.1, symbol=symbol,
        blending="translucent_no_depth",
    )


def _normalise_candidates(candidates: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class ``(boxes (k, 6), scores (k,))`` from ``(boxes, scores)`` pairs or from lists of
    objects with ``box_vox`` and ``score`` (:class:`rpn_lib.detect.Candidate`)."""
    out = []
    for entry in candidates:
        if isinstance(entry, tuple) and len(entry) == 2 and not hasattr(entry[0], "box_vox"):
            boxes, scores = entry
        else:
            boxes = [c.box_vox for c in entry]
            scores = [c.score for c in entry]
        out.append((np.asarray(boxes, dtype=float).reshape(-1, 6), np.asarray(scores, dtype=float).reshape(-1)))
    return out


def show_case(
    volume: np.ndarray,
    spacing_mm: float,
    gt_landmarks_vox: np.ndarray | None = None,
    gt_boxes_vox: np.ndarray | None = None,
    pred_boxes_vox: np.ndarray | None = None,
    candidates: Sequence[Any] | None = None,
    chosen: Sequence[int] | np.ndarray | None = None,
    viewer=None,
    ndisplay: int = 3,
    show: bool = True,
    title: str = "rpn_lib",
):
    """Open (or fill) a napari viewer with one case: the viewer of the book and the CLI.

    Layers, bottom to top: the volume (:func:`add_volume`); ``ground truth boxes`` (thick,
    opaque); ``predicted boxes`` (thin, 0.8 opaque); ``chosen combination``, the candidate boxes
    the graph prior chose (medium, opaque); ``candidates`` as points at the box centres,
    coloured by class, black-bordered, size and opacity growing with the score; ``ground truth
    landmarks`` (white-bordered discs); ``chosen centres`` (larger white-bordered stars). Box and
    point layers ignore depth, so they stay visible inside the rendered volume, and points draw
    over boxes.

    In 2D display napari shows a box edge only on the slices its two end points lie on, so a
    wireframe appears as its two faces normal to the sliced axis, not as a cross-section; for
    slices use :func:`rpn_lib.viz.planes.plot_orthogonal_planes`.

    Args:
        volume: ``(D, H, W)`` intensities.
        spacing_mm: isotropic voxel spacing in mm.
        gt_landmarks_vox: ``(K, 3)`` voxels, row k = class k.
        gt_boxes_vox, pred_boxes_vox: ``(K, 6)`` as cz, cy, cx, d, h, w, row k = class k
            (NaN rows skipped).
        candidates: per class (``LANDMARK_NAMES`` order) either ``(boxes (k, 6), scores (k,))``
            or a list of :class:`rpn_lib.detect.Candidate` (``Detection.candidates``), all in
            the volume's voxels.
        chosen: ``(K,)`` index of the chosen candidate of each class (``Detection.choice``);
            a negative index means none.
        viewer: a viewer to add to (default: a new one).
        ndisplay: 2 or 3.
        show: passed to ``napari.Viewer``; keep True (under Xvfb False gives black screenshots).
        title: window title of a new viewer.

    Returns:
        The ``napari.Viewer``.
    """
    if viewer is None:
        import napari

        viewer = napari.Viewer(title=title, ndisplay=ndisplay, show=show)
    else:
        viewer.dims.ndisplay = ndisplay
    add_volume(viewer, volume, spacing_mm=spacing_mm)
    vox = max(float(spacing_mm), 1e-6)
    marker = max(3.0, min(volume.shape) / 25.0)  # point diameter in voxels

    cands = _normalise_candidates(candidates) if candidates is not None else []
    chosen_rows: list[np.ndarray] = []
    chosen_classes: list[int] = []
    if chosen is not None:
        if not cands:
            raise ValueError("chosen needs candidates")
        for k, idx in enumerate(np.asarray(chosen, dtype=int).reshape(-1)[: len(cands)]):
            if 0 <= idx < len(cands[k][0]):
                chosen_rows.append(cands[k][0][idx])
                chosen_classes.append(k)

    # Boxes first, points last: with "translucent_no_depth" blending later layers draw on top.
    if gt_boxes_vox is not None:
        gt = np.asarray(gt_boxes_vox, dtype=float).reshape(-1, 6)
        add_boxes(viewer, gt, np.arange(len(gt)), name="ground truth boxes", spacing_mm=spacing_mm)
    if pred_boxes_vox is not None:
        pred = np.asarray(pred_boxes_vox, dtype=float).reshape(-1, 6)
        add_boxes(viewer, pred, np.arange(len(pred)), name="predicted boxes", spacing_mm=spacing_mm,
                  prediction=True)
    if chosen_rows:
        add_boxes(viewer, np.asarray(chosen_rows), chosen_classes, name="chosen combination",
                  spacing_mm=spacing_mm, edge_width_mm=0.3 * vox)
    if cands and sum(len(b) for b, _ in cands):
        pts = np.concatenate([b[:, :3] for b, _ in cands])
        cls = np.concatenate([np.full(len(b), k) for k, (b, _) in enumerate(cands)]).astype(int)
        sc = np.concatenate([s for _, s in cands])
        add_points(viewer, pts, cls, name="candidates", spacing_mm=spacing_mm,
                   size=marker * (0.5 + 0.7 * np.clip(sc, 0, 1)), scores=sc, border_color="black")
    if gt_landmarks_vox is not None:
        lm = np.asarray(gt_landmarks_vox, dtype=float).reshape(-1, 3)
        add_points(viewer, lm, np.arange(len(lm)), name="ground truth landmarks", spacing_mm=spacing_mm,
                   size=marker)
    if chosen_rows:
        add_points(viewer, np.asarray(chosen_rows)[:, :3], chosen_classes, name="chosen centres",
                   spacing_mm=spacing_mm, size=1.5 * marker, symbol="star")
    viewer.reset_view()
    return viewer


def _process_events() -> None:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        app.processEvents()


def screenshot(
    viewer,
    path: str | Path | None = None,
    size: tuple[int, int] = (800, 600),
    angles: tuple[float, float, float] | None = None,
    zoom: float | None = None,
    center_mm: Sequence[float] | None = None,
) -> np.ndarray:
    """Render the viewer's canvas to an ``(H, W, 4)`` uint8 RGBA array, optionally a PNG.

    The canvas is first set to ``size`` (growing the window if the docks leave it too little
    room), then the camera is turned and the view reset so the data, seen from there, fill that
    canvas (napari's own ``size=`` argument does not refit the view).

    Args:
        viewer: a ``napari.Viewer`` made with ``show=True``.
        path: PNG file to write (atomically); None writes nothing.
        size: ``(width, height)`` in pixels, like a window size; the array is
            ``(height, width, 4)``.
        angles: 3D camera Euler angles in degrees (``viewer.scene.camera.angles``); default
            :data:`DEFAULT_ANGLES` in 3D display, unchanged in 2D.
        zoom: factor applied to the zoom that fits the data (1 = fitted; > 1 closer).
        center_mm: world point (mm, the layers' axis order, i.e. voxel * spacing) to centre the
            view on, e.g. the mean landmark, for a close-up with ``zoom``; default: the data's
            centre.
    """
    width, height = (int(v) for v in size)
    target = (height, width)  # napari's canvas sizes are (height, width)
    _process_events()
    canvas_h, canvas_w = viewer.canvas.size
    if canvas_h < height or canvas_w < width:
        left, top, win_w, win_h = viewer.window.geometry()
        viewer.window.resize(win_w + max(0, width - canvas_w) + 8, win_h + max(0, height - canvas_h) + 8)
        _process_events()
    # Qt's layout may resize the canvas back once after the first change: repeat until stable.
    for _ in range(5):
        viewer.canvas.size = target
        _process_events()
        if tuple(viewer.canvas.size) == target:
            break
    camera = viewer.scene.camera
    if viewer.dims.ndisplay == 3:
        camera.angles = tuple(float(a) for a in (DEFAULT_ANGLES if angles is None else angles))
    viewer.reset_view(reset_camera_angle=False)  # fits the data as seen from these angles
    if center_mm is not None:
        centre = tuple(float(c) for c in center_mm)
        camera.center = tuple(centre[d] for d in viewer.dims.displayed)
    if zoom is not None:
        camera.zoom = camera.zoom * float(zoom)
    # size= makes the output exactly the requested size even if Qt changed the canvas again.
    image = np.asarray(viewer.screenshot(canvas_only=True, size=target, flash=False))
    if path is not None:
        from matplotlib.image import imsave

        with atomic_path(path, suffix=".png") as tmp:
            imsave(tmp, image, format="png")
    return image


def is_blank(image: np.ndarray, threshold: float = 0.02) -> bool:
    """True when fewer than ``threshold`` of the pixels are not dark.

    A pixel is dark when its brightest RGB channel is below :data:`BLANK_LEVEL` (of 255). A
    black canvas (the failure of ``show=False`` or ``QT_QPA_PLATFORM=offscreen`` under Xvfb),
    or one showing nothing, is blank; a rendered volume fills far more than 2 %.

    Args:
        image: ``(H, W, 3 or 4)`` uint8, or floats in [0, 1].
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"image must be (H, W, 3 or 4), got shape {image.shape}")
    rgb = image[..., :3].astype(float)
    if image.dtype.kind == "f":
        rgb = rgb * 255.0
    return bool((rgb.max(axis=-1) >= BLANK_LEVEL).mean() < threshold)


def close_viewer(viewer) -> None:
    """Close a viewer and let Qt process the close (frees the GL context).

    Inside a Jupyter kernel, napari switches on the kernel's Qt event loop; left on, a
    notebook run by nbclient or nbval can hang between cells. Closing the last viewer
    therefore switches the kernel's GUI integration off again.
    """
    viewer.close()
    _process_events()
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a napari dependency
        return
    shell = get_ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        shell.enable_gui(None)
