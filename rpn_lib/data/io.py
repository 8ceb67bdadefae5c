"""Reading and writing real data: NIfTI volumes and landmark files.

Volumes are NIfTI (``.nii`` or ``.nii.gz``), read with nibabel; their affine maps voxels
(array axes 0, 1, 2) to world RAS millimetres. Landmarks are read from

* 3D Slicer markups JSON (``.mrk.json``): ``{"markups": [{"type": "Fiducial",
  "coordinateSystem": "LPS" | "RAS", "coordinateUnits": "mm", "controlPoints": [{"label":
  ..., "position": [x, y, z]}, ...]}]}``; positions are converted to RAS, or
* CSV (``.csv``) with a header ``label,x,y,z`` in world RAS mm. Choice: headers ``label,r,a,s``
  (RAS) and ``label,l,p,s`` (LPS), the columns of Slicer's control-point table export, are
  read too; extra columns are ignored and lines starting with ``#`` are comments.

Every problem with a user's file raises :class:`~rpn_lib.errors.DataError` with the file's
path and the problem in its message.
"""

from __future__ import annotations

import csv
import io
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from rpn_lib.data.geometry import (
    check_affine,
    lps_to_ras,
    ras_to_lps,
    spacing_from_affine,
    world_to_voxel,
)
from rpn_lib.errors import DataError
from rpn_lib.fileio import atomic_path, atomic_write, atomic_write_json
from rpn_lib.landmarks import LANDMARK_NAMES

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
"""The ``@schema`` written into markups files (the current markups JSON schema of Slicer)."""

VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
LANDMARK_SUFFIXES: tuple[str, ...] = (".mrk.json", ".json", ".csv", ".fcsv")
"""Landmark files :func:`load_landmarks` reads; :func:`save_landmarks` writes all but ``.fcsv``."""
_WRITABLE_LANDMARK_SUFFIXES: tuple[str, ...] = (".mrk.json", ".json", ".csv")

# Errors nibabel and the gzip/zlib layers raise on unreadable or truncated files.
_READ_ERRORS = (EOFError, zlib.error, OSError, ValueError, ImageFileError, HeaderDataError, MemoryError)
# NIfTI xyz units -> factor to mm. "unknown" is taken as mm (what nearly every tool writes).
_UNIT_TO_MM = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 1e-3}


def _has_suffix(path: Path, suffixes: Sequence[str]) -> str | None:
    name = path.name.lower()
    return next((s for s in suffixes if name.endswith(s)), None)


def volume_case_id(path: str | Path) -> str | None:
    """A NIfTI file's case id: its name without ``.nii.gz`` / ``.nii`` (any case); None for
    another kind of file. ``images/case_007.nii.gz`` -> ``"case_007"``."""
    p = Path(path)
    suffix = _has_suffix(p, VOLUME_SUFFIXES)
    return None if suffix is None else p.name[: -len(suffix)]


# --------------------------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------------------------


