"""Write a shipped model's README.md from its train.json and metrics JSON files.

    .venv/bin/python scripts/model_card.py models/ig-rpn-cpu-small

Every number in the card is read from the files `rpn-lib train` and `rpn-lib evaluate` wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rpn_lib.fileio import atomic_write
from rpn_lib.landmarks import LANDMARK_NAMES


def _row(name: str, m: dict) -> str:
    return (f"| {name} | {m['d_mean_mm']:.2f} ± {m['d_std_mm']:.2f} | {100 * m['dr35']:.1f} | {100 * m['dr50']:.1f} | "
            f"{100 * m['dr75']:.1f} | {100 * m['dr_50_95']:.1f} | {100 * m['miou']:.1f} | {100 * m['ap_coco']:.1f} | {m['time_ms']:.0f} |")


def _make_model_recipe(folder: Path, precision: str) -> list[str]:
    """The commands of the Makefile's ``model`` target, as a user would type them, with the
    training precision the model was made with."""
    lines = (Path(__file__).resolve().parents[1] / "Makefile").read_text().splitlines()
    start = lines.index("model: install") + 1
    out = []
    for line in lines[start:]:
        if not line.startswith("\t"):
            break
        cmd = line.strip().lstrip("@").replace("$(VENV)/bin/", "").replace("$(MODEL)", str(folder))
        out.append(cmd.replace("$(MODEL_PRECISION)", precision))
    return out


def card(folder: Path) -> str:
    info = json.loads((folder / "train.json").read_text())
    with_prior = json.loads((folder / "metrics_test.json").read_text())
    no_prior = json.loads((folder / "metrics_test_no_prior.json").read_text())
    paper_path = folder / "metrics_test_paper_prior.json"
    paper = json.loads(paper_path.read_text()) if paper_path.exists() else None
    from rpn_lib.checkpoint import load_model

    cal = load_model(folder / "model.pt").meta.get("prior_calibration")
    p = info["preset"]
    lines = [
        f"# {folder.name}",
        "",
        f"An IG-RPN trained on the synthetic benchmark with `rpn_lib` ({p['name']} preset: "
        f"{'x'.join(map(str, p['shape_vox']))} voxels at {p['spacing_mm']} mm, width {p['width']})."
        + (" It detects \"an eye\" and names the two eyes' sides by the face's handedness "
           "(`eye_sides = \"geometry\"`, a deviation from the paper: `rpn_lib/handedness.py`)."
           if p.get("eye_sides") == "geometry" else "")
        + (f" Its anchors are the {len(p['anchor_base_mm'])} cubes per feature cell instead of the paper's "
           f"{len(p['anchor_base_mm']) ** 3} shapes (`anchor_layout = \"cubes\"`, a deviation: `rpn_lib/anchors.py`)."
           if p.get("anchor_layout") == "cubes" else ""),
        "",
        "## How it was made",
        "",
        "```bash",
        *_make_model_recipe(folder, info["precision"]),
        "```",
        "",
        f"(`make model` runs these, from the Makefile.) Training: {info['steps']} steps of batch {p['batch_size']} on "
        f"{info['train_cases']} training volumes, {info['device']} with {info['threads']} threads, torch {info['torch']}; "
        f"its last session took {info['seconds_this_session'] / 60:.1f} min on a shared 2-core machine. "
        "`log.csv` holds the training losses.",
        "",
        f"## Test split ({with_prior['n_cases']} volumes)",
        "",
        "DR = detection rate (share of landmarks whose final box has IoU ≥ t; what the paper calls AP), "
        "mIoU = mean IoU of the final boxes, ranked AP = COCO-style AP over all scored candidates, "
        "time = median per volume of resampling, network, candidates and prior (reading the file not included) "
        "on the machine that evaluated.",
        "",
        "| | d-mean mm | DR35 % | DR50 % | DR75 % | DR 0.5:0.95 % | mIoU % | ranked AP % | time ms |",
        "|---|---|---|---|---|---|---|---|---|",
        _row("with graph prior" + (" (calibrated, the file's default)" if cal else ""), with_prior),
        *([_row("with the paper's graph prior", paper)] if paper else []),
        _row("top-1, no prior", no_prior),
        "",
        *([f"The graph prior in `model.pt` is calibrated (`rpn-lib calibrate-prior`, a deviation from the paper: "
           f"`rpn_lib/calibrate.py`): its Gaussians include the model's localisation noise, "
           f"{cal['localisation_sd_mm']:.2f} mm per axis (median top-1 error {cal['median_error_mm']:.2f} mm on "
           f"{cal['n_cases']} volumes of the {cal['split']} split), and it ranks combinations by rule "
           f"`{cal['rule']}`. The paper's prior, fitted on the true training landmarks, is kept in the file "
           "(`rpn_lib.calibrate.paper_prior`).", ""] if cal else []),
        "Per landmark (with prior):",
        "",
        "| landmark | d-mean mm | DR50 % | mIoU % |",
        "|---|---|---|---|",
    ]
    for n in LANDMARK_NAMES:
        m = with_prior["per_landmark"][n]
        lines.append(f"| {n} | {m['d_mean_mm']:.2f} | {100 * m['dr50']:.1f} | {100 * m['miou']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    atomic_write(folder / "README.md", card(folder))
    print(folder / "README.md")
