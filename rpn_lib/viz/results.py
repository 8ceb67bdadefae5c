"""Reading the results the book's last chapters show, and the replication's tables, figures and words.

Two files, written by commands and read here (nothing is trained or timed in this module):

* ``results/tables.json`` from :func:`rpn_lib.replicate.run_replication` (``make replicate``):
  the replication of the paper's Table 1 (methods) and Table 2 (ablation), with per-seed
  metrics, the paper's numbers, paired tests (:mod:`rpn_lib.paired`) and what the graph prior
  changed; the run folders beside it hold each run's ``train.json`` and metrics files. This
  module shows it (chapter *Ablations and baselines*);
* ``results/bench.json`` from :func:`rpn_lib.bench.run_benchmark` (``make bench``), shown by
  :mod:`rpn_lib.viz.bench_results` (chapter *Performance*).

The chapters run with the working directory ``notebooks/``; :func:`results_dir` finds the
repository's ``results/`` from there, or takes the folder named by the environment variable
:data:`RESULTS_ENV`. A missing file is not an error: :func:`read_result` returns None and
:func:`missing_result_message` says which command creates it.

Tables are HTML strings (:func:`html_table`; Jupyter and the book render them, and no table
library is needed). Figures are matplotlib Figures. Sentences that answer the replication's
questions are generated from the numbers (:func:`describe_pair`, :func:`answer_iou_balance` ...),
so the text of the chapter follows the results and never states more than they show.

Conventions of the data: in ``tables.json``, ``mean``, ``std`` and ``per_seed`` hold detection
rates, mIoU and APs as fractions, d-mean in mm and time in ms; ``paper`` holds the paper's
values as printed (percent, mm, ms). A paired comparison's difference is A - B in mm
(negative: A is closer to the truth).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rpn_lib.errors import DataError
from rpn_lib.landmarks import LANDMARK_NAMES
from rpn_lib.presets import PRESETS
from rpn_lib.replicate import COLUMNS, MISSING, fmt_value

__all__ = [
    "RESULTS_ENV", "RESULT_COMMANDS", "ALPHA", "find_repo_root", "results_dir", "read_result",
    "missing_result_message", "display_path", "html_table", "html_list", "fmt_p", "fmt_num",
    # replication
    "row_by_label", "table1_html", "table2_html", "missing_runs", "read_protocol", "protocol_html",
    "per_landmark_errors", "per_landmark_html", "pairs_html", "prior_changes_html", "pair_verdict", "describe_pair",
    "seed_values", "describe_metric_change", "describe_prior_changes", "paper_agreement",
    "answer_iou_balance", "answer_prior", "answer_complementary", "answer_rpn_vs_baselines", "answer_heatmap",
    "plot_metric_by_method", "plot_per_landmark", "plot_paired_differences", "plot_prior_changes",
    "plot_score_error_correlation",
]

RESULTS_ENV = "RPN_LIB_RESULTS"
"""Environment variable naming another results folder (absolute, or relative to the repository
root) for the chapters to read instead of ``<repository>/results``."""

RESULT_COMMANDS: dict[str, tuple[str, str]] = {
    "tables.json": ("make replicate", "rpn-lib replicate --data data/synth-cpu-small --results results"),
    "bench.json": ("make bench", "rpn-lib bench --preset all --model models/ig-rpn-cpu-small/model.pt "
                   "--accuracy-data data/synth-cpu-small --out results/bench.json"),
    "budget-3800/comparison.json": ("make peer-budget", ".venv/bin/python scripts/peer_at_shipped_budget.py"),
    "bench-avx2.json": ("", "rpn-lib bench --preset all --model models/ig-rpn-cpu-small/model.pt --accuracy-data "
                        "data/synth-cpu-small --compile --out results/bench-avx2.json --markdown results/bench-avx2.md "
                        "(on a CPU with AVX2 and neither AVX512-BF16 nor AMX)"),
}
"""The make target, and the command it runs, that write each results file."""

ALPHA = 0.05
"""Significance level of the paired tests in the generated sentences."""


# ------------------------------------------------------------------------------------------
# finding and reading the files
# ------------------------------------------------------------------------------------------


def _is_root(path: Path) -> bool:
    return (path / "pyproject.toml").is_file() and (path / "rpn_lib").is_dir()


def find_repo_root(start: str | Path | None = None) -> Path:
    """The repository root: the first folder at or above ``start`` (default: the working
    directory) holding ``pyproject.toml`` and ``rpn_lib/``; else the folder above the installed
    package when that is a checkout; else ``start`` itself."""
    here = Path(start if start is not None else Path.cwd()).resolve()
    for p in (here, *here.parents):
        if _is_root(p):
            return p
    pkg = Path(__file__).resolve().parents[2]
    return pkg if _is_root(pkg) else here


def results_dir(root: str | Path | None = None) -> Path:
    """The results folder the chapters read: ``$RPN_LIB_RESULTS`` when set (a relative path is
    taken from the repository root), else ``<repository root>/results``."""
    root = find_repo_root() if root is None else Path(root)
    env = os.environ.get(RESULTS_ENV)
    if env:
        p = Path(env).expanduser()
        return p if p.is_absolute() else root / p
    return root / "results"


def display_path(path: str | Path, root: str | Path | None = None) -> str:
    """``path`` relative to the repository root when inside it (the same text on every
    machine), else absolute."""
    root = find_repo_root() if root is None else Path(root)
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def read_result(name: str, folder: str | Path | None = None) -> dict[str, Any] | None:
    """The JSON file ``name`` of the results folder, or None when it does not exist.

    Raises:
        DataError: the file exists but is not a JSON object.
    """
    path = Path(folder if folder is not None else results_dir()) / name
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read JSON ({e})", path) from None
    if not isinstance(obj, dict):
        raise DataError("expected a JSON object", path)
    return obj


def missing_result_message(name: str, folder: str | Path | None = None) -> str:
    """A few lines saying that ``name`` is missing and which command writes it."""
    folder = Path(folder if folder is not None else results_dir())
    target, cmd = RESULT_COMMANDS.get(name, ("", "the command that writes it"))
    how = f"    {target}\n(which runs: {cmd})" if target else f"    {cmd}"
    return (f"{display_path(folder / name)} does not exist yet, so this part of the chapter has nothing to show.\n"
            f"Create it from the repository root with:\n{how}\n"
            f"To read results kept elsewhere, set {RESULTS_ENV}=/path/to/results before starting Jupyter.")


# ------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None,
               nowrap: slice | None = None) -> str:
    """An HTML table; every cell is converted with ``str`` and escaped.

    Args:
        header: column titles.
        rows: cells, one sequence per row.
        caption: optional caption.
        nowrap: columns whose cells stay on one line (e.g. ``slice(1, None)``: all but the
            first), so that "5.35 ± 0.11" is not broken in a narrow page.
    """
    esc = lambda c: html.escape(str(c))  # noqa: E731
    keep = set(range(len(header))[nowrap]) if nowrap is not None else set()
    td = lambda i, c: f'<td style="white-space:nowrap">{esc(c)}</td>' if i in keep else f"<td>{esc(c)}</td>"  # noqa: E731
    # Bootstrap classes: the book's theme draws the rules; a smaller font fits the wide tables
    out = ['<table class="table table-sm" style="font-size:0.85em">']
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>")
    out.append("<tbody>")
    out += ["<tr>" + "".join(td(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows]
    out.append("</tbody></table>")
    return "\n".join(out)


def html_list(items: Sequence[str]) -> str:
    """Sentences as an HTML bullet list (each escaped)."""
    return "<ul>\n" + "\n".join(f"<li>{html.escape(str(i))}</li>" for i in items) + "\n</ul>"


def fmt_p(p: float | None) -> str:
    """A p-value as the sentences print it: ``p = 0.41``, ``p = 0.003``, ``p < 0.001``."""
    if p is None or not math.isfinite(p):
        return "p = ?"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def fmt_num(x: Any, nd: int = 1, suffix: str = "") -> str:
    """``x`` with ``nd`` decimals and ``suffix``; "—" for None and non-finite values."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return MISSING
    return f"{x:.{nd}f}{suffix}"


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


