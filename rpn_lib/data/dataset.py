"""A landmark dataset on disk: the folder format, a lazy reader, and the synthetic writer.

Folder format (the same for real and synthetic data)::

    <root>/
      images/<case>.nii.gz        (or .nii) one 3D volume per case
      landmarks/<case>.mrk.json   (or .csv, or Slicer's legacy .fcsv) its five landmarks, matched by case id
      splits.json                 optional: {"train": [case ids], "test": [case ids]}
      README.md                   optional dataset card

Case ids are file names without the suffix; cases are listed in sorted order. Landmark
labels must be the five names of :data:`rpn_lib.landmarks.LANDMARK_NAMES`, or be mapped to
them with ``label_map``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rpn_lib.data.geometry import world_to_voxel
from rpn_lib.data.io import (
    check_landmarks_inside,
    load_landmarks,
    load_volume,
    save_landmarks,
    save_volume,
    volume_case_id,
)
from rpn_lib.errors import DataError
from rpn_lib.fileio import atomic_write, atomic_write_json
from rpn_lib.landmarks import LANDMARK_NAMES
from rpn_lib.presets import Preset, get_preset

LANDMARK_FILE_SUFFIXES: tuple[str, ...] = (".mrk.json", ".csv", ".fcsv")
SPLITS_FILE = "splits.json"
CARD_FILE = "README.md"
SYNTH_META_FILE = "synth.json"


@dataclass
class Case:
    """One loaded case.

    Attributes:
        case_id: file name of the image without its suffix.
        volume: ``(D, H, W)`` float32 intensities.
        affine: ``(4, 4)`` voxel -> world RAS mm.
        landmarks_world: ``(5, 3)`` RAS mm, in ``LANDMARK_NAMES`` order.
        image_path: the image file.
        landmarks_path: the landmark file.
    """

    case_id: str
    volume: np.ndarray
    affine: np.ndarray
    landmarks_world: np.ndarray
    image_path: Path | None = None
    landmarks_path: Path | None = None

    @property
    def landmarks_vox(self) -> np.ndarray:
        """``(5, 3)`` landmark voxel coordinates in this case's volume."""
        return world_to_voxel(self.landmarks_world, self.affine)


