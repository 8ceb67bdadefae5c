"""The ``rpn-lib`` command line: parse, call one library function, report.

Each command is two small functions: ``_register_<name>(subparsers)`` declares its arguments
and ``cmd_<name>(args) -> int`` calls the library. Adding a command means writing those two
and listing the register function in :data:`COMMANDS`. No logic lives here that a notebook
would also need.

Errors a user can cause (:class:`~rpn_lib.errors.RpnLibError`, and ``FileNotFoundError`` /
``ValueError`` from their input) print one line ``rpn-lib: error: <message>`` on stderr and
exit with code 2; ``--debug`` shows the traceback instead. Argument errors are argparse's
(usage and message, exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rpn_lib import __version__
from rpn_lib.allocator import configure_from_env
from rpn_lib.errors import DataError, RpnLibError
from rpn_lib.presets import ANCHOR_LAYOUTS, EYE_SIDES, PRESETS
from rpn_lib.readahead import READ_AHEAD

if TYPE_CHECKING:  # the command line imports the library lazily, so that --help is quick
    from rpn_lib.data.dataset import LandmarkDataset
    from rpn_lib.detect import Detection

PROG = "rpn-lib"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command killed by it

USER_ERRORS: tuple[type[BaseException], ...] = (RpnLibError, FileNotFoundError, ValueError)
"""Exceptions reported as one line (exit 2) rather than as a crash."""


class HelpFormatter(argparse.HelpFormatter):
    """Help that states an option's default once, and only where there is one to state.

    ``(default: X)`` is appended to an option's help unless its help already speaks of the
    default, it is a flag (``store_true`` / ``store_false``), or its default is ``None`` or
    empty. Lists print as the command line takes them: ``0 1 2`` for an option of several
    values, ``0,1,2`` for one comma-separated value.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (not text or "default" in text.lower() or action.nargs == 0 or default is None
                or default is argparse.SUPPRESS or (isinstance(default, (list, tuple, str)) and len(default) == 0)):
            return text
        if isinstance(default, (list, tuple)):
            sep = " " if action.nargs in ("+", "*") or isinstance(action.nargs, int) else ","
            shown = sep.join(map(str, default))
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


# --------------------------------------------------------------------------------------------
# synth
# --------------------------------------------------------------------------------------------