# ------------------------------------------------------------------------------------------
# replication: tables
# ------------------------------------------------------------------------------------------

_BOX_KINDS = {"pct"}


def row_by_label(tables: Mapping[str, Any], label: str) -> dict[str, Any] | None:
    """The row of Table 1 or Table 2 whose label is ``label`` (e.g. ``"IG-RPN"``, ``"RPN + prior"``)."""
    for t in ("table1", "table2"):
        for r in tables[t]["rows"]:
            if r["label"] == label:
                return r
    return None


def _our_cells(row: Mapping[str, Any]) -> list[str]:
    return [MISSING if (row["distance_only"] and kind in _BOX_KINDS) else
            fmt_value(row["mean"].get(k), row["std"].get(k), kind) for k, _, kind in COLUMNS]


def _paper_cells(paper: Mapping[str, Any] | None) -> list[str]:
    if paper is None:
        return [MISSING] * len(COLUMNS)
    cells = []
    for k, _, kind in COLUMNS:
        v = paper.get(k)
        cells.append(MISSING if v is None else (f"{v:.0f}" if kind == "ms" else f"{v:.2f}"))
    return cells


def _seeds_cell(row: Mapping[str, Any], n: int) -> str:
    return f"{row['n_seeds']}/{n}"


def table1_html(tables: Mapping[str, Any]) -> str:
    """Table 1 (methods) with each of our rows followed by the paper's row for that method.

    Ours: mean ± sample std over seeds, rates and mIoU in percent; the paper's: as printed
    (private data, their GPU). "—": not measured, not applicable, or no run.
    """
    n = len(tables["settings"]["seeds"])
    header = ["Method", "source", *[h for _, h, _ in COLUMNS], "seeds"]
    body = []
    for r in tables["table1"]["rows"]:
        body.append([r["label"], "ours", *_our_cells(r), _seeds_cell(r, n)])
        if r.get("paper") is not None:
            body.append(["", "paper", *_paper_cells(r["paper"]), ""])
    return html_table(header, body, nowrap=slice(1, None))


def table2_html(tables: Mapping[str, Any]) -> str:
    """Table 2 (ablation) with each of our rows followed by the paper's; ``ρ`` is the Spearman
    correlation of the final boxes' scores with their landmark errors (mean ± std over seeds)."""
    n = len(tables["settings"]["seeds"])
    header = ["Detector", "IoU-balance", "prior", "source", *[h for _, h, _ in COLUMNS], "ρ(score, error)", "seeds"]
    body = []
    for r in tables["table2"]["rows"]:
        group = r["label"].split(" ")[0]
        rho = r["score_error_spearman"]
        rho_txt = MISSING if rho["mean"] is None else f"{rho['mean']:.2f}"
        if rho["mean"] is not None and rho["std"] is not None:
            rho_txt += f" ± {rho['std']:.2f}"
        marks = ["✓" if r["iou_balance"] else "", "✓" if r["prior"] else ""]
        body.append([group, *marks, "ours", *_our_cells(r), rho_txt, _seeds_cell(r, n)])
        body.append(["", "", "", "paper", *_paper_cells(r.get("paper")), MISSING, ""])
    return html_table(header, body, nowrap=slice(1, None))


