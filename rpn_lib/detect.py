"""Inference: volume -> network -> candidates per landmark -> graph prior -> five landmarks.

:class:`Detector` wraps a trained model. For each volume it resamples to the model's grid,
runs the network once, keeps the best few anchors per class *before* decoding any box (only
those are decoded, see :func:`rpn_lib.candidates.select_candidates`), applies class-wise NMS,
keeps the top-2 candidates per class, and lets the graph prior (Eq. 4) choose among the
2^5 = 32 combinations. Results are given on the model grid (boxes), in the input image's
voxels and in world millimetres (landmarks).

The same detector runs the baselines (:mod:`rpn_lib.baselines`): the model file names its
method, whose :meth:`~rpn_lib.methods.Method.forward` and
:meth:`~rpn_lib.methods.Method.candidates` replace the network pass and the candidate step
above; NMS settings, the graph prior and the results are shared. (Heatmap regression gives
heatmap peaks as candidates, with a landmark-sized box centred on each: see
:mod:`rpn_lib.baselines.heatmap`.)
"""

from __future__ import annotations

import copy
import csv
import io
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rpn_lib.anchors import preset_anchor_grid
from rpn_lib.checkpoint import LoadedModel, load_model
from rpn_lib.data.geometry import check_affine, reorient_axes, voxel_to_world, world_to_voxel
from rpn_lib.data.io import load_volume
from rpn_lib.data.preprocess import (IntensityWarning, ModelInput, check_grid_size, intensity_warning,
                                     normalize_intensity, prepare_volume)
from rpn_lib.device import computes_float64, resolve_device
from rpn_lib.errors import DataError, RpnLibError
from rpn_lib.fileio import atomic_write
from rpn_lib.handedness import name_eye_sides, right_direction
from rpn_lib.inference import prepare_for_inference
from rpn_lib.landmarks import EYES, LANDMARK_NAMES
from rpn_lib.methods import CandidateSettings, ClassCandidates, method_from_dict
from rpn_lib.precision import warn_if_emulated
from rpn_lib.prior import GraphPrior, check_prior_rule, select_combination
from rpn_lib.readahead import READ_AHEAD, read_ahead


@dataclass
class Candidate:
    """One scored box of one landmark class, on the model grid."""

    box_vox: np.ndarray  # (6,) cz, cy, cx, d, h, w
    score: float
    world_mm: np.ndarray  # (3,) box centre, RAS mm


