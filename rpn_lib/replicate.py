"""Replicating the paper's Tables 1 and 2 on the open benchmark: run what is missing, tabulate.

One call, :func:`run_replication` (``rpn-lib replicate``, ``make replicate``), trains and
evaluates every detector of the comparison for every seed, skipping what is already done, and
writes the tables. A run folder is ``<results>/<variant>/seed<k>/`` with ``model.pt``,
``checkpoint.pt``, ``log.csv``, ``train.json`` (from the training function) and
``metrics.json`` / ``metrics_no_prior.json`` (:func:`rpn_lib.evaluate.evaluate` with and
without the graph prior, with the per-landmark rows of
:func:`rpn_lib.evaluate.per_case_table`).

Variants (:data:`VARIANTS`): the prior is an inference-time switch, so the 8 ablation rows of
the paper's Table 2 come from 4 trainings (RPN and SSD, each with and without the IoU-balanced
loss) evaluated both ways. Faster R-CNN is trained with plain cross-entropy (the paper names it
plainly, unlike IG-SSD and IG-RPN), the heatmap regressor has no box classifier to balance, and
MONAI's RetinaNet uses MONAI's own losses (:mod:`rpn_lib.baselines.retinanet_peer`). One
variant is not in the paper: the IG-RPN that detects "an eye" and names the sides by the face's
handedness (``rpn-eye-geometry``, :mod:`rpn_lib.handedness`), the project's answer to the eye
failure of chapter *Evaluation*; and the same on the 4 cube anchors per cell instead of 64
shapes (``rpn-cube-anchors``, :attr:`rpn_lib.presets.Preset.anchor_layout`), the anchor
design of the MONAI peer.

Resuming: a run whose ``train.json`` records the requested number of steps is done; one with
only a ``checkpoint.pt`` continues from it; a metrics file is done when it records the same
number of steps. A run trained with other settings (steps, IoU-balance, method) stops the
runner with an error rather than being mixed into the tables.

Tables, numbered as in the paper: ``table1.md`` compares methods (paper Table 1),
``table2.md`` is the ablation of IoU-balance and prior on SSD and RPN (paper Table 2);
``tables.json`` holds both with per-seed values, the paper's numbers
(:mod:`rpn_lib.paper_tables`), paired comparisons (:mod:`rpn_lib.paired`) and the changes the
prior made. Values are mean ± sample standard deviation (``ddof=1``) over the seeds present; a
missing run is shown as "—" with its reason, never filled in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rpn_lib.errors import DataError, RpnLibError
from rpn_lib.fileio import atomic_write, atomic_write_json
from rpn_lib.paired import distances_by_key, paired_comparison, prior_changes, score_error_correlation
from rpn_lib.paper_tables import PAPER_CITATION, PAPER_TABLE1, PAPER_TABLE2, paper_tables
from rpn_lib.presets import Preset, get_preset

__all__ = [
    "METHODS", "RETINANET", "DEFAULT_SEEDS", "Variant", "VARIANTS", "RunState", "plan", "format_plan",
    "run_replication", "build_tables", "render_table1", "render_table2", "write_tables",
]

RETINANET = "retinanet-monai"
METHODS: tuple[str, ...] = ("rpn", "ssd", "faster-rcnn", "heatmap", RETINANET)
"""Methods of the comparison, as ``rpn_lib.train.train(method=...)`` names them (and the peer)."""

DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
METRICS_FILE: dict[bool, str] = {True: "metrics.json", False: "metrics_no_prior.json"}
"""Evaluation file of a run, by ``use_prior``."""

MISSING = "—"


@dataclass(frozen=True)
class Variant:
    """One trained configuration: its run-folder name, method, loss, eye-side rule and anchors.

    ``eye_sides`` and ``anchor_layout`` are the only preset fields a variant changes:
    ``eye_sides="geometry"`` (:attr:`~rpn_lib.presets.Preset.eye_sides`) is the project's deviation that names
    the eyes' sides by the face's handedness, compared with the paper's learnt sides;
    ``anchor_layout="cubes"`` (:attr:`~rpn_lib.presets.Preset.anchor_layout`) keeps only the 4 cube anchors of
    the paper's 64 shapes, the anchor design of the MONAI peer.
    """

    name: str
    method: str
    iou_balance: bool
    eye_sides: str = "learned"
    anchor_layout: str = "all"

    def preset_for(self, preset: Preset) -> Preset:
        """The preset this variant trains with: ``preset`` with its ``eye_sides`` and ``anchor_layout``."""
        return preset.replace(eye_sides=self.eye_sides, anchor_layout=self.anchor_layout)


VARIANTS: tuple[Variant, ...] = (
    Variant("rpn", "rpn", True),
    Variant("rpn-no-iou-balance", "rpn", False),
    Variant("rpn-eye-geometry", "rpn", True, eye_sides="geometry"),
    Variant("rpn-cube-anchors", "rpn", True, eye_sides="geometry", anchor_layout="cubes"),
    Variant("ssd", "ssd", True),
    Variant("ssd-no-iou-balance", "ssd", False),
    Variant("faster-rcnn", "faster-rcnn", False),
    Variant("heatmap", "heatmap", False),
    Variant(RETINANET, RETINANET, False),
)
"""Every configuration the replication trains, in the order of its tables."""
_VARIANT = {v.name: v for v in VARIANTS}


# ------------------------------------------------------------------------------------------
# the plan: what is done, what is missing
# ------------------------------------------------------------------------------------------


@dataclass
class RunState:
    """Where one (variant, seed) run stands.

    Attributes:
        train: ``"done"``, ``"partial"`` (a checkpoint to resume), ``"missing"`` or
            ``"mismatch"`` (trained with other settings: see ``detail``).
        detail: a short human-readable explanation.
        evals: ``{file name: done}`` for ``metrics.json`` and ``metrics_no_prior.json``.
    """

    variant: Variant
    seed: int
    run_dir: Path
    train: str
    detail: str
    evals: dict[str, bool] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.variant.name}/seed{self.seed}"

    @property
    def needs_training(self) -> bool:
        return self.train in ("partial", "missing")

    @property
    def missing_evals(self) -> list[bool]:
        """``use_prior`` values still to evaluate (all of them after a new training)."""
        if self.needs_training:
            return [True, False]
        return [up for up in (True, False) if not self.evals.get(METRICS_FILE[up], False)]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_logged_step(run_dir: Path) -> int | None:
    try:
        lines = (run_dir / "log.csv").read_text().strip().splitlines()
        return int(float(lines[-1].split(",")[0])) if len(lines) > 1 else None
    except (OSError, ValueError, IndexError):
        return None


def _preset_of(info: dict[str, Any]) -> Preset | None:
    """The preset a ``train.json`` records (None when it cannot be read back)."""
    try:
        return Preset.from_dict(info["preset"])
    except (KeyError, TypeError, ValueError):
        return None


def inspect_run(run_dir: Path, variant: Variant, seed: int, steps: int, preset: Preset) -> RunState:
    """The :class:`RunState` of one run folder (reads only small files)."""
    info = _read_json(run_dir / "train.json")
    evals = {}
    for name in METRICS_FILE.values():
        m = _read_json(run_dir / name)
        evals[name] = m is not None and m.get("steps") == steps and m.get("seed") == seed
    if info is not None:
        preset_name = (info.get("preset") or {}).get("name", preset.name)
        problems = []
        if info.get("steps") != steps:
            problems.append(f"trained for {info.get('steps')} steps, asked {steps}")
        if bool(info.get("iou_balance", variant.iou_balance)) != variant.iou_balance:
            problems.append(f"iou_balance={info.get('iou_balance')}")
        if info.get("method", variant.method) != variant.method:
            problems.append(f"method {info.get('method')!r}")
        if preset_name != preset.name:
            problems.append(f"preset {preset_name!r}")
        elif _preset_of(info) != variant.preset_for(preset):
            problems.append(f"preset {preset_name!r} with other settings (made before the preset changed)")
        if info.get("seed", seed) != seed:
            problems.append(f"seed {info.get('seed')}")
        if problems:
            return RunState(variant, seed, run_dir, "mismatch", "; ".join(problems), evals)
        return RunState(variant, seed, run_dir, "done", f"{steps} steps", evals)
    if (run_dir / "checkpoint.pt").exists():
        step = _last_logged_step(run_dir)
        detail = f"resume after step {step if step is not None else '?'}"
        return RunState(variant, seed, run_dir, "partial", detail, evals)
    return RunState(variant, seed, run_dir, "missing", "not run", evals)


def select_variants(methods: Sequence[str]) -> list[Variant]:
    """The variants of ``methods`` (in :data:`VARIANTS` order); unknown names raise ValueError."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; choose from {', '.join(METHODS)}")
    return [v for v in VARIANTS if v.method in set(methods)]


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    out = sorted(set(int(s) for s in seeds))
    if not out or out[0] < 0:
        raise ValueError(f"seeds must be non-negative integers, got {list(seeds)}")
    return out


