"""Tests of ``rpn-lib view``: napari screenshots of a user's volume, landmarks and detections.

The screenshot tests need a display (pytest-xvfb gives one; they skip under ``-p no:xvfb``);
the bad-input tests do not, since every input is checked before napari starts.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from rpn_lib.cli import main
from rpn_lib.data.geometry import world_to_voxel
from rpn_lib.data.io import save_landmarks, save_volume
from rpn_lib.landmarks import LANDMARK_NAMES, box_size_vox
from rpn_lib.presets import Preset

TINY = Preset(name="tiny", spacing_mm=5.2, shape_vox=(32, 32, 32), width=4)

# A plausible face in mm: x = the fetus's right, y = anterior, z = superior.
FACE_MM = np.array([
    [-14.0, 0.0, 0.0],   # left eye
    [0.0, 4.0, 8.0],     # middle eyebrow
    [14.0, 0.0, 0.0],    # right eye
    [0.0, 12.0, -15.0],  # nose tip
    [0.0, 6.0, -40.0],   # chin
])


def _rotation_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A rotated anisotropic NIfTI with a bright head, its landmarks, and a tiny untrained model."""
    import torch

    from rpn_lib.checkpoint import save_model
    from rpn_lib.model import IGRPN
    from rpn_lib.prior import GraphPrior

    root = tmp_path_factory.mktemp("view")
    shape, spacing = (30, 36, 24), np.array([3.0, 2.5, 4.0])  # 90 x 90 x 96 mm
    affine = np.eye(4)
    affine[:3, :3] = _rotation_z(20.0) @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)  # volume centred at the origin
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    rng = np.random.default_rng(0)
    head = (np.sum((world / [34.0, 34.0, 44.0]) ** 2, axis=1) < 1.0).reshape(shape)
    volume = (40 + 150 * head + rng.normal(0, 10, shape)).clip(0, 255).astype(np.uint8)
    save_volume(root / "head.nii.gz", volume, affine)
    landmarks = FACE_MM + [0.0, 10.0, 10.0]
    save_landmarks(root / "head.mrk.json", landmarks)

    torch.manual_seed(0)
    faces = FACE_MM[None] + rng.normal(0.0, 1.5, (20, 5, 3))
    save_model(root / "model.pt", IGRPN(width=TINY.width), TINY, GraphPrior.fit(faces))
    return {"root": root, "image": root / "head.nii.gz", "landmarks": root / "head.mrk.json",
            "model": root / "model.pt", "landmarks_world": landmarks, "affine": affine, "volume": volume}


def _need_display() -> None:
    pytest.importorskip("napari")
    if not os.environ.get("DISPLAY"):
        pytest.skip("no display: run pytest with pytest-xvfb (without -p no:xvfb) or under xvfb-run")


@pytest.fixture
def kept_viewer(monkeypatch):
    """Record the viewer ``cmd_view`` makes, and close it only after the test looked at it."""
    from rpn_lib.viz import napari_view

    seen = []
    real_close = napari_view.close_viewer
    monkeypatch.setattr(napari_view, "close_viewer", seen.append)
    yield seen
    for viewer in seen:
        real_close(viewer)