def missing_runs(tables: Mapping[str, Any]) -> list[str]:
    """One line per table row that lacks some seeds, with the reasons the runner recorded."""
    n = len(tables["settings"]["seeds"])
    out, seen = [], set()
    for t in ("table1", "table2"):
        for r in tables[t]["rows"]:
            if r["missing"] and r["label"] not in seen:
                seen.add(r["label"])
                why = "; ".join(f"seed {s}: {m}" for s, m in r["missing"].items())
                out.append(f"{r['label']}: {r['n_seeds']} of {n} seeds ({why})")
    return out


# ------------------------------------------------------------------------------------------
# replication: the protocol, read from the run folders
# ------------------------------------------------------------------------------------------

PAPER_FIXED_FIELDS: tuple[tuple[str, str], ...] = (
    ("spacing_mm", "voxel spacing (mm)"), ("shape_vox", "input volume (voxels)"),
    ("width", "first-block width (channels)"), ("anchor_base_mm", "anchor base sizes (mm)"),
    ("eta", "eta of the IoU-balanced loss"), ("pos_iou", "positive anchor IoU"),
    ("neg_iou", "negative anchor IoU"), ("focal_gamma", "focal exponent (0: the paper's cross-entropy)"),
    ("rotation_deg", "rotation augmentation (±degrees)"), ("flip", "flip augmentation"),
    ("top_k", "candidates per landmark for the prior"),
)
"""Preset fields the paper fixes (Sec. 2-3), with a reader's name: compared with the ``paper``
preset to list what the replication changed."""

PROJECT_CHOICE_FIELDS: tuple[tuple[str, str], ...] = (
    ("batch_size", "volumes per step"), ("lr", "peak learning rate (AdamW)"),
    ("anchors_per_volume", "anchors sampled per volume"), ("hard_negative_fraction", "share of hard negatives"),
    ("hard_negative_start", "hard negatives start after this share of the steps"), ("nms_iou", "class-wise NMS IoU"),
)
"""Preset fields the paper does not give (the project's choices), shown with their values."""