def plan(results: str | Path, methods: Sequence[str] = METHODS, seeds: Sequence[int] = DEFAULT_SEEDS,
         steps: int | None = None, preset: str | Preset = "cpu-small") -> list[RunState]:
    """The state of every (variant, seed) run of ``methods`` under ``results``."""
    preset = get_preset(preset)
    steps = int(steps if steps is not None else preset.steps)
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    results = Path(results)
    return [inspect_run(results / v.name / f"seed{s}", v, s, steps, preset)
            for v in select_variants(methods) for s in _check_seeds(seeds)]


def format_plan(states: Sequence[RunState]) -> str:
    """The plan as text: one line per run, then a summary."""
    lines = []
    for st in states:
        todo = st.missing_evals
        ev = "done" if not todo else "to do: " + ", ".join(METRICS_FILE[u] for u in todo)
        tr = {"done": "done", "partial": st.detail, "missing": "to train",
              "mismatch": f"MISMATCH ({st.detail})"}[st.train]
        lines.append(f"  {st.label:<32} train: {tr:<28} evaluate: {ev}")
    n = {k: sum(st.train == k for st in states) for k in ("done", "partial", "missing", "mismatch")}
    n_eval = sum(len(st.missing_evals) for st in states if st.train != "mismatch")
    lines.append(f"{len(states)} runs: {n['done']} trained, {n['partial']} to resume, {n['missing']} to train, "
                 f"{n['mismatch']} mismatched; {n_eval} evaluations to do")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------