@pytest.mark.napari
def test_view_model_and_landmarks_screenshot(files, tmp_path, capsys, kept_viewer):
    _need_display()
    from matplotlib.image import imread

    from rpn_lib.detect import Detector
    from rpn_lib.viz import is_blank

    png = tmp_path / "shot.png"
    rc = main(["view", str(files["image"]), "--model", str(files["model"]), "--landmarks",
               str(files["landmarks"]), "--screenshot", str(png), "--size", "320x240", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    image = imread(png)
    assert image.shape[:2] == (240, 320)
    assert not is_blank(image)
    # one line per landmark, then the PNG
    lines = out.out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines[:5]] == list(LANDMARK_NAMES)
    assert lines[-1].startswith(f"wrote {png}")

    (viewer,) = kept_viewer
    layers = {layer.name: layer for layer in viewer.layers}
    assert {"ultrasound", "candidates", "chosen combination", "ground truth landmarks",
            "ground truth boxes"} <= set(layers)
    # Shown on the model grid: the volume is Detector.prepare's array, the landmarks are mapped
    # with the model grid's affine, and everything is scaled by the model's spacing.
    det = Detector.from_file(files["model"], device="cpu")
    from rpn_lib.data.io import load_volume

    vol = load_volume(files["image"])
    grid = det.prepare(vol.array, vol.affine)
    np.testing.assert_array_equal(layers["ultrasound"].data, grid.array)
    np.testing.assert_allclose(layers["ultrasound"].scale, [TINY.spacing_mm] * 3)
    np.testing.assert_allclose(layers["ground truth landmarks"].data,
                               world_to_voxel(files["landmarks_world"], grid.affine), atol=1e-9)
    # every kept candidate is a point; the prior's choice is 5 boxes of 12 edges and 5 stars
    res = det.detect_prepared([grid], [vol.affine])[0]
    assert len(layers["candidates"].data) == sum(len(c) for c in res.candidates)
    assert len(layers["chosen combination"].data) == 5 * 12
    chosen = np.array([res.candidates[k][res.choice[k]].box_vox[:3] for k in range(5)])
    np.testing.assert_allclose(layers["chosen centres"].data, chosen, atol=1e-6)


@pytest.mark.napari
def test_view_landmarks_only_anisotropic_2d(files, tmp_path, capsys, kept_viewer):
    _need_display()
    from matplotlib.image import imread

    from rpn_lib.viz import is_blank

    png = tmp_path / "plain.png"
    rc = main(["view", str(files["image"]), "--landmarks", str(files["landmarks"]), "--screenshot", str(png),
               "--size", "320x240", "--2d"])
    assert rc == 0, capsys.readouterr().err
    assert not is_blank(imread(png))
    (viewer,) = kept_viewer
    assert viewer.dims.ndisplay == 2
    layers = {layer.name: layer for layer in viewer.layers}
    # anisotropic (3, 2.5, 4 mm) -> isotropic at its finest spacing, 2.5 mm, same world extent
    spacing = 2.5
    np.testing.assert_allclose(layers["ultrasound"].scale, [spacing] * 3)
    assert layers["ultrasound"].data.shape == (36, 36, 38)
    assert "candidates" not in layers
    # the landmarks land in the bright head on the displayed grid, boxes of the right size
    pts = layers["ground truth landmarks"].data
    idx = np.round(pts).astype(int)
    assert np.all(layers["ultrasound"].data[tuple(idx.T)] > 120)
    box_edge = np.ptp(np.asarray(layers["ground truth boxes"].data[0]), axis=0).max()
    assert box_edge == pytest.approx(box_size_vox(spacing)[0])


# ------------------------------------------------------------------ bad input: exit 2, one line

@pytest.mark.parametrize("case", ["missing image", "not nifti", "bad landmarks", "landmark outside",
                                  "bad model", "screenshot not png"])
def test_view_bad_input(files, tmp_path, capsys, case, monkeypatch):
    # Every check happens before napari starts: no display is needed, and none may be opened.
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    image, extra = str(files["image"]), []
    if case == "missing image":
        image = str(tmp_path / "nope.nii.gz")
        expected = "image file not found"
    elif case == "not nifti":
        (tmp_path / "scan.nrrd").write_text("NRRD0004\n")
        image = str(tmp_path / "scan.nrrd")
        expected = "not a NIfTI file"
    elif case == "bad landmarks":
        bad = tmp_path / "bad.csv"
        bad.write_text("label,x,y,z\nLE,1,2,3\n")
        extra = ["--landmarks", str(bad)]
        expected = "missing landmark(s)"
    elif case == "landmark outside":
        far = tmp_path / "far.mrk.json"
        save_landmarks(far, files["landmarks_world"] + [0.0, 0.0, 300.0])
        extra = ["--landmarks", str(far)]
        expected = "outside the volume"
    elif case == "bad model":
        junk = tmp_path / "model.pt"
        junk.write_bytes(b"not a model")
        extra = ["--model", str(junk)]
        expected = "not a readable rpn-lib file"
    else:
        extra = ["--screenshot", str(tmp_path / "shot.jpg")]
        expected = "must name a .png file"
    rc = main(["view", image, *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("rpn-lib: error: ") and expected in err


def test_view_without_display_is_one_line(files, capsys, monkeypatch):
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    rc = main(["view", str(files["image"])])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "no display" in err and "xvfb-run" in err


def test_view_bad_size_is_an_argument_error(files, capsys):
    rc = main(["view", str(files["image"]), "--size", "big"])
    assert rc == 2
    assert "expected WIDTHxHEIGHT" in capsys.readouterr().err