@dataclass
class Volume:
    """A 3D image and its geometry.

    Attributes:
        array: ``(D, H, W)`` float32 intensities (array axes = the affine's i, j, k).
        affine: ``(4, 4)`` float64 voxel -> world RAS mm.
        path: the file it was read from (None if built in memory).
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def spacing_mm(self) -> np.ndarray:
        """``(3,)`` voxel spacing along the array axes, mm."""
        return spacing_from_affine(self.affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]


def load_volume(path: str | Path) -> Volume:
    """Read a 3D NIfTI volume (``.nii`` or ``.nii.gz``) and validate it.

    Choices: a 4D (or 5D) image whose extra dimensions all have size 1 is squeezed to 3D; a
    real time series or vector image is refused. If the header declares spatial units of
    metres or microns, the affine is converted to mm ("unknown" units are taken as mm).

    Args:
        path: the image file.

    Returns:
        A :class:`Volume` with a float32 array and a float64 affine.

    Raises:
        DataError: naming the file, if it is missing, not NIfTI, unreadable or truncated,
            not 3D, empty (no voxel, or every voxel 0), complex or colour-valued, has NaN or
            infinite voxels, or has a singular or non-finite affine.
    """
    p = Path(path)
    if _has_suffix(p, VOLUME_SUFFIXES) is None:
        raise DataError(f"not a NIfTI file (expected one of {', '.join(VOLUME_SUFFIXES)})", p)
    if not p.is_file():
        raise DataError("image file not found", p)
    try:
        img = nib.load(p, mmap=False)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise DataError(f"not a NIfTI image ({type(img).__name__})", p)
        kind = np.dtype(img.get_data_dtype()).kind
        if kind not in "biuf":
            what = "complex" if kind == "c" else "colour or structured"
            raise DataError(f"voxels are {what} ({img.get_data_dtype()}), not intensities: save one real "
                            f"channel (for complex data, its magnitude) as the image", p)
        array = np.asarray(img.get_fdata(dtype=np.float32))
        affine = img.affine
        units = img.header.get_xyzt_units()[0]
    except DataError:
        raise
    except _READ_ERRORS as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read the image (truncated or corrupt file?): {detail}", p) from e
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(f"expected a 3D image, got {array.ndim}D with shape {array.shape}", p)
    if array.size == 0:
        raise DataError(f"image is empty (shape {array.shape})", p)
    if min(array.shape) < 2:
        raise DataError(f"image is not a volume: shape {array.shape} has an axis of 1 voxel", p)
    if affine is None:
        raise DataError("image has no affine", p)
    affine = np.array(affine, dtype=np.float64)
    scale = _UNIT_TO_MM.get(units, 1.0)
    if scale != 1.0:
        affine[:3, :] *= scale
    affine = check_affine(affine, p)
    finite = np.isfinite(array)
    if not finite.all():
        raise DataError(f"image has {int((~finite).sum())} NaN or infinite voxels", p)
    if not np.any(array):
        raise DataError("image is empty (every voxel is 0)", p)
    return Volume(np.ascontiguousarray(array, dtype=np.float32), affine, p)


def save_volume(path: str | Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a 3D volume as NIfTI, atomically (the file is complete or absent).

    Integer and float32 arrays keep their dtype; float64 is stored as float32 and bool as
    uint8. Both sform and qform are set (code 1, scanner) from ``affine``; a sheared affine
    survives exactly in the sform, which nibabel and Slicer read first.

    Args:
        path: target ``.nii`` or ``.nii.gz`` (compressed by suffix).
        array: ``(D, H, W)`` data.
        affine: ``(4, 4)`` voxel -> world RAS mm.

    Returns:
        The path written.
    """
    p = Path(path)
    if _has_suffix(p, VOLUME_SUFFIXES) is None:
        raise ValueError(f"{p}: volume file name must end with .nii or .nii.gz")
    a = np.asarray(array)
    if a.ndim != 3:
        raise ValueError(f"volume must be 3D (D, H, W), got shape {a.shape}")
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8)
    aff = check_affine(affine, p)
    img = nib.Nifti1Image(a, aff)
    img.header.set_xyzt_units(xyz="mm")
    img.set_sform(aff, code=1)
    img.set_qform(aff, code=1)
    with atomic_path(p) as tmp:
        nib.save(img, tmp)
    return p


# --------------------------------------------------------------------------------------------
# Landmarks
# --------------------------------------------------------------------------------------------


def _position(p: Path, label: str, position: Any) -> np.ndarray:
    """A validated ``(3,)`` float64 position."""
    try:
        pos = np.asarray(position, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"landmark {label!r} has a non-numeric position {position!r}", p) from None
    if pos.shape != (3,):
        raise DataError(f"landmark {label!r} position must have 3 numbers, got {position!r}", p)
    if not np.all(np.isfinite(pos)):
        raise DataError(f"landmark {label!r} has a NaN or infinite coordinate {pos.tolist()}", p)
    return pos


def _collect(
    p: Path,
    labelled: list[tuple[str, np.ndarray]],
    label_map: Mapping[str, str] | None,
    names: Sequence[str],
) -> np.ndarray:
    """Order ``(label, RAS position)`` pairs as ``names``; refuse missing and duplicated labels."""
    found: dict[str, np.ndarray] = {}
    for label, pos in labelled:
        name = label_map.get(label, label) if label_map else label
        if name not in names:
            continue  # unknown extra labels are ignored
        if name in found:
            raise DataError(f"landmark {name!r} appears more than once (label {label!r})", p)
        found[name] = pos
    missing = [n for n in names if n not in found]
    if missing:
        seen = sorted({lab for lab, _ in labelled})
        hint = ("; map your labels with label_map (e.g. {'LE': 'left_eye'}; on the command line "
                "--label-map LE=left_eye,...)" if label_map is None else "")
        raise DataError(f"missing landmark(s) {missing}; labels in the file: {seen}{hint}", p)
    return np.stack([found[n] for n in names]).astype(np.float64)