TrainFn = Callable[..., Any]
EvaluateFn = Callable[[str, Path, Any, list[bool], str, bool], dict[bool, dict[str, Any]]]


def train_variant(variant: Variant, data: Any, out: Path, *, preset: Preset, steps: int, seed: int, resume: bool,
                  precision: str, device: str, progress: bool) -> Any:
    """Train one run: :func:`rpn_lib.train.train` with ``method=`` (weights and batches in
    ``channels_last_3d``: faster, the same training), or the MONAI peer."""
    if variant.method == RETINANET:
        from rpn_lib.baselines.retinanet_peer import train_retinanet

        return train_retinanet(data, out, preset, steps, seed, resume, precision=precision, device=device,
                               progress=progress)
    from rpn_lib.train import train

    return train(data, out, preset, steps, seed, resume, iou_balance=variant.iou_balance, precision=precision,
                 device=device, progress=progress, method=variant.method, channels_last=True)


def load_detector(method: str, model_path: Path, device: str = "auto") -> Any:
    """A detector for :func:`rpn_lib.evaluate.evaluate` from a run's ``model.pt``."""
    if method == RETINANET:
        from rpn_lib.baselines.retinanet_peer import load_retinanet

        return load_retinanet(model_path, device=device)
    from rpn_lib.detect import Detector

    return Detector.from_file(model_path, device=device)


def evaluate_variant(method: str, model_path: Path, data: Any, use_priors: list[bool], device: str = "auto",
                     progress: bool = True) -> dict[bool, dict[str, Any]]:
    """Evaluate one trained run on the test split, with and/or without the prior.

    Returns ``{use_prior: metrics}`` where metrics are :func:`rpn_lib.evaluate.evaluate`'s plus
    ``per_case`` (:func:`rpn_lib.evaluate.per_case_table`).
    """
    from rpn_lib.evaluate import evaluate, per_case_table

    det = load_detector(method, model_path, device)
    out = {}
    for up in use_priors:
        ev = evaluate(det, data, split="test", use_prior=up, progress=progress, read_ahead_cases=0)  # time alone
        out[up] = {**ev.metrics, "per_case": per_case_table(ev)}
    return out


