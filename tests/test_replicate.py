"""The replication runner: resumable plan, tables from planted metrics, paired statistics, CLI.

Training and evaluation are replaced by fakes that write the files a real run writes; no
network is trained here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from rpn_lib.cli import main
from rpn_lib.data.dataset import write_synthetic_dataset
from rpn_lib.errors import RpnLibError
from rpn_lib.landmarks import LANDMARK_NAMES
from rpn_lib.paired import paired_comparison, prior_changes, score_error_correlation
from rpn_lib.paper_tables import PAPER_TABLE2
from rpn_lib.presets import Preset, get_preset
from rpn_lib.replicate import (
    METHODS,
    METRICS_FILE,
    VARIANTS,
    Variant,
    build_tables,
    fmt_value,
    plan,
    render_table1,
    render_table2,
    run_replication,
    train_variant,
)

TINY = Preset(name="tiny", spacing_mm=5.2, shape_vox=(32, 32, 32), width=8, steps=40, batch_size=2)
STEPS = 40
CASES = ("case_a", "case_b", "case_c", "case_d")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(out, n=4, n_test=2, seed=1, preset=TINY, difficulty="easy", progress=False)
    return out


def per_case(distances: np.ndarray, scores: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Rows like :func:`rpn_lib.evaluate.per_case_table` from a (cases, 5) distance array."""
    scores = np.full_like(distances, 0.5) if scores is None else scores
    return [{"case": c, "landmark": n, "distance_mm": float(distances[i, k]), "score": float(scores[i, k])}
            for i, c in enumerate(CASES) for k, n in enumerate(LANDMARK_NAMES)]


def metrics(seed: int, d_mean: float = 5.0, dr50: float = 0.5, distances: np.ndarray | None = None,
            **extra: float) -> dict[str, Any]:
    d = np.full((len(CASES), 5), d_mean) if distances is None else distances
    return {"d_mean_mm": d_mean, "d_std_mm": 1.0, "dr35": 0.9, "dr50": dr50, "dr75": 0.2, "dr_50_95": 0.4,
            "miou": 0.6, "ap_coco": 0.3, "ap_coco_50": 0.5, "ap_coco_75": 0.1, "time_ms": 100.0,
            "n_cases": len(CASES), "device": "cpu", "threads": 2, "steps": STEPS, "seed": seed,
            "per_case": per_case(d), **extra}


def plant_training(run_dir: Path, variant: Variant, seed: int, steps: int = STEPS, preset: str = "tiny") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "model.pt").write_bytes(b"planted")
    settings = variant.preset_for(TINY if preset == "tiny" else get_preset(preset)).to_dict()
    (run_dir / "train.json").write_text(json.dumps({"method": variant.method, "iou_balance": variant.iou_balance,
                                                    "steps": steps, "seed": seed, "preset": settings}))


def plant(results: Path, name: str, seed: int, with_prior: dict | None = None, no_prior: dict | None = None,
          preset: str = "tiny") -> Path:
    variant = next(v for v in VARIANTS if v.name == name)
    run_dir = results / name / f"seed{seed}"
    plant_training(run_dir, variant, seed, preset=preset)
    for up, m in ((True, with_prior), (False, no_prior)):
        if m is not None:
            (run_dir / METRICS_FILE[up]).write_text(json.dumps(m))
    return run_dir