class LandmarkDataset:
    """The cases of a dataset folder (or of one split of it), loaded lazily.

    Construction checks the folder structure (cheap); each ``dataset[i]`` reads and
    validates one case (image, landmarks, landmarks inside the volume). Call
    :meth:`validate` to check every case up front.

    Args:
        root: the dataset folder.
        split: a key of ``splits.json`` (e.g. ``"train"``, ``"test"``), or None for all cases.
        label_map: maps the landmark files' labels to ``LANDMARK_NAMES`` (see
            :func:`rpn_lib.data.io.load_landmarks`).

    Raises:
        DataError: missing folder or ``images/`` folder, no images, an image without a
            landmark file (or with two landmark files), two images with the same case id, a
            split asked without ``splits.json``, an invalid ``splits.json``, an unknown split
            name, or a split that lists a missing case.

    Warns:
        UserWarning: the ``"test"`` split shares cases with ``"train"`` (test scores on them
            would flatter a model trained on ``"train"``; validation splits are checked by
            :class:`rpn_lib.validation.Validator` against the cases trained on).
    """

    def __init__(
        self, root: str | Path, split: str | None = None, label_map: Mapping[str, str] | None = None
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.label_map = dict(label_map) if label_map else None
        if not self.root.is_dir():
            raise DataError("dataset folder not found", self.root)
        images_dir = self.root / "images"
        if not images_dir.is_dir():
            raise DataError("dataset folder has no images/ folder (expected images/<case>.nii.gz)", self.root)
        images: dict[str, Path] = {}
        for f in sorted(images_dir.iterdir()):
            cid = volume_case_id(f)
            if cid is None or cid.startswith(".") or not f.is_file():
                continue  # hidden files include interrupted atomic writes
            if cid in images:
                raise DataError(f"two images for case {cid!r}: {images[cid].name} and {f.name}", images_dir)
            images[cid] = f
        if not images:
            raise DataError("no images (*.nii.gz or *.nii) in the images/ folder", images_dir)
        landmarks: dict[str, Path] = {}
        unmatched: list[str] = []
        for cid in images:
            found = [self.root / "landmarks" / f"{cid}{s}" for s in LANDMARK_FILE_SUFFIXES]
            found = [f for f in found if f.is_file()]
            if len(found) > 1:
                raise DataError(f"case {cid!r} has two landmark files: {[f.name for f in found]}", found[0].parent)
            if not found:
                unmatched.append(cid)
            else:
                landmarks[cid] = found[0]
        if unmatched:
            shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
            raise DataError(
                f"image(s) without a landmark file landmarks/<case>.mrk.json, .csv or .fcsv: {shown}", self.root
            )
        self.splits = self._read_splits()
        ids = sorted(images)
        if split is not None:
            if self.splits is None:
                raise DataError(f"split {split!r} asked for, but the dataset has no {SPLITS_FILE}: use every case "
                                "(split=None; on the command line --split all) or write a "
                                f'{SPLITS_FILE} such as {{"train": [case ids], "test": [case ids]}}', self.root)
            if split not in self.splits:
                raise DataError(f"unknown split {split!r}; {SPLITS_FILE} has {sorted(self.splits)}", self.root / SPLITS_FILE)
            wanted = self.splits[split]
            missing = [c for c in wanted if c not in images]
            if missing:
                raise DataError(f"split {split!r} lists case(s) with no image: {missing[:5]}", self.root / SPLITS_FILE)
            keep = set(wanted)
            ids = [c for c in ids if c in keep]
            # Validation splits are checked against the cases actually trained on by rpn_lib.validation.
            shared = sorted(keep & set(self.splits.get("train", []))) if split == "test" else []
            if shared:
                warnings.warn(f"{self.root / SPLITS_FILE}: {len(shared)} case(s) of split 'test' are also in "
                              f"'train' ({', '.join(shared[:5])}{' ...' if len(shared) > 5 else ''}): a model "
                              "trained on 'train' scores too well on them", stacklevel=2)
        self.case_ids: list[str] = ids
        self._images = images
        self._landmarks = landmarks

    def _read_splits(self) -> dict[str, list[str]] | None:
        f = self.root / SPLITS_FILE
        if not f.is_file():
            return None
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read: {e}", f) from e
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", f) from None
        if not isinstance(doc, dict) or not all(
            isinstance(v, list) and all(isinstance(c, str) for c in v) for v in doc.values()
        ):
            raise DataError('expected {"split name": [case ids], ...}', f)
        return {k: list(v) for k, v in doc.items()}

    @property
    def card_path(self) -> Path | None:
        """The dataset card ``README.md``, if there is one."""
        f = self.root / CARD_FILE
        return f if f.is_file() else None

    def image_path(self, i: int) -> Path:
        """Image file of case ``i``."""
        return self._images[self.case_ids[i]]

    def landmarks_path(self, i: int) -> Path:
        """Landmark file of case ``i``."""
        return self._landmarks[self.case_ids[i]]

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, i: int) -> Case:
        """Read and validate case ``i`` (negative indices count from the end).

        Raises:
            IndexError: ``i`` out of range.
            DataError: an unreadable or invalid image or landmark file, or a landmark
                outside the volume (naming the landmark file).
        """
        if not -len(self) <= i < len(self):
            raise IndexError(f"case index {i} out of range for {len(self)} cases")
        cid = self.case_ids[i]
        vol = load_volume(self._images[cid])
        lm_path = self._landmarks[cid]
        lms = load_landmarks(lm_path, label_map=self.label_map)
        check_landmarks_inside(lms, vol.array.shape, vol.affine, lm_path)
        return Case(cid, vol.array, vol.affine, lms, self._images[cid], lm_path)

    def __iter__(self) -> Iterator[Case]:
        for i in range(len(self)):
            yield self[i]

    def validate(self, progress: bool = False) -> None:
        """Load every case once; raise the first :class:`~rpn_lib.errors.DataError` found."""
        for i in tqdm(range(len(self)), desc="validate", disable=not progress):
            self[i]

    def __repr__(self) -> str:
        s = f", split={self.split!r}" if self.split is not None else ""
        return f"LandmarkDataset({str(self.root)!r}{s}, {len(self)} cases)"


# --------------------------------------------------------------------------------------------
# Synthetic dataset writer
# --------------------------------------------------------------------------------------------