def _read_text(p: Path) -> str:
    if not p.is_file():
        raise DataError("landmark file not found", p)
    try:
        return p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the landmark file: {e}", p) from e


def _load_markups(p: Path, label_map: Mapping[str, str] | None, names: Sequence[str]) -> np.ndarray:
    text = _read_text(p)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", p) from None
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not isinstance(markups, list) or not markups:
        raise DataError("no markups in the file (expected a Slicer markups JSON with a 'markups' list)", p)
    labelled: list[tuple[str, np.ndarray]] = []
    for m in markups:
        if not isinstance(m, dict):
            raise DataError("a markups entry is not an object", p)
        system = m.get("coordinateSystem", "LPS")  # the schema's default is LPS
        if not isinstance(system, str) or system.upper() not in ("LPS", "RAS"):
            raise DataError(f"unknown coordinateSystem {system!r} (expected 'LPS' or 'RAS')", p)
        units = m.get("coordinateUnits", "mm")
        if units != "mm":
            raise DataError(f"coordinateUnits must be 'mm', got {units!r}", p)
        points = m.get("controlPoints", [])
        if not isinstance(points, list):
            raise DataError("'controlPoints' is not a list", p)
        for cp in points:
            if not isinstance(cp, dict) or "label" not in cp:
                raise DataError(f"a control point has no label: {cp!r}", p)
            label = str(cp["label"])
            # Choice: a point Slicer marks as not placed ("undefined", "preview") is skipped.
            if cp.get("positionStatus", "defined") != "defined":
                continue
            if "position" not in cp:
                raise DataError(f"control point {label!r} has no position", p)
            pos = _position(p, label, cp["position"])
            labelled.append((label, lps_to_ras(pos) if system.upper() == "LPS" else pos))
    return _collect(p, labelled, label_map, names)


def _labelled_rows(p: Path, rows: list[list[str]], xyz_columns: list[int], label_column: int, n_columns: int,
                   system: str, what: str) -> list[tuple[str, np.ndarray]]:
    """``(label, RAS position)`` of each CSV row: its label and x, y, z cells, read in ``system``
    (``"LPS"`` or ``"RAS"``). ``what`` names a row in the errors ("CSV data row")."""
    labelled: list[tuple[str, np.ndarray]] = []
    for n, row in enumerate(rows, start=1):
        if len(row) <= max(xyz_columns + [label_column]):
            raise DataError(f"{what} {n} has {len(row)} columns, expected {n_columns}: {row}", p)
        label = row[label_column].strip()
        cells = [row[i].strip() for i in xyz_columns]
        try:
            values = [float(c) for c in cells]
        except ValueError:
            raise DataError(f"{what} {n} (label {label!r}): {cells} are not all numbers", p) from None
        pos = _position(p, label, values)
        labelled.append((label, lps_to_ras(pos) if system == "LPS" else pos))
    return labelled


_CSV_COLUMNS = ((("x", "y", "z"), "RAS"), (("r", "a", "s"), "RAS"), (("l", "p", "s"), "LPS"))


def _load_csv(p: Path, label_map: Mapping[str, str] | None, names: Sequence[str]) -> np.ndarray:
    text = _read_text(p)
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise DataError("landmark CSV is empty (expected a header 'label,x,y,z')", p)
    try:
        rows = list(csv.reader(lines))
    except csv.Error as e:
        raise DataError(f"invalid CSV: {e}", p) from None
    header = [h.strip().lower() for h in rows[0]]
    for cols, system in _CSV_COLUMNS:
        if "label" in header and all(c in header for c in cols):
            idx = [header.index(c) for c in cols]
            break
    else:
        raise DataError(f"CSV header must be 'label,x,y,z' (RAS mm), got {','.join(rows[0])!r}", p)
    labelled = _labelled_rows(p, rows[1:], idx, header.index("label"), len(header), system, "CSV data row")
    return _collect(p, labelled, label_map, names)


