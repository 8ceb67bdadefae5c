"""Tables, figures and verdicts of the performance benchmark (``results/bench.json``).

:func:`rpn_lib.bench.run_benchmark` (``rpn-lib bench``, ``make bench``) writes the JSON; the
chapter *Performance* reads it through :func:`rpn_lib.viz.results.read_result` and shows it
with the functions here. Nothing is timed in this module. :func:`check_targets` compares the
measurements with the targets of the performance issue (end-to-end latency, distance to the
matmul floor, share of candidate selection and prior, the MONAI peer, the GPU) and returns one
:class:`TargetCheck` per measurement, with a verdict computed from the numbers.

Units as in ``bench.json``: times in ms (medians), rates in GFLOP/s, memory in MB, shares and
ratios as plain numbers (an ``x_igrpn`` above 1: slower than the IG-RPN).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rpn_lib.bench import (ONE_CONV_PEER, fmt_gflop, igrpn_peer_times, paired_range_text, paired_ratios,
                           peer_precisions, peer_results, read_ahead_label)
from rpn_lib.replicate import MISSING, SHIPPED_VS_PEER
from rpn_lib.viz.results import describe_pair, fmt_num, html_table, pair_verdict

__all__ = [
    "machine_text", "detect_rows", "detect_html", "detector_lever_label", "spread_rows", "spread_html", "plot_detect_split", "train_html",
    "plot_train_step", "memory_html", "scaling_exponent", "plot_sizes", "sizes_html", "plot_roofline", "efficiency_html",
    "layers_html", "plot_layer_rates", "levers_html", "describe_lever", "read_ahead_rows", "read_ahead_html",
    "read_ahead_lines", "plot_read_ahead", "allocator_rows", "allocator_html", "peers_html", "peer_round_lines", "peer_ratio", "plot_peers", "one_conv_rows", "one_conv_html", "plot_layer_flops", "bf16_status", "machines_html",
    "plot_precision_rates", "accuracy_text", "TargetCheck",
    "BUDGET_SETTING", "BUDGET_SHIPPED", "BUDGET_PEER", "BUDGET_1CONV", "budget_pair", "budget_html", "check_targets", "targets_html",
]




def machine_text(bench: Mapping[str, Any]) -> str:
    """Where and how the benchmark was measured, in one paragraph."""
    m, st = bench["machine"], bench["settings"]
    gpu = f"{m['gpu']} (CUDA {m['cuda']})" if m.get("gpu") else "none"
    text = (f"Measured {bench['created']} on {m['cpu']} ({m['usable_cores']} usable cores, {m['memory_gb']} GB), "
            f"GPU: {gpu}; torch {m['torch']} with {m['torch_threads']} thread{'s' if m['torch_threads'] != 1 else ''}, "
            f"oneDNN {'available' if m.get('mkldnn') else 'not available'}; Python {m['python']}. Times are medians of "
            f"{st['repeats']} run{'s' if st['repeats'] != 1 else ''} after {st['warmup']} warm-up; the whole benchmark "
            f"took {bench['seconds']} s. Model at cpu-small: {st['model'] or 'random weights'}.")
    b16 = bf16_status(bench)
    if b16["native"] is not None:
        text += (f" bf16: native ({b16['how']})." if b16["native"] else
                 f" bf16: emulated (the CPU has {b16['how']} but neither AVX512-BF16 nor AMX), so not measured.")
    a = m.get("allocator")
    if a:
        text += (f" Memory allocator: {a['libc'] or 'not glibc'}"
                 + (f", keeping up to {a['top_pad_mb']} MB of freed memory (rpn_lib.allocator)."
                    if a.get("retain_freed_memory") else ", as it comes."))
    if st.get("quick"):
        text += (" This file was written with --quick (tiny volumes, one run each): a smoke test of the code, "
                 "not a measurement; the verdicts below say nothing about the real speed.")
    return text


def detect_rows(bench: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (preset, precision): ``preset``, ``precision``, ``grid``, ``network``,
    ``candidates``, ``prior``, ``other``, ``total`` (ms) and ``share`` (candidates + prior,
    fraction of the total)."""
    out = []
    for name, r in bench["presets"].items():
        for prec, d in r["detect"].items():
            out.append({"preset": name, "precision": prec, "grid": "×".join(map(str, d["grid_shape"])),
                        "network": d["network_ms"], "candidates": d["candidates_ms"], "prior": d["prior_ms"],
                        "other": d["other_ms"], "total": d["end_to_end"]["median_ms"],
                        "share": d["candidates_prior_share"], "memory": d.get("memory")})
    return out


def detector_lever_label(detect: Mapping[str, Any], levers: Mapping[str, Any]) -> str:
    """The label, among the levers, of the setting under which the detector ran its network.

    ``detect`` is one (preset, precision) record of the detection latency. Files from
    ``rpn-lib bench`` name the setting (``network_setting``); in older files it is the
    inference rewrite on ``channels_last_3d`` where the levers timed that rewrite (the two came
    in together), else ``channels_last_3d`` alone.
    """
    if detect.get("network_setting"):
        return str(detect["network_setting"])
    prec = detect.get("precision", "fp32")
    rewritten = f"{prec}, channels_last_3d, BN folded + oneDNN"
    return rewritten if rewritten in levers else f"{prec}, channels_last_3d"


def spread_rows(bench: Mapping[str, Any]) -> list[dict[str, Any]]:
    """How much the repeated end-to-end detections of one setting varied within the run.

    One row per (preset, precision): ``median``, ``min`` and ``max`` (ms) of the timed runs,
    ``spread`` = (max - min) / median, ``setting`` and ``lever`` = the detector's own network
    setting (:func:`detector_lever_label`) timed again in the levers section, as a ratio to the
    detection's network time (None where the levers lack that row; ``min``, ``max`` and
    ``spread`` are None in files that did not record them). On an idle machine
    both stay near 0 and 1; on a shared one they show how far a single figure can move.
    """
    out = []
    for name, r in bench["presets"].items():
        levers = {lv["label"]: lv for lv in r.get("levers", []) if lv.get("ms_per_volume")}
        for prec, d in r["detect"].items():
            e = d["end_to_end"]
            lo, hi = e.get("min_ms"), e.get("max_ms")
            setting = detector_lever_label(d, levers)
            lever = levers.get(setting)
            out.append({"preset": name, "precision": prec, "median": e["median_ms"], "min": lo, "max": hi,
                        "setting": setting,
                        "spread": None if lo is None or hi is None else (hi - lo) / e["median_ms"],
                        "runs": len(e.get("runs_ms", [])),
                        "lever": None if lever is None else lever["ms_per_volume"] / d["network_ms"]})
    return out


def spread_html(bench: Mapping[str, Any]) -> str:
    """:func:`spread_rows` as a table."""
    rows = [[r["preset"], r["precision"], str(r["runs"]), fmt_num(r["min"]), fmt_num(r["median"]), fmt_num(r["max"]),
             fmt_num(None if r["spread"] is None else 100 * r["spread"], 0, " %"), fmt_num(r["lever"], 2)]
            for r in spread_rows(bench)]
    return html_table(["preset", "precision", "runs", "min ms", "median ms", "max ms", "(max − min) / median",
                       "same network in the levers ÷ here"], rows)