@dataclass
class Detection:
    """Five landmarks found in one volume.

    Attributes:
        boxes_vox: ``(5, 6)`` chosen boxes on the model grid (``model_affine`` maps it to mm).
        landmarks_world: ``(5, 3)`` box centres, RAS mm.
        landmarks_vox: ``(5, 3)`` the same points in the input image's voxel coordinates.
        scores: ``(5,)`` class probability of each chosen box (heatmap regression: the
            heatmap's peak value).
        candidates: per class (``LANDMARK_NAMES`` order), the kept candidates, best first; the
            prior chose among the first ``top_k`` (2) of each class.
        choice: ``(5,)`` index of the chosen candidate of each class.
        log_penalty: log of Eq. 4's penalty of the choice (None without the prior).
        ranked: every combination scored by the prior, best first, as (choice, log penalty).
            With ``Preset.eye_sides = "geometry"`` its eye entries index ``eye_candidates``.
        eye_candidates: with ``Preset.eye_sides = "geometry"``, the places of "an eye" (pooled
            eye score, best first) that the two eye classes were chosen from; ``candidates``
            then splits them by side of the chosen face (:mod:`rpn_lib.handedness`). None
            otherwise.
        model_affine: ``(4, 4)`` model-grid voxel -> world mm.
        timing_ms: time spent in ``network`` (with the copy to the device and, where
            :attr:`Detector.normalize_on_device`, the intensity normalisation there),
            ``candidates`` and ``prior``.
    """

    boxes_vox: np.ndarray
    landmarks_world: np.ndarray
    landmarks_vox: np.ndarray
    scores: np.ndarray
    candidates: list[list[Candidate]]
    choice: np.ndarray
    log_penalty: float | None
    ranked: list[tuple[tuple[int, ...], float]]
    model_affine: np.ndarray
    spacing_mm: float
    timing_ms: dict[str, float] = field(default_factory=dict)
    eye_candidates: list[Candidate] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what ``rpn-lib detect`` writes next to the markups)."""
        return {
            "landmarks": {n: {"world_mm_ras": self.landmarks_world[k].round(3).tolist(),
                              "voxel": self.landmarks_vox[k].round(3).tolist(),
                              "score": round(float(self.scores[k]), 5),
                              "box_model_vox": self.boxes_vox[k].round(3).tolist()}
                          for k, n in enumerate(LANDMARK_NAMES)},
            "log_penalty": self.log_penalty,
            "choice": [int(c) for c in self.choice],
            "candidates": {n: [{"box_model_vox": c.box_vox.round(3).tolist(), "score": round(c.score, 5),
                                "world_mm_ras": c.world_mm.round(3).tolist()} for c in self.candidates[k]]
                           for k, n in enumerate(LANDMARK_NAMES)},
            "ranked_combinations": [{"choice": list(ch), "log_penalty": lp} for ch, lp in self.ranked[:10]],
            **({"eye_candidates": [{"box_model_vox": c.box_vox.round(3).tolist(), "score": round(c.score, 5),
                                    "world_mm_ras": c.world_mm.round(3).tolist()} for c in self.eye_candidates]}
               if self.eye_candidates is not None else {}),
            "model_affine": self.model_affine.tolist(),
            "spacing_mm": self.spacing_mm,
            "timing_ms": {k: round(v, 2) for k, v in self.timing_ms.items()},
        }


DETECTIONS_CSV_HEADER: tuple[str, ...] = ("case", "label", "x", "y", "z", "score", "i", "j", "k")
"""Columns of :func:`save_detections_csv`: world RAS mm (``x, y, z``), the class probability,
and the input image's voxel coordinates (``i, j, k`` along array axes 0, 1, 2)."""


@dataclass
class ReadImage:
    """An image file read and resampled for the network (:meth:`Detector.read`).

    Attributes:
        path: the file.
        affine: ``(4, 4)`` the image's voxel -> world RAS mm.
        input: the volume on the model grid.
        warnings: the text of each warning about the image.
    """

    path: Path
    affine: np.ndarray
    input: ModelInput
    warnings: list[str]


@dataclass
class FileDetection:
    """The result of one file of :meth:`Detector.detect_files`.

    Attributes:
        path: the file.
        detection: the five landmarks, or None when the file failed.
        error: why the file failed (a :class:`~rpn_lib.errors.RpnLibError`, mostly a
            :class:`~rpn_lib.errors.DataError` naming the file), or None.
        warnings: the text of each warning given while reading and detecting this file.
    """

    path: Path
    detection: Detection | None
    error: Exception | None
    warnings: list[str]


