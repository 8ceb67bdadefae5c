"""Geometry (voxels <-> mm, resampling) and real-data I/O (NIfTI, Slicer markups, CSV)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpn_lib.data import io as rio
from rpn_lib.data.geometry import (
    check_affine,
    crop_or_pad_to_shape,
    lps_to_ras,
    ras_to_lps,
    resample_to_spacing,
    spacing_from_affine,
    voxel_to_world,
    world_to_voxel,
)
from rpn_lib.data.io import (
    check_landmarks_inside,
    load_landmarks,
    load_volume,
    save_landmarks,
    save_volume,
    volume_case_id,
)
from rpn_lib.errors import DataError
from rpn_lib.landmarks import LANDMARK_NAMES


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix from angles (radians) about x, y, z."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_affine(angles=(0.3, -0.5, 1.1), spacing=(0.8, 1.3, 2.1), origin=(-40.0, 12.0, 7.5), shear=0.0) -> np.ndarray:
    a = np.eye(4)
    sh = np.eye(3)
    sh[0, 1] = shear
    a[:3, :3] = rotation(*angles) @ sh @ np.diag(spacing)
    a[:3, 3] = origin
    return a


ROT_ANISO = make_affine()


# ------------------------------------------------------------------------------------ geometry


@settings(max_examples=60, deadline=None)
@given(
    angles=st.tuples(*[st.floats(-np.pi, np.pi)] * 3),
    spacing=st.tuples(*[st.floats(0.2, 5.0)] * 3),
    origin=st.tuples(*[st.floats(-500, 500)] * 3),
    shear=st.floats(-0.5, 0.5),
    vox=st.lists(st.tuples(*[st.floats(-50, 300)] * 3), min_size=1, max_size=6),
)
def test_voxel_world_round_trip(angles, spacing, origin, shear, vox) -> None:
    a = make_affine(angles, spacing, origin, shear)
    v = np.array(vox)
    w = voxel_to_world(v, a)
    np.testing.assert_allclose(world_to_voxel(w, a), v, atol=1e-7)
    # world_to_voxel is the inverse affine, whatever the rotation, spacing and shear
    np.testing.assert_allclose(w, (np.c_[v, np.ones(len(v))] @ a.T)[:, :3], atol=1e-9)


def test_voxel_to_world_numbers_and_single_point() -> None:
    a = np.diag([2.0, 3.0, 4.0, 1.0])
    a[:3, 3] = [10, 20, 30]
    np.testing.assert_allclose(voxel_to_world(np.array([1.0, 1.0, 1.0]), a), [12, 23, 34])
    np.testing.assert_allclose(world_to_voxel(np.array([[12.0, 23.0, 34.0], [10, 20, 30]]), a), [[1, 1, 1], [0, 0, 0]])
    with pytest.raises(ValueError):
        voxel_to_world(np.zeros((2, 2)), a)


def test_ras_lps() -> None:
    p = np.array([[1.0, -2.0, 3.0]])
    np.testing.assert_array_equal(ras_to_lps(p), [[-1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(lps_to_ras(ras_to_lps(p)), p)


def test_spacing_and_check_affine() -> None:
    np.testing.assert_allclose(spacing_from_affine(ROT_ANISO), [0.8, 1.3, 2.1])
    assert check_affine(ROT_ANISO.astype(np.float32)).dtype == np.float64
    bad_row = ROT_ANISO.copy()
    bad_row[3, 0] = 1
    singular = ROT_ANISO.copy()
    singular[:3, 2] = singular[:3, 0] * 2  # two parallel voxel axes
    nan = ROT_ANISO.copy()
    nan[0, 3] = np.nan
    for bad, what in [(np.eye(3), "4x4"), (bad_row, "last row"), (singular, "singular"), (nan, "NaN")]:
        with pytest.raises(DataError, match=what) as e:
            check_affine(bad, "some/file.nii.gz")
        assert "some/file.nii.gz" in str(e.value)


def blob(shape, affine, centre_world, sigma_mm=3.0) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    d2 = np.sum((voxel_to_world(grid, affine) - centre_world) ** 2, axis=1)
    return np.exp(-d2 / (2 * sigma_mm**2)).reshape(shape).astype(np.float32)


def centroid(vol: np.ndarray) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), -1)
    return (grid * vol[..., None]).reshape(-1, 3).sum(0) / vol.sum()


def test_resampling_carries_landmarks() -> None:
    """A bright dot at a landmark of a rotated anisotropic volume stays at its new voxel."""
    shape = (40, 30, 18)
    landmark_vox = np.array([21.3, 13.6, 8.2])
    landmark_world = voxel_to_world(landmark_vox, ROT_ANISO)
    vol = blob(shape, ROT_ANISO, landmark_world)
    new_vol, new_aff, new_vox = resample_to_spacing(vol, ROT_ANISO, 1.5, landmarks_world=landmark_world[None])
    # isotropic, same axis directions, same field of view (to a voxel)
    np.testing.assert_allclose(spacing_from_affine(new_aff), 1.5)
    np.testing.assert_allclose(new_aff[:3, :3] / 1.5, ROT_ANISO[:3, :3] / [0.8, 1.3, 2.1], atol=1e-12)
    assert new_vol.shape == (21, 26, 25)
    np.testing.assert_allclose(voxel_to_world(np.full(3, -0.5), new_aff), voxel_to_world(np.full(3, -0.5), ROT_ANISO))
    np.testing.assert_allclose(new_vox[0], world_to_voxel(landmark_world, new_aff))
    # the dot: brightest voxel and intensity centroid at the landmark's new voxel coordinates
    assert np.abs(np.array(np.unravel_index(new_vol.argmax(), new_vol.shape)) - new_vox[0]).max() <= 0.5 + 1e-6
    np.testing.assert_allclose(centroid(new_vol), new_vox[0], atol=0.1)
    two = resample_to_spacing(vol, ROT_ANISO, 1.5)
    assert len(two) == 2 and np.array_equal(two[0], new_vol)


def test_resample_identity_spacing_is_exact() -> None:
    a = make_affine(spacing=(1.3, 1.3, 1.3))
    vol = np.random.default_rng(0).random((8, 9, 10)).astype(np.float32)
    out, aff = resample_to_spacing(vol, a, 1.3)
    np.testing.assert_allclose(out, vol, atol=1e-5)
    np.testing.assert_allclose(aff, a, atol=1e-12)


@pytest.mark.parametrize("shape,centre", [((6, 20, 9), None), ((12, 12, 12), (2.0, 15.0, 4.0))])
def test_crop_or_pad_keeps_world(shape, centre) -> None:
    vol = np.arange(10 * 16 * 7, dtype=np.float32).reshape(10, 16, 7) + 1
    out, aff = crop_or_pad_to_shape(vol, ROT_ANISO, shape, center_vox=centre)
    assert out.shape == shape
    inside = np.argwhere(out > 0)
    assert len(inside) > 0 and (out == 0).any()  # both cropped and padded
    old = np.rint(world_to_voxel(voxel_to_world(inside, aff), ROT_ANISO)).astype(int)
    np.testing.assert_array_equal(out[tuple(inside.T)], vol[tuple(old.T)])
    if centre is not None:
        np.testing.assert_allclose(world_to_voxel(voxel_to_world(np.array(centre), ROT_ANISO), aff), [5, 5, 5], atol=1e-9)  # lower middle voxel of an even side


# ------------------------------------------------------------------------------------ volumes


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = ROT_ANISO) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_volume_round_trip(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).integers(1, 255, (7, 8, 9)).astype(np.uint8)
    sheared = make_affine(shear=0.2)
    for name in ("v.nii.gz", "v.nii"):
        save_volume(tmp_path / name, arr, sheared)
        v = load_volume(tmp_path / name)
        assert v.array.dtype == np.float32 and v.array.shape == (7, 8, 9)
        np.testing.assert_array_equal(v.array, arr)
        np.testing.assert_allclose(v.affine, sheared, atol=1e-4)  # sform is stored as float32
        assert v.path == tmp_path / name
    assert nib.load(tmp_path / "v.nii.gz").header.get_sform(coded=True)[1] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nii", "v.nii.gz"]  # no temp files left


def test_4d_singleton_is_squeezed_and_units_converted(tmp_path: Path) -> None:
    data = np.ones((4, 5, 6, 1), np.float32)
    v = load_volume(write_nifti(tmp_path / "a.nii.gz", data))
    assert v.array.shape == (4, 5, 6)
    img = nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.diag([0.001, 0.002, 0.003, 1.0]))
    img.header.set_xyzt_units(xyz="meter")
    nib.save(img, tmp_path / "m.nii.gz")
    np.testing.assert_allclose(load_volume(tmp_path / "m.nii.gz").spacing_mm, [1.0, 2.0, 3.0])


def _truncated(tmp_path: Path) -> Path:
    good = write_nifti(tmp_path / "good.nii.gz", np.random.default_rng(0).random((20, 20, 20)).astype(np.float32))
    raw = good.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    return bad


def _singular(tmp_path: Path) -> Path:
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    s = np.eye(4)
    s[:3, 1] = s[:3, 0]
    img.set_sform(s, code=1)
    img.set_qform(None, code=0)
    nib.save(img, tmp_path / "singular.nii.gz")
    return tmp_path / "singular.nii.gz"


BAD_VOLUMES = {
    "missing": (lambda t: t / "nope.nii.gz", "not found"),
    "truncated": (_truncated, "cannot read"),
    "not gzip": (lambda t: (t / "junk.nii.gz").write_bytes(b"hello" * 100) and t / "junk.nii.gz", "cannot read"),
    "plain text as nii": (lambda t: (t / "text.nii").write_text("x" * 400) and t / "text.nii", "cannot read"),
    "gz of garbage": (lambda t: (t / "g.nii.gz").write_bytes(gzip.compress(b"\0" * 100)) and t / "g.nii.gz", "cannot read"),
    "2D": (lambda t: write_nifti(t / "flat.nii.gz", np.ones((5, 6), np.float32)), "3D"),
    "4D": (lambda t: write_nifti(t / "series.nii.gz", np.ones((5, 6, 7, 2), np.float32)), "3D"),
    "one slice": (lambda t: write_nifti(t / "slice.nii.gz", np.ones((5, 6, 1), np.float32)), "1 voxel"),
    "NaN": (lambda t: write_nifti(t / "nan.nii.gz", np.where(np.eye(4)[None].repeat(4, 0) > 0, np.nan, 1).astype(np.float32)), "NaN"),
    "inf": (lambda t: write_nifti(t / "inf.nii.gz", np.full((3, 3, 3), np.inf, np.float32)), "infinite"),
    "singular": (_singular, "singular"),
    "empty": (lambda t: write_nifti(t / "zeros.nii.gz", np.zeros((4, 4, 4), np.uint8)), "empty"),
    "suffix": (lambda t: (t / "vol.mha").write_text("x") and t / "vol.mha", "NIfTI"),
    "complex": (lambda t: write_nifti(t / "complex.nii.gz", np.ones((4, 4, 4), np.complex64)), "complex"),
    "RGB": (lambda t: write_nifti(t / "rgb.nii.gz", np.ones((4, 4, 4), [("R", "u1"), ("G", "u1"), ("B", "u1")])),
            "colour"),
}


@pytest.mark.parametrize("case", sorted(BAD_VOLUMES))
def test_bad_volumes_raise_data_error_naming_the_file(tmp_path: Path, case: str) -> None:
    make, what = BAD_VOLUMES[case]
    path = make(tmp_path)
    with pytest.raises(DataError, match=what) as e:
        load_volume(path)
    assert str(path) in str(e.value) and e.value.path == path


def test_atomic_volume_write_leaves_nothing_on_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.nii.gz"
    save_volume(target, np.ones((3, 3, 3), np.uint8), np.eye(4))
    before = target.read_bytes()

    def failing_save(img, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(rio.nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_volume(target, np.full((3, 3, 3), 7, np.uint8), np.eye(4))
    with pytest.raises(OSError):
        save_volume(tmp_path / "new.nii.gz", np.ones((3, 3, 3), np.uint8), np.eye(4))
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]
    assert target.read_bytes() == before


# ------------------------------------------------------------------------------------ landmarks


@pytest.mark.parametrize("name,system", [("l.mrk.json", None), ("l.mrk.json", "RAS"), ("l.csv", None), ("l.csv", "LPS")])
def test_landmarks_round_trip_to_the_same_voxel(tmp_path: Path, name: str, system: str | None) -> None:
    vox = np.array([[10, 20, 5], [11.5, 22, 6], [13, 20, 5], [12, 25, 9], [12, 30, 12.25]])
    world = voxel_to_world(vox, ROT_ANISO)
    path = save_landmarks(tmp_path / name, world, coordinate_system=system, extra={"case": "c1", "score": [1, 2]})
    back = load_landmarks(path)
    np.testing.assert_allclose(world_to_voxel(back, ROT_ANISO), vox, atol=1e-9)
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_markups_are_lps_by_default_and_slicer_shaped(tmp_path: Path) -> None:
    world = np.arange(15, dtype=float).reshape(5, 3) + 1
    save_landmarks(tmp_path / "a.mrk.json", world)
    doc = json.loads((tmp_path / "a.mrk.json").read_text())
    m = doc["markups"][0]
    assert doc["@schema"].endswith("markups-schema-v1.0.3.json#")
    assert (m["type"], m["coordinateSystem"], m["coordinateUnits"]) == ("Fiducial", "LPS", "mm")
    assert [c["label"] for c in m["controlPoints"]] == list(LANDMARK_NAMES)
    np.testing.assert_allclose(m["controlPoints"][0]["position"], [-1, -2, 3])
    save_landmarks(tmp_path / "b.csv", world)
    assert (tmp_path / "b.csv").read_text().splitlines()[:2] == ["label,x,y,z", "left_eye,1.0,2.0,3.0"]


def test_label_map_extra_labels_and_comments(tmp_path: Path) -> None:
    short = ["LE", "MEB", "RE", "NT", "CH"]
    rows = [f"{s},{k},{k + 1},{k + 2}" for k, s in enumerate(short)]
    (tmp_path / "a.csv").write_text("# from some tool\nLabel, X, Y, Z, note\n" + "\n".join(r + ",x" for r in rows) + "\nextra,9,9,9,x\n")
    out = load_landmarks(tmp_path / "a.csv", label_map=dict(zip(short, LANDMARK_NAMES)))
    np.testing.assert_allclose(out[:, 0], [0, 1, 2, 3, 4])
    doc = {"markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": [
        {"label": n, "position": [k, 0, 0]} for k, n in enumerate(LANDMARK_NAMES)
    ] + [{"label": "left_eye", "position": [0, 0, 0], "positionStatus": "undefined"}]}]}
    (tmp_path / "b.mrk.json").write_text(json.dumps(doc))
    np.testing.assert_allclose(load_landmarks(tmp_path / "b.mrk.json")[:, 0], [0, 1, 2, 3, 4])
    np.testing.assert_allclose(load_landmarks(tmp_path / "b.mrk.json", names=["chin", "left_eye"])[:, 0], [4, 0])


def _markups(points, system="LPS", units="mm") -> str:
    m = {"type": "Fiducial", "coordinateSystem": system, "coordinateUnits": units,
         "controlPoints": [{"id": str(i), "label": lab, "position": pos} for i, (lab, pos) in enumerate(points)]}
    return json.dumps({"@schema": rio.MARKUPS_SCHEMA, "markups": [m]})


GOOD = [(n, [float(k), 1.0, 2.0]) for k, n in enumerate(LANDMARK_NAMES)]
BAD_LANDMARKS = {
    "missing file": (None, "not found"),
    "invalid json": ('{"markups": [', "invalid JSON"),
    "not an object": ("[1, 2]", "no markups"),
    "no markups": ('{"markups": []}', "no markups"),
    "missing label": (_markups(GOOD[:4]), "missing landmark.*chin"),
    "duplicated label": (_markups(GOOD + [GOOD[1]]), "more than once"),
    "NaN coordinate": (_markups(GOOD[:4] + [("chin", [1.0, float("nan"), 0.0])]), "NaN"),
    "null coordinate": (_markups(GOOD[:4] + [("chin", [1.0, None, 0.0])]), "NaN|non-numeric"),
    "two coordinates": (_markups(GOOD[:4] + [("chin", [1.0, 2.0])]), "3 numbers"),
    "unknown system": (_markups(GOOD, system="IJK"), "coordinateSystem"),
    "non-mm units": (_markups(GOOD, units="um"), "coordinateUnits"),
    "csv bad header": ("name,a,b\nleft_eye,1,2\n", "header"),
    "csv not a number": ("label,x,y,z\n" + "\n".join(f"{n},1,2,{'oops' if k == 2 else 3}" for k, n in enumerate(LANDMARK_NAMES)), "not all numbers"),
    "csv empty": ("# only a comment\n", "empty"),
    "csv short row": ("label,x,y,z\nleft_eye,1,2\n", "columns"),
    "csv nan": ("label,x,y,z\n" + "\n".join(f"{n},1,2,{'nan' if k == 2 else 3}" for k, n in enumerate(LANDMARK_NAMES)), "NaN"),
    "bad suffix": ("x", "unknown landmark file type"),
}


FCSV_COLUMNS = "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"


def _fcsv(points_ras: np.ndarray, header: str, lps: bool, labels=LANDMARK_NAMES) -> str:
    """A fiducial list as Slicer writes it: ``header`` lines, then id,x,y,z,...,label rows."""
    out = (points_ras * np.array([-1, -1, 1]) if lps else points_ras).tolist()
    rows = [f"vtkMRMLMarkupsFiducialNode_{k},{x!r},{y!r},{z!r},0,0,0,1,1,1,0,{lab},,vtkMRMLScalarVolumeNode1"
            for k, (lab, (x, y, z)) in enumerate(zip(labels, out))]
    return header + "\n".join(rows) + "\n"


@pytest.mark.parametrize("header, lps", [
    ("# Markups fiducial file version = 4.13\n# CoordinateSystem = LPS\n" + FCSV_COLUMNS, True),   # Slicer >= 4.11
    ("# Markups fiducial file version = 4.13\n# CoordinateSystem = RAS\n" + FCSV_COLUMNS, False),
    ("# Markups fiducial file version = 4.10\n# CoordinateSystem = 0\n" + FCSV_COLUMNS, False),   # before 4.11
    ("# Markups fiducial file version = 4.6\n# CoordinateSystem = 1\n" + FCSV_COLUMNS, True),
    ("# Markups fiducial file version = 4.4\n" + FCSV_COLUMNS, False),   # no system: RAS
    ("#CoordinateSystem=LPS\n", True),                                  # no columns line: Slicer's
])
def test_slicer_fcsv_is_read_in_its_coordinate_system(tmp_path: Path, header: str, lps: bool) -> None:
    world = voxel_to_world(np.array([[10, 20, 5], [11.5, 22, 6], [13, 20, 5], [12, 25, 9], [12, 30, 12.25]]), ROT_ANISO)
    path = tmp_path / "case.fcsv"
    path.write_text(_fcsv(world, header, lps))
    np.testing.assert_array_equal(load_landmarks(path), world)
    reordered = tmp_path / "reordered.fcsv"   # columns in another order, extra labels, a label map
    reordered.write_text("# CoordinateSystem = RAS\n# columns = label,z,y,x\n"
                         + "".join(f"L{k},{z!r},{y!r},{x!r}\n" for k, (x, y, z) in enumerate(world.tolist())) + "nasion,0,0,0\n")
    mapped = load_landmarks(reordered, label_map={f"L{k}": n for k, n in enumerate(LANDMARK_NAMES)})
    np.testing.assert_array_equal(mapped, world)


def test_a_dataset_folder_takes_fcsv_landmarks_and_fcsv_is_not_written(tmp_path: Path) -> None:
    from rpn_lib.data.dataset import LandmarkDataset

    world = voxel_to_world(np.array([[2, 2, 2], [3, 2, 2], [4, 2, 2], [3, 4, 2], [3, 5, 3.5]]), np.eye(4))
    (tmp_path / "images").mkdir()
    (tmp_path / "landmarks").mkdir()
    write_nifti(tmp_path / "images" / "c1.nii.gz", np.ones((8, 8, 8), np.float32), np.eye(4))
    (tmp_path / "landmarks" / "c1.fcsv").write_text(_fcsv(world, "# CoordinateSystem = LPS\n" + FCSV_COLUMNS, True))
    np.testing.assert_array_equal(LandmarkDataset(tmp_path)[0].landmarks_world, world)
    with pytest.raises(ValueError, match="legacy .fcsv is read, not written"):
        save_landmarks(tmp_path / "out.fcsv", world)


BAD_FCSV = {
    "no label column": ("# columns = id,x,y,z\n0,1,2,3\n", "must name x, y, z and label"),
    "unknown system": ("# CoordinateSystem = IJK\n" + FCSV_COLUMNS + "0,1,2,3,0,0,0,1,1,1,0,left_eye,,\n", "IJK"),
    "no points": ("# CoordinateSystem = LPS\n" + FCSV_COLUMNS, "no points"),
    "short row": (FCSV_COLUMNS + "0,1,2\n", "columns"),
    "not a number": (FCSV_COLUMNS + "0,1,two,3,0,0,0,1,1,1,0,left_eye,,\n", "not all numbers"),
    "missing landmark": (FCSV_COLUMNS + "0,1,2,3,0,0,0,1,1,1,0,left_eye,,\n", "missing landmark"),
}


@pytest.mark.parametrize("case", sorted(BAD_FCSV))
def test_bad_fcsv_raises_data_error_naming_the_file(tmp_path: Path, case: str) -> None:
    text, what = BAD_FCSV[case]
    path = tmp_path / "lm.fcsv"
    path.write_text(text)
    with pytest.raises(DataError, match=what) as e:
        load_landmarks(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("case", sorted(BAD_LANDMARKS))
def test_bad_landmarks_raise_data_error_naming_the_file(tmp_path: Path, case: str) -> None:
    text, what = BAD_LANDMARKS[case]
    name = "lm.txt" if case == "bad suffix" else ("lm.csv" if case.startswith("csv") else "lm.mrk.json")
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(DataError, match=what) as e:
        load_landmarks(path)
    assert str(path) in str(e.value)


def test_check_landmarks_inside(tmp_path: Path) -> None:
    shape = (10, 12, 8)
    vox = np.array([[0, 0, 0], [9.5, 11.5, 7.5], [-0.5, 3, 3], [5, 5, 5], [4, 4, 4]], dtype=float)
    np.testing.assert_allclose(check_landmarks_inside(voxel_to_world(vox, ROT_ANISO), shape, ROT_ANISO), vox, atol=1e-9)
    vox[3] = [5, 12.2, 5]
    with pytest.raises(DataError, match=r"outside.*nose_tip") as e:
        check_landmarks_inside(voxel_to_world(vox, ROT_ANISO), shape, ROT_ANISO, tmp_path / "c.mrk.json")
    assert "c.mrk.json" in str(e.value) and "right_eye" not in str(e.value)


@pytest.mark.parametrize("name,case", [("case_007.nii.gz", "case_007"), ("A.B.NII.GZ", "A.B"), ("x.nii", "x"),
                                       ("x.nii.gz.tmp", None), ("x.mrk.json", None), ("nii.gz", None)])
def test_volume_case_id(name: str, case: str | None) -> None:
    assert volume_case_id(Path("images") / name) == case