# The columns Slicer writes in a .fcsv file (versions 4.6 to 5.x), used when its header has none.
_FCSV_COLUMNS = ("id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc",
                 "associatedNodeID")
# "# CoordinateSystem = ..." of a .fcsv: Slicer 4.11 and later write the name, earlier versions
# the number of vtkMRMLStorageNode's enum (0 RAS, 1 LPS).
_FCSV_SYSTEMS = {"RAS": "RAS", "0": "RAS", "LPS": "LPS", "1": "LPS"}


def _load_fcsv(p: Path, label_map: Mapping[str, str] | None, names: Sequence[str]) -> np.ndarray:
    """Slicer's legacy fiducial list: ``# key = value`` header lines, then one CSV row per point.

    Choice: a file whose header names no coordinate system is read as RAS, what Slicer wrote
    before it recorded one."""
    text = _read_text(p)
    columns, system, data = list(_FCSV_COLUMNS), "RAS", []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            key, eq, value = line.lstrip("# \t").partition("=")
            key, value = key.strip().lower(), value.strip()
            if eq and key == "coordinatesystem":
                if value.upper() not in _FCSV_SYSTEMS:
                    raise DataError(f"unknown CoordinateSystem {value!r} (expected LPS, RAS, 0 or 1)", p)
                system = _FCSV_SYSTEMS[value.upper()]
            elif eq and key == "columns":
                columns = [c.strip() for c in value.split(",")]
            continue
        data.append(line)
    lower = [c.lower() for c in columns]
    if not all(c in lower for c in ("x", "y", "z", "label")):
        raise DataError(f"the '# columns' line must name x, y, z and label, got {','.join(columns)!r}", p)
    if not data:
        raise DataError("the .fcsv file has no points", p)
    try:
        rows = list(csv.reader(data))
    except csv.Error as e:
        raise DataError(f"invalid .fcsv row: {e}", p) from None
    idx = [lower.index(c) for c in ("x", "y", "z")]
    labelled = _labelled_rows(p, rows, idx, lower.index("label"), len(columns), system, "point row")
    return _collect(p, labelled, label_map, names)


def load_landmarks(
    path: str | Path,
    label_map: Mapping[str, str] | None = None,
    names: Sequence[str] = LANDMARK_NAMES,
) -> np.ndarray:
    """Read landmarks from a Slicer markups JSON (``.mrk.json``), a CSV file, or a legacy Slicer
    fiducial list (``.fcsv``).

    Args:
        path: ``.mrk.json`` (or ``.json``) markups, ``.csv`` with header ``label,x,y,z``
            (``label,l,p,s`` for LPS), or ``.fcsv`` (its ``# CoordinateSystem`` line says LPS
            or RAS; none: RAS).
        label_map: maps the file's labels to ``names`` (e.g. ``{"LE": "left_eye"}``); labels
            not in the map are used as they are. Labels that match none of ``names`` are
            ignored.
        names: the labels to return, in order (default: the five landmarks, class order).

    Returns:
        ``(len(names), 3)`` world RAS mm, in ``names`` order.

    Raises:
        DataError: naming the file: missing or unreadable, invalid JSON or CSV, no markups
            or points, a missing or duplicated label, a NaN or infinite coordinate, an unknown
            coordinate system, or units other than mm.
    """
    p = Path(path)
    suffix = _has_suffix(p, LANDMARK_SUFFIXES)
    if suffix is None:
        raise DataError(f"unknown landmark file type (expected one of {', '.join(LANDMARK_SUFFIXES)})", p)
    if suffix == ".csv":
        return _load_csv(p, label_map, names)
    if suffix == ".fcsv":
        return _load_fcsv(p, label_map, names)
    return _load_markups(p, label_map, names)