def save_detections_csv(path: str | Path, detections: Mapping[str, Detection]) -> Path:
    """Write the landmarks of many volumes as one table, one row per case and landmark, atomically.

    Columns :data:`DETECTIONS_CSV_HEADER`: ``x, y, z`` in world RAS mm (the convention of the
    landmark CSV files :func:`rpn_lib.data.io.load_landmarks` reads), ``score``, and ``i, j, k``
    in the voxels of the image the case was detected in. Cases keep the mapping's order, and
    each case's landmarks the order of :data:`~rpn_lib.landmarks.LANDMARK_NAMES`. What
    ``rpn-lib detect`` writes as ``OUT/detections.csv``.

    Args:
        path: the ``.csv`` file to write (replaced if it exists).
        detections: case name -> its :class:`Detection`.

    Returns:
        The path written.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(DETECTIONS_CSV_HEADER)
    for case, det in detections.items():
        for k, name in enumerate(LANDMARK_NAMES):
            writer.writerow([case, name, *(f"{v:.3f}" for v in det.landmarks_world[k]), f"{float(det.scores[k]):.5f}",
                             *(f"{v:.3f}" for v in det.landmarks_vox[k])])
    atomic_write(path, buf.getvalue())
    return Path(path)


class Detector:
    """A trained IG-RPN (or baseline) ready to detect landmarks.

    Args:
        loaded: a model from :func:`rpn_lib.checkpoint.load_model`.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        amp: bf16 (CPU) / fp16 (CUDA) autocast of the network. On a CPU this pays only with
            AVX512-BF16 or AMX (:func:`rpn_lib.precision.bf16_native`); elsewhere bf16 is
            emulated, many times slower than fp32, and an
            :class:`~rpn_lib.precision.EmulatedPrecisionWarning` says so.
        pre_nms_top_n: anchors per class decoded before NMS (for the baselines: boxes or
            heatmap peaks per class considered before NMS).
        keep_candidates: candidates kept per class after NMS (for ranked AP and viewing); the
            graph prior considers the first ``preset.top_k`` (2) of them.
        channels_last: run the network on ``torch.channels_last_3d`` weights and inputs
            (``rpn-lib bench`` on a 2-core CPU: the forward pass 10-12 % faster in fp32 and
            20-33 % in bf16, at both presets; the same numbers up to rounding).
        axis_order, flip_axes: bring each input array to the layout the model was trained on
            before anything else (:func:`rpn_lib.data.geometry.reorient_axes`; world
            coordinates, and so every result, are unaffected). The synthetic training volumes
            have the probe on the low-index side of array axis 0 and the beams along
            ``+axis 0``; for volumes whose beams run backwards along axis 0 pass
            ``flip_axes=(0,)``, for beams along axis 2 ``axis_order=(2, 1, 0)``. A model sees
            arrays, not world directions: without this, such volumes look upside down to it.
        fast_inference: run a copy of the network rewritten for inference
            (:func:`rpn_lib.inference.prepare_for_inference`: batch norm folded into the
            convolutions, every fp32 convolution on oneDNN); same results to float rounding,
            faster on CPUs. False runs ``loaded.model`` itself.
        prior_rule: how the graph prior ranks the combinations of candidates: ``"penalty"``
            (the paper: Eq. 4 alone) or ``"penalty-score"`` (Eq. 4 and the candidates'
            scores, a deviation; :func:`rpn_lib.prior.combination_cost`). None: the rule the
            model file records (:func:`rpn_lib.calibrate.calibrate_prior` writes one), else
            ``"penalty"``.
    """

    def __init__(self, loaded: LoadedModel, device: str | torch.device = "auto", amp: bool = False,
                 pre_nms_top_n: int = 64, keep_candidates: int = 10, channels_last: bool = True,
                 axis_order: tuple[int, int, int] = (0, 1, 2), flip_axes: tuple[int, ...] = (),
                 prior_rule: str | None = None, fast_inference: bool = True) -> None:
        self.set_orientation(axis_order, flip_axes)
        if prior_rule is None:
            prior_rule = loaded.meta.get("prior_rule", "penalty") if isinstance(loaded.meta, dict) else "penalty"
        self.prior_rule = check_prior_rule(prior_rule)
        self.device = resolve_device(device)
        self.loaded = loaded
        self.channels_last = channels_last
        self.fast_inference = fast_inference
        self.model = loaded.model.to(self.device).eval()
        if fast_inference:  # a copy: batch norm folded, every convolution on oneDNN (rpn_lib.inference)
            self.model = prepare_for_inference(self.model)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.preset = loaded.preset
        self.prior = loaded.prior
        # a LoadedModel made by hand may leave the method out: its metadata names it (or an IG-RPN)
        self.method = loaded.method if loaded.method is not None else method_from_dict(loaded.meta)
        self.amp = amp
        if amp and self.device.type == "cpu":
            warn_if_emulated("bf16", self.device)
        self.pre_nms_top_n = pre_nms_top_n
        self.keep_candidates = max(keep_candidates, self.eye_pool_size)
        self._anchors: dict[tuple[int, int, int], torch.Tensor] = {}

    def set_orientation(self, axis_order: tuple[int, int, int] = (0, 1, 2), flip_axes: tuple[int, ...] = ()) -> None:
        """Set ``axis_order`` and ``flip_axes`` (see the class), checked now, before any volume is read."""
        reorient_axes(np.zeros((1, 1, 1), np.uint8), np.eye(4), axis_order, flip_axes)
        self.axis_order = tuple(int(a) for a in axis_order)
        self.flip_axes = tuple(int(a) for a in flip_axes)

    def with_prior(self, prior: GraphPrior | None = None, rule: str | None = None) -> "Detector":
        """A detector that shares this one's network and settings but uses another graph prior
        and/or prior rule (e.g. :func:`rpn_lib.calibrate.paper_prior` with ``"penalty"``)."""
        other = copy.copy(self)
        if prior is not None:
            other.prior = prior
        if rule is not None:
            other.prior_rule = check_prior_rule(rule)
        return other

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "auto", **kw: Any) -> "Detector":
        """Load ``model.pt`` and wrap it.

        Args:
            path: a model file written by training (``RUN/model.pt``).
            device: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``,
                ``"cuda:N"`` or ``"mps"``.
            **kw: the other arguments of :class:`Detector` (``amp``, ``axis_order``,
                ``flip_axes``, ``prior_rule``, ...).

        Returns:
            The detector, its network on ``device`` in evaluation mode.

        Raises:
            ModelError: the file is missing, not a model file, or damaged.
            DeviceError: ``device`` is not available here.
        """
        return cls(load_model(path), device=device, **kw)

    @property
    def pooled_eyes(self) -> bool:
        """Whether the model detects "an eye" and names the sides by geometry (``Preset.eye_sides``)."""
        return self.preset.eye_sides == "geometry"

    @property
    def eye_pool_size(self) -> int:
        """Eye candidates the prior chooses two from: ``2 * top_k`` pooled, else ``top_k`` per eye."""
        return 2 * self.preset.top_k if self.pooled_eyes else self.preset.top_k

    @property
    def candidate_settings(self) -> CandidateSettings:
        """Candidates per class the method keeps (``pre_nms_top_n``, the preset's NMS, ``keep_candidates``)."""
        return CandidateSettings(self.pre_nms_top_n, self.preset.nms_iou, self.keep_candidates)

    def anchors(self, feature_shape: tuple[int, int, int]) -> torch.Tensor:
        """Anchors of an IG-RPN's fused feature map, cached per shape."""
        if feature_shape not in self._anchors:
            self._anchors[feature_shape] = preset_anchor_grid(feature_shape, self.model.stride, self.preset,
                                                              device=self.device)
        return self._anchors[feature_shape]

    def prepare(self, volume: np.ndarray, affine: np.ndarray | None = None, spacing_mm: float | None = None,
                normalize: bool = True) -> ModelInput:
        """Validate, reorient (``axis_order``, ``flip_axes``) and resample one volume to the model grid
        (see :func:`~rpn_lib.data.preprocess.prepare_volume`). ``normalize=False`` leaves the intensity normalisation to
        :meth:`detect_prepared`, which does it on the device (what :meth:`detect` does on a GPU:
        see :attr:`normalize_on_device`).

        Warns:
            IntensityWarning: many voxels are negative
                (:func:`~rpn_lib.data.preprocess.intensity_warning`)."""
        inp, notes = self.prepare_quietly(volume, affine, spacing_mm, normalize)
        for note in notes:
            warnings.warn(note, IntensityWarning, stacklevel=3)
        return inp

    def prepare_quietly(self, volume: np.ndarray, affine: np.ndarray | None = None,
                        spacing_mm: float | None = None,
                        normalize: bool | None = None) -> tuple[ModelInput, list[str]]:
        """:meth:`prepare`, with its warnings returned as text instead of given: safe to run
        in a background thread (``warnings.catch_warnings`` is global to the process), as
        :meth:`read` and :func:`rpn_lib.evaluate.evaluate` do. ``normalize=None`` (the
        default) normalises as :meth:`detect` does: on the CPU unless
        :attr:`normalize_on_device`.

        Returns:
            The volume on the model grid, and the text of each warning :meth:`prepare` would give.
        """
        if normalize is None:
            normalize = not self.normalize_on_device
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise DataError(f"expected a 3D volume, got shape {volume.shape}")
        if not np.isfinite(volume).all():
            raise DataError("volume contains NaN or infinite values")
        note = intensity_warning(volume)
        if affine is None:
            if spacing_mm is None:
                raise ValueError("give the volume's affine or its isotropic spacing_mm")
            affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
        affine = check_affine(affine)
        if self.axis_order != (0, 1, 2) or self.flip_axes:
            volume, affine = reorient_axes(volume, affine, self.axis_order, self.flip_axes)
        extent_mm = np.asarray(volume.shape) * np.linalg.norm(affine[:3, :3], axis=0)
        if extent_mm.min() < 16 * self.preset.spacing_mm:
            raise DataError(f"volume of shape {volume.shape} ({extent_mm.round(1).tolist()} mm) is too small "
                            f"for this model (at least {16 * self.preset.spacing_mm:.1f} mm per side)")
        check_grid_size(volume.shape, affine, self.preset.spacing_mm, self.preset.shape_vox)
        return prepare_volume(volume, affine, self.preset.spacing_mm, normalize=normalize), [note] if note else []

    def read(self, path: str | Path) -> "ReadImage":
        """Read a NIfTI file (:func:`~rpn_lib.data.io.load_volume`) and :meth:`prepare` it,
        normalising on the CPU unless :attr:`normalize_on_device`. Safe to run in another
        thread while this detector detects (:meth:`detect_files` does): it gives no warning
        but returns its text.

        Raises:
            DataError: as :func:`~rpn_lib.data.io.load_volume` and :meth:`prepare`.
        """
        vol = load_volume(path)
        inp, notes = self.prepare_quietly(vol.array, vol.affine)
        return ReadImage(vol.path, vol.affine, inp, notes)

    @property
    def normalize_on_device(self) -> bool:
        """Whether :meth:`detect` and :meth:`detect_batch` normalise intensities after the copy
        to the device instead of on the CPU: on a CUDA GPU, where
        :func:`~rpn_lib.data.preprocess.normalize_intensity` takes a fraction of the CPU's
        time. The result is the same bit for bit (it computes in float64, which Apple's MPS
        does not have: there, as on the CPU, NumPy normalises)."""
        return self.device.type != "cpu" and computes_float64(self.device)

    @torch.inference_mode()
    def detect(self, volume: np.ndarray, affine: np.ndarray | None = None, spacing_mm: float | None = None,
               use_prior: bool = True) -> Detection:
        """Find the five landmarks in one volume.

        Args:
            volume: ``(D, H, W)`` image, any intensity range.
            affine: ``(4, 4)`` voxel -> world mm; or give ``spacing_mm`` for an isotropic
                volume at the origin.
            spacing_mm: the voxel size of an isotropic volume without ``affine``.
            use_prior: choose among the top-2 candidates with the graph prior (Sec. 2.3);
                False takes the top-scoring candidate of each class.

        Returns:
            The five landmarks (world RAS mm and the volume's voxels), their boxes, scores
            and candidates, and the time each stage took.

        Raises:
            DataError: the volume is not 3D, holds NaN or infinite values, is under 16
                model voxels per side or far larger than the training grid
                (:func:`~rpn_lib.data.preprocess.check_grid_size`), or gives no candidate
                for some landmark.
            ValueError: neither ``affine`` nor ``spacing_mm`` is given.
        """
        inp = self.prepare(volume, affine, spacing_mm, normalize=not self.normalize_on_device)
        in_affine = np.asarray(affine if affine is not None else np.diag([spacing_mm] * 3 + [1.0]), dtype=np.float64)
        return self.detect_prepared([inp], [in_affine], use_prior)[0]

    @torch.inference_mode()
    def detect_batch(self, volumes: list[np.ndarray], affines: list[np.ndarray], use_prior: bool = True) -> list[Detection]:
        """Detect in several volumes; volumes of the same model-grid shape share a forward pass.

        Args:
            volumes: ``(D, H, W)`` images.
            affines: their ``(4, 4)`` voxel -> world mm affines.
            use_prior: as for :meth:`detect`.

        Returns:
            One :class:`Detection` per volume, in order.
        """
        inputs = [self.prepare(v, a, normalize=not self.normalize_on_device) for v, a in zip(volumes, affines)]
        return self.detect_prepared(inputs, [np.asarray(a, dtype=np.float64) for a in affines], use_prior)

    def detect_files(self, paths: Iterable[str | Path], use_prior: bool = True,
                     read_ahead_files: int = READ_AHEAD) -> Iterator["FileDetection"]:
        """Detect in NIfTI files one by one, reading and resampling the next ones in
        background threads while the network works on this one
        (:func:`rpn_lib.readahead.read_ahead`), so that it need not wait for the disk and
        the resampling. The results are those of :meth:`detect`.

        A file that cannot be read or used gives a result with ``error`` set, and the others
        are still detected. Its warnings (e.g. many negative voxels) are in the result's
        ``warnings``, not given.

        Args:
            paths: NIfTI files (``.nii``, ``.nii.gz``).
            use_prior: as for :meth:`detect`.
            read_ahead_files: files read ahead of the one being detected, each in its own
                thread (:data:`rpn_lib.readahead.READ_AHEAD` by default); 0 reads each file
                when its turn comes, in this thread.

        Yields:
            One :class:`FileDetection` per path, in order, as soon as it is done.

        Raises:
            ValueError: ``read_ahead_files`` is negative (when the first result is asked for).
        """
        for path, pending in read_ahead(paths, self.read, read_ahead_files):
            notes: list[str] = []
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    image = pending.result()
                    notes += image.warnings
                    res = self.detect_prepared([image.input], [image.affine], use_prior)[0]
            except RpnLibError as e:
                yield FileDetection(Path(path), None, e, notes + [str(w.message) for w in caught])
                continue
            yield FileDetection(image.path, res, None, notes + [str(w.message) for w in caught])

    @torch.inference_mode()
    def detect_prepared(self, inputs: list[ModelInput], in_affines: list[np.ndarray], use_prior: bool = True) -> list[Detection]:
        """Detect in volumes already on the model grid (``inputs`` from :meth:`prepare`;
        ``in_affines``: the original images'). Inputs not yet normalised are normalised on the
        device after the copy where :attr:`normalize_on_device`, else on the CPU before it."""
        results: list[Detection | None] = [None] * len(inputs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, inp in enumerate(inputs):
            groups.setdefault(tuple(inp.array.shape), []).append(i)
        for shape, members in groups.items():
            t0 = time.perf_counter()
            on_device = self.normalize_on_device
            raw = [not inputs[i].normalized for i in members]
            arrays = [normalize_intensity(inputs[i].array) if r and not on_device else inputs[i].array
                      for i, r in zip(members, raw)]
            x = torch.from_numpy(np.stack(arrays))[:, None].to(self.device)
            for j, r in enumerate(raw):
                if r and on_device:
                    x[j, 0] = normalize_intensity(x[j, 0])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
            with torch.autocast(self.device.type, dtype=dtype, enabled=self.amp):
                out = self.method.forward(self.model, x, self.preset)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t_net = (time.perf_counter() - t0) * 1e3 / len(members)
            for j, i in enumerate(members):
                t0 = time.perf_counter()
                per_class = self.method.candidates(self.model, out, j, self.preset, self.candidate_settings)
                results[i] = self._finish(per_class, inputs[i], in_affines[i], use_prior, t_net, t0)
        return results  # type: ignore[return-value]

    def _finish(self, per_class: ClassCandidates, inp: ModelInput, in_affine: np.ndarray, use_prior: bool,
                t_net: float, t0: float) -> Detection:
        """Candidates of one volume -> prior (or best per class) -> :class:`Detection`; ``t0``:
        when the candidate step started (``time.perf_counter``)."""
        # every class's boxes and scores to NumPy in one transfer each, then split
        sizes = [len(boxes) for boxes, _ in per_class]
        b_all = torch.cat([boxes for boxes, _ in per_class]).cpu().double().numpy()
        s_all = torch.cat([scores for _, scores in per_class]).cpu().double().numpy().tolist()
        w_all = voxel_to_world(b_all[:, :3], inp.affine) if len(b_all) else np.zeros((0, 3))
        cands: list[list[Candidate]] = []
        start = 0
        for n in sizes:
            cands.append([Candidate(b_all[m], s_all[m], w_all[m]) for m in range(start, start + n)])
            start += n
        if any(len(c) == 0 for c in cands):
            raise DataError("the model found no candidate for some landmark (empty or blank volume?)")
        t_cand = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        eye_pool = cands[EYES[0]] if self.pooled_eyes else None
        if eye_pool is not None and len(eye_pool) < 2:
            raise DataError("the model found fewer than two eye candidates (empty or blank volume?)")
        k = min(self.preset.top_k, max(len(c) for c in cands))
        limits = [self.eye_pool_size if (self.pooled_eyes and c in EYES) else k for c in range(len(cands))]
        if use_prior:
            centres = np.full((len(cands), max(limits), 3), np.nan)
            scores = np.full((len(cands), max(limits)), -np.inf)
            for c, lst in enumerate(cands):
                for m, cand in enumerate(lst[:limits[c]]):
                    centres[c, m], scores[c, m] = cand.world_mm, cand.score
            res = select_combination(centres, scores, self.prior, pooled_eyes=self.pooled_eyes,
                                     rule=self.prior_rule)
            choice = np.asarray(res.choice, dtype=int)
            log_pen: float | None = float(res.log_penalty)
            ranked = res.ranked
        else:
            choice = np.zeros(len(cands), dtype=int)
            if eye_pool is not None:
                choice[EYES[1]] = 1
                pts = np.stack([cands[c][choice[c]].world_mm for c in range(len(cands))])
                if name_eye_sides(pts):
                    choice[list(EYES)] = choice[list(EYES[::-1])]
            log_pen, ranked = None, []
        if eye_pool is not None:
            cands, choice = _split_eyes_by_side(eye_pool, cands, choice)
        t_prior = (time.perf_counter() - t0) * 1e3
        chosen = [cands[c][choice[c]] for c in range(len(cands))]
        world = np.stack([c.world_mm for c in chosen])
        return Detection(
            boxes_vox=np.stack([c.box_vox for c in chosen]), landmarks_world=world,
            landmarks_vox=world_to_voxel(world, in_affine), scores=np.array([c.score for c in chosen]),
            candidates=cands, choice=choice, log_penalty=log_pen, ranked=ranked, model_affine=inp.affine,
            spacing_mm=inp.spacing_mm, timing_ms={"network": t_net, "candidates": t_cand, "prior": t_prior},
            eye_candidates=eye_pool,
        )


def _split_eyes_by_side(eye_pool: list[Candidate], cands: list[list[Candidate]],
                        choice: np.ndarray) -> tuple[list[list[Candidate]], np.ndarray]:
    """Pooled eye candidates -> a left-eye and a right-eye list, by the side of the chosen face.

    A candidate belongs to the left eye when it lies on the left of the plane through the
    midpoint of the two chosen eyes, across the face's right direction
    (:func:`rpn_lib.handedness.right_direction` of the chosen landmarks). The chosen eyes fall
    on their own sides by construction; ``choice`` is re-indexed into the new lists.
    """
    pts = np.stack([cands[c][choice[c]].world_mm for c in range(len(cands))])
    right = right_direction(pts)
    mid = 0.5 * (pts[EYES[0]] + pts[EYES[1]])
    side = np.array([float(np.dot(c.world_mm - mid, right)) for c in eye_pool])
    left_idx = [m for m in range(len(eye_pool)) if side[m] < 0 or m == choice[EYES[0]]]
    left_idx = [m for m in left_idx if m != choice[EYES[1]]]
    right_idx = [m for m in range(len(eye_pool)) if m not in left_idx]
    out = list(cands)
    out[EYES[0]] = [eye_pool[m] for m in left_idx]
    out[EYES[1]] = [eye_pool[m] for m in right_idx]
    new_choice = choice.copy()
    new_choice[EYES[0]] = left_idx.index(int(choice[EYES[0]]))
    new_choice[EYES[1]] = right_idx.index(int(choice[EYES[1]]))
    return out, new_choice