def md_row(text: str, label: str) -> list[str]:
    """Cells of the first markdown table row whose first cell is ``label``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in\n{text}")


# ------------------------------------------------------------------------------------------
# tables from planted metrics
# ------------------------------------------------------------------------------------------


def test_tables_print_the_planted_means_and_stds(tmp_path: Path) -> None:
    d_means, dr50s = [4.0, 5.0, 6.0], [0.5, 0.6, 0.7]
    for s in range(3):
        plant(tmp_path, "rpn", s, metrics(s, d_means[s], dr50s[s]), metrics(s, d_means[s] + 1, 0.4))
    tables = build_tables(tmp_path, seeds=[0, 1, 2], steps=STEPS, preset=TINY)
    row = md_row(render_table1(tables), "IG-RPN")
    # columns: AP, AP35, AP50, AP75, mIoU, d-mean, time, COCO AP, seeds
    assert row[5] == "5.00 ± 1.00"  # mean 5, sample std of 4, 5, 6 is 1
    assert row[2] == "60.0 ± 10.0"  # detection rates are printed in percent
    assert row[0] == "40.0 ± 0.0" and row[6] == "100 ± 0" and row[8] == "3/3"
    assert row[5] == fmt_value(np.mean(d_means), np.std(d_means, ddof=1), "mm")
    # the no-prior file of the same training feeds the ablation's "RPN + IoU-balance" row
    t2 = render_table2(tables)
    ablation = md_row(t2, "RPN")  # the first RPN row is "neither": not planted
    assert ablation[:2] == ["", ""] and set(ablation[2:10]) == {"—"}
    iou_only = next(line for line in t2.splitlines() if line.startswith("| RPN | ✓ |  |"))  # ours before the paper's
    assert "6.00 ± 1.00" in iou_only
    js = tables["table1"]["rows"][3]
    assert js["label"] == "IG-RPN" and js["mean"]["d_mean_mm"] == pytest.approx(5.0)
    assert js["std"]["d_mean_mm"] == pytest.approx(1.0)
    assert js["paper"]["d_mean_mm"] == 4.38


def test_missing_runs_are_dashes_with_reasons(tmp_path: Path) -> None:
    plant(tmp_path, "rpn", 0, metrics(0, 4.0), metrics(0, 4.5))
    plant(tmp_path, "rpn", 1, metrics(1, 6.0), metrics(1, 6.5))
    partial = tmp_path / "rpn" / "seed2"
    partial.mkdir(parents=True)
    (partial / "checkpoint.pt").write_bytes(b"x")
    (partial / "log.csv").write_text("step,lr,loss\n10,0.1,1\n30,0.1,1\n")
    tables = build_tables(tmp_path, seeds=[0, 1, 2], steps=STEPS, preset=TINY)
    md = render_table1(tables)
    row = md_row(md, "IG-RPN")
    assert row[5] == "5.00 ± 1.41" and row[-1] == "2/3"
    assert "seed 2: training stopped after step 30" in md
    frcnn = md_row(md, "Faster R-CNN")
    assert set(frcnn[:-1]) == {"—"} and frcnn[-1] == "0/3"
    assert "Faster R-CNN: 0 of 3 seeds (seed 0: not run; seed 1: not run; seed 2: not run)" in md
    assert tables["table1"]["rows"][0]["mean"]["d_mean_mm"] is None
    # one seed: a mean without a standard deviation
    one = build_tables(tmp_path, seeds=[0], steps=STEPS, preset=TINY)
    assert md_row(render_table1(one), "IG-RPN")[5] == "4.00"


def test_heatmap_row_shows_distance_and_time_only(tmp_path: Path) -> None:
    plant(tmp_path, "heatmap", 0, metrics(0, 7.0), metrics(0, 7.0))
    row = md_row(render_table1(build_tables(tmp_path, seeds=[0], steps=STEPS, preset=TINY)), "Heatmap")
    assert row[5] == "7.00" and row[6] == "100"
    assert set(row[:5]) == {"—"} and row[7] == "—"


def test_evaluations_of_other_step_counts_are_not_mixed_in(tmp_path: Path) -> None:
    plant(tmp_path, "rpn", 0, {**metrics(0, 4.0), "steps": STEPS + 1}, None)
    md = render_table1(build_tables(tmp_path, seeds=[0], steps=STEPS, preset=TINY))
    assert md_row(md, "IG-RPN")[5] == "—"
    assert f"evaluated after {STEPS + 1} steps, not {STEPS}" in md


def test_paper_table2_rows_match_the_differences_quoted_in_the_text() -> None:
    """Sec. 3 quotes gains that fix the order of the garbled rows (NOTES): check the data entry."""
    ssd = {(i, p): PAPER_TABLE2[("SSD", i, p)] for i in (False, True) for p in (False, True)}
    rpn = {(i, p): PAPER_TABLE2[("RPN", i, p)] for i in (False, True) for p in (False, True)}

    def gain(rows: dict, row: tuple[bool, bool], key: str) -> float:
        return rows[row][key] - rows[(False, False)][key]

    quoted = [  # (rows, row, metric, gain in points as the text rounds it)
        (ssd, (True, False), "miou", 1.0), (ssd, (False, True), "miou", 0.8), (ssd, (True, True), "miou", 1.2),
        (ssd, (True, True), "dr35", 2.5), (ssd, (True, True), "dr50", 1.3),
        (rpn, (True, False), "dr_50_95", 3.1), (rpn, (False, True), "dr_50_95", 3.1),
        (rpn, (True, True), "dr_50_95", 4.3), (rpn, (True, True), "dr50", 4.4), (rpn, (True, True), "dr75", 3.1),
        (rpn, (True, True), "miou", 1.5),
    ]
    for rows, row, key, points in quoted:
        # the text rounds loosely (a gain of 4.38 is quoted as 4.3 for AP and 4.4 for AP50)
        assert abs(gain(rows, row, key) - points) <= 0.1, (row, key)


# ------------------------------------------------------------------------------------------
# paired statistics
# ------------------------------------------------------------------------------------------


def _keyed(d: np.ndarray) -> dict[tuple[str, str], float]:
    return {(c, n): float(d[i, k]) for i, c in enumerate(CASES) for k, n in enumerate(LANDMARK_NAMES)}


def test_paired_comparison_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    b0, b1 = rng.uniform(2, 8, (4, 5)), rng.uniform(2, 8, (4, 5))
    shift = np.arange(20, dtype=float).reshape(4, 5) / 10 - 1.0  # -1.0 ... 0.9, one exact zero
    a0, a1 = b0 + shift + 0.2, b1 + shift - 0.2  # seed-averaged difference is exactly `shift`
    res = paired_comparison({0: _keyed(a0), 1: _keyed(a1)}, {0: _keyed(b0), 1: _keyed(b1)})
    diff = ((a0 - b0) + (a1 - b1)) / 2
    assert res["n_pairs"] == 20 and res["seeds"] == [0, 1]
    assert res["mean_diff_mm"] == pytest.approx(np.mean(shift))  # hand value: -0.05
    assert res["mean_diff_mm"] == pytest.approx(-0.05)
    ref = stats.wilcoxon(np.where(np.abs(diff) < 1e-9, 0.0, diff).ravel())
    assert res["p_value"] == pytest.approx(ref.pvalue) and res["wilcoxon_statistic"] == pytest.approx(ref.statistic)
    assert (res["a_better"], res["b_better"], res["ties"]) == (10, 9, 1)
    lo, hi = res["ci95_mm"]
    case_means = shift.mean(1)
    assert case_means.min() <= lo < res["mean_diff_mm"] < hi <= case_means.max()
    assert res["per_seed_mean_diff_mm"] == pytest.approx([np.mean(shift) + 0.2, np.mean(shift) - 0.2])


def test_paired_comparison_of_a_constant_shift() -> None:
    b = np.random.default_rng(1).uniform(2, 8, (4, 5))
    res = paired_comparison({0: _keyed(b - 0.5)}, {0: _keyed(b)})
    assert res["mean_diff_mm"] == pytest.approx(-0.5)
    assert res["ci95_mm"] == pytest.approx([-0.5, -0.5])
    assert res["a_better"] == 20 and res["p_value"] == pytest.approx(stats.wilcoxon(np.full(20, -0.5)).pvalue)
    same = paired_comparison({0: _keyed(b)}, {0: _keyed(b)})
    assert same["p_value"] == 1.0 and same["ties"] == 20 and same["wilcoxon_statistic"] is None


def test_paired_comparison_refuses_unpaired_inputs() -> None:
    b = _keyed(np.ones((4, 5)))
    with pytest.raises(ValueError, match="share no seed"):
        paired_comparison({0: b}, {1: b})
    fewer = dict(list(b.items())[:-1])
    with pytest.raises(ValueError, match="different cases"):
        paired_comparison({0: fewer}, {0: b})


def test_prior_changes_counts_landmarks_and_cases() -> None:
    without = np.full((4, 5), 5.0)
    with_p = without.copy()
    with_p[0, 0], with_p[0, 1] = 2.0, 6.0  # case_a: one better, one worse; mean falls (-3 + 1) / 5
    with_p[2, 4] = 9.0  # case_c: one worse
    res = prior_changes(_keyed(with_p), _keyed(without))
    landmarks = (res["landmarks"], res["landmarks_changed"], res["landmarks_better"], res["landmarks_worse"])
    assert landmarks == (20, 3, 1, 2)
    assert (res["cases"], res["cases_changed"], res["cases_better"], res["cases_worse"]) == (4, 2, 1, 1)
    assert res["mean_change_mm"] == pytest.approx((-3 + 1 + 4) / 20)


def test_score_error_correlation_sign() -> None:
    d = np.arange(20, dtype=float).reshape(4, 5)
    assert score_error_correlation(per_case(d, scores=-d)) == pytest.approx(-1.0)
    assert np.isnan(score_error_correlation(per_case(d)))  # constant scores


# ------------------------------------------------------------------------------------------
# the resumable runner (training and evaluation faked)
# ------------------------------------------------------------------------------------------


class Fakes:
    """Record calls; write what a finished training and an evaluation would write."""

    def __init__(self) -> None:
        self.trained: list[tuple[str, int, bool]] = []
        self.evaluated: list[tuple[str, tuple[bool, ...]]] = []

    def train(self, variant: Variant, data: Path, out: Path, *, preset: Preset, steps: int, seed: int,
              resume: bool, **kw: Any) -> None:
        self.trained.append((variant.name, seed, resume))
        assert preset.eye_sides == variant.eye_sides and preset.anchor_layout == variant.anchor_layout
        plant_training(out, variant, seed, steps, preset.name)

    def evaluate(self, method: str, model_path: Path, data: Any, use_priors: list[bool], device: str,
                 progress: bool) -> dict[bool, dict]:
        self.evaluated.append((model_path.parent.parent.name + "/" + model_path.parent.name, tuple(use_priors)))
        return {up: {k: v for k, v in metrics(0, distances=np.full((len(CASES), 5), 4.0 if up else 5.0)).items()
                     if k not in ("steps", "seed")} for up in use_priors}


def test_runner_skips_done_runs_and_resumes_partial_ones(tmp_path: Path, tiny_data: Path) -> None:
    res = tmp_path / "results"
    rpn = next(v for v in VARIANTS if v.name == "rpn")
    plant(res, "rpn", 0, metrics(0), metrics(0))  # complete
    plant_training(res / "rpn" / "seed1", rpn, 1)  # trained, not evaluated
    (res / "rpn" / "seed2").mkdir(parents=True)
    (res / "rpn" / "seed2" / "checkpoint.pt").write_bytes(b"x")  # interrupted
    states = {st.label: st for st in plan(res, ["rpn"], [0, 1, 2], STEPS, TINY)}
    assert states["rpn/seed0"].train == "done" and states["rpn/seed0"].missing_evals == []
    assert states["rpn/seed1"].train == "done" and states["rpn/seed1"].missing_evals == [True, False]
    assert states["rpn/seed2"].train == "partial"
    assert states["rpn-no-iou-balance/seed0"].train == "missing"

    fakes = Fakes()
    out: list[str] = []
    run_replication(tiny_data, res, methods=["rpn"], seeds=[0, 1, 2], steps=STEPS, preset=TINY,
                    train_fn=fakes.train, evaluate_fn=fakes.evaluate, echo=out.append)
    assert sorted(fakes.trained) == [("rpn", 2, True), ("rpn-cube-anchors", 0, False), ("rpn-cube-anchors", 1, False),
                                     ("rpn-cube-anchors", 2, False), ("rpn-eye-geometry", 0, False),
                                     ("rpn-eye-geometry", 1, False), ("rpn-eye-geometry", 2, False),
                                     ("rpn-no-iou-balance", 0, False), ("rpn-no-iou-balance", 1, False),
                                     ("rpn-no-iou-balance", 2, False)]
    assert ("rpn/seed0", (True, False)) not in fakes.evaluated
    assert ("rpn/seed1", (True, False)) in fakes.evaluated and len(fakes.evaluated) == 11
    written = json.loads((res / "rpn" / "seed1" / "metrics.json").read_text())
    assert written["steps"] == STEPS and written["seed"] == 1 and written["variant"] == "rpn"
    assert len(written["per_case"]) == 20
    for name in ("table1.md", "table2.md", "tables.json"):
        assert (res / name).is_file()
    tables = json.loads((res / "tables.json").read_text())
    changes = tables["table2"]["prior_changes"]["rpn-no-iou-balance"]["total"]
    assert changes["landmarks_changed"] == 60 and changes["landmarks_better"] == 60  # 4.0 mm with, 5.0 without

    again = Fakes()
    run_replication(tiny_data, res, methods=["rpn"], seeds=[0, 1, 2], steps=STEPS, preset=TINY,
                    train_fn=again.train, evaluate_fn=again.evaluate, echo=out.append)
    assert again.trained == [] and again.evaluated == []


def test_runner_stops_on_runs_made_with_other_settings(tmp_path: Path, tiny_data: Path) -> None:
    rpn = next(v for v in VARIANTS if v.name == "rpn")
    plant_training(tmp_path / "rpn" / "seed0", rpn, 0, steps=STEPS * 2)
    fakes = Fakes()
    with pytest.raises(RpnLibError, match=f"trained for {STEPS * 2} steps, asked {STEPS}"):
        run_replication(tiny_data, tmp_path, methods=["rpn"], seeds=[0], steps=STEPS, preset=TINY,
                        train_fn=fakes.train, evaluate_fn=fakes.evaluate, echo=lambda s: None)
    assert fakes.trained == []
    lines: list[str] = []
    run_replication(tiny_data, tmp_path, methods=["rpn"], seeds=[0], steps=STEPS, preset=TINY, dry_run=True,
                    echo=lines.append)
    assert "MISMATCH" in "\n".join(lines)


def test_runs_of_a_preset_whose_settings_changed_are_mismatched(tmp_path: Path) -> None:
    rpn = next(v for v in VARIANTS if v.name == "rpn")
    plant_training(tmp_path / "rpn" / "seed0", rpn, 0)
    assert plan(tmp_path, ["rpn"], [0], STEPS, TINY)[0].train == "done"
    changed = TINY.replace(box_weights=(10.0, 10.0, 10.0, 5.0, 5.0, 5.0))
    state = plan(tmp_path, ["rpn"], [0], STEPS, changed)[0]
    assert state.train == "mismatch" and "other settings" in state.detail
    # a run of the learnt eye sides is not a run of the eye-geometry variant
    geometry = next(v for v in VARIANTS if v.name == "rpn-eye-geometry")
    plant_training(tmp_path / "rpn-eye-geometry" / "seed0", rpn, 0)
    state = next(st for st in plan(tmp_path, ["rpn"], [0], STEPS, TINY) if st.variant == geometry)
    assert state.train == "mismatch" and "other settings" in state.detail
    # nor is a run with all 64 anchor shapes a run of the cube-anchor variant
    cubes = next(v for v in VARIANTS if v.name == "rpn-cube-anchors")
    plant_training(tmp_path / "rpn-cube-anchors" / "seed0", geometry, 0)
    state = next(st for st in plan(tmp_path, ["rpn"], [0], STEPS, TINY) if st.variant == cubes)
    assert state.train == "mismatch" and "other settings" in state.detail


def test_train_variant_passes_method_and_loss(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import rpn_lib.train

    calls: list[dict] = []
    monkeypatch.setattr(rpn_lib.train, "train", lambda *a, **kw: calls.append({"args": a, **kw}))
    ssd_plain = next(v for v in VARIANTS if v.name == "ssd-no-iou-balance")
    train_variant(ssd_plain, "data", tmp_path, preset=TINY, steps=7, seed=2, resume=True, precision="bf16",
                  device="cpu", progress=False)
    (call,) = calls
    assert call["method"] == "ssd" and call["iou_balance"] is False and call["precision"] == "bf16"
    assert call["channels_last"] is True
    assert call["args"] == ("data", tmp_path, TINY, 7, 2, True)


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------


def test_cli_dry_run_prints_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plant(tmp_path, "ssd", 1, metrics(1), metrics(1), preset="cpu-small")
    code = main(["replicate", "--results", str(tmp_path), "--methods", "ssd,heatmap", "--seeds", "0", "1",
                 "--steps", str(STEPS), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "ssd/seed1" in out and "ssd-no-iou-balance/seed0" in out and "heatmap/seed1" in out
    line = next(ln for ln in out.splitlines() if "ssd/seed1" in ln)
    assert "train: done" in line and "evaluate: done" in line
    assert "6 runs: 1 trained, 0 to resume, 5 to train, 0 mismatched; 10 evaluations to do" in out
    assert not (tmp_path / "table1.md").exists()  # a dry run writes nothing


@pytest.mark.parametrize("args, message", [
    (["--methods", "rpn", "nonsense"], "unknown method"),
    (["--seeds", "-1"], "non-negative"),
    (["--steps", "0"], "steps must be positive"),
    (["--seeds", "one"], ""),
])
def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                               message: str) -> None:
    assert main(["replicate", "--results", str(tmp_path), "--dry-run", *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_help_names_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replicate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(m in text for m in METHODS)


def test_cli_missing_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["replicate", "--results", str(tmp_path / "r"), "--data", str(tmp_path / "nowhere"),
                 "--methods", "rpn", "--seeds", "0"])
    assert code == 2 and "rpn-lib synth" in capsys.readouterr().err


@pytest.mark.parametrize("native,want", [(False, "fp32"), (True, "bf16")])
def test_runner_auto_precision_is_what_the_cpu_runs_natively(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             tiny_data: Path, native: bool, want: str) -> None:
    from rpn_lib import precision

    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: ["AMX"] if native else [])
    fakes, seen, out = Fakes(), [], []

    def train_fn(*a: Any, **kw: Any) -> None:
        seen.append(kw["precision"])
        fakes.train(*a, **kw)

    run_replication(tiny_data, tmp_path, methods=["heatmap"], seeds=[0], steps=STEPS, preset=TINY, device="cpu",
                    train_fn=train_fn, evaluate_fn=fakes.evaluate, echo=out.append)
    assert seen == [want] and f"{STEPS} steps, {want}, seeds" in out[0]