def save_landmarks(
    path: str | Path,
    points_world_ras: np.ndarray,
    names: Sequence[str] = LANDMARK_NAMES,
    coordinate_system: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write landmarks as Slicer markups JSON or CSV (by suffix), atomically.

    Args:
        path: ``.mrk.json`` (or ``.json``) for markups, ``.csv`` for CSV.
        points_world_ras: ``(len(names), 3)`` world RAS mm.
        names: the label of each row.
        coordinate_system: ``"LPS"`` or ``"RAS"``. Default: LPS for markups (what Slicer
            writes), RAS for CSV (header ``label,x,y,z``); an LPS CSV has header
            ``label,l,p,s``.
        extra: JSON-serialisable metadata. Markups: stored under the top-level key
            ``"rpn_lib"`` (Slicer ignores it); CSV: one ``# key: <json>`` comment line per key
            before the header.

    Returns:
        The path written.
    """
    p = Path(path)
    suffix = _has_suffix(p, _WRITABLE_LANDMARK_SUFFIXES)
    if suffix is None:
        legacy = " (Slicer's legacy .fcsv is read, not written: Slicer reads .mrk.json)" if p.name.lower().endswith(
            ".fcsv") else ""
        raise ValueError(f"{p}: landmark file name must end with one of "
                         f"{', '.join(_WRITABLE_LANDMARK_SUFFIXES)}{legacy}")
    pts = np.asarray(points_world_ras, dtype=np.float64)
    if pts.shape != (len(names), 3):
        raise ValueError(f"points_world_ras must have shape ({len(names)}, 3), got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("points_world_ras has NaN or infinite coordinates")
    system = (coordinate_system or ("RAS" if suffix == ".csv" else "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise ValueError(f"coordinate_system must be 'LPS' or 'RAS', got {coordinate_system!r}")
    out = ras_to_lps(pts) if system == "LPS" else pts
    if suffix == ".csv":
        buf = io.StringIO()
        for key, value in (extra or {}).items():
            buf.write(f"# {key}: {json.dumps(value)}\n")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["label", *(("x", "y", "z") if system == "RAS" else ("l", "p", "s"))])
        for name, xyz in zip(names, out):
            writer.writerow([name, *(repr(float(v)) for v in xyz)])
        atomic_write(p, buf.getvalue())
        return p
    doc: dict[str, Any] = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [{
            "type": "Fiducial",
            "coordinateSystem": system,
            "coordinateUnits": "mm",
            "locked": False,
            "labelFormat": "%N-%d",
            "controlPoints": [
                {
                    "id": str(k + 1),
                    "label": name,
                    "description": "",
                    "associatedNodeID": "",
                    "position": [float(v) for v in xyz],
                    "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
                    "selected": True,
                    "locked": False,
                    "visibility": True,
                    "positionStatus": "defined",
                }
                for k, (name, xyz) in enumerate(zip(names, out))
            ],
        }],
    }
    if extra:
        doc["rpn_lib"] = dict(extra)
    atomic_write_json(p, doc)
    return p


def check_landmarks_inside(
    points_world: np.ndarray,
    volume_shape: Sequence[int],
    affine: np.ndarray,
    path: str | Path | None = None,
    names: Sequence[str] = LANDMARK_NAMES,
) -> np.ndarray:
    """Refuse landmarks outside the volume; return their voxel coordinates.

    A point is inside when its voxel coordinate lies in ``[-0.5, n - 0.5]`` on every axis (the
    extent of the voxels, not only of their centres).

    Args:
        points_world: ``(N, 3)`` world RAS mm.
        volume_shape: ``(D, H, W)``.
        affine: ``(4, 4)`` voxel -> world mm of the volume.
        path: the landmark file, named in the error.
        names: the label of each point, named in the error.

    Returns:
        ``(N, 3)`` voxel coordinates.

    Raises:
        DataError: listing every landmark that falls outside, with its voxel coordinates.
    """
    vox = world_to_voxel(points_world, affine)
    tol = 1e-6  # round-off of the affine round trip on the boundary
    hi = np.asarray(volume_shape[:3], dtype=np.float64) - 0.5
    outside = np.any((vox < -0.5 - tol) | (vox > hi + tol), axis=1)
    if np.any(outside):
        bad = ", ".join(
            f"{names[k] if k < len(names) else k} at voxel {np.round(vox[k], 1).tolist()}"
            for k in np.flatnonzero(outside)
        )
        raise DataError(f"landmark(s) outside the volume of shape {tuple(volume_shape[:3])}: {bad}", path)
    return vox