def _register_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic fetal-face landmark dataset",
        description="Generate phantom volumes with five landmarks and write a dataset folder "
        "(images/, landmarks/, splits.json, README.md).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="dataset folder to create")
    p.add_argument("--n", type=int, default=152, help="number of cases")
    p.add_argument("--n-test", type=int, default=32, metavar="N", help="cases in the random test split")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small", help="spacing and volume shape")
    # rpn_lib.data.ultrasound.DIFFICULTIES, written out: importing it here would slow --help
    p.add_argument("--difficulty", choices=["easy", "standard", "hard"], default="standard",
                   help="image quality and clutter of the phantoms (face tilt, speckle, noise, distractors)")
    p.add_argument("--overwrite", action="store_true", help="replace the dataset files in a non-empty --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    """``rpn-lib synth``: :func:`rpn_lib.data.dataset.write_synthetic_dataset`."""
    from rpn_lib.data.dataset import write_synthetic_dataset

    out = write_synthetic_dataset(
        args.out, n=args.n, n_test=args.n_test, seed=args.seed, preset=args.preset,
        difficulty=args.difficulty, progress=args.progress, overwrite=args.overwrite,
    )
    n_test = args.n_test
    print(f"wrote {args.n} cases ({args.n - n_test} train, {n_test} test) to {out}")
    return 0



# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train an IG-RPN (or a baseline) on a dataset folder",
        description="Train on a split of DIR (--split) and write RUN/model.pt, RUN/checkpoint.pt, "
        "RUN/log.csv and RUN/train.json. --method picks the IG-RPN (rpn) or a baseline of Table 1.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="dataset folder (images/, landmarks/, splits.json)")
    p.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small",
                   help="voxel spacing, input shape, width and training recipe (rpn_lib.presets)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--eye-sides", choices=list(EYE_SIDES), default=None,
                   help="learned: two eye classes (the paper); geometry: detect 'an eye', name the sides by the "
                   "face's handedness (rpn and ssd; default: the preset's)")
    p.add_argument("--anchor-layout", choices=list(ANCHOR_LAYOUTS), default=None,
                   help="all: the paper's 4^3 = 64 anchor shapes per cell; cubes: only the 4 cubes (rpn and "
                   "faster-rcnn; default: the preset's)")
    p.add_argument("--block1-convs", type=int, choices=[1, 2], default=None,
                   help="conv layers of the first backbone block: 2 (the paper) or 1 (a deviation for speed; "
                   "rpn only; default: the preset's)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one setting of the preset, after the options above; repeat it for more, e.g. "
                   "--set lr=5e-4 --set batch_size=4 --set shape_vox=96,96,96 (the grid for volumes with "
                   "a larger field of view). Any field of rpn_lib.presets.Preset but its name: rpn-lib info "
                   "PRESET lists them with their values. The model file records them, and rpn-lib info MODEL "
                   "lists those that differ from the preset; --resume needs the settings of the run it continues")
    p.add_argument("--split", default="train", help="split of splits.json to train on ('all' for every case)")
    p.add_argument("--val-split", default=None, metavar="SPLIT",
                   help="a split of splits.json to validate on at every checkpoint: RUN/val.csv gets its d-mean, "
                   "DR50 and mIoU, and RUN/model_best.pt the model with the lowest d-mean (training is unchanged)")
    _add_label_map_arg(p)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the weights, the data order, the augmentation and the anchor sampling")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start again over a run already in RUN (its model.pt, checkpoint.pt, log.csv and train.json "
                   "are deleted once the data are read); without it, or --resume, such a folder is refused")
    p.add_argument("--no-iou-balance", dest="iou_balance", action="store_false",
                   help="plain cross-entropy instead of the IoU-balanced loss (ablation)")
    # rpn_lib.methods.METHOD_NAMES, written out: importing it here would import torch for --help
    p.add_argument("--method", choices=["rpn", "ssd", "faster-rcnn", "heatmap"], default="rpn",
                   help="rpn: the IG-RPN; ssd, faster-rcnn, heatmap: the baselines (rpn_lib.baselines)")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="autocast precision of the forward pass; bf16 is fast only on CPUs with AVX512-BF16 or AMX "
                   "(and on recent GPUs), elsewhere it is emulated and much slower; auto: bf16 where native, else fp32")
    p.add_argument("--channels-last", action="store_true",
                   help="weights and batches in channels_last_3d (faster with bf16 on a CPU; same training)")
    _add_device_arg(p)
    p.add_argument("--checkpoint-every", type=int, default=100, metavar="STEPS",
                   help="write RUN/checkpoint.pt and RUN/model.pt every STEPS steps (and at the end)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """``rpn-lib train``: :func:`rpn_lib.train.train`."""
    from rpn_lib.data.dataset import LandmarkDataset
    from rpn_lib.presets import format_setting, preset_changes, with_settings
    from rpn_lib.train import train
    from rpn_lib.validation import best_row

    options = {k: getattr(args, k) for k in ("eye_sides", "anchor_layout", "block1_convs")
               if getattr(args, k) is not None}
    preset = with_settings(with_settings(args.preset, options), args.settings)  # --set last
    changed = preset_changes(args.preset, preset)
    if changed:
        print(f"preset {args.preset}, with " + "; ".join(
            f"{k} {format_setting(a)} -> {format_setting(b)}" for k, (a, b) in changed.items()))
    split = None if args.split == "all" else args.split
    val = LandmarkDataset(args.data, split=args.val_split, label_map=args.label_map) if args.val_split else None
    res = train(_dataset(args.data, split, args.label_map), args.out, preset=preset, split=split, steps=args.steps,
                seed=args.seed, resume=args.resume, overwrite=args.overwrite, iou_balance=args.iou_balance,
                checkpoint_every=args.checkpoint_every, device=args.device, precision=args.precision,
                progress=args.progress, method=args.method, channels_last=args.channels_last, val_data=val)
    print(f"trained {res.steps} steps in {res.seconds:.0f} s (final loss {res.final_loss:.4f}): {res.run_dir / 'model.pt'}")
    if res.val:
        best = best_row(res.val)
        print(f"validation ({args.val_split}): d-mean {res.val[-1]['d_mean_mm']:.2f} mm at the end, lowest "
              f"{best['d_mean_mm']:.2f} mm at step {int(best['step'])}: {res.run_dir / 'model_best.pt'}")
    return 0


# --------------------------------------------------------------------------------------------
# detect
# --------------------------------------------------------------------------------------------


def _axis_list(text: str) -> tuple[int, ...]:
    """``"2,1,0"`` -> ``(2, 1, 0)`` for ``--axis-order`` and ``--flip-axes`` (``""`` -> ``()``)."""
    try:
        axes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated axes among 0, 1, 2, got {text!r}") from None
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise argparse.ArgumentTypeError(f"expected distinct axes among 0, 1, 2, got {text!r}")
    return axes


def _label_map_arg(text: str) -> dict[str, str]:
    """``--label-map``: ``LE=left_eye,RE=right_eye,...`` or a ``.json`` file holding such a mapping."""
    import json

    from rpn_lib.landmarks import LANDMARK_NAMES

    if text.endswith(".json"):
        try:
            mapping = json.loads(Path(text).read_text())
        except (OSError, ValueError) as e:
            raise argparse.ArgumentTypeError(f"cannot read {text}: {e}") from None
        if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in mapping.items()):
            raise argparse.ArgumentTypeError(f"{text} must hold a JSON object of label -> landmark name")
    else:
        mapping = {}
        for pair in filter(None, (p.strip() for p in text.split(","))):
            label, sep, name = pair.partition("=")
            if not sep or not label.strip() or not name.strip():
                raise argparse.ArgumentTypeError(f"expected LABEL=name pairs separated by commas, got {pair!r}")
            mapping[label.strip()] = name.strip()
    unknown = sorted({v for v in mapping.values() if v not in LANDMARK_NAMES})
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown landmark name(s) {unknown}: use {', '.join(LANDMARK_NAMES)}")
    if not mapping:
        raise argparse.ArgumentTypeError("empty label map")
    return mapping


def _add_label_map_arg(p: argparse.ArgumentParser) -> None:
    """``--label-map``: how the landmark files' labels name the five landmarks."""
    p.add_argument("--label-map", type=_label_map_arg, default=None, metavar="MAP",
                   help="your landmark files' labels as the five landmarks, e.g. LE=left_eye,RE=right_eye "
                   "(labels not named are kept as they are), or a .json file with that mapping")


def _dataset(path: Path, split: str | None, label_map: dict[str, str] | None) -> Path | LandmarkDataset:
    """The dataset folder as the library takes it: the path itself, or a ``LandmarkDataset``
    reading it with ``label_map``."""
    if label_map is None:
        return path
    from rpn_lib.data.dataset import LandmarkDataset

    return LandmarkDataset(path, split=split, label_map=label_map)


def _add_device_arg(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--device``, checked when the command starts (:func:`rpn_lib.device.resolve_device`)."""
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help=prefix + "auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps")


def _add_orientation_args(p: argparse.ArgumentParser) -> None:
    """``--axis-order`` and ``--flip-axes`` (:class:`rpn_lib.detect.Detector`'s ``axis_order``, ``flip_axes``)."""
    p.add_argument("--axis-order", type=_axis_list, default=(0, 1, 2), metavar="I,J,K",
                   help="read the image's array axes in this order before detection, e.g. 2,1,0 when the "
                   "ultrasound beams run along axis 2 (the book's models expect them along axis 0)")
    p.add_argument("--flip-axes", type=_axis_list, default=(), metavar="AXES",
                   help="then reverse these array axes, e.g. 0 when the probe sits on the high-index side "
                   "of axis 0 (world coordinates, and so the results, are unaffected)")


def _add_prior_rule_arg(p: argparse.ArgumentParser) -> None:
    """``--prior-rule`` (:class:`rpn_lib.detect.Detector`'s ``prior_rule``)."""
    from rpn_lib.prior import PRIOR_RULES

    p.add_argument("--prior-rule", choices=PRIOR_RULES, default=None,
                   help="how the graph prior ranks combinations: 'penalty' is the paper's Eq. 4 alone, "
                   "'penalty-score' also counts the candidates' scores (a deviation; see the book's chapter "
                   "The graph prior). Default: the rule the model file records, else 'penalty'")


def _add_amp_arg(p: argparse.ArgumentParser) -> None:
    """``--amp`` (:class:`rpn_lib.detect.Detector`'s ``amp``)."""
    p.add_argument("--amp", action="store_true",
                   help="run the network with autocast (bf16 on a CPU, fp16 on CUDA): faster on CPUs with "
                   "AVX512-BF16 or AMX, much slower on other CPUs (a warning says so); results differ slightly "
                   "from fp32 (the book's chapter Performance measures both on its model)")


def _add_read_ahead_arg(p: argparse.ArgumentParser, what: str) -> None:
    """``--read-ahead N`` (:func:`rpn_lib.readahead.read_ahead`'s ``depth``)."""
    p.add_argument("--read-ahead", type=_non_negative_int, default=READ_AHEAD, metavar="N",
                   help=f"{what} read and resampled in background threads while the model detects one (0: each "
                   "read in turn)")


def _detector(args: argparse.Namespace):
    """The :class:`rpn_lib.detect.Detector` of ``--model``, ``--device`` and the orientation options."""
    from rpn_lib.detect import Detector

    if len(args.axis_order) != 3:
        raise ValueError(f"--axis-order needs all three axes, got {','.join(map(str, args.axis_order))}")
    return Detector.from_file(args.model, device=args.device, axis_order=args.axis_order, flip_axes=args.flip_axes,
                              prior_rule=args.prior_rule, amp=getattr(args, "amp", False))


LOW_SCORE = 0.05
"""``rpn-lib detect`` warns when no landmark of a volume scores above this."""


def _register_detect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect", help="detect the five landmarks in NIfTI volumes",
        description="For each IMAGE write OUT/<case>.mrk.json (five landmarks, world mm, 3D Slicer "
        "markups) and OUT/<case>.json (boxes, scores, candidates, prior penalty); then "
        "OUT/detections.csv, one row per landmark of every image detected in this run (case, label, "
        "x, y, z in world RAS mm, score, i, j, k in the image's voxels).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="model.pt of a training run")
    p.add_argument("images", type=Path, nargs="+",
                   help="NIfTI volumes (.nii, .nii.gz), or folders: every NIfTI file directly inside")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--no-prior", dest="use_prior", action="store_false", help="take the top candidate per class")
    _add_read_ahead_arg(p, "images")
    _add_device_arg(p)
    _add_orientation_args(p)
    _add_prior_rule_arg(p)
    _add_amp_arg(p)
    p.set_defaults(func=cmd_detect)


def _case_id(path: Path) -> str:
    """The case name of an image (its file name without the NIfTI suffix)."""
    from rpn_lib.data.io import volume_case_id

    return volume_case_id(path) or path.stem


def _expand_images(paths: Sequence[Path]) -> list[Path]:
    """The images named: files as given, folders as the NIfTI files directly inside them (sorted)."""
    from rpn_lib.data.io import VOLUME_SUFFIXES, volume_case_id

    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and volume_case_id(p) and not p.name.startswith("."))
            if not found:
                raise DataError(f"folder has no NIfTI file ({', '.join(VOLUME_SUFFIXES)})", path)
            out.extend(found)
        else:
            out.append(path)
    return out


def _check_case_names(images: Sequence[Path]) -> None:
    """Refuse two images whose outputs would share a name (``a/case.nii.gz``, ``b/case.nii``)."""
    seen: dict[str, Path] = {}
    for path in images:
        case = _case_id(path)
        if case in seen:
            raise DataError(f"two images have the case name {case!r} ({seen[case]} and {path}); "
                            "their outputs would overwrite each other: detect them into different --out folders")
        seen[case] = path


def _error_line(exc: BaseException, path: Path) -> str:
    """``exc`` on one line, prefixed with ``path`` unless the message already names a file."""
    if isinstance(exc, RpnLibError) and exc.path is not None:
        return _one_line(exc)
    return f"{path}: {_one_line(exc)}"


def cmd_detect(args: argparse.Namespace) -> int:
    """``rpn-lib detect``: :meth:`rpn_lib.detect.Detector.detect_files` on the images.

    An image that cannot be used (unreadable, too small, ...) is reported on one line and
    skipped; the others are still detected. The exit code is 2 when any image failed."""
    from rpn_lib.data.io import save_landmarks
    from rpn_lib.detect import save_detections_csv
    from rpn_lib.fileio import atomic_write_json

    args.images = _expand_images(args.images)
    _check_case_names(args.images)
    det = _detector(args)
    failed: list[Path] = []
    found: dict[str, Detection] = {}
    start = time.perf_counter()
    for path, item in zip(args.images, det.detect_files(args.images, args.use_prior, args.read_ahead)):
        case = _case_id(path)
        for message in item.warnings:
            print(f"warning: {case}: {_fold(message)}", file=sys.stderr)
        if item.error is not None:
            if args.debug:
                traceback.print_exception(item.error)
            print(f"{PROG}: error: {_error_line(item.error, path)}", file=sys.stderr)
            failed.append(path)
            continue
        res = item.detection
        save_landmarks(args.out / f"{case}.mrk.json", res.landmarks_world,
                       extra={"model": str(args.model), "scores": res.scores.round(5).tolist()})
        atomic_write_json(args.out / f"{case}.json", {"image": str(path), **res.to_dict()})
        found[case] = res
        total = sum(res.timing_ms.values())
        print(f"{case}: 5 landmarks ({total:.0f} ms) -> {args.out / (case + '.mrk.json')}")
        if res.scores.max() < LOW_SCORE:
            print(f"warning: {case}: no landmark scored above {LOW_SCORE} (best {res.scores.max():.3f}); the volume "
                  "may not look like the model's training data. Is the probe on the low-index side of array "
                  "axis 0? See --axis-order and --flip-axes.", file=sys.stderr)
    if found:
        table = save_detections_csv(args.out / "detections.csv", found)
        if len(args.images) > 1:
            rate = len(args.images) / (time.perf_counter() - start)
            print(f"all {len(found)} images' landmarks in one table: {table} ({rate:.1f} images/s, reading "
                  f"{args.read_ahead} ahead, first image's warm-up included)")
    if failed and len(args.images) > 1:
        print(f"{PROG}: {len(failed)} of {len(args.images)} images failed (above); results for the other "
              f"{len(args.images) - len(failed)} are in {args.out}", file=sys.stderr)
    return EXIT_USER_ERROR if failed else 0


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score a model on a dataset split",
        description="Detect on every case of a split and write the paper's metrics (detection rates, "
        "mIoU, d-mean) and a COCO-style ranked AP as JSON.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="model.pt of a training run")
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="dataset folder (images/, landmarks/, splits.json)")
    p.add_argument("--split", default="test", help="split of splits.json ('all' for every case)")
    p.add_argument("--out", type=Path, required=True, metavar="JSON", help="metrics JSON file")
    _add_label_map_arg(p)
    p.add_argument("--no-prior", dest="use_prior", action="store_false", help="take the top candidate per class")
    _add_device_arg(p)
    _add_read_ahead_arg(p, "cases")
    p.add_argument("--max-cases", type=_positive_int, default=None, metavar="N",
                   help="evaluate only the split's first N cases (a quick check; default: all)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    _add_orientation_args(p)
    _add_prior_rule_arg(p)
    _add_amp_arg(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``rpn-lib evaluate``: :func:`rpn_lib.evaluate.evaluate`, then write the metrics."""
    from rpn_lib.evaluate import evaluate, per_case_table, summary
    from rpn_lib.fileio import atomic_write_json

    det = _detector(args)
    split = None if args.split == "all" else args.split
    ev = evaluate(det, _dataset(args.data, split, args.label_map), split=split, use_prior=args.use_prior,
                  progress=args.progress, max_cases=args.max_cases, read_ahead_cases=args.read_ahead)
    atomic_write_json(args.out, {**ev.metrics, "model": str(args.model), "data": str(args.data),
                                 "split": args.split, "per_case": per_case_table(ev)})
    print(summary(ev.metrics))
    print(f"metrics -> {args.out}")
    return 0


# --------------------------------------------------------------------------------------------
# calibrate-prior
# --------------------------------------------------------------------------------------------


def _register_calibrate_prior(sub: argparse._SubParsersAction) -> None:
    from rpn_lib.prior import PRIOR_RULES

    p = sub.add_parser(
        "calibrate-prior", help="refit a model's graph prior to its own localisation error",
        description="Measure the model's localisation error on a split of the training data (top candidate "
        "per class), refit the graph prior's Gaussians with that noise included, record the prior rule, and "
        "write the model (weights unchanged) to --out. A deviation from the paper: see the book's chapter "
        "The graph prior.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="model.pt of a training run")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="the dataset the model was trained on")
    p.add_argument("--split", default="train", help="split of splits.json to measure on ('all' for every case)")
    _add_label_map_arg(p)
    p.add_argument("--out", type=Path, required=True, metavar="MODEL", help="model file to write (may be --model itself)")
    p.add_argument("--rule", choices=PRIOR_RULES, default="penalty-score", help="prior rule to record")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo refit")
    _add_device_arg(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(func=cmd_calibrate_prior)


def cmd_calibrate_prior(args: argparse.Namespace) -> int:
    """``rpn-lib calibrate-prior``: :func:`rpn_lib.calibrate.calibrate_prior`."""
    from rpn_lib.calibrate import calibrate_prior

    split = None if args.split == "all" else args.split
    res = calibrate_prior(args.model, _dataset(args.data, split, args.label_map), args.out, split=split, rule=args.rule,
                          device=args.device, progress=args.progress, seed=args.seed)
    print(f"{res.n_cases} cases: localisation error median {res.median_error_mm:.2f} mm (mean "
          f"{res.mean_error_mm:.2f}) -> noise {res.localisation_sd_mm:.2f} mm per axis; prior refitted, "
          f"rule {res.rule!r} -> {res.out}")
    return 0


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------


def _register_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="describe a model file: method, scale, training, graph prior",
        description="Read and validate a model file and print what it holds: the method, the preset's scale "
        "and every setting that differs from the named preset, the network's parameters and FLOPs per volume, "
        "what the file records of its training, and the graph prior the detector chooses with. Given a preset's "
        "name instead, print every setting of that preset, as rpn-lib train --set takes them.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", type=Path, metavar="MODEL",
                   help="model.pt of a training run, or a preset's name (cpu-small, paper)")
    p.add_argument("--json", action="store_true", help="print JSON (with the full preset) instead of text")
    p.add_argument("--no-flops", dest="flops", action="store_false", help="skip counting the FLOPs")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    """``rpn-lib info``: :func:`rpn_lib.model_info.model_info`, printed."""
    import json

    from rpn_lib.model_info import model_info
    from rpn_lib.presets import PRESETS, settings_text

    name = str(args.model)
    if name in PRESETS and not args.model.exists():
        print(json.dumps(PRESETS[name].to_dict(), indent=2) if args.json else settings_text(name))
        return 0
    info = model_info(args.model, flops=args.flops)
    print(json.dumps(info.to_dict(), indent=2) if args.json else info)
    return 0


# --------------------------------------------------------------------------------------------
# view
# --------------------------------------------------------------------------------------------

VIEW_MAX_VOXELS = 256 ** 3
"""An anisotropic volume shown without ``--model`` is resampled to an isotropic grid of at
most this many voxels (at its finest spacing when that fits)."""


def _size_wxh(text: str) -> tuple[int, int]:
    """``"800x600"`` -> ``(800, 600)`` for ``--size``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 800x600, got {text!r}") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise argparse.ArgumentTypeError(f"size must be between 16 and 8192 pixels per side, got {text!r}")
    return w, h


def _register_view(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "view", help="show a NIfTI volume in napari with landmarks and detections",
        description="Open IMAGE in napari (3D rendering, millimetre scale). --landmarks draws the landmarks "
        "of a file and their boxes; --model detects and draws every candidate (coloured by class, more "
        "opaque and larger with the score) and the combination the graph prior chose, on the model's grid. "
        "--screenshot writes a PNG and exits instead of opening the window. Needs a display (on a "
        "headless Linux machine: xvfb-run -a rpn-lib view ...).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("image", type=Path, help="NIfTI volume (.nii, .nii.gz)")
    p.add_argument("--model", type=Path, default=None, help="model.pt of a training run: detect and show the candidates")
    p.add_argument("--landmarks", type=Path, default=None, metavar="FILE", help="landmark file (.mrk.json, .csv or .fcsv, world mm) to draw")
    _add_label_map_arg(p)
    p.add_argument("--no-prior", dest="use_prior", action="store_false",
                   help="with --model: mark the top candidate of each class instead of the graph prior's choice")
    p.add_argument("--screenshot", type=Path, default=None, metavar="PNG", help="write this PNG and exit (no window loop)")
    p.add_argument("--size", type=_size_wxh, default="800x600", metavar="WxH",
                   help="screenshot size in pixels")
    p.add_argument("--2d", dest="two_d", action="store_true", help="slice view instead of the 3D rendering")
    _add_device_arg(p, "with --model: ")
    _add_orientation_args(p)
    _add_prior_rule_arg(p)
    _add_amp_arg(p)
    p.set_defaults(func=cmd_view)


def _require_display() -> None:
    """Refuse to start Qt without a display on Linux (Qt would abort the process)."""
    import os

    if sys.platform.startswith("linux") and not any(
        os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    ):
        raise RpnLibError("no display for napari (DISPLAY is not set); on a headless machine run "
                          "'xvfb-run -a rpn-lib view ...'")


def cmd_view(args: argparse.Namespace) -> int:
    """``rpn-lib view``: :func:`rpn_lib.viz.napari_view.show_case` on a user's volume.

    Every input is read and validated before napari starts. Without ``--model`` the volume is
    shown on its own grid (resampled to isotropic voxels if it is anisotropic, as napari needs
    one spacing); with ``--model`` it is shown on the model grid
    (:meth:`rpn_lib.detect.Detector.prepare`) where the candidates live, and the landmarks of
    ``--landmarks`` are mapped onto that grid through world coordinates.
    """
    import numpy as np

    from rpn_lib.data.geometry import resample_to_spacing, world_to_voxel
    from rpn_lib.data.io import check_landmarks_inside, load_landmarks, load_volume
    from rpn_lib.landmarks import LANDMARK_NAMES, box_size_vox

    if args.screenshot is not None and not args.screenshot.name.lower().endswith(".png"):
        raise ValueError(f"{args.screenshot}: --screenshot must name a .png file")
    vol = load_volume(args.image)
    landmarks_world = None
    if args.landmarks is not None:
        landmarks_world = load_landmarks(args.landmarks, label_map=args.label_map)
        check_landmarks_inside(landmarks_world, vol.shape, vol.affine, args.landmarks)
    layers: dict = {}
    if args.model is not None:
        det = _detector(args)
        _require_display()
        inp = det.prepare(vol.array, vol.affine)
        res = det.detect_prepared([inp], [vol.affine], use_prior=args.use_prior)[0]
        array, affine, spacing = inp.array, inp.affine, inp.spacing_mm
        layers = {"candidates": res.candidates, "chosen": res.choice}
        how = "graph prior" if args.use_prior else "top score"
        for k, name in enumerate(LANDMARK_NAMES):
            x, y, z = res.landmarks_world[k]
            print(f"{name}: candidate {res.choice[k] + 1} of {len(res.candidates[k])} ({how}), "
                  f"score {res.scores[k]:.3f}, at ({x:.1f}, {y:.1f}, {z:.1f}) mm RAS")
    else:
        _require_display()
        spacing_axes = vol.spacing_mm
        if np.allclose(spacing_axes, spacing_axes.mean(), rtol=1e-3):
            array, affine, spacing = vol.array, vol.affine, float(spacing_axes.mean())
        else:
            volume_mm3 = float(np.prod(np.asarray(vol.shape) * spacing_axes))
            spacing = max(float(spacing_axes.min()), float(np.cbrt(volume_mm3 / VIEW_MAX_VOXELS)))
            array, affine = resample_to_spacing(vol.array, vol.affine, spacing)
    if landmarks_world is not None:
        points = world_to_voxel(landmarks_world, affine)
        edge = np.asarray(box_size_vox(spacing))[:, None]
        layers["gt_landmarks_vox"] = points
        layers["gt_boxes_vox"] = np.hstack([points, np.repeat(edge, 3, axis=1)])
    try:
        import napari

        from rpn_lib.viz.napari_view import close_viewer, is_blank, screenshot, show_case
    except ImportError as e:
        raise RpnLibError(f"napari is not installed ({e}); install it with: pip install 'rpn-lib[viz]'") from None

    viewer = show_case(array, spacing, ndisplay=2 if args.two_d else 3, title=f"rpn-lib view: {args.image.name}",
                       **layers)
    if args.screenshot is None:
        napari.run()
        return 0
    try:
        image = screenshot(viewer, args.screenshot, size=args.size)
    finally:
        close_viewer(viewer)
    note = " (blank: is the display working?)" if is_blank(image) else ""
    print(f"wrote {args.screenshot} ({image.shape[1]}x{image.shape[0]} px){note}")
    return 0


# --------------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------------


def _size_list(text: str) -> list[int]:
    """``"64,96,128"`` -> ``[64, 96, 128]`` for ``--sizes``; ``"none"`` -> ``[]``."""
    if text.strip().lower() == "none":
        return []
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 64,96,128 (or none), got {text!r}") from None
    bad = [s for s in sizes if s < 8 or s % 8]
    if not sizes or bad:
        raise argparse.ArgumentTypeError(f"sizes must be positive multiples of 8 (three down-samplings), got {text!r}")
    return sizes


def _peer_list(text: str) -> list[str]:
    """``"heatmap,retinanet"`` -> names for ``--peers``; ``"none"`` -> ``[]``; ``"all"`` -> every
    peer of :data:`rpn_lib.bench.PEERS`."""
    from rpn_lib.bench import PEERS

    word = text.strip().lower()
    if word == "all":
        return list(PEERS)
    names = [] if word == "none" else [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {unknown}; choose from {','.join(PEERS)}, all or none")
    return names


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse ``type`` for integers >= ``minimum``, refusing others as "expected ``what``"."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = minimum - 1
        if n < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return n
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="measure detection and training speed, memory and FLOP/s",
        description="Benchmark on this machine: detection latency per volume (network, candidate selection, "
        "prior), training step, peak memory, cost against volume size, achieved FLOP/s against a dense "
        "matmul, levers (bf16, channels_last_3d, inference_mode, batch, threads, torch.compile) and peer "
        "models at the same input. Prints a table and writes JSON. At full scale (--preset all) it takes "
        "about 10-20 minutes on 2 CPU cores; run it on an otherwise idle machine.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--preset", choices=[*sorted(PRESETS), "all"], default="cpu-small", help="preset(s) to measure")
    p.add_argument("--model", type=Path, default=None,
                   help="a trained model.pt (used for its own preset; default: random weights)")
    p.add_argument("--sizes", type=_size_list, default=None, metavar="SIDES",
                   help="cube sides of the size-scaling table, or none (default: 64,96,128,160; --quick: 16,24)")
    p.add_argument("--size-width", type=_positive_int, default=None, metavar="WIDTH",
                   help="first-block width of the size-scaling model (default: 32; --quick: 2)")
    p.add_argument("--repeats", type=_positive_int, default=5, metavar="N",
                   help="timed runs per measurement (median reported), and rounds of the peer comparison")
    p.add_argument("--train-repeats", type=_positive_int, default=3, metavar="N", help="timed training steps")
    p.add_argument("--out", type=Path, default=Path("results/bench.json"), metavar="JSON", help="JSON file to write")
    p.add_argument("--markdown", type=Path, default=None, metavar="FILE", help="also write the printed table to this file")
    p.add_argument("--quick", action="store_true", help="tiny sizes and one repeat (a smoke test, not a measurement)")
    p.add_argument("--compile", action="store_true", help="also try torch.compile (slow to compile)")
    p.add_argument("--peers", type=_peer_list, default="all", metavar="NAMES",
                   help="comparison models timed beside the IG-RPN at the same input, in fp32 and in the "
                   "--autocast precision, comma-separated (igrpn-1conv, heatmap, ssd, faster-rcnn, retinanet), "
                   "all, or none")
    p.add_argument("--accuracy-data", type=Path, default=None, metavar="DIR",
                   help="dataset folder: compare d-mean of --model in fp32 and autocast on its test split")
    _add_device_arg(p)
    p.add_argument("--autocast", choices=["native", "bf16", "none"], default="native",
                   help="reduced precision measured beside fp32: native (bf16 on CPUs with AVX512-BF16 or AMX, none "
                   "on other CPUs, bf16 and fp16 on CUDA), bf16 (also where it is emulated: slow), or none")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """``rpn-lib bench``: :func:`rpn_lib.bench.run_benchmark`, then print its table."""
    from rpn_lib.bench import format_report, run_benchmark

    presets = sorted(PRESETS, key=lambda n: PRESETS[n].shape_vox) if args.preset == "all" else [args.preset]
    log = None if args.quiet else (lambda s: print(f"bench: {s}", file=sys.stderr, flush=True))
    res = run_benchmark(presets, model_path=args.model, sizes=args.sizes, size_width=args.size_width,
                        repeats=args.repeats, train_repeats=args.train_repeats, out=args.out, markdown=args.markdown,
                        quick=args.quick, compile=args.compile, accuracy_data=args.accuracy_data,
                        device=args.device, peers=args.peers, log=log,
                        autocast={"native": None, "bf16": ["bf16"], "none": []}[args.autocast])
    print(format_report(res), end="")
    print(f"wrote {args.out}" + (f" and {args.markdown}" if args.markdown else ""))
    return 0


# --------------------------------------------------------------------------------------------
# replicate
# --------------------------------------------------------------------------------------------


def _methods_list(values: list[str]) -> list[str]:
    """``--methods rpn ssd`` or ``--methods rpn,ssd`` -> ``["rpn", "ssd"]``."""
    return [m for v in values for m in v.split(",") if m]


def _register_replicate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replicate", help="replicate the paper's Tables 1 and 2: train and evaluate what is missing",
        description="For each method and seed, train on the train split of --data and evaluate on its test split "
        "with and without the graph prior, skipping what RESULTS already holds (interrupted trainings resume), "
        "then write RESULTS/table1.md (methods, paper Table 1), RESULTS/table2.md (ablation, paper Table 2) and "
        "RESULTS/tables.json. Methods: rpn ssd faster-rcnn heatmap retinanet-monai (rpn and ssd are trained "
        "with and without the IoU-balanced loss; rpn also with the eye sides named by the face's handedness, "
        "on all 64 anchor shapes and on the 4 cubes).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", type=Path, default=Path("data/synth-cpu-small"), metavar="DIR", help="dataset folder (rpn-lib synth)")
    p.add_argument("--results", type=Path, default=Path("results"), metavar="DIR", help="results folder")
    p.add_argument("--methods", nargs="+", default=["all"], metavar="METHOD",
                   help="methods to run: rpn ssd faster-rcnn heatmap retinanet-monai, or all")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="SEED", help="seeds per method")
    p.add_argument("--steps", type=int, default=None, help="training steps of every detector (default: the preset's)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small", help="preset of every run")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="auto",
                   help="autocast precision of training: bf16 (the shipped runs') is native and faster than fp32 "
                   "only on CPUs with AVX512-BF16 or AMX (and on recent GPUs); auto: bf16 where native, else fp32")
    _add_device_arg(p)
    p.add_argument("--dry-run", action="store_true", help="print what is done and what is missing, change nothing")
    p.add_argument("--tables-only", action="store_true", help="train and evaluate nothing; rewrite the tables")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    p.set_defaults(func=cmd_replicate)


def cmd_replicate(args: argparse.Namespace) -> int:
    """``rpn-lib replicate``: :func:`rpn_lib.replicate.run_replication`."""
    from rpn_lib.replicate import METHODS, run_replication

    methods = _methods_list(args.methods)
    run_replication(args.data, args.results, methods=METHODS if methods == ["all"] else methods, seeds=args.seeds,
                    steps=args.steps, preset=args.preset, precision=args.precision, device=args.device,
                    progress=args.progress, dry_run=args.dry_run, tables_only=args.tables_only)
    return 0


# --------------------------------------------------------------------------------------------
# parser and entry point
# --------------------------------------------------------------------------------------------

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_synth, _register_train, _register_detect, _register_evaluate, _register_calibrate_prior,
    _register_info, _register_view, _register_bench,
]
"""Register functions, one per subcommand, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The full ``rpn-lib`` parser (global options and every subcommand)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="IG-RPN landmark detection in 3D volumes: data, training, detection, evaluation.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub)
    _register_replicate(sub)
    return parser


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Each command's parser by name, in the order ``rpn-lib --help`` lists them."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _fold(message: object) -> str:
    """``message`` as text on one line (runs of whitespace and newlines folded to one space)."""
    return " ".join(str(message).split())


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line, or its class name."""
    return _fold(exc) or type(exc).__name__


def _print_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for the command line: ``warning: <message>`` on one line of
    stderr, without the source file and line that Python's default shows."""
    print(f"warning: {_fold(message)}", file=file if file is not None else sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rpn-lib`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, argument errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USER_ERROR)
    with warnings.catch_warnings():  # restores the caller's warning display (main runs in-process in tests)
        if not args.debug:
            warnings.showwarning = _print_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; errors a user can cause become one line and exit code 2."""
    try:
        # glibc keeps freed memory instead of page-faulting every big tensor anew (see
        # rpn_lib.allocator; RPN_LIB_ALLOCATOR=default turns it off)
        configure_from_env()
        return int(args.func(args))
    except USER_ERRORS as e:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of the output left (e.g. `| head`): stop quietly
        try:  # Python flushes stdout at exit: point it at /dev/null, so that it does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE
