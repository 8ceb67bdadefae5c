"""Array orientation: ``reorient_axes`` keeps the world, and the detector's ``axis_order`` /
``flip_axes`` (``rpn-lib detect --axis-order/--flip-axes``) bring a volume to the layout its
model was trained on."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from rpn_lib.cli import main
from rpn_lib.data.geometry import reorient_axes, voxel_to_world, world_to_voxel
from rpn_lib.data.io import load_landmarks, save_volume
from rpn_lib.detect import Detector

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "ig-rpn-cpu-small" / "model.pt"

AFFINE = np.array([[0.0, -2.0, 0.3, 10.0],
                   [1.5, 0.2, 0.0, -4.0],
                   [0.1, 0.0, 3.0, 7.0],
                   [0.0, 0.0, 0.0, 1.0]])


@pytest.mark.parametrize("order,flip", [((0, 1, 2), ()), ((0, 1, 2), (0,)), ((2, 0, 1), (1, 2)),
                                        ((1, 2, 0), (0, 1, 2)), ((2, 1, 0), (2,))])
def test_reorient_axes_keeps_every_voxel_in_place(order, flip) -> None:
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    out, aff = reorient_axes(vol, AFFINE, order, flip)
    assert out.shape == tuple(vol.shape[a] for a in order) and out.flags["C_CONTIGUOUS"]
    ijk = np.array(list(itertools.product(*[range(n) for n in out.shape])))
    old = np.rint(world_to_voxel(voxel_to_world(ijk, aff), AFFINE)).astype(int)
    np.testing.assert_array_equal(out[tuple(ijk.T)], vol[tuple(old.T)])
    # and the inverse brings back the original exactly
    inv = tuple(int(np.argwhere(np.array(order) == a)[0, 0]) for a in range(3))
    undo_vol, undo_aff = reorient_axes(*reorient_axes(out, aff, (0, 1, 2), flip), inv)
    np.testing.assert_array_equal(undo_vol, vol)
    np.testing.assert_allclose(undo_aff, AFFINE, atol=1e-12)


@pytest.mark.parametrize("order,flip,what", [((0, 1), (), "permutation"), ((0, 1, 1), (), "permutation"),
                                             ((0, 1, 2), (0, 0), "distinct"), ((0, 1, 2), (3,), "distinct")])
def test_bad_axes_are_refused(order, flip, what) -> None:
    with pytest.raises(ValueError, match=what):
        reorient_axes(np.zeros((2, 2, 2)), np.eye(4), order, flip)
    with pytest.raises(ValueError, match=what):  # by the detector too, before it reads any volume
        Detector.from_file(SHIPPED, device="cpu", axis_order=order, flip_axes=flip)


@pytest.fixture(scope="module")
def face_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A synthetic test face as a NIfTI file, and the same face with its array reversed along the
    beam (axis 0) and the affine changed to match: the same image in the world."""
    from rpn_lib.data.dataset import synthetic_split_cases

    case = synthetic_split_cases("test", n=152, n_test=32, seed=0, preset="cpu-small")[0]
    root = tmp_path_factory.mktemp("orientation")
    save_volume(root / "face.nii.gz", case.volume, case.affine)
    flipped, flipped_affine = reorient_axes(case.volume, case.affine, flip=(0,))
    save_volume(root / "face_beam_reversed.nii.gz", flipped, flipped_affine)
    return {"root": root, "truth": case.landmarks_world}


def _detect(face_files: dict, name: str, *options: str) -> np.ndarray:
    out = face_files["root"] / f"out-{name}-{'-'.join(options) or 'plain'}"
    assert main(["detect", "--model", str(SHIPPED), str(face_files["root"] / f"{name}.nii.gz"), "--out", str(out),
                 "--device", "cpu", *options]) == 0
    return load_landmarks(out / f"{name}.mrk.json")


def test_flip_axes_undoes_a_reversed_beam(face_files: dict, capsys: pytest.CaptureFixture) -> None:
    """The shipped model sees arrays: with the beam reversed it no longer finds the face; told
    so (--flip-axes 0), it gives the landmarks of the original file."""
    truth = face_files["truth"]
    plain = _detect(face_files, "face")
    capsys.readouterr()
    reversed_plain = _detect(face_files, "face_beam_reversed")
    warning = capsys.readouterr().err
    reversed_told = _detect(face_files, "face_beam_reversed", "--flip-axes", "0")
    err = lambda p: float(np.linalg.norm(p - truth, axis=1).mean())  # noqa: E731
    np.testing.assert_allclose(reversed_told, plain, atol=1e-3)
    assert err(plain) < 10.0 and err(reversed_plain) > 2 * err(plain), (err(plain), err(reversed_plain))
    assert "no landmark scored above" in warning and "--flip-axes" in warning


def test_bad_orientation_options_exit_2(face_files: dict, capsys: pytest.CaptureFixture) -> None:
    command = ["detect", "--model", str(SHIPPED), str(face_files["root"] / "face.nii.gz"),
               "--out", str(face_files["root"] / "bad"), "--device", "cpu"]
    for option, message in [(["--flip-axes", "0,0"], "distinct axes"), (["--axis-order", "x"], "comma-separated"),
                            (["--axis-order", "0,1"], "--axis-order needs all three axes")]:
        assert main(command + option) == 2
        assert message in capsys.readouterr().err
    assert not (face_files["root"] / "bad").exists()