def _mb(m: Mapping[str, Any] | None, key: str = "cpu_peak_rss_mb") -> str:
    return fmt_num((m or {}).get(key), 0)


def detect_html(bench: Mapping[str, Any]) -> str:
    """Detection latency per volume (ms) split by stage, with the candidates + prior share."""
    rows = [[r["preset"], r["precision"], r["grid"], fmt_num(r["total"]), fmt_num(r["network"]), fmt_num(r["candidates"], 2),
             fmt_num(r["prior"], 2), fmt_num(r["other"], 2), fmt_num(None if r["share"] is None else 100 * r["share"], 1, " %")]
            for r in detect_rows(bench)]
    return html_table(["preset", "precision", "grid (voxels)", "end to end", "network", "candidates", "prior", "other",
                       "candidates + prior"], rows, nowrap=slice(0, None))


def plot_detect_split(bench: Mapping[str, Any]) -> Any:
    """Stacked bars of the detection latency per volume: network (backbone + head),
    candidates, prior, other; one panel per preset (their scales differ)."""
    import matplotlib.pyplot as plt

    rows = detect_rows(bench)
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    fig, axes = plt.subplots(1, len(presets), figsize=(4.2 * len(presets), 3.2), layout="constrained", squeeze=False)
    parts = (("network", "C0"), ("candidates", "C1"), ("prior", "C2"), ("other", "0.6"))
    for ax, name in zip(axes[0], presets):
        sub = [r for r in rows if r["preset"] == name]
        for i, r in enumerate(sub):
            bottom = 0.0
            for key, c in parts:
                v = r[key] or 0.0
                ax.bar(i, v, bottom=bottom, color=c, label=key if i == 0 else None, width=0.6)
                bottom += v
            ax.text(i, bottom, f"{bottom:.0f} ms", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(sub)), [r["precision"] for r in sub])
        ax.set_title(f"{name} (grid {sub[0]['grid']})", fontsize=10)
        ax.set_ylabel("ms per volume")
        ax.margins(y=0.15)
    axes[0][0].legend(fontsize=8)
    return fig


def train_html(bench: Mapping[str, Any]) -> str:
    """One training step (ms) split into its parts, with samples per second."""
    rows = []
    for name, r in bench["presets"].items():
        for prec, t in r["train"].items():
            rows.append([name, prec, t["batch_size"], fmt_num(t["step"]["median_ms"]), fmt_num(t["samples_per_s"], 2),
                         fmt_num(t.get("data_ms")), fmt_num(t.get("forward_ms")), fmt_num(t.get("loss_ms")),
                         fmt_num(t.get("backward_ms")), fmt_num(t.get("optimizer_ms"))])
    return html_table(["preset", "precision", "batch", "step", "samples/s", "data", "forward", "loss", "backward",
                       "optimizer"], rows)


def plot_train_step(bench: Mapping[str, Any]) -> Any:
    """Stacked bars of one training step: data, forward, loss, backward, optimizer (ms, medians of
    each part); one panel per preset (their scales differ), each bar labelled with the median
    step time of :func:`train_html`."""
    import matplotlib.pyplot as plt

    presets = [(name, r["train"]) for name, r in bench["presets"].items() if r.get("train")]
    fig, axes = plt.subplots(1, max(1, len(presets)), figsize=(4.2 * max(1, len(presets)), 3.2),
                             layout="constrained", squeeze=False)
    parts = (("data_ms", "0.6"), ("forward_ms", "C0"), ("loss_ms", "C1"), ("backward_ms", "C4"), ("optimizer_ms", "C2"))
    for ax, (name, train) in zip(axes[0], presets):
        batch = next(iter(train.values())).get("batch_size")
        for i, t in enumerate(train.values()):
            bottom = 0.0
            for key, c in parts:
                v = t.get(key) or 0.0
                ax.bar(i, v, bottom=bottom, color=c, width=0.6, label=key[:-3] if i == 0 else None)
                bottom += v
            step = (t.get("step") or {}).get("median_ms", bottom)  # the median step, as in the table
            ax.text(i, bottom, f"{step:.0f} ms", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(train)), list(train))
        ax.set_title(f"{name}" + (f" (batch {batch})" if batch else ""), fontsize=10)
        ax.set_ylabel("ms per step")
        ax.margins(y=0.15)
    axes[0][0].legend(fontsize=8)
    return fig


def memory_html(bench: Mapping[str, Any]) -> str:
    """Peak memory of detection and of a training step (MB): the process's peak resident set,
    its growth during the measurement, and CUDA's max allocated where there is a GPU."""
    rows = []
    for name, r in bench["presets"].items():
        for what, src in (("detect", r["detect"]), ("training step", r["train"])):
            for prec, d in src.items():
                m = d.get("memory")
                rows.append([name, what, prec, _mb(m), _mb(m, "cpu_peak_extra_mb"), _mb(m, "cuda_max_allocated_mb")])
    return html_table(["preset", "what", "precision", "peak RSS (MB)", "growth during it (MB)", "CUDA max (MB)"], rows)


def scaling_exponent(sides: Sequence[float], values: Sequence[float]) -> float | None:
    """Slope of ``log(value)`` against ``log(side)`` (least squares): 3 means proportional to the
    number of voxels. None with fewer than two positive points."""
    pts = [(s, v) for s, v in zip(sides, values) if s and v and s > 0 and v > 0]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def sizes_html(bench: Mapping[str, Any]) -> str:
    """The size-scaling table: side, voxels, GFLOP, ms, GFLOP/s, peak MB."""
    sz = bench.get("sizes")
    if not sz:
        return html_table(["size"], [["not measured (--sizes none)"]])
    rows = [[f"{r['size']}³", r["voxels"], fmt_gflop(r["gflop"], MISSING), fmt_num(r["ms"]), fmt_num(r["gflops_per_s"]),
             _mb(r.get("memory")), _mb(r.get("memory"), "cpu_peak_extra_mb")] for r in sz["rows"]]
    return html_table(["side", "voxels", "GFLOP", "ms", "GFLOP/s", "peak RSS (MB)", "growth (MB)"], rows)