def _generate_case(seed: int, preset: str | Preset, difficulty: str, case_id: str) -> Any:
    """One phantom from :func:`rpn_lib.data.synth.generate_from_preset` (a seam for tests)."""
    from rpn_lib.data import synth

    return synth.generate_from_preset(seed, preset, difficulty, case_id)


def _generator_version() -> str | None:
    try:
        from rpn_lib.data import synth
    except ImportError:
        return None
    v = getattr(synth, "GENERATOR_VERSION", None) or getattr(synth, "__version__", None)
    return None if v is None else str(v)


def case_seeds(seed: int, n: int) -> list[int]:
    """Per-case generator seeds derived from the dataset seed.

    ``numpy.random.SeedSequence(seed).spawn(n)``, each child's first 32-bit state word: a
    case's seed depends only on ``seed`` and its index, not on ``n``, so case ``i`` is the
    same phantom in a 10-case and a 152-case dataset of the same seed.
    """
    children = np.random.SeedSequence(seed).spawn(n)
    return [int(c.generate_state(1)[0]) for c in children]


def synthetic_case_ids(n: int) -> list[str]:
    """Case ids of an ``n``-case synthetic dataset: ``case_000``, ``case_001``, ..."""
    width = max(3, len(str(n - 1)))
    return [f"case_{i:0{width}d}" for i in range(n)]


def random_split(case_ids: list[str], n_test: int, seed: int) -> dict[str, list[str]]:
    """Random train/test split (paper Sec. 3: 32 of 152 volumes for testing, at random).

    The test cases are drawn with ``numpy.random.default_rng([seed, 1])`` (a stream separate
    from the phantoms'); both lists are sorted.
    """
    if not 0 <= n_test <= len(case_ids):
        raise ValueError(f"n_test must be between 0 and {len(case_ids)}, got {n_test}")
    rng = np.random.default_rng([seed, 1])
    test = set(rng.choice(len(case_ids), size=n_test, replace=False).tolist())
    return {
        "train": [c for i, c in enumerate(case_ids) if i not in test],
        "test": [c for i, c in enumerate(case_ids) if i in test],
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        if x.size > 64:  # keep synth.json small: large arrays are summarised
            return f"array{tuple(x.shape)} {x.dtype}"
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)


def _card(
    out: Path, preset: Preset, difficulty: str, seed: int, n: int, splits: dict[str, list[str]],
    generator_version: str | None,
) -> str:
    from rpn_lib import __version__

    title = out.resolve().name
    shape = " x ".join(str(s) for s in preset.shape_vox)
    fov = " x ".join(f"{s:.1f}" for s in preset.field_of_view_mm)
    names = ", ".join(f"{k + 1}. `{n_}`" for k, n_ in enumerate(LANDMARK_NAMES))
    return f"""# Synthetic fetal-face landmark dataset `{title}`

Synthetic 3D ultrasound-like volumes of a fetal-face phantom with five landmarks, written by
`rpn_lib.data.dataset.write_synthetic_dataset`. No patient data: every volume is generated
from a seed and can be regenerated exactly.

| item | value |
|---|---|
| cases | {n} ({len(splits['train'])} train, {len(splits['test'])} test) |
| preset | `{preset.name}` |
| voxel spacing | {preset.spacing_mm} mm (isotropic) |
| volume shape | {shape} voxels ({fov} mm) |
| difficulty | `{difficulty}` |
| dataset seed | {seed} |
| per-case seeds | `numpy.random.SeedSequence({seed}).spawn(n)`, first 32-bit word of each |
| split | random, `numpy.random.default_rng([{seed}, 1])` picks the test cases |
| generator | `rpn_lib.data.synth` version {generator_version or 'unknown'} |
| library | `rpn_lib` {__version__} |
| written | {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} |

## Layout

- `images/<case>.nii.gz`: uint8 volumes; the NIfTI affine maps voxels to world RAS mm.
- `landmarks/<case>.mrk.json`: 3D Slicer markups (coordinateSystem LPS, mm), labels in class
  order: {names}. "Left" and "right" are the fetus's own.
- `splits.json`: `{{"train": [...], "test": [...]}}`.
- `{SYNTH_META_FILE}`: the generator's parameters per case (seed, pose, ...).

Regenerate with `rpn-lib synth --out {title} --n {n} --n-test {len(splits['test'])} --seed {seed} --preset {preset.name} --difficulty {difficulty}`
(a custom preset is recorded in `{SYNTH_META_FILE}`).
"""