def _fmt_field(v: Any) -> str:
    if isinstance(v, list | tuple):
        return " × ".join(_fmt_field(x) for x in v) if all(isinstance(x, int) for x in v) else \
            ", ".join(_fmt_field(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}" if abs(v - round(v, 3)) < 1e-9 else f"{v:.3g}"
    return str(v)


def read_protocol(tables: Mapping[str, Any], folder: str | Path | None = None) -> dict[str, Any]:
    """How the replication was run, read from ``tables.json`` and the runs' ``train.json`` and
    metrics files (never typed in).

    Returns:
        ``settings`` (of ``tables.json``: preset, steps, seeds, split), ``n_test_cases``,
        ``timing`` (machines of the evaluation times), ``runs`` (per variant: ``seeds`` with a
        ``train.json``, ``precision``, ``train_cases``, ``device``, ``threads``, ``torch``,
        ``train_seconds`` (median over seeds of the last training session's wall time)),
        ``data`` (dataset folders named in the metrics files), ``preset`` (the preset of a
        run's ``train.json``, or None), ``vs_paper`` (rows ``(field name, paper, this run)``
        for :data:`PAPER_FIXED_FIELDS` that differ from the ``paper`` preset) and
        ``choices`` (rows ``(field name, value)`` for :data:`PROJECT_CHOICE_FIELDS`).
    """
    folder = Path(folder if folder is not None else results_dir())
    rows = [*tables["table1"]["rows"], *tables["table2"]["rows"]]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    seeds = tables["settings"]["seeds"]
    runs: dict[str, dict[str, Any]] = {}
    preset = None
    data: set[str] = set()
    for v in variants:
        infos = {}
        for s in seeds:
            info = read_result("train.json", folder / v / f"seed{s}")
            if info is not None:
                infos[s] = info
            for name in ("metrics.json", "metrics_no_prior.json"):
                m = read_result(name, folder / v / f"seed{s}")
                if m is not None and m.get("data"):
                    data.add(str(m["data"]))
        if not infos:
            runs[v] = {"seeds": []}
            continue
        first = next(iter(infos.values()))
        preset = preset or first.get("preset")
        secs = _finite([i.get("seconds_this_session") for i in infos.values()])
        runs[v] = {"seeds": sorted(infos), "precision": sorted({str(i.get("precision", "?")) for i in infos.values()}),
                   "train_cases": sorted({i.get("train_cases") for i in infos.values() if i.get("train_cases")}),
                   "device": sorted({str(i.get("device", "?")) for i in infos.values()}),
                   "threads": sorted({i.get("threads") for i in infos.values() if i.get("threads")}),
                   "torch": sorted({str(i.get("torch", "?")) for i in infos.values()}),
                   "train_seconds": float(np.median(secs)) if secs else None}
    paper = PRESETS["paper"].to_dict()
    vs_paper, choices = [], []
    if preset is not None:
        for k, name in PAPER_FIXED_FIELDS:
            if k in preset and preset[k] != paper[k] and not (
                    isinstance(preset[k], list) and np.allclose(preset[k], paper[k])):
                vs_paper.append((name, _fmt_field(paper[k]), _fmt_field(preset[k])))
        choices = [(name, _fmt_field(preset[k])) for k, name in PROJECT_CHOICE_FIELDS if k in preset]
    return {"settings": dict(tables["settings"]),
            "n_test_cases": sorted({n for r in rows for n in r["n_test_cases"]}),
            "timing": sorted({t for r in rows for t in r["timing"]}),
            "runs": runs, "data": sorted(data), "preset": preset, "vs_paper": vs_paper, "choices": choices}


def protocol_html(protocol: Mapping[str, Any]) -> str:
    """The protocol as a two-column table (what, this replication)."""
    s = protocol["settings"]
    runs = protocol["runs"]
    flat = lambda key: sorted({str(x) for r in runs.values() for x in r.get(key, [])})  # noqa: E731
    secs = {v: r["train_seconds"] for v, r in runs.items() if r.get("train_seconds") is not None}
    rows = [
        ["preset", s["preset"]],
        ["dataset folder(s)", ", ".join(protocol["data"]) or MISSING],
        ["training volumes per run", ", ".join(flat("train_cases")) or MISSING],
        ["evaluation split", f"{s['split']}: {', '.join(map(str, protocol['n_test_cases'])) or MISSING} volumes"],
        ["training steps per detector", s["steps"]],
        ["seeds", ", ".join(map(str, s["seeds"]))],
        ["training precision", ", ".join(flat("precision")) or MISSING],
        ["training machine", ", ".join(f"{d}, {t} threads" for d in flat("device") for t in flat("threads")) or MISSING],
        ["torch", ", ".join(flat("torch")) or MISSING],
        ["evaluation timed on", ", ".join(protocol["timing"]) or MISSING],
    ]
    if secs:
        rows.append(["training wall time per run (median over seeds; last session of a resumed run)",
                     ", ".join(f"{v} {sec / 60:.1f} min" for v, sec in secs.items())])
    for name, value in protocol["choices"]:
        rows.append([f"{name} (not in the paper)", value])
    return html_table(["", "this replication"], rows)


# ------------------------------------------------------------------------------------------
# replication: per-landmark errors, paired tests, prior changes
# ------------------------------------------------------------------------------------------


def per_landmark_errors(tables: Mapping[str, Any], labels: Sequence[str],
                        folder: str | Path | None = None) -> dict[str, dict[str, list[float]]]:
    """Per table row and landmark, the d-mean (mm) of each seed, from the runs' metrics files.

    Reads ``<folder>/<variant>/seed<k>/<file>`` for the seeds the row of ``tables.json`` counts;
    a row with no readable file is left out.
    """
    folder = Path(folder if folder is not None else results_dir())
    out: dict[str, dict[str, list[float]]] = {}
    for label in labels:
        r = row_by_label(tables, label)
        if r is None:
            raise ValueError(f"no row {label!r} in the tables")
        per = {n: [] for n in LANDMARK_NAMES}
        for s in r["seeds"]:
            m = read_result(r["file"], folder / r["variant"] / f"seed{s}")
            for n in LANDMARK_NAMES:
                v = ((m or {}).get("per_landmark") or {}).get(n, {}).get("d_mean_mm")
                if v is not None:
                    per[n].append(float(v))
        if any(per.values()):
            out[label] = per
    return out


def per_landmark_html(errors: Mapping[str, Mapping[str, Sequence[float]]]) -> str:
    """Per-landmark d-mean (mm, mean ± std over seeds) of each row of :func:`per_landmark_errors`."""
    rows = [[label, *[_mean_txt(list(per[n]), 1.0, 2, "") for n in LANDMARK_NAMES]] for label, per in errors.items()]
    return html_table(["d-mean (mm)", *[n.replace("_", " ") for n in LANDMARK_NAMES]], rows, nowrap=slice(1, None))


def pair_verdict(pair: Mapping[str, Any], alpha: float = ALPHA) -> str:
    """What a paired comparison shows: ``"a"`` (A closer), ``"b"`` (B closer), ``"none"`` (no
    significant difference), ``"mixed"`` (the Wilcoxon test and the bootstrap CI disagree:
    one says significant, the other not) or ``"missing"``.

    A difference is significant when the Wilcoxon p-value is below ``alpha`` *and* the 95 % CI
    of the mean difference excludes 0; its direction is the CI's side of 0.
    """
    if "missing" in pair or pair.get("p_value") is None:
        return "missing"
    lo, hi = pair["ci95_mm"]
    significant = pair["p_value"] < alpha
    excludes = lo > 0 or hi < 0
    if significant and excludes:
        return "a" if hi < 0 else "b"
    if not significant and not excludes:
        return "none"
    return "mixed"


def _stats_text(pair: Mapping[str, Any]) -> str:
    lo, hi = pair["ci95_mm"]
    k = len(pair["seeds"])
    return (f"Wilcoxon {fmt_p(pair['p_value'])}, 95 % CI {lo:.2f} to {hi:.2f} mm; {pair['n_pairs']} landmarks, "
            f"{k} seed{'s' if k != 1 else ''}")


def describe_pair(pair: Mapping[str, Any], alpha: float = ALPHA) -> str:
    """One sentence on a paired comparison of landmark errors, e.g. "IG-RPN 5.35 mm vs IG-SSD
    6.47 mm: IG-RPN is closer by 1.11 mm on average, significant (Wilcoxon p < 0.001, 95 % CI
    -1.34 to -0.90 mm; 160 landmarks, 3 seeds)." or "...: difference +0.05 mm, not significant
    (...)."."""
    a, b = pair["a"], pair["b"]
    v = pair_verdict(pair, alpha)
    if v == "missing":
        return f"{a} vs {b}: cannot be compared ({pair.get('missing', 'no result')})."
    head = f"{a} {pair['mean_a_mm']:.2f} mm vs {b} {pair['mean_b_mm']:.2f} mm"
    d = pair["mean_diff_mm"]
    if v in ("a", "b"):
        winner = a if v == "a" else b
        return f"{head}: {winner} is closer by {abs(d):.2f} mm on average, significant ({_stats_text(pair)})."
    if v == "none":
        return f"{head}: difference {d:+.2f} mm, not significant ({_stats_text(pair)})."
    return (f"{head}: difference {d:+.2f} mm, mixed evidence: the Wilcoxon test and the bootstrap CI disagree "
            f"on significance at {alpha:g} ({_stats_text(pair)}).")


def pairs_html(pairs: Sequence[Mapping[str, Any]], alpha: float = ALPHA) -> str:
    """The paired comparisons as a table, with the generated verdict."""
    words = {"a": "A closer", "b": "B closer", "none": "not significant", "mixed": "mixed", "missing": MISSING}
    rows = []
    for p in pairs:
        v = pair_verdict(p, alpha)
        if v == "missing":
            rows.append([p["question"], p["a"], p["b"], *[MISSING] * 5, p.get("missing", "")])
            continue
        lo, hi = p["ci95_mm"]
        rows.append([p["question"], p["a"], p["b"], f"{p['mean_a_mm']:.2f}", f"{p['mean_b_mm']:.2f}",
                     f"{p['mean_diff_mm']:+.2f} [{lo:+.2f}, {hi:+.2f}]", fmt_p(p["p_value"]),
                     f"{p['a_better']} / {p['b_better']} / {p['ties']}", words[v]])
    return html_table(["question", "A", "B", "d-mean A (mm)", "d-mean B (mm)", "A − B mm [95 % CI]", "Wilcoxon",
                       "A closer / B closer / ties", "verdict"], rows, nowrap=slice(3, 7))


def prior_changes_html(changes: Mapping[str, Mapping[str, Any]]) -> str:
    """What the graph prior changed in each run family, summed over seeds."""
    rows = []
    for v, c in changes.items():
        t = c["total"]
        if not t:
            rows.append([v, 0, MISSING, MISSING, MISSING, MISSING, MISSING])
            continue
        rows.append([v, len(c["seeds"]), f"{t['landmarks_changed']} of {t['landmarks']}", t["landmarks_better"],
                     t["landmarks_worse"], f"{t['cases_changed']} of {t['cases']} ({t['cases_better']} better, "
                     f"{t['cases_worse']} worse)", f"{t['mean_change_mm']:+.3f}"])
    return html_table(["run", "seeds", "landmarks changed", "closer", "farther", "cases changed",
                       "mean change of error (mm)"], rows)


def describe_prior_changes(name: str, change: Mapping[str, Any]) -> str:
    """One sentence on what the prior changed in run family ``name`` (summed over seeds)."""
    t = change.get("total") or {}
    if not t:
        return f"{name}: no run was evaluated both with and without the prior."
    k = len(change["seeds"])
    share = t["landmarks_changed"] / t["landmarks"] if t["landmarks"] else float("nan")
    lean = ("more often closer than farther" if t["landmarks_better"] > t["landmarks_worse"] else
            "more often farther than closer" if t["landmarks_better"] < t["landmarks_worse"] else
            "as often closer as farther")
    return (f"{name}: the prior chose another box for {t['landmarks_changed']} of {t['landmarks']} landmarks "
            f"({100 * share:.1f} %, {k} seed{'s' if k != 1 else ''}): {t['landmarks_better']} closer to the truth, "
            f"{t['landmarks_worse']} farther ({lean}); mean change of the error {t['mean_change_mm']:+.3f} mm.")


# ------------------------------------------------------------------------------------------
# replication: per-seed comparisons and the five questions
# ------------------------------------------------------------------------------------------

RHO = "rho"
"""Pseudo metric key of :func:`seed_values`: the Spearman correlation of score and error."""


def seed_values(row: Mapping[str, Any], key: str) -> dict[int, float]:
    """``{seed: value}`` of metric ``key`` in a table row (``key`` :data:`RHO` for the
    score-error correlation); seeds without a finite value are left out."""
    if key == RHO:
        src = {s: v for s, v in row["score_error_spearman"]["per_seed"].items()}
    else:
        src = {s: vals.get(key) for s, vals in row["per_seed"].items()}
    return {int(s): float(v) for s, v in src.items() if v is not None and math.isfinite(float(v))}


def _mean_txt(values: Sequence[float], scale: float, nd: int, unit: str) -> str:
    if not values:
        return MISSING
    m = float(np.mean(values)) * scale
    if len(values) == 1:
        return f"{m:.{nd}f}{unit}"
    return f"{m:.{nd}f} ± {float(np.std(values, ddof=1)) * scale:.{nd}f}{unit}"


_KINDS = {"pct": (100.0, 1, " %"), "mm": (1.0, 2, " mm"), "ms": (1.0, 0, " ms"), RHO: (1.0, 2, "")}


def describe_metric_change(row_a: Mapping[str, Any], row_b: Mapping[str, Any], key: str, name: str, kind: str,
                           higher_is_better: bool = True) -> str:
    """One sentence comparing a metric between two rows over their common seeds, e.g.
    "mIoU: 58.0 ± 0.4 % (RPN + IoU-balance) against 55.9 ± 0.4 % (RPN); better in 3 of 3
    paired seeds.".

    Args:
        key: metric key of ``per_seed``, or :data:`RHO`.
        kind: ``pct`` (fraction shown in percent), ``mm``, ``ms`` or :data:`RHO`.
        higher_is_better: direction of "better" (False for d-mean, time and ``RHO``).
    """
    a, b = seed_values(row_a, key), seed_values(row_b, key)
    common = sorted(set(a) & set(b))
    scale, nd, unit = _KINDS[kind]
    if not common:
        return f"{name}: cannot be compared ({row_a['label']}: {len(a)} seeds, {row_b['label']}: {len(b)} seeds)."
    va, vb = [a[s] for s in common], [b[s] for s in common]
    better = sum((x > y) if higher_is_better else (x < y) for x, y in zip(va, vb))
    worse = sum((x < y) if higher_is_better else (x > y) for x, y in zip(va, vb))
    ties = len(common) - better - worse
    tie_txt = f", equal in {ties}" if ties else ""
    return (f"{name}: {_mean_txt(va, scale, nd, unit)} ({row_a['label']}) against {_mean_txt(vb, scale, nd, unit)} "
            f"({row_b['label']}); {row_a['label']} better in {better} of {len(common)} paired seed"
            f"{'s' if len(common) != 1 else ''}{tie_txt}.")


def paper_agreement(pair: Mapping[str, Any], paper_a: float | None, paper_b: float | None,
                    alpha: float = ALPHA) -> str:
    """Whether our paired d-mean comparison agrees with the paper's two d-means (mm, lower is
    better): "agrees with the paper", "does not confirm the paper", "contradicts the paper",
    "is inconclusive" or "cannot be checked"."""
    if paper_a is None or paper_b is None:
        return "cannot be checked (the paper gives no value)"
    v = pair_verdict(pair, alpha)
    paper_v = "a" if paper_a < paper_b else "b" if paper_a > paper_b else "none"
    said = (f"the paper: {pair['a']} {paper_a:.2f} mm, {pair['b']} {paper_b:.2f} mm")
    if v == "missing":
        return f"cannot be checked here ({said})"
    if v == "mixed":
        return f"is inconclusive ({said})"
    if v == paper_v:
        return f"agrees with the paper ({said})"
    if v == "none":
        return f"does not confirm the paper: no significant difference here ({said})"
    return f"contradicts the paper ({said})"


def _pair(tables: Mapping[str, Any], table: str, question: str) -> dict[str, Any]:
    for p in tables[table]["paired"]:
        if p["question"] == question:
            return p
    raise ValueError(f"no paired comparison {question!r} in {table}")


def _row(tables: Mapping[str, Any], label: str) -> dict[str, Any]:
    r = row_by_label(tables, label)
    if r is None:
        raise ValueError(f"no row {label!r} in the tables")
    return r


def _has(row: Mapping[str, Any]) -> bool:
    return row["n_seeds"] > 0


def _missing_line(*rows: Mapping[str, Any]) -> str | None:
    gone = [r["label"] for r in rows if not _has(r)]
    if gone:
        return f"Missing run(s): {', '.join(gone)}; this part cannot be answered yet."
    return None


def answer_iou_balance(tables: Mapping[str, Any], alpha: float = ALPHA) -> list[str]:
    """Question 1: does the IoU-balanced loss raise the score-localisation correlation, AP and
    mIoU? Sentences for RPN and SSD without the prior (the loss alone), with the paper's
    numbers for the same rows."""
    out = []
    for det in ("RPN", "SSD"):
        with_, without = _row(tables, f"{det} + IoU-balance"), _row(tables, det)
        miss = _missing_line(with_, without)
        if miss:
            out.append(f"{det}: {miss}")
            continue
        out.append(f"{det}, " + describe_metric_change(with_, without, RHO, "ρ(score, error) (more negative: scores "
                                                        "rank localisation better)", RHO, higher_is_better=False))
        out.append(f"{det}, " + describe_metric_change(with_, without, "dr_50_95", "AP (detection rate 0.50:0.95)", "pct"))
        out.append(f"{det}, " + describe_metric_change(with_, without, "miou", "mIoU", "pct"))
        out.append(f"{det}, " + describe_metric_change(with_, without, "ap_coco", "ranked (COCO) AP", "pct"))
        pair = _pair(tables, "table2", f"{det}: IoU-balance, without prior")
        out.append(f"{det}, landmark error: " + describe_pair(pair, alpha))
        pa, pb = with_.get("paper") or {}, without.get("paper") or {}
        if pa and pb:
            out.append(f"{det}, the paper (no prior): AP {pb['dr_50_95']:.2f} → {pa['dr_50_95']:.2f}, mIoU "
                       f"{pb['miou']:.2f} → {pa['miou']:.2f}, d-mean {pb['d_mean_mm']:.2f} → {pa['d_mean_mm']:.2f} mm; "
                       f"our d-mean comparison {paper_agreement(pair, pa['d_mean_mm'], pb['d_mean_mm'], alpha)}.")
    return out


def answer_prior(tables: Mapping[str, Any], alpha: float = ALPHA) -> list[str]:
    """Question 2: does the graph prior remove false positives? What it changed (better and
    worse), DR50 with and without it, and the paired test, for RPN and SSD with IoU-balance."""
    out = []
    changes = tables["table2"]["prior_changes"]
    for det, fam in (("RPN", "rpn"), ("SSD", "ssd")):
        with_, without = _row(tables, f"{det} + IoU-balance + prior"), _row(tables, f"{det} + IoU-balance")
        miss = _missing_line(with_, without)
        if miss:
            out.append(f"{det}: {miss}")
            continue
        out.append(describe_prior_changes(f"{det} + IoU-balance", changes.get(fam, {})))
        out.append(f"{det}, " + describe_metric_change(with_, without, "dr50", "AP50 (landmarks found at IoU ≥ 0.5)",
                                                        "pct"))
        pair = _pair(tables, "table2", f"{det}: prior, with IoU-balance")
        pa, pb = with_.get("paper") or {}, without.get("paper") or {}
        agree = paper_agreement(pair, pa.get("d_mean_mm"), pb.get("d_mean_mm"), alpha)
        out.append(f"{det}, landmark error: " + describe_pair(pair, alpha) + f" This {agree}.")
    return out


def answer_complementary(tables: Mapping[str, Any], alpha: float = ALPHA) -> list[str]:
    """Question 3: are IoU-balance and the prior complementary? They are when each still helps
    with the other on: "both" is significantly closer than IoU-balance alone *and* than the
    prior alone (verdict "complementary"; one of the two: "partly"; neither: "not shown")."""
    out = []
    for det in ("RPN", "SSD"):
        labels = [det, f"{det} + IoU-balance", f"{det} + prior", f"{det} + IoU-balance + prior"]
        rows = [_row(tables, lab) for lab in labels]
        miss = _missing_line(*rows)
        if miss:
            out.append(f"{det}: {miss}")
            continue
        d = [r["mean"]["d_mean_mm"] for r in rows]
        out.append(f"{det}, d-mean change against neither: IoU-balance {d[1] - d[0]:+.2f} mm, prior {d[2] - d[0]:+.2f} "
                   f"mm, both {d[3] - d[0]:+.2f} mm (the two alone add up to {d[1] + d[2] - 2 * d[0]:+.2f} mm).")
        add_iou = _pair(tables, "table2", f"{det}: IoU-balance, with prior")
        add_prior = _pair(tables, "table2", f"{det}: prior, with IoU-balance")
        out.append(f"{det}, IoU-balance on top of the prior: " + describe_pair(add_iou, alpha))
        out.append(f"{det}, the prior on top of IoU-balance: " + describe_pair(add_prior, alpha))
        helps = [pair_verdict(p, alpha) == "a" for p in (add_iou, add_prior)]
        verdict = "complementary" if all(helps) else "partly complementary" if any(helps) else "not shown to be complementary"
        out.append(f"{det}: verdict: {verdict} on this benchmark (at significance {alpha:g}).")
    return out


def _time_ratio(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    ta, tb = a["mean"].get("time_ms"), b["mean"].get("time_ms")
    if ta is None or tb is None:
        return f"time: {a['label']} or {b['label']} not measured"
    return (f"time per volume: {b['label']} {tb:.0f} ms against {a['label']} {ta:.0f} ms, "
            f"{tb / ta:.2f}× the {a['label']}'s time")


def _paper_time_ratio(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    pa, pb = a.get("paper") or {}, b.get("paper") or {}
    if pa.get("time_ms") is None or pb.get("time_ms") is None:
        return "the paper gives no time"
    return f"in the paper {pb['time_ms']:.0f} against {pa['time_ms']:.0f} ms, {pb['time_ms'] / pa['time_ms']:.2f}×"


def answer_rpn_vs_baselines(tables: Mapping[str, Any], alpha: float = ALPHA) -> list[str]:
    """Question 4: does IG-RPN beat IG-SSD and Faster R-CNN on d-mean, and how do the times
    compare? Paired tests, agreement with the paper, time ratios (ours and the paper's)."""
    out = []
    rpn = _row(tables, "IG-RPN")
    for other in ("IG-SSD", "Faster R-CNN"):
        row = _row(tables, other)
        miss = _missing_line(rpn, row)
        if miss:
            out.append(f"IG-RPN vs {other}: {miss}")
            continue
        pair = _pair(tables, "table1", f"IG-RPN vs {other}")
        agree = paper_agreement(pair, (rpn.get("paper") or {}).get("d_mean_mm"), (row.get("paper") or {}).get("d_mean_mm"),
                                alpha)
        out.append(describe_pair(pair, alpha) + f" This {agree}.")
        out.append(f"IG-RPN vs {other}, {_time_ratio(rpn, row)} ({_paper_time_ratio(rpn, row)}).")
    return out


def answer_heatmap(tables: Mapping[str, Any], alpha: float = ALPHA) -> list[str]:
    """Question 5: is heatmap regression slower and less accurate than IG-RPN here?"""
    rpn, hm = _row(tables, "IG-RPN"), _row(tables, "Heatmap")
    miss = _missing_line(rpn, hm)
    if miss:
        return [f"IG-RPN vs Heatmap: {miss}"]
    pair = _pair(tables, "table1", "IG-RPN vs Heatmap")
    agree = paper_agreement(pair, (rpn.get("paper") or {}).get("d_mean_mm"), (hm.get("paper") or {}).get("d_mean_mm"),
                            alpha)
    out = [describe_pair(pair, alpha) + f" This {agree}.",
           f"IG-RPN vs Heatmap, {_time_ratio(rpn, hm)} ({_paper_time_ratio(rpn, hm)})."]
    ta, tb = rpn["mean"].get("time_ms"), hm["mean"].get("time_ms")
    if ta is not None and tb is not None:
        accuracy = {"a": "less accurate", "b": "more accurate"}.get(pair_verdict(pair, alpha),
                                                                     "not shown to differ in accuracy")
        out.append(f"Heatmap regression is {'slower' if tb > ta else 'not slower'} than IG-RPN here "
                   f"and {accuracy}.")
    return out


# ------------------------------------------------------------------------------------------
# replication: figures
# ------------------------------------------------------------------------------------------


def _new_axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    return ax.figure, ax


def plot_metric_by_method(rows: Sequence[Mapping[str, Any]], key: str = "d_mean_mm", kind: str = "mm",
                          label: str = "d-mean (mm)", paper: bool = True, ax: Any = None) -> Any:
    """One horizontal bar per table row (mean over seeds), a dot per seed, and the paper's value
    as a hollow diamond (its own data: compare the pattern, not the level).

    Returns:
        the matplotlib Figure.
    """
    fig, ax = _new_axes(ax, (7.5, 0.45 * len(rows) + 1.2))
    scale = _KINDS[kind][0]
    y = np.arange(len(rows))[::-1]
    labelled = set()

    def once(name: str) -> str | None:
        if name in labelled:
            return None
        labelled.add(name)
        return name

    for yi, r in zip(y, rows):
        vals = [] if (r.get("distance_only") and kind == "pct") else [v * scale for v in seed_values(r, key).values()]
        if vals:
            ax.barh(yi, np.mean(vals), color="0.85", edgecolor="0.4", height=0.6, label=once("this benchmark, mean"))
            ax.scatter(vals, yi + np.linspace(-0.12, 0.12, len(vals)), s=18, color="C0", zorder=3,
                       label=once("this benchmark, one seed"))
        else:
            ax.text(0.01, yi, "no run", va="center", color="0.4", transform=ax.get_yaxis_transform())
        p = (r.get("paper") or {}).get(key) if paper else None
        if p is not None:
            ax.scatter([p], [yi], marker="D", facecolor="none", edgecolor="C3", s=40, zorder=4,
                       label=once("paper (private data)"))
    ax.set_yticks(y, [r["label"] for r in rows])
    ax.set_xlabel(label)
    if labelled:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def plot_per_landmark(errors: Mapping[str, Mapping[str, Sequence[float]]], ax: Any = None) -> Any:
    """Grouped bars: d-mean per landmark (x) for each table row (colour), mean over seeds, with
    a dot per seed. ``errors`` as :func:`per_landmark_errors` returns it."""
    fig, ax = _new_axes(ax, (8.5, 3.6))
    labels = list(errors)
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(LANDMARK_NAMES))
    for i, lab in enumerate(labels):
        xs = x - 0.4 + width * (i + 0.5)
        means = [np.mean(errors[lab][n]) if errors[lab][n] else np.nan for n in LANDMARK_NAMES]
        ax.bar(xs, means, width=width * 0.95, color=f"C{i}", alpha=0.55, label=lab)
        for xi, n in zip(xs, LANDMARK_NAMES):
            v = errors[lab][n]
            ax.scatter(np.full(len(v), xi), v, s=8, color=f"C{i}", zorder=3)
    ax.set_xticks(x, [n.replace("_", " ") for n in LANDMARK_NAMES])
    ax.set_ylabel("d-mean (mm)")
    if labels:
        ax.legend(fontsize=8, ncols=min(3, len(labels)))
    else:
        ax.text(0.5, 0.5, "no run to show", ha="center", va="center", transform=ax.transAxes, color="0.4")
    return fig


def plot_paired_differences(pairs: Sequence[Mapping[str, Any]], alpha: float = ALPHA, ax: Any = None) -> Any:
    """Forest plot: the mean difference A − B (mm) of each comparison with its 95 % CI, coloured
    by :func:`pair_verdict` (left of 0: A closer). Rows are labelled by their question; A and B
    of each are those of :func:`pairs_html`."""
    fig, ax = _new_axes(ax, (8.0, 0.42 * len(pairs) + 1.2))
    colours = {"a": "C2", "b": "C3", "none": "0.5", "mixed": "C1"}
    y = np.arange(len(pairs))[::-1]
    names = {"a": "A closer", "b": "B closer", "none": "not significant", "mixed": "mixed evidence"}
    seen = set()
    for yi, p in zip(y, pairs):
        v = pair_verdict(p, alpha)
        if v == "missing":
            ax.text(0.01, yi, "missing", va="center", color="0.4", transform=ax.get_yaxis_transform())
            continue
        lo, hi = p["ci95_mm"]
        ax.errorbar(p["mean_diff_mm"], yi, xerr=[[p["mean_diff_mm"] - lo], [hi - p["mean_diff_mm"]]], fmt="o",
                    color=colours[v], capsize=3, label=None if v in seen else names[v])
        seen.add(v)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(y, [p["question"] for p in pairs], fontsize=8)
    ax.set_xlabel("mean difference of landmark error, A − B (mm), with 95 % CI")
    if seen:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def plot_prior_changes(changes: Mapping[str, Mapping[str, Any]], ax: Any = None) -> Any:
    """Stacked horizontal bars per run family: landmarks the prior moved closer, farther, and
    left unchanged (summed over seeds)."""
    fig, ax = _new_axes(ax, (7.5, 0.45 * len(changes) + 1.2))
    names = list(changes)
    y = np.arange(len(names))[::-1]
    for yi, v in zip(y, names):
        t = changes[v]["total"]
        if not t:
            ax.text(0.01, yi, "no run with both evaluations", va="center", color="0.4", transform=ax.get_yaxis_transform())
            continue
        parts = [(t["landmarks_better"], "C2", "closer"), (t["landmarks_worse"], "C3", "farther"),
                 (t["landmarks"] - t["landmarks_changed"], "0.85", "unchanged")]
        left = 0
        for n, c, lab in parts:
            ax.barh(yi, n, left=left, color=c, label=lab if yi == y[0] else None, height=0.6)
            left += n
    ax.set_yticks(y, names)
    ax.set_xlabel("landmarks (all seeds)")
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_score_error_correlation(tables: Mapping[str, Any], ax: Any = None) -> Any:
    """Per-seed Spearman ρ(score, error) of the final boxes for the ablation rows, grouped
    without / with IoU-balance (more negative: the score ranks localisation quality better)."""
    fig, ax = _new_axes(ax, (7.5, 3.4))
    rows = tables["table2"]["rows"]
    labels = [r["label"] for r in rows]
    x = np.arange(len(rows))
    for xi, r in zip(x, rows):
        vals = list(seed_values(r, RHO).values())
        c = "C1" if r["iou_balance"] else "C0"
        if vals:
            ax.scatter(np.full(len(vals), xi), vals, color=c, s=16, zorder=3)
            ax.hlines(np.mean(vals), xi - 0.3, xi + 0.3, color=c, lw=2)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(x, [lab.replace(" + ", "\n+ ") for lab in labels], fontsize=7)
    ax.set_ylabel("Spearman ρ(score, error)")
    ax.set_title("orange: with IoU-balance, blue: without; bar: mean over seeds", fontsize=9)
    return fig