def run_replication(
    data: str | Path,
    results: str | Path = "results",
    methods: Sequence[str] = METHODS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    steps: int | None = None,
    preset: str | Preset = "cpu-small",
    precision: str = "auto",
    device: str = "auto",
    progress: bool = True,
    dry_run: bool = False,
    tables_only: bool = False,
    train_fn: TrainFn = train_variant,
    evaluate_fn: EvaluateFn = evaluate_variant,
    echo: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Train and evaluate what is missing, then write the tables (see the module docstring).

    Args:
        data: dataset folder with a ``train`` / ``test`` split (``rpn-lib synth``).
        results: results folder.
        methods: subset of :data:`METHODS`.
        seeds: seeds per method.
        steps: training steps of every detector (default: the preset's).
        preset: ``cpu-small`` (the benchmark of the book) or ``paper``.
        precision: training precision: ``"fp32"``, ``"bf16"`` (the shipped runs') or ``"auto"``
            (bf16 where the device computes it natively, else fp32:
            :func:`rpn_lib.precision.resolve_precision`).
        device, progress: passed to training and evaluation.
        dry_run: print the plan and stop (writes nothing).
        tables_only: skip training and evaluation; write the tables from what exists.
        train_fn, evaluate_fn: the training and evaluation steps (tests replace them).
        echo: where progress lines go.

    Returns:
        the tables (as in ``tables.json``), or None for a dry run.

    Raises:
        RpnLibError: a run folder holds a run made with other settings; the dataset folder
            is missing when something must be trained or evaluated.
    """
    preset = get_preset(preset)
    steps = int(steps if steps is not None else preset.steps)
    from rpn_lib.precision import resolve_precision
    from rpn_lib.device import resolve_device

    precision = resolve_precision(precision, resolve_device(device))
    states = plan(results, methods, seeds, steps, preset)
    results = Path(results)
    echo(f"replication plan in {results} (preset {preset.name}, {steps} steps, {precision}, seeds "
         f"{' '.join(map(str, _check_seeds(seeds)))}):")
    echo(format_plan(states))
    if dry_run:
        return None
    if not tables_only:
        mismatched = [st for st in states if st.train == "mismatch"]
        if mismatched:
            which = "; ".join(f"{st.label} ({st.detail})" for st in mismatched)
            raise RpnLibError(f"runs made with other settings: {which}. Move them away or ask for the same settings.")
        todo = [st for st in states if st.needs_training or st.missing_evals]
        if todo:
            data = Path(data)
            if not (data / "images").is_dir():
                raise DataError("dataset folder not found (create it with: rpn-lib synth --out DIR --preset "
                                f"{preset.name})", data)
            from rpn_lib.data.dataset import LandmarkDataset

            test_set = LandmarkDataset(data, split="test")
        for st in todo:
            if st.needs_training:
                echo(f"train {st.label} ({st.detail})")
                train_fn(st.variant, data, st.run_dir, preset=st.variant.preset_for(preset), steps=steps, seed=st.seed,
                         resume=st.train == "partial", precision=precision, device=device, progress=progress)
            ups = st.missing_evals
            echo(f"evaluate {st.label}: {', '.join(METRICS_FILE[u] for u in ups)}")
            found = evaluate_fn(st.variant.method, st.run_dir / "model.pt", test_set, ups, device, progress)
            for up in ups:
                atomic_write_json(st.run_dir / METRICS_FILE[up], {
                    **found[up], "method": st.variant.method, "variant": st.variant.name, "seed": st.seed,
                    "steps": steps, "iou_balance": st.variant.iou_balance, "model": str(st.run_dir / "model.pt"),
                    "data": str(data), "split": "test"})
    tables = build_tables(results, seeds, steps, preset)
    write_tables(results, tables)
    echo(f"wrote {results / 'table1.md'}, {results / 'table2.md'} and {results / 'tables.json'}")
    return tables


# ------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("dr_50_95", "AP", "pct"), ("dr35", "AP35", "pct"), ("dr50", "AP50", "pct"), ("dr75", "AP75", "pct"),
    ("miou", "mIoU", "pct"), ("d_mean_mm", "d-mean (mm)", "mm"), ("time_ms", "time (ms)", "ms"),
    ("ap_coco", "COCO AP", "pct"),
)
"""Table columns: metric key, header, kind (``pct`` fractions shown x100, ``mm``, ``ms``)."""

BOX_KEYS = frozenset(k for k, _, kind in COLUMNS if kind == "pct")
AGGREGATED = ("dr_50_95", "dr35", "dr50", "dr75", "miou", "d_mean_mm", "d_std_mm", "time_ms", "ap_coco",
              "ap_coco_50", "ap_coco_75")


@dataclass(frozen=True)
class RowSpec:
    """One table row: which run files it reads and which paper row it sits beside."""

    label: str
    variant: str
    prior: bool
    paper: dict[str, float | None] | None = None
    distance_only: bool = False
    group: str = ""


TABLE1_ROWS: tuple[RowSpec, ...] = (
    RowSpec("Faster R-CNN", "faster-rcnn", False, PAPER_TABLE1["Faster R-CNN"]),
    RowSpec("IG-SSD", "ssd", True, PAPER_TABLE1["IG-SSD"]),
    RowSpec("Heatmap", "heatmap", False, PAPER_TABLE1["Heatmap"], distance_only=True),
    RowSpec("IG-RPN", "rpn", True, PAPER_TABLE1["IG-RPN"]),
    RowSpec("IG-RPN, eye sides by handedness", "rpn-eye-geometry", True),
    RowSpec("IG-RPN, eye sides by handedness, cube anchors", "rpn-cube-anchors", True),
    RowSpec("MONAI RetinaNet (peer)", RETINANET, False),
    RowSpec("MONAI RetinaNet + graph prior", RETINANET, True),
)
"""Paper Table 1 rows, plus the project's IG-RPN with eye sides named by the face's handedness
(``Preset.eye_sides = "geometry"``), that one with only the 4 cube anchors
(``Preset.anchor_layout = "cubes"``), and the external peer without and with the graph prior."""

TABLE2_ROWS: tuple[RowSpec, ...] = tuple(
    RowSpec(f"{det}{' + IoU-balance' if iou else ''}{' + prior' if prior else ''}",
            fam if iou else f"{fam}-no-iou-balance", prior, PAPER_TABLE2[(det, iou, prior)], group=det)
    for det, fam in (("SSD", "ssd"), ("RPN", "rpn"))
    for iou, prior in ((False, False), (True, False), (False, True), (True, True))
)
"""Paper Table 2: per detector, neither / IoU-balance / prior / both."""


def _missing_reason(run_dir: Path, file: str, steps: int) -> str:
    m = _read_json(run_dir / file)
    if m is not None:
        return f"evaluated after {m.get('steps')} steps, not {steps}"
    info = _read_json(run_dir / "train.json")
    if info is not None:
        return "trained, not evaluated" if info.get("steps") == steps else f"trained for {info.get('steps')} steps"
    if (run_dir / "checkpoint.pt").exists():
        step = _last_logged_step(run_dir)
        return f"training stopped after step {step if step is not None else '?'}"
    return "not run"


def _collect(results: Path, variant: str, prior: bool, seeds: Sequence[int], steps: int
             ) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """Per seed, the metrics file of a row (when done for ``steps``), and reasons for the rest."""
    found, missing = {}, {}
    for s in seeds:
        run_dir = results / variant / f"seed{s}"
        m = _read_json(run_dir / METRICS_FILE[prior])
        if m is not None and m.get("steps") == steps:
            found[s] = m
        else:
            missing[s] = _missing_reason(run_dir, METRICS_FILE[prior], steps)
    return found, missing


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def _machine(metrics: dict[str, Any]) -> str:
    threads = metrics.get("threads", "?")
    return f"{metrics.get('device', '?')} ({threads} thread{'' if threads == 1 else 's'})"


def _row_data(spec: RowSpec, results: Path, seeds: Sequence[int], steps: int) -> dict[str, Any]:
    found, missing = _collect(results, spec.variant, spec.prior, seeds, steps)
    per_seed = {s: {k: m.get(k) for k in AGGREGATED} for s, m in found.items()}
    rho = {s: score_error_correlation(m.get("per_case", [])) for s, m in found.items()}
    mean, std = {}, {}
    for k in AGGREGATED:
        mean[k], std[k] = _mean_std([per_seed[s][k] for s in per_seed])
    rho_mean, rho_std = _mean_std(list(rho.values()))
    variant = _VARIANT[spec.variant]
    return {
        "label": spec.label, "variant": spec.variant, "method": variant.method, "iou_balance": variant.iou_balance,
        "prior": spec.prior, "file": METRICS_FILE[spec.prior], "distance_only": spec.distance_only,
        "seeds": sorted(found), "n_seeds": len(found), "missing": {str(s): r for s, r in missing.items()},
        "mean": mean, "std": std, "per_seed": {str(s): vals for s, vals in per_seed.items()},
        "score_error_spearman": {"mean": rho_mean, "std": rho_std, "per_seed": {str(s): r for s, r in rho.items()}},
        "n_test_cases": sorted({int(m.get("n_cases", 0)) for m in found.values()}),
        "timing": sorted({_machine(m) for m in found.values()}),
        "paper": spec.paper,
    }


def _distances(results: Path, variant: str, prior: bool, seeds: Sequence[int], steps: int) -> dict[int, dict]:
    found, _ = _collect(results, variant, prior, seeds, steps)
    return {s: distances_by_key(m["per_case"]) for s, m in found.items() if m.get("per_case")}


def _pair(results: Path, seeds: Sequence[int], steps: int, a: RowSpec, b: RowSpec, question: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"a": a.label, "b": b.label, "question": question}
    da = _distances(results, a.variant, a.prior, seeds, steps)
    db = _distances(results, b.variant, b.prior, seeds, steps)
    try:
        entry.update(paired_comparison(da, db))
    except ValueError as e:
        entry["missing"] = str(e) if da and db else f"no per-landmark results for {a.label if not da else b.label}"
    return entry


SHIPPED_VS_PEER = "the shipped model's recipe (eye sides by handedness, cube anchors) vs the peer"
"""Question of the Table 1 comparison between the shipped model's recipe and the peer."""


def _spec(rows: Sequence[RowSpec], label: str) -> RowSpec:
    return next(r for r in rows if r.label == label)


def build_tables(results: str | Path, seeds: Sequence[int] = DEFAULT_SEEDS, steps: int | None = None,
                 preset: str | Preset = "cpu-small") -> dict[str, Any]:
    """Read every run's metrics under ``results`` and assemble both tables (``tables.json``)."""
    preset = get_preset(preset)
    steps = int(steps if steps is not None else preset.steps)
    seeds = _check_seeds(seeds)
    results = Path(results)
    t1 = [_row_data(r, results, seeds, steps) for r in TABLE1_ROWS]
    t2 = [_row_data(r, results, seeds, steps) for r in TABLE2_ROWS]
    rpn = _spec(TABLE1_ROWS, "IG-RPN")
    pairs1 = [_pair(results, seeds, steps, rpn, _spec(TABLE1_ROWS, other), f"IG-RPN vs {other}")
              for other in ("IG-SSD", "Faster R-CNN", "Heatmap", "MONAI RetinaNet (peer)",
                            "IG-RPN, eye sides by handedness")]
    geometry = _spec(TABLE1_ROWS, "IG-RPN, eye sides by handedness")
    cubes = _spec(TABLE1_ROWS, "IG-RPN, eye sides by handedness, cube anchors")
    pairs1.append(_pair(results, seeds, steps, geometry, cubes, "eye sides by handedness: all 64 anchor shapes vs the 4 cubes"))
    # the recipe of the shipped model (make model) against the peer
    pairs1.append(_pair(results, seeds, steps, cubes, _spec(TABLE1_ROWS, "MONAI RetinaNet (peer)"),
                        SHIPPED_VS_PEER))
    pairs2 = []
    for det in ("SSD", "RPN"):
        r = {(_VARIANT[s.variant].iou_balance, s.prior): s for s in TABLE2_ROWS if s.group == det}
        for (a, b, q) in (((True, False), (False, False), "IoU-balance, without prior"),
                          ((True, True), (False, True), "IoU-balance, with prior"),
                          ((False, True), (False, False), "prior, without IoU-balance"),
                          ((True, True), (True, False), "prior, with IoU-balance"),
                          ((True, True), (False, False), "both vs neither")):
            pairs2.append(_pair(results, seeds, steps, r[a], r[b], f"{det}: {q}"))
    changes = {}
    for v in ("rpn", "rpn-no-iou-balance", "rpn-eye-geometry", "rpn-cube-anchors", "ssd", "ssd-no-iou-balance",
              RETINANET):
        with_p = _distances(results, v, True, seeds, steps)
        without = _distances(results, v, False, seeds, steps)
        per_seed = {s: prior_changes(with_p[s], without[s]) for s in sorted(set(with_p) & set(without))}
        counts = [k for k in next(iter(per_seed.values()), {}) if k != "mean_change_mm"]
        total = {k: sum(d[k] for d in per_seed.values()) for k in counts}
        if per_seed:
            total["mean_change_mm"] = float(np.mean([d["mean_change_mm"] for d in per_seed.values()]))
        changes[v] = {"seeds": sorted(per_seed), "per_seed": {str(s): d for s, d in per_seed.items()}, "total": total}
    return {
        "settings": {"preset": preset.name, "steps": steps, "seeds": seeds, "split": "test",
                     "std": "sample standard deviation over seeds (ddof=1)",
                     "units": "mean, std, per_seed: rates, mIoU and APs as fractions, d-mean mm, time ms; "
                              "paper: as printed (percent, mm, ms)"},
        "paper": paper_tables(),
        "table1": {"title": "Quantitative comparison among methods (paper Table 1)", "rows": t1, "paired": pairs1},
        "table2": {"title": "Ablation of IoU-balance loss and graph prior (paper Table 2)", "rows": t2,
                   "paired": pairs2, "prior_changes": changes},
    }


def fmt_value(mean: float | None, std: float | None, kind: str) -> str:
    """``mean ± std`` as the tables print it (fractions x100 with 1 decimal, mm with 2, ms with 0)."""
    if mean is None:
        return MISSING
    scale, digits = {"pct": (100.0, 1), "mm": (1.0, 2), "ms": (1.0, 0)}[kind]
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def _fmt_paper(v: float | None, kind: str) -> str:
    if v is None:
        return MISSING
    return f"{v:.0f}" if kind == "ms" else f"{v:.2f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _cells(row: dict[str, Any]) -> list[str]:
    return [MISSING if (row["distance_only"] and k in BOX_KEYS) else fmt_value(row["mean"][k], row["std"][k], kind)
            for k, _, kind in COLUMNS]


def _notes(rows: Sequence[dict[str, Any]], n_seeds: int) -> list[str]:
    notes = []
    for r in rows:
        if r["missing"]:
            why = "; ".join(f"seed {s}: {m}" for s, m in r["missing"].items())
            notes.append(f"- {r['label']}: {r['n_seeds']} of {n_seeds} seeds ({why}).")
    return notes


def _pairs_md(pairs: Sequence[dict[str, Any]]) -> list[str]:
    rows = []
    for p in pairs:
        if "missing" in p:
            rows.append([p["question"], f"{p['a']} vs {p['b']}", MISSING, MISSING, MISSING, MISSING, MISSING,
                         p["missing"]])
            continue
        lo, hi = p["ci95_mm"]
        pv = f"{p['p_value']:.3g}"
        rows.append([p["question"], f"{p['a']} vs {p['b']}", f"{p['n_pairs']} ({len(p['seeds'])} seeds)",
                     f"{p['mean_a_mm']:.2f}",
                     f"{p['mean_b_mm']:.2f}", f"{p['mean_diff_mm']:+.2f} [{lo:+.2f}, {hi:+.2f}]", pv,
                     f"{p['a_better']} / {p['b_better']} / {p['ties']}"])
    return _md_table(["question", "A vs B", "pairs", "d-mean A", "d-mean B", "A − B mm (95 % CI)", "Wilcoxon p",
                      "A closer / B closer / ties"], rows)


def _intro(tables: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    s = tables["settings"]
    n_cases = sorted({n for r in rows for n in r["n_test_cases"]})
    timing = sorted({t for r in rows for t in r["timing"]})
    return [
        f"Open synthetic benchmark, preset `{s['preset']}`, {s['steps']} training steps per detector, seeds "
        f"{', '.join(map(str, s['seeds']))}; test cases: {', '.join(map(str, n_cases)) or MISSING} volumes x 5 "
        "landmarks. Cells are mean ± sample standard deviation over the seeds present (no ± with one seed).",
        "AP = mean detection rate over IoU 0.50:0.95 (the paper's \"AP\", NOTES item 1); AP35/AP50/AP75 = "
        "share of landmarks whose final box has IoU ≥ 0.35/0.5/0.75; mIoU = mean IoU of the final boxes; "
        "d-mean = mean landmark error; COCO AP = ranked average precision over all candidates (not in the paper). "
        "Percent, mm, ms.",
        f"Time = median wall time per volume on {', '.join(timing) or MISSING}: comparable within this table only.",
    ]


def _paragraphs(texts: Sequence[str]) -> list[str]:
    return [line for t in texts for line in (t, "")]


def render_table1(tables: dict[str, Any]) -> str:
    """``table1.md``: methods compared (paper Table 1), the paper's numbers, paired tests."""
    t = tables["table1"]
    rows, n = t["rows"], len(tables["settings"]["seeds"])
    header = ["Method", *[h for _, h, _ in COLUMNS], "seeds"]
    lines = [f"# Table 1: {t['title']}", "", *_paragraphs(_intro(tables, rows))]
    lines += _md_table(header, [[r["label"], *_cells(r), f"{r['n_seeds']}/{n}"] for r in rows])
    lines += ["", "Heatmap regression predicts points, not boxes: d-mean and time only, as in the paper. "
              "Faster R-CNN and the MONAI peer are shown without the graph prior (the peer also with it).", ""]
    notes = _notes(rows, n)
    if notes:
        lines += ["Missing runs:", "", *notes, ""]
    lines += ["## The paper's Table 1", "", f"{PAPER_CITATION}; private data, their GPU.", ""]
    lines += _md_table(["Method", *[h for k, h, _ in COLUMNS if k != "ap_coco"]],
                       [[name, *[_fmt_paper(v[k], kind) for k, _, kind in COLUMNS if k != "ap_coco"]]
                        for name, v in PAPER_TABLE1.items()])
    lines += ["", "## Paired comparisons of landmark errors", "",
              "Per (case, landmark) differences of the error, averaged over the seeds both sides have; two-sided "
              "Wilcoxon signed-rank test (ties left out); 95 % CI of the mean difference by a bootstrap over cases. "
              "Negative: A is closer.", ""]
    lines += _pairs_md(t["paired"])
    return "\n".join(lines) + "\n"


def render_table2(tables: dict[str, Any]) -> str:
    """``table2.md``: the ablation (paper Table 2), the paper's numbers, paired tests, prior changes."""
    t = tables["table2"]
    rows, n = t["rows"], len(tables["settings"]["seeds"])
    header = ["Detector", "IoU-balance", "Prior", *[h for _, h, _ in COLUMNS], "ρ(score, error)", "seeds"]
    body = []
    for spec, r in zip(TABLE2_ROWS, rows):
        rho = r["score_error_spearman"]
        rho_txt = MISSING if rho["mean"] is None else f"{rho['mean']:.2f}"
        if rho["std"] is not None:
            rho_txt += f" ± {rho['std']:.2f}"
        body.append([spec.group, "✓" if r["iou_balance"] else "", "✓" if r["prior"] else "", *_cells(r), rho_txt,
                     f"{r['n_seeds']}/{n}"])
    lines = [f"# Table 2: {t['title']}", "", *_paragraphs([
        *_intro(tables, rows), "ρ(score, error) = Spearman correlation of a final box's score with its landmark error "
        "(more negative: scores rank localisation quality better)."])]
    lines += _md_table(header, body)
    notes = _notes(rows, n)
    if notes:
        lines += ["", "Missing runs:", "", *notes]
    lines += ["", "## The paper's Table 2", "", f"{PAPER_CITATION}; private data, their GPU.", ""]
    lines += _md_table(["Detector", "IoU-balance", "Prior", *[h for k, h, _ in COLUMNS if k != "ap_coco"]],
                       [[d, "✓" if i else "", "✓" if p else "", *[_fmt_paper(v[k], kind) for k, _, kind in COLUMNS
                                                                 if k != "ap_coco"]]
                        for (d, i, p), v in PAPER_TABLE2.items()])
    lines += ["", "## Paired comparisons of landmark errors", "",
              "As in Table 1: per (case, landmark) differences averaged over seeds, Wilcoxon signed-rank test, "
              "bootstrap over cases. Negative: A is closer.", ""]
    lines += _pairs_md(t["paired"])
    lines += ["", "## What the graph prior changed", "",
              "Landmarks (and cases) whose chosen box differs with the prior, summed over seeds; better / worse by "
              "the landmark's error (a case by its mean error).", ""]
    crow = []
    for v, c in t["prior_changes"].items():
        tot = c["total"]
        if not tot:
            crow.append([v, MISSING, MISSING, MISSING, "no run with both evaluations"])
            continue
        crow.append([v, f"{len(c['seeds'])}", f"{tot['landmarks_changed']} of {tot['landmarks']} "
                     f"({tot['landmarks_better']} better, {tot['landmarks_worse']} worse)",
                     f"{tot['cases_changed']} of {tot['cases']} ({tot['cases_better']} better, "
                     f"{tot['cases_worse']} worse)",
                     f"{tot['mean_change_mm']:+.3f}"])
    lines += _md_table(["run", "seeds", "landmarks changed", "cases changed", "mean change of error (mm)"], crow)
    return "\n".join(lines) + "\n"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_tables(results: str | Path, tables: dict[str, Any]) -> None:
    """Write ``table1.md``, ``table2.md`` and ``tables.json`` into ``results`` (atomically)."""
    results = Path(results)
    atomic_write(results / "table1.md", render_table1(tables))
    atomic_write(results / "table2.md", render_table2(tables))
    atomic_write_json(results / "tables.json", _jsonable(tables))
