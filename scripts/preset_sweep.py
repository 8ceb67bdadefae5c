"""Short training runs that compare changes to a preset, one at a time, on the synthetic benchmark.

Each run trains an IG-RPN from scratch for ``--steps`` steps (seed 0, bf16) with some preset
fields changed, and evaluates it without the graph prior on the test split and on 32 training
cases. Results are appended to a JSON file (one record per run, with the complete preset), and
runs already in the file are skipped, so an interrupted sweep continues. Chapter *Training*
reads the file; it does not re-run the sweep (about 6 minutes per run on 2 CPU cores).

    python scripts/preset_sweep.py --data data/synth-cpu-small --out results/sweep/cpu-small-800.json \\
        --steps 800 --base pos_iou=0.5 base: pos35:pos_iou=0.35 lr3:lr=3e-3

A run is ``NAME:FIELD=VALUE,FIELD=VALUE`` (``NAME:`` alone: the base settings); ``--base`` sets
fields of every run (e.g. an older version of the preset); ``iou_balance=0`` turns Eq. 3 off and
``steps=N`` changes the run's length.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rpn_lib.detect import Detector
from rpn_lib.evaluate import evaluate
from rpn_lib.fileio import atomic_write_json
from rpn_lib.presets import Preset, get_preset
from rpn_lib.train import train


def parse_changes(text: str) -> dict[str, Any]:
    """``"a=1,b=(1.0, 2.0)"`` -> ``{"a": 1, "b": (1.0, 2.0)}`` (Python literals)."""
    changes: dict[str, Any] = {}
    for part in _split_top_level(text):
        if not part:
            continue
        key, _, value = part.partition("=")
        if not _:
            raise SystemExit(f"expected FIELD=VALUE, got {part!r}")
        changes[key.strip()] = ast.literal_eval(value.strip())
    return changes


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "(["
        depth -= ch in ")]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def run_one(data: Path, preset: Preset, iou_balance: bool, steps: int, work: Path) -> dict[str, Any]:
    """Train, evaluate on the test split and 32 training cases (no prior); the numbers of one run."""
    t0 = time.perf_counter()
    train(data, work, preset=preset, steps=steps, seed=0, precision="bf16", progress=False,
          iou_balance=iou_balance, checkpoint_every=steps, channels_last=True)
    minutes = (time.perf_counter() - t0) / 60
    record: dict[str, Any] = {"train_minutes": round(minutes, 2)}
    det = Detector.from_file(work / "model.pt", device="cpu")
    for split, n in (("test", None), ("train", 32)):
        ev = evaluate(det, data, split=split, use_prior=False, progress=False, max_cases=n)
        d = ev.distances_mm
        record[split] = {"d_mean_mm": round(float(d.mean()), 2), "d_median_mm": round(float(np.median(d)), 2),
                         "dr50": ev.metrics["dr50"],
                         "mean_top_score": round(float(np.mean([x.scores.mean() for x in ev.detections])), 3)}
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="JSON file of the sweep (created or extended)")
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--steps", type=int, default=800, help="steps of each run (a run's steps=N overrides)")
    ap.add_argument("--base", default="", help="FIELD=VALUE,... applied to every run")
    ap.add_argument("runs", nargs="+", help="NAME:FIELD=VALUE,...")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    sweep = json.loads(args.out.read_text()) if args.out.exists() else {"seed": 0, "precision": "bf16", "runs": []}
    base = parse_changes(args.base)
    done = {r["name"] for r in sweep["runs"]}
    for spec in args.runs:
        name, _, text = spec.partition(":")
        if name in done:
            print(f"{name}: already in {args.out}")
            continue
        changes = {**base, **parse_changes(text)}
        iou_balance = bool(changes.pop("iou_balance", True))
        steps = int(changes.pop("steps", args.steps))
        own = parse_changes(text)
        preset = get_preset(args.preset).replace(**changes)
        with tempfile.TemporaryDirectory() as tmp:
            rec = run_one(args.data, preset, iou_balance, steps, Path(tmp))
        rec = {"name": name, "changes": {k: list(v) if isinstance(v, tuple) else v for k, v in own.items()},
               "steps": steps, "iou_balance": iou_balance, "preset": preset.to_dict(), **rec}
        sweep["runs"].append(rec)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, sweep)
        print(f"{name}: test d-mean {rec['test']['d_mean_mm']} mm ({rec['train_minutes']} min)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