def write_synthetic_dataset(
    out: str | Path,
    n: int = 152,
    n_test: int = 32,
    seed: int = 0,
    preset: str | Preset = "cpu-small",
    difficulty: str = "standard",
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Generate ``n`` phantoms and write them as a dataset folder (see the module docstring).

    Defaults follow the paper's data (Sec. 3): 152 volumes, 32 of them a random test set.
    Files are written atomically; ``splits.json``, ``synth.json`` and the card ``README.md``
    are written last, so a dataset interrupted half-way has no card.

    Args:
        out: the dataset folder. It must be absent or empty unless ``overwrite``.
        n: number of cases (ids ``case_000`` ...; more digits when ``n > 1000``).
        n_test: cases in the random test split; the others are the train split.
        seed: dataset seed: per-case seeds (:func:`case_seeds`) and the split
            (:func:`random_split`) derive from it.
        preset: preset name or :class:`~rpn_lib.presets.Preset` (spacing and shape of the volumes).
        difficulty: the generator's difficulty level (see :mod:`rpn_lib.data.synth`).
        progress: show a progress bar.
        overwrite: replace the dataset files (images/, landmarks/, splits.json, synth.json,
            README.md) of an existing folder; other files are left alone.

    Returns:
        The dataset folder.

    Raises:
        ValueError: ``n < 1``, ``n_test`` not in ``[0, n]``, or an unknown preset.
        DataError: ``out`` is a file, or a non-empty folder and ``overwrite`` is False.
    """
    out = Path(out)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 <= n_test <= n:
        raise ValueError(f"n_test must be between 0 and n={n}, got {n_test}")
    p = get_preset(preset)
    if out.exists() and not out.is_dir():
        raise DataError("output exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError("output folder is not empty (use overwrite=True / --overwrite to replace it)", out)
        for sub in ("images", "landmarks"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
        for f in (SPLITS_FILE, SYNTH_META_FILE, CARD_FILE):
            (out / f).unlink(missing_ok=True)
    ids, seeds = synthetic_case_ids(n), case_seeds(seed, n)
    meta_cases = []
    for cid, s in tqdm(list(zip(ids, seeds)), desc="synth", disable=not progress):
        sc = _generate_case(s, preset, difficulty, cid)
        save_volume(out / "images" / f"{cid}.nii.gz", np.asarray(sc.volume), sc.affine)
        save_landmarks(out / "landmarks" / f"{cid}.mrk.json", sc.landmarks_world)
        meta_cases.append({"case_id": cid, "seed": s, "params": _jsonable(getattr(sc, "params", {}))})
    splits = random_split(ids, n_test, seed)
    atomic_write_json(out / SPLITS_FILE, splits)
    version = _generator_version()
    atomic_write_json(out / SYNTH_META_FILE, {
        "generator": "rpn_lib.data.synth.generate_from_preset",
        "generator_version": version,
        "seed": seed,
        "n": n,
        "n_test": n_test,
        "difficulty": difficulty,
        "preset": p.to_dict(),
        "cases": meta_cases,
    })
    atomic_write(out / CARD_FILE, _card(out, p, difficulty, seed, n, splits, version))
    return out


def synthetic_split_cases(split: str = "test", n: int = 152, n_test: int = 32, seed: int = 0,
                          preset: str | Preset = "cpu-small", difficulty: str = "standard",
                          progress: bool = False) -> list[Any]:
    """Regenerate in memory exactly the cases of one split of a synthetic dataset.

    Gives the same volumes and landmarks as the files :func:`write_synthetic_dataset` writes
    with the same arguments (same case ids, seeds and split), without writing or generating
    the other split: the book evaluates on the benchmark's 32 test cases this way.

    Returns:
        :class:`rpn_lib.data.synth.SynthCase` objects (``case_id``, ``volume``, ``affine``,
        ``landmarks_world``...), in case-id order.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    ids, seeds = synthetic_case_ids(n), case_seeds(seed, n)
    wanted = set(random_split(ids, n_test, seed)[split])
    chosen = [(cid, s) for cid, s in zip(ids, seeds) if cid in wanted]
    return [_generate_case(s, preset, difficulty, cid)
            for cid, s in tqdm(chosen, desc=f"synth {split}", disable=not progress)]