def plot_sizes(bench: Mapping[str, Any]) -> Any:
    """Forward time and memory growth against the cube side, log-log, with the fitted slope and
    a slope-3 guide (cost proportional to the number of voxels)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    sz = bench["sizes"]
    rows = sz["rows"]
    side = np.array([r["size"] for r in rows], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    series = ((axes[0], [r["ms"] for r in rows], "forward time (ms)"),
              (axes[1], [(r.get("memory") or {}).get("cpu_peak_extra_mb") for r in rows], "memory growth (MB)"))
    for ax, vals, ylabel in series:
        v = np.array([np.nan if x is None else x for x in vals], dtype=float)
        ok = np.isfinite(v) & (v > 0)
        k = scaling_exponent(side[ok], v[ok])
        if ok.any():
            ax.loglog(side[ok], v[ok], "o-", color="C0", label="measured")
            ax.loglog(side[ok], v[ok][0] * (side[ok] / side[ok][0]) ** 3, "--", color="0.5", label="∝ side³ (voxels)")
            ax.legend(fontsize=8)
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(ScalarFormatter())
                axis.set_minor_formatter(NullFormatter())
            # few points over less than a decade: label the measured values themselves
            ax.set_xticks(side[ok], [f"{s:.0f}" for s in side[ok]])
            ax.set_yticks(v[ok], [f"{x:.3g}" for x in v[ok]])
        else:
            ax.text(0.5, 0.5, "nothing measurable", ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_xlabel("cube side (voxels)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"log-log slope {k:.2f}" if k is not None else "slope: too few points", fontsize=10)
    fig.suptitle(f"IG-RPN width {sz['width']}, {sz.get('setting') or sz['precision']}, batch 1", fontsize=10)
    return fig


def plot_roofline(bench: Mapping[str, Any]) -> Any:
    """Achieved GFLOP/s of the network's forward pass against the measured dense-matmul peak,
    per preset and precision (the peak is the practical ceiling on this machine)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
    labels, i = [], 0
    for name, r in bench["presets"].items():
        for prec, e in r["efficiency"].items():
            ax.bar(i - 0.2, e["peak_gflops_per_s"], width=0.4, color="0.8", edgecolor="0.4",
                   label="matmul peak" if i == 0 else None)
            ax.bar(i + 0.2, e["gflops_per_s"], width=0.4, color="C0", label="IG-RPN forward" if i == 0 else None)
            ax.text(i + 0.2, e["gflops_per_s"], f"{100 * e['fraction_of_peak']:.0f} %", ha="center", va="bottom",
                    fontsize=8)
            labels.append(f"{name}\n{prec}")
            i += 1
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("GFLOP/s")
    ax.legend(fontsize=8)
    return fig


def efficiency_html(bench: Mapping[str, Any]) -> str:
    """FLOPs of the forward pass, achieved GFLOP/s, the matmul peak, the floor (FLOPs at the
    peak) and the end-to-end time over that floor."""
    rows = []
    for name, r in bench["presets"].items():
        for prec, e in r["efficiency"].items():
            rows.append([name, prec, fmt_gflop(e["gflop"], MISSING), fmt_num(e["forward_ms"]), fmt_num(e["gflops_per_s"]),
                         fmt_num(e["peak_gflops_per_s"]), fmt_num(100 * e["fraction_of_peak"], 1, " %"), fmt_num(e["floor_ms"]),
                         fmt_num(e["end_to_end_ms"]), fmt_num(e["end_to_end_over_floor"], 2)])
    return html_table(["preset", "precision", "GFLOP", "network ms", "GFLOP/s", "peak GFLOP/s", "of peak", "floor ms",
                       "end to end ms", "end to end / floor"], rows)


def layers_html(bench: Mapping[str, Any]) -> str:
    """Time and rate of each convolution of the fp32 forward pass (``rpn-lib bench``'s
    ``layers``), per preset, with its share of the pass and of the matmul peak; a last row per
    preset for everything else in the pass. Empty for files without per-layer times."""
    peak = bench.get("matmul_peak", {}).get("fp32", {}).get("gflops_per_s")
    rows = []
    for name, r in bench["presets"].items():
        lay = r.get("layers")
        if not lay:
            continue
        for row in lay["rows"]:
            rows.append([name, row["name"], fmt_gflop(row["gflop"], MISSING), fmt_num(row["ms"]),
                         fmt_num(100 * row["ms"] / lay["forward_ms"], 1, " %"), fmt_num(row["gflops_per_s"]),
                         fmt_num(100 * row["gflops_per_s"] / peak, 0, " %") if peak else MISSING])
        rows.append([name, "everything else", "", fmt_num(lay["other_ms"]),
                     fmt_num(100 * lay["other_ms"] / lay["forward_ms"], 1, " %"), "", ""])
    if not rows:
        return ""
    return html_table(["preset", "layer", "GFLOP", "ms", "of the pass", "GFLOP/s", "of the matmul peak"], rows)


def plot_layer_rates(bench: Mapping[str, Any], preset: str = "paper", ax: Any = None) -> Any:
    """GFLOP/s of each convolution of ``preset``'s fp32 forward pass (one bar each, in forward
    order, labelled with its time), against the fp32 matmul peak (dashed line)."""
    import matplotlib.pyplot as plt

    lay = bench["presets"][preset].get("layers")
    if not lay:
        raise ValueError(f"no per-layer times for {preset!r} in this file (written before rpn-lib bench measured them)")
    rows = lay["rows"]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2), layout="constrained")
    y = np.arange(len(rows))
    ax.barh(y, [r["gflops_per_s"] for r in rows], color="C0")
    for i, r in enumerate(rows):
        ax.text(r["gflops_per_s"], i, f" {r['ms']:.0f} ms", va="center", fontsize=7)
    peak = bench.get("matmul_peak", {}).get("fp32", {}).get("gflops_per_s")
    if peak:
        ax.axvline(peak, color="0.3", ls="--", lw=1, label=f"fp32 matmul peak, {peak:.0f} GFLOP/s")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("GFLOP/s")
    ax.set_title(f"{preset}: rate of each convolution (fp32; everything else: {lay['other_ms']:.0f} of "
                 f"{lay['forward_ms']:.0f} ms)", fontsize=9)
    return ax.figure


def levers_html(bench: Mapping[str, Any]) -> str:
    """The levers side by side: ms per volume, ratio to the baseline, speed-up, and the
    achieved GFLOP/s of each setting (the forward pass's FLOPs over its time)."""
    rows = []
    for name, r in bench["presets"].items():
        gflop = r.get("gflop_forward")
        for lv in r["levers"]:
            ms = lv["ms_per_volume"]
            rate = gflop / (ms * 1e-3) if (ms and gflop) else None
            x = lv["x_baseline"]
            rows.append([name, lv["label"], fmt_num(ms), fmt_num(x, 2), fmt_num(None if not x else 1 / x, 2, "×"), fmt_num(rate),
                         lv.get("error") or ""])
    return html_table(["preset", "setting", "ms/volume", "× baseline", "speed-up", "GFLOP/s", "error"], rows)


def describe_lever(row: Mapping[str, Any]) -> str:
    """One phrase on a lever row, e.g. "bf16: 0.27× the baseline time (3.7× faster)"."""
    if row.get("error"):
        return f"{row['label']}: did not run ({row['error']})"
    x = row["x_baseline"]
    if x is None:
        return f"{row['label']}: no time"
    if abs(x - 1) < 0.05:
        return f"{row['label']}: {x:.2f}× the baseline time (no real change)"
    return f"{row['label']}: {x:.2f}× the baseline time ({f'{1 / x:.1f}× faster' if x < 1 else f'{x:.1f}× slower'})"


def read_ahead_rows(bench: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The reading-ahead comparison (:func:`rpn_lib.bench.bench_read_ahead`) of each preset
    and setting (files without it: no rows).

    Keys: ``preset``, ``precision``, ``file`` (shape, e.g. ``"96×96×96"``), ``file_mb``,
    ``read_ms`` (reading and resampling one file alone), ``depth`` (files read ahead; 0:
    each read in turn), ``default`` (the detector's default there), ``ms_per_file``,
    ``files_per_s``, ``x`` and ``x_range`` (in-turn time over this setting's, per round:
    above 1 when faster), ``hidden_ms`` (the in-turn time less one file's reading: the
    time per file if the reading were wholly hidden) and ``ideal_x`` (the in-turn time over
    ``hidden_ms``).
    """
    out = []
    for name, r in bench["presets"].items():
        a = r.get("read_ahead")
        if not a:
            continue
        in_turn = next(row["ms_per_file"] for row in a["rows"] if row["depth"] == 0)
        for row in a["rows"]:
            ms = row["ms_per_file"]
            out.append({"preset": name, "precision": a["precision"], "file": "×".join(map(str, a["file_shape"])),
                        "file_mb": a["file_mb"], "read_ms": a["read_ms"], "depth": row["depth"],
                        "default": row["depth"] == a["default_depth"], "ms_per_file": ms,
                        "files_per_s": 1e3 / ms if ms else None, "x": row["x_in_turn"], "x_range": row["x_range"],
                        "hidden_ms": in_turn - a["read_ms"], "ideal_x": a["ideal_x"]})
    return out


def read_ahead_html(bench: Mapping[str, Any]) -> str:
    """:func:`read_ahead_rows` as a table."""
    rows = [[r["preset"], r["precision"], f"{r['file']}, {fmt_num(r['file_mb'], 2)} MB", fmt_num(r["read_ms"]),
             read_ahead_label(r["depth"]) + (" (default)" if r["default"] else ""), fmt_num(r["ms_per_file"]),
             fmt_num(r["files_per_s"], 2), fmt_num(r["x"], 2, "×"),
             "–".join(fmt_num(v, 2) for v in r["x_range"] or [])] for r in read_ahead_rows(bench)]
    return html_table(["preset", "precision", "file", "read + resample, ms", "setting", "ms per file", "files/s",
                       "× in turn", "per round"], rows)


def read_ahead_lines(bench: Mapping[str, Any]) -> list[str]:
    """One sentence per preset and reading-ahead setting: its speed-up over reading each
    file in turn, its spread over the rounds, and the speed-up if the reading were hidden."""
    out = []
    for r in read_ahead_rows(bench):
        if r["depth"] == 0:
            continue
        span = "–".join(fmt_num(v, 2) for v in r["x_range"] or [])
        out.append(f"{r['preset']}, {read_ahead_label(r['depth'])}: {fmt_num(r['x'], 2)}× as many files per "
                   f"second as reading each in turn (per round {span}); with the reading wholly hidden it "
                   f"would be {fmt_num(r['ideal_x'], 2)}×.")
    return out


def plot_read_ahead(bench: Mapping[str, Any]) -> Any:
    """Time per file of each reading-ahead setting, one panel per preset, with the time per
    file if the reading were wholly hidden (dashed)."""
    import matplotlib.pyplot as plt

    rows = read_ahead_rows(bench)
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    fig, axes = plt.subplots(1, len(presets), figsize=(4.2 * len(presets), 3.2), layout="constrained", squeeze=False)
    for ax, name in zip(axes[0], presets):
        sub = [r for r in rows if r["preset"] == name]
        for i, r in enumerate(sub):
            ax.bar(i, r["ms_per_file"], color="C0" if r["depth"] else "0.6", width=0.6)
            ax.text(i, r["ms_per_file"], f"{r['ms_per_file']:.0f} ms", ha="center", va="bottom", fontsize=8)
        ax.axhline(sub[0]["hidden_ms"], color="k", ls="--", lw=1, label="reading wholly hidden")
        ax.set_xticks(range(len(sub)), [read_ahead_label(r["depth"]).replace(" read ", "\nread ") for r in sub],
                      fontsize=8)
        ax.set_title(f"{name} ({sub[0]['precision']}, files {sub[0]['file']})", fontsize=10)
        ax.set_ylabel("ms per file")
        ax.margins(y=0.15)
    axes[0][0].legend(fontsize=8, loc="lower left")
    return fig


def allocator_rows(bench: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The allocator comparison of each preset and precision (files without it: no rows).

    Keys: ``preset``, ``precision``, ``kept`` and ``plain`` (end-to-end ms with freed memory
    kept, :func:`rpn_lib.allocator.retain_freed_memory`, and with glibc as it comes),
    ``network_kept``, ``network_plain`` (ms), ``peak_kept``, ``peak_plain`` (MB) and
    ``speedup`` = plain / kept (above 1: keeping freed memory is faster).
    """
    out = []
    for name, r in bench["presets"].items():
        a = r.get("allocator")
        if not a or not a.get("rows"):
            continue
        kept_here = a["here"].startswith("freed memory kept")
        for row in a["rows"]:
            h = (row["end_to_end_ms_here"], row["network_ms_here"], row.get("peak_mb_here"))
            o = (row["end_to_end_ms_other"], row["network_ms_other"], row.get("peak_mb_other"))
            kept, plain = (h, o) if kept_here else (o, h)
            out.append({"preset": name, "precision": row["precision"], "kept": kept[0], "plain": plain[0],
                        "network_kept": kept[1], "network_plain": plain[1], "peak_kept": kept[2],
                        "peak_plain": plain[2], "speedup": plain[0] / kept[0] if kept[0] else None})
    return out


def allocator_html(bench: Mapping[str, Any]) -> str:
    """:func:`allocator_rows` as a table."""
    rows = [[r["preset"], r["precision"], fmt_num(r["plain"]), fmt_num(r["kept"]), fmt_num(r["speedup"], 2, "×"),
             fmt_num(r["network_plain"]), fmt_num(r["network_kept"]), fmt_num(r["peak_plain"], 0),
             fmt_num(r["peak_kept"], 0)] for r in allocator_rows(bench)]
    return html_table(["preset", "precision", "glibc as it comes, ms", "freed memory kept, ms", "speed-up",
                       "network, as it comes", "network, kept", "peak MB, as it comes", "peak MB, kept"], rows)


def peers_html(bench: Mapping[str, Any], precision: str = "fp32") -> str:
    """The peers on the same input (batch 1) in ``precision`` (fp32, or the autocast precision
    in which every model ran: :func:`rpn_lib.bench.peer_precisions`) as ratios to the IG-RPN
    (above 1: slower). Presets without peers in an autocast precision are left out."""
    rows = []
    for name, r in bench["presets"].items():
        peers = peer_results(r, precision)[0]
        if precision != "fp32" and not peers:
            continue
        mine = igrpn_peer_times(r, precision)
        rows.append([name, "IG-RPN", fmt_num(mine["network_ms"]), "1.00", fmt_num(mine["end_to_end_ms"]), "1.00", "",
                     fmt_gflop(r.get("gflop_forward"), MISSING), ""])
        for pe in peers:
            note = pe.get("reason") or pe.get("error") or ("network only" if pe["end_to_end_ms"] is None else "")
            rows.append([name, pe["name"], fmt_num(pe["network_ms"]), fmt_num(pe["x_igrpn_network"], 2),
                         fmt_num(pe["end_to_end_ms"]), fmt_num(pe["x_igrpn_end_to_end"], 2), paired_range_text(pe),
                         fmt_gflop(pe["gflop"], MISSING), note])
    header = ["preset", "model", "network ms", "× IG-RPN", "end to end ms", "× IG-RPN", "per-round × (end to end)",
              "GFLOP", "note"]
    if not any(row[6] for row in rows):  # a file written before peers were timed in rounds
        header, rows = header[:6] + header[7:], [row[:6] + row[7:] for row in rows]
    return html_table(header, rows)


def peer_round_lines(bench: Mapping[str, Any], names: Sequence[str] = ("retinanet", ONE_CONV_PEER),
                     precision: str = "fp32") -> list[str]:
    """One sentence per preset and peer in ``names`` that was timed in rounds beside the
    IG-RPN in ``precision``: its median per-round ratio and the spread (empty for older files)."""
    lines = []
    for preset, r in bench["presets"].items():
        for pe in peer_results(r, precision)[0]:
            if pe["name"] in names and pe.get("rounds") and pe.get("x_igrpn_end_to_end") is not None:
                lines.append(f"{preset}, {precision}: {pe['name']} took {pe['x_igrpn_end_to_end']:.2f}x the IG-RPN's "
                             f"time end to end (median of the per-round ratios; per round {paired_range_text(pe)} "
                             "rounds)")
    return lines


def peer_ratio(pe: Mapping[str, Any]) -> float | None:
    """A peer's time over the IG-RPN's: end to end, else (no end-to-end time) the network's."""
    return pe.get("x_igrpn_end_to_end") or pe.get("x_igrpn_network")


def plot_peers(bench: Mapping[str, Any]) -> Any:
    """Each peer's time over the IG-RPN's (:func:`peer_ratio`), one bar per preset and
    precision the peers were timed in (:func:`rpn_lib.bench.peer_precisions`; the autocast
    bars hatched); the line at 1 is the IG-RPN."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
    groups = [(name, prec) for prec in peer_precisions(bench) for name in bench["presets"]
              if peer_results(bench["presets"][name], prec)[0]]
    names = list(dict.fromkeys(pe["name"] for name, prec in groups
                               for pe in peer_results(bench["presets"][name], prec)[0]))
    presets = list(bench["presets"])
    width = 0.8 / max(len(groups), 1)
    for j, (name, prec) in enumerate(groups):
        peers = {pe["name"]: pe for pe in peer_results(bench["presets"][name], prec)[0]}
        vals = []
        for n in names:
            pe = peers.get(n, {})
            v = peer_ratio(pe)
            vals.append(np.nan if v is None else v)
        ax.bar(np.arange(len(names)) - 0.4 + width * (j + 0.5), vals, width=width * 0.95,
               color=f"C{presets.index(name)}", hatch=None if prec == "fp32" else "//", edgecolor="white",
               label=f"{name}, {prec}")
    ax.axhline(1, color="0.3", lw=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("time / IG-RPN's time")
    ax.legend(fontsize=8)
    return fig


def one_conv_rows(bench: Mapping[str, Any], precision: str = "fp32") -> list[dict[str, Any]]:
    """The IG-RPN with one conv in block 1 (:data:`rpn_lib.bench.ONE_CONV_PEER`, a deviation)
    against the paper's IG-RPN and MONAI's RetinaNet of the same run, per preset (batch 1, in
    ``precision``: fp32 or the autocast precision the peers were also timed in). Each row:
    ``preset``, ``precision``, ``timed`` (``"end to end"``, or ``"network"`` when a
    model has no end-to-end time), ``igrpn_ms``, ``one_conv_ms``, ``retinanet_ms``,
    ``x_igrpn`` (one-conv time over the IG-RPN's: below 1 is faster), ``x_retinanet``
    (RetinaNet's time over the one-conv model's: above 1, the one-conv model is faster),
    ``gflop_igrpn``, ``gflop_one_conv``. Where the three were timed in the same rounds
    (``peers_paired``), the ratios are medians of the per-round ratios and ``igrpn_ms`` the
    IG-RPN's median over those rounds. Presets where either peer is missing or failed are
    left out."""
    rows = []
    for name, r in bench["presets"].items():
        peers = {pe["name"]: pe for pe in peer_results(r, precision)[0]}
        one, retina = peers.get(ONE_CONV_PEER), peers.get("retinanet")
        if not one or not retina or any(pe.get("error") or pe.get("reason") for pe in (one, retina)):
            continue
        e2e = bool(one.get("end_to_end_ms") and retina.get("end_to_end_ms"))
        key = "end_to_end_ms" if e2e else "network_ms"
        mine = igrpn_peer_times(r, precision)[key]
        if not one.get(key) or not retina.get(key) or not mine:
            continue
        x_igrpn, x_retinanet = one[key] / mine, retina[key] / one[key]
        runs_one, runs_retina = one.get("runs_" + key), retina.get("runs_" + key)
        if runs_one and runs_retina:  # timed in the same rounds: medians of the per-round ratios
            x_igrpn = one["x_igrpn_" + key.removesuffix("_ms")]
            x_retinanet = paired_ratios(runs_one, runs_retina)[0] or x_retinanet
        rows.append({"preset": name, "precision": precision, "timed": "end to end" if e2e else "network",
                     "igrpn_ms": mine,
                     "one_conv_ms": one[key], "retinanet_ms": retina[key], "x_igrpn": x_igrpn,
                     "x_retinanet": x_retinanet, "gflop_igrpn": r.get("gflop_forward"),
                     "gflop_one_conv": one.get("gflop")})
    return rows


def one_conv_html(bench: Mapping[str, Any]) -> str:
    """:func:`one_conv_rows` as a table, for every precision the peers were timed in."""
    rows = [[r["preset"], r["precision"], r["timed"], fmt_num(r["igrpn_ms"]), fmt_num(r["one_conv_ms"]),
             fmt_num(r["x_igrpn"], 2, "×"), fmt_num(r["retinanet_ms"]), fmt_num(r["x_retinanet"], 2, "×"),
             fmt_gflop(r["gflop_igrpn"], MISSING), fmt_gflop(r["gflop_one_conv"], MISSING)]
            for prec in peer_precisions(bench) for r in one_conv_rows(bench, prec)]
    return html_table(["preset", "precision", "timed", "IG-RPN ms", "one conv in block 1 ms", "× IG-RPN",
                       "RetinaNet ms", "RetinaNet / one conv", "GFLOP IG-RPN", "GFLOP one conv"], rows)


def plot_layer_flops(layers: Sequence[Any], highlight: str = "block1.conv2", ax: Any = None) -> Any:
    """FLOPs of one forward pass per convolution (``2 x MACs`` of
    :func:`rpn_lib.receptive_field.layer_table` rows), one horizontal bar each, in forward
    order; the layer ``highlight`` in another colour, with its share of the total."""
    import matplotlib.pyplot as plt

    convs = [lay for lay in layers if lay.kind == "conv"]
    if not convs:
        raise ValueError("no convolution in the layer table")
    gflop = np.array([2 * lay.macs / 1e9 for lay in convs])
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.28 * len(convs) + 1.0), layout="constrained")
    colours = ["C3" if lay.name == highlight else "C0" for lay in convs]
    y = np.arange(len(convs))
    ax.barh(y, gflop, color=colours)
    ax.set_yticks(y, [f"{lay.name} ({lay.in_channels}→{lay.out_channels}, {lay.out_shape[0]}³)"
                      if len(set(lay.out_shape)) == 1 else f"{lay.name} ({lay.in_channels}→{lay.out_channels})"
                      for lay in convs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("GFLOP per volume")
    ax.set_xlim(0, 1.75 * gflop.max())  # room for the label of the highlighted bar
    total = gflop.sum()
    for i, lay in enumerate(convs):
        if lay.name == highlight:
            ax.text(gflop[i], i, f"  {gflop[i]:.0f} of {total:.0f} GFLOP ({100 * gflop[i] / total:.0f} %)",
                    va="center", fontsize=8)
    return ax.figure


def bf16_status(bench: Mapping[str, Any]) -> dict[str, Any]:
    """How bf16 ran on the benchmark's machine: ``native`` (True, False, or None where the file
    predates the record), ``how`` (the instruction sets, or the CPU capability where it is
    emulated), ``fp32_gflops`` and ``bf16_gflops`` (the rates of one matmul in both precisions:
    the benchmark's peak matmul where bf16 was measured, else the small matmul of
    ``bf16_emulation``), ``n`` (its side) and ``ratio`` (bf16 rate over fp32 rate)."""
    m = bench["machine"]
    native = m.get("bf16_native")
    emu = bench.get("bf16_emulation")
    if emu:
        f32, b16, n = emu["fp32"], emu["bf16"], emu["n"]
    else:
        peaks = bench["matmul_peak"]
        f32, b16, n = peaks.get("fp32"), peaks.get("bf16"), bench["settings"].get("matmul_n")
    fr = f32["gflops_per_s"] if f32 else None
    br = b16["gflops_per_s"] if b16 else None
    if native is None:
        how = None
    elif native:
        how = ", ".join(m.get("bf16_instructions") or [])
    else:
        how = m.get("cpu_capability")
    return {"native": native, "how": how, "fp32_gflops": fr, "bf16_gflops": br, "n": n,
            "ratio": (br / fr) if fr and br else None}


def machines_html(benches: Mapping[str, Mapping[str, Any]]) -> str:
    """Several benchmark files side by side, one row per machine: CPU, bf16 (native or
    emulated), the fp32 and bf16 matmul rates (GFLOP/s, with the matmul's side), and fp32 /
    bf16 detection end to end at each preset (ms; a dash where a precision was not measured)."""
    presets = list(dict.fromkeys(p for b in benches.values() for p in b["presets"]))
    rows = []
    for label, b in benches.items():
        st, m = bf16_status(b), b["machine"]
        native = {True: f"native ({st['how']})", False: f"emulated ({st['how']})",
                  None: "not recorded" + (f" (bf16 matmul at {st['ratio']:.2f}x the fp32 rate)" if st["ratio"] else "")
                  }[st["native"]]
        rate = lambda v: MISSING if v is None else f"{v:.3g} ({st['n']}²)"  # noqa: E731
        row = [label, f"{m['cpu']}, {m['usable_cores']} cores", native, rate(st["fp32_gflops"]), rate(st["bf16_gflops"])]
        for p in presets:
            det = b["presets"].get(p, {}).get("detect", {})
            row += [fmt_num(det[prec]["end_to_end"]["median_ms"]) if prec in det else MISSING for prec in ("fp32", "bf16")]
        rows.append(row)
    head = ["machine", "CPU", "bf16", "fp32 matmul GFLOP/s", "bf16 matmul GFLOP/s"]
    head += [f"{p} {prec} ms" for p in presets for prec in ("fp32", "bf16")]
    return html_table(head, rows)


def plot_precision_rates(benches: Mapping[str, Mapping[str, Any]]) -> Any:
    """Matmul rate in fp32 and bf16 on each machine (log scale): where bf16 is emulated it falls
    far below fp32, where it is native it rises above. Each pair is one matmul size
    (:func:`bf16_status`), named under the machine with the bf16 / fp32 ratio."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2), layout="constrained")
    ticks = []
    for i, (label, b) in enumerate(benches.items()):
        st = bf16_status(b)
        for dx, key, c, name in ((-0.2, "fp32_gflops", "C0", "fp32"), (0.2, "bf16_gflops", "C3", "bf16")):
            v = st[key]
            if v is not None:
                ax.bar(i + dx, v, width=0.38, color=c, label=name if i == 0 else None)
                ax.text(i + dx, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ratio = f"bf16 / fp32 = {st['ratio']:.3g}" if st["ratio"] is not None else "bf16 not measured"
        ticks.append(f"{label}\n{st['n']}² matmul, {ratio}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(ticks)), ticks, fontsize=8)
    ax.set_ylabel("GFLOP/s (log scale)")
    ax.set_title("one dense matmul per machine, in fp32 and in bf16", fontsize=10)
    ax.margins(y=0.3)
    ax.legend(fontsize=8)
    return fig


def accuracy_text(bench: Mapping[str, Any]) -> str:
    """The autocast accuracy check (fp32 against bf16 on CPU / fp16 on CUDA) in two sentences,
    or why there is none."""
    acc = bench.get("accuracy")
    if not acc:
        return ("The accuracy of autocast was not measured in this file: it needs a trained model and a dataset "
                "(rpn-lib bench --model MODEL --accuracy-data DATA, as make bench runs it).")
    p = acc["amp_precision"]
    return (f"On the {acc['split']} split ({acc['n_cases']} volumes) the model's d-mean is "
            f"{acc['d_mean_fp32_mm']:.3f} mm in fp32 and {acc['d_mean_amp_mm']:.3f} mm in {p} "
            f"(difference {acc['d_mean_diff_mm']:+.3f} mm: {'within' if acc['within_0_1_mm'] else 'NOT within'} "
            f"the 0.1 mm the issue allows); DR50 {100 * acc['dr50_fp32']:.1f} % against {100 * acc['dr50_amp']:.1f} %. "
            f"The largest shift of one landmark is {acc['max_landmark_shift_mm']:.3f} mm, and "
            f"{100 * acc['same_result_fraction']:.1f} % of the volumes get exactly the same result.")


def _table1_pair(tables: Mapping[str, Any], question: str) -> dict[str, Any]:
    for p in tables["table1"]["paired"]:
        if p["question"] == question:
            return p
    raise ValueError(f"no paired comparison {question!r} in table1")


@dataclass(frozen=True)
class TargetCheck:
    """One target of the performance issue against one measurement.

    Attributes:
        target: what is asked, in words.
        where: preset and precision (or peer) of the measurement.
        measured: the measured value (None: not measured).
        limit: the threshold.
        unit: unit of both.
        met: True / False, or None when it cannot be decided.
        note: why a measurement does not count, or other context.
        evidence: the accuracy comparisons a verdict rests on, in words (the RetinaNet rows);
            :func:`targets_html` prints each once, under the table, and numbers it in the rows.
    """

    target: str
    where: str
    measured: float | None
    limit: float
    unit: str
    met: bool | None
    note: str = ""
    evidence: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "not decided"}[self.met]

    @property
    def details(self) -> str:
        """The note and the evidence in one text."""
        return "; ".join(n.rstrip(".") for n in (self.note, *self.evidence) if n)


def _amp_ok(bench: Mapping[str, Any]) -> tuple[bool | None, str]:
    acc = bench.get("accuracy")
    if not acc:
        return None, "autocast accuracy not measured: does not count"
    if acc["within_0_1_mm"]:
        return True, f"autocast d-mean within 0.1 mm ({acc['d_mean_diff_mm']:+.3f} mm)"
    return False, f"autocast changes d-mean by {acc['d_mean_diff_mm']:+.3f} mm: does not count"


BUDGET_SETTING = "calibrated prior"
"""Post-processing of the budget comparison that decides the RetinaNet target: the shipped
detector's own (chosen before the comparison was run)."""


BUDGET_SHIPPED = "IG-RPN (shipped recipe, 3,800 steps)"
"""The shipped model in ``results/budget-3800/comparison.json``."""
BUDGET_PEER = "MONAI RetinaNet (peer, 3,800 steps)"
"""MONAI's RetinaNet trained for the shipped model's 3,800 steps."""
BUDGET_1CONV = "IG-RPN, one conv in block 1 (deviation, 3,800 steps)"
"""The shipped recipe with ``Preset.block1_convs = 1``, trained for the same 3,800 steps."""


def budget_pair(budget: Mapping[str, Any], setting: str = BUDGET_SETTING, a: str = BUDGET_SHIPPED,
                b: str = BUDGET_PEER) -> dict[str, Any]:
    """The paired comparison of detector ``a`` against ``b`` in
    ``results/budget-3800/comparison.json`` under ``setting`` (``"no prior"``, ``"paper prior"``
    or ``"calibrated prior"``). Raises ``ValueError`` when the file has no such comparison."""
    for p in budget["pairs"]:
        if p["a"] == f"{a}, {setting}" and p["b"] == f"{b}, {setting}":
            return p
    raise ValueError(f"no comparison of {a!r} against {b!r} with setting {setting!r} in the budget file")


def budget_html(budget: Mapping[str, Any]) -> str:
    """The evaluations of ``results/budget-3800/comparison.json``: one row per detector and
    post-processing (d-mean, DR50, mIoU on the test split; times belong to the benchmark)."""
    rows = []
    for det, by_setting in budget["evaluations"].items():
        for setting, e in by_setting.items():
            m = e["metrics"]
            rows.append([det, setting, f"{m['d_mean_mm']:.2f} ± {m['d_std_mm']:.2f}", fmt_num(100 * m["dr50"], 1, " %"),
                         fmt_num(100 * m["miou"], 1, " %")])
    return html_table(["detector", "post-processing", "d-mean (mm)", "DR50", "mIoU"], rows)


def check_targets(bench: Mapping[str, Any], tables: Mapping[str, Any] | None = None,
                  budget: Mapping[str, Any] | None = None) -> list[TargetCheck]:
    """Compare the issue's targets with the measurements.

    * ``cpu-small`` detect end to end under 100 ms per volume;
    * ``paper`` scale end to end within 1.25× the floor (the forward FLOPs at the matmul peak
      of the same precision);
    * candidates + prior under 5 % of the end-to-end time: the issue sets it at ``paper`` scale,
      and it is checked at every preset of the file (the other rows say so in their note);
    * faster than MONAI's RetinaNet at the same input, at equal or better accuracy: the paired
      comparison with the peer is not significantly against the IG-RPN. One row per precision
      the peers were timed in (:func:`rpn_lib.bench.peer_precisions`): fp32, and the autocast
      precision, in which every model ran; the accuracy compared is the fp32 models', so an
      autocast row counts only when the IG-RPN's autocast accuracy check passed. With ``budget``
      (``results/budget-3800/comparison.json``: the shipped model against the peer trained for
      the same 3,800 steps), its comparison under :data:`BUDGET_SETTING` decides, and the
      Table 1 comparison is quoted beside it; otherwise, with ``tables``, Table 1's (2,400
      steps, 3 seeds; the shipped recipe, eye sides by handedness and cube anchors, when its
      runs exist, else the paper's recipe). When the benchmark has the :data:`~rpn_lib.bench.ONE_CONV_PEER`
      row (the IG-RPN with one conv in block 1, a deviation), a second row per preset checks
      that model: its time against RetinaNet's in the same run, its accuracy from the
      budget file's comparison of :data:`BUDGET_1CONV` with :data:`BUDGET_PEER`;
    * on a CUDA GPU, ``paper`` scale under 20 ms with mixed precision.

    An autocast measurement counts only when the accuracy check found d-mean within 0.1 mm
    (the issue's condition); otherwise its ``met`` is None with the reason in ``note``. The
    check is made on the model the benchmark was given (``make bench``: the shipped
    ``cpu-small`` model); no ``paper``-scale model is trained, so it stands in for both scales.
    A ``--quick`` file is marked in every note.
    """
    out: list[TargetCheck] = []
    amp_ok, amp_note = _amp_ok(bench)
    quick = "--quick file: not a measurement" if bench["settings"].get("quick") else ""

    def join(*notes: str) -> str:
        return "; ".join(n.rstrip(".") for n in notes if n)
    presets = bench["presets"]

    def gate(prec: str, met: bool | None) -> tuple[bool | None, str]:
        if prec == "fp32":
            return met, ""
        return (met if amp_ok else None), amp_note

    if "cpu-small" in presets:
        for prec, d in presets["cpu-small"]["detect"].items():
            t = d["end_to_end"]["median_ms"]
            met, note = gate(prec, t < 100.0)
            out.append(TargetCheck("cpu-small detect end to end < 100 ms", f"cpu-small, {prec}", t, 100.0, "ms", met,
                                   join(note, quick)))
    if "paper" in presets:
        for prec, e in presets["paper"]["efficiency"].items():
            x = e["end_to_end_over_floor"]
            met, note = gate(prec, x is not None and x <= 1.25)
            met = None if x is None else met
            out.append(TargetCheck("paper scale end to end ≤ 1.25× the matmul floor", f"paper, {prec}", x, 1.25, "×",
                                   met, join(note, quick)))
    for name, r in presets.items():
        for prec, d in r["detect"].items():
            share = d["candidates_prior_share"]
            pct = None if share is None else 100 * share
            met, note = gate(prec, pct is not None and pct < 5.0)
            met = None if pct is None else met
            scope = "" if name == "paper" else "the issue sets this target at paper scale; checked here as well"
            out.append(TargetCheck("candidates + prior < 5 % of the total", f"{name}, {prec}", pct, 5.0, "%", met,
                                   join(scope, note, quick)))
    acc_evidence: tuple[str, ...] = ()
    acc_ok: bool | None = None
    if tables is not None:
        pair = {"missing": "no comparison"}
        for question in (SHIPPED_VS_PEER, "IG-RPN vs MONAI RetinaNet (peer)"):
            try:
                pair = _table1_pair(tables, question)
            except ValueError:
                continue
            if "missing" not in pair:
                break
        v = pair_verdict(pair)
        acc_ok = None if v in ("missing", "mixed") else v in ("a", "none")
        acc_evidence = (f"accuracy (Table 1): {describe_pair(pair)}" if v != "missing" else "accuracy: no paired result",)
    if budget is not None:
        pair = budget_pair(budget)
        v = pair_verdict(pair)
        acc_ok = None if v in ("missing", "mixed") else v in ("a", "none")
        acc_evidence = ((f"accuracy at the shipped budget ({BUDGET_SETTING}, 1 seed): {describe_pair(pair)}",)
                        + tuple(e.replace("accuracy (Table 1)", "at 2,400 steps (Table 1)") for e in acc_evidence))
    if not any(pe["name"] == "retinanet" for r in presets.values() for pe in r["peers"]):
        out.append(TargetCheck("faster than MONAI RetinaNet (its time / IG-RPN's > 1)", "not in this file", None, 1.0,
                               "×", None, join("the peer was not benchmarked (rpn-lib bench --peers)", quick)))
    one_conv_acc: tuple[bool | None, tuple[str, ...]] = (
        None, ("accuracy of the one-conv model not compared (results/budget-3800/comparison.json: make peer-budget)",))
    if budget is not None:
        try:
            pair = budget_pair(budget, a=BUDGET_1CONV)
        except ValueError:
            pass
        else:
            v = pair_verdict(pair)
            one_conv_acc = (None if v in ("missing", "mixed") else v in ("a", "none"),
                            (f"accuracy at the shipped budget ({BUDGET_SETTING}, 1 seed): {describe_pair(pair)}",))
    for prec in peer_precisions(bench):
        # in an autocast precision every model ran in it; the accuracy compared is the fp32
        # models', which counts only when the IG-RPN's autocast accuracy matched its fp32 one
        fp32_accuracy = "" if prec == "fp32" else f"times in {prec}, accuracy of fp32 models"
        for name, r in presets.items():
            for pe in peer_results(r, prec)[0]:
                if pe["name"] != "retinanet":
                    continue
                x = peer_ratio(pe)
                faster = None if x is None else x > 1.0
                if faster is None or (tables is None and budget is None) or not faster:
                    met = faster  # slower is a miss whatever the accuracy; without tables, time only
                else:
                    met = acc_ok  # faster: met when the accuracy is equal or better, undecided when unknown
                met, amp_gate = gate(prec, met)
                reason = pe.get("reason") or pe.get("error") or ("" if acc_evidence else "accuracy not compared here")
                spread = paired_range_text(pe)
                out.append(TargetCheck("faster than MONAI RetinaNet (its time / IG-RPN's > 1)", f"{name}, {prec}", x,
                                       1.0, "×", met, join(f"per-round ratio {spread} rounds" if spread else "",
                                                           reason, amp_gate, fp32_accuracy, quick), acc_evidence))
        for row in one_conv_rows(bench, prec):
            x1 = row["x_retinanet"]
            met1, amp_gate = gate(prec, one_conv_acc[0] if x1 > 1.0 else False)
            out.append(TargetCheck("faster than MONAI RetinaNet (its time / IG-RPN's > 1)",
                                   f"{row['preset']}, {prec}, one conv in block 1 (deviation)", x1, 1.0, "×", met1,
                                   join("" if row["timed"] == "end to end" else "network only",
                                        amp_gate, fp32_accuracy, quick), one_conv_acc[1]))
    return out + gpu_target_checks(bench)


def gpu_target_checks(bench: Mapping[str, Any]) -> list[TargetCheck]:
    """The issue's CUDA target: ``paper`` scale end to end under 20 ms with mixed precision.

    One row per autocast precision of the file's ``paper`` detection; like every autocast
    figure it counts only when the accuracy check found d-mean within 0.1 mm. A file from a
    machine without a GPU, or without ``paper``-scale autocast timings, gives one undecided
    row that says so.
    """
    gpu = bench["machine"].get("gpu")
    name = f"paper scale on {gpu or 'a CUDA GPU'} < 20 ms (mixed precision)"
    if not gpu:
        return [TargetCheck(name, "no GPU on this machine", None, 20.0, "ms", None, "not measured")]
    detect = bench["presets"].get("paper", {}).get("detect", {})
    amp_ok, amp_note = _amp_ok(bench)
    quick = "--quick file: not a measurement" if bench["settings"].get("quick") else ""
    note = "; ".join(n.rstrip(".") for n in (amp_note, quick) if n)
    out = [TargetCheck(name, f"paper, {prec}", d["end_to_end"]["median_ms"], 20.0, "ms",
                       (d["end_to_end"]["median_ms"] < 20.0) if amp_ok else None, note)
           for prec, d in detect.items() if prec != "fp32"]
    return out or [TargetCheck(name, "no paper-scale autocast timing in this file", None, 20.0, "ms", None,
                               "not measured")]


def targets_html(checks: Sequence[TargetCheck]) -> str:
    """The target checks as a table with the verdict of each. Each accuracy comparison a
    verdict rests on (:attr:`TargetCheck.evidence`) is written once, numbered, under the
    table; a row's note names it by number ("accuracy: [1], [2]")."""
    evidence: dict[str, int] = {}
    rows = []
    for c in checks:
        refs = [f"[{evidence.setdefault(e, len(evidence) + 1)}]" for e in c.evidence]
        note = "; ".join(n for n in (c.note, f"accuracy: {', '.join(refs)}" if refs else "") if n)
        rows.append([c.target, c.where, MISSING if c.measured is None else f"{c.measured:.3g} {c.unit}",
                     f"{c.limit:g} {c.unit}", c.verdict, note])
    table = html_table(["target", "measured at", "measured", "limit", "verdict", "note"], rows)
    if not evidence:
        return table
    items = "\n".join(f"<p style=\"font-size:0.85em\">[{i}] {html.escape(e)}</p>" for e, i in evidence.items())
    return f"{table}\n{items}"
