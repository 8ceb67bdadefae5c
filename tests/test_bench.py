"""Tests of the benchmark (:mod:`rpn_lib.bench`, ``rpn-lib bench``) at toy sizes.

They check what is measured and reported (keys, types, the split of the detection time, FLOP
counts against the hand formula, memory seen, the command's files and errors), never how fast
anything runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rpn_lib import bench
from rpn_lib.checkpoint import save_model
from rpn_lib.cli import main
from rpn_lib.data.dataset import write_synthetic_dataset
from rpn_lib.data.synth import generate_case
from rpn_lib.readahead import READ_AHEAD
from rpn_lib.model import IGRPN
from rpn_lib.presets import get_preset
from rpn_lib.prior import GraphPrior

CPU = torch.device("cpu")


def _strict_json(path: Path) -> dict:
    """Parse JSON, refusing NaN and Infinity (not JSON, though Python writes them)."""
    def refuse(name: str) -> None:
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cin,cout,k,stride,batch,side", [(2, 3, 3, 1, 1, 8), (4, 6, 3, 2, 2, 8), (3, 5, 1, 1, 1, 6)])
def test_conv_flops_equal_the_hand_formula(cin: int, cout: int, k: int, stride: int, batch: int, side: int) -> None:
    conv = nn.Conv3d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
    out_side = (side + 2 * (k // 2) - k) // stride + 1
    # two operations (multiply, add) per weight per output voxel per output channel
    expected = 2 * batch * cout * out_side ** 3 * cin * k ** 3
    assert bench.count_flops(conv, (batch, cin, side, side, side)) == expected


def test_model_flops_are_the_sum_over_its_convolutions() -> None:
    torch.manual_seed(0)
    model = IGRPN(width=2, stride=4).eval()
    shapes: list[tuple[nn.Conv3d, torch.Size]] = []
    hooks = [m.register_forward_hook(lambda m, a, o: shapes.append((m, o.shape)))
             for m in model.modules() if isinstance(m, nn.Conv3d)]
    with torch.no_grad():
        model(torch.rand(1, 1, 16, 16, 16))
    for h in hooks:
        h.remove()
    by_hand = sum(2 * int(np.prod(o)) * c.in_channels * int(np.prod(c.kernel_size)) for c, o in shapes)
    assert len(shapes) == 12  # 4 blocks x 2, fusion, head 3x3x3, class and box 1x1x1
    assert bench.count_flops(model, (1, 1, 16, 16, 16)) == by_hand


def test_flop_count_falls_back_to_a_real_run_when_meta_cannot() -> None:
    class NeedsValues(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 3, padding=1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y * float(y.abs().max().item() > -1)  # .item() has no meta kernel

    assert bench.count_flops(NeedsValues(), (1, 1, 4, 4, 4)) == 2 * 2 * 64 * 27


# --------------------------------------------------------------------------------------------
# clocks and memory
# --------------------------------------------------------------------------------------------


def test_time_call_runs_warmup_then_timed_calls() -> None:
    calls = []
    t = bench.time_call(lambda: calls.append(1), CPU, repeats=3, warmup=2)
    assert len(calls) == 5 and len(t["runs_ms"]) == 3 and t["repeats"] == 3 and t["warmup"] == 2
    assert t["min_ms"] <= t["median_ms"] <= t["max_ms"]
    assert set(t["memory"]) >= {"cpu_peak_rss_mb", "cpu_peak_extra_mb", "cpu_peak_method", "cuda_max_allocated_mb"}
    with pytest.raises(ValueError, match="repeats"):
        bench.time_call(lambda: None, CPU, repeats=0)


_PEAK_CHILD = """
import json, numpy as np, torch
from rpn_lib import bench
with bench.PeakMemory(torch.device("cpu")) as pm:
    a = np.ones(25_000_000)  # 200 MB, written so that it is resident
    del a
print(json.dumps(pm.result))
"""


def test_peak_memory_sees_a_temporary_allocation() -> None:
    # in a fresh process: this one may keep freed memory resident (rpn_lib.allocator, set by
    # in-process CLI tests), and a new array would then reuse those pages without a new peak
    import subprocess

    done = subprocess.run([sys.executable, "-c", _PEAK_CHILD], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["cpu_peak_rss_mb"] >= r["cpu_rss_before_mb"]
    if not r["cpu_peak_method"].startswith("VmHWM"):
        pytest.skip("the peak RSS cannot be reset here")
    assert r["cpu_peak_extra_mb"] > 150


def test_num_threads_is_restored() -> None:
    before = torch.get_num_threads()
    with bench.num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """A toy preset (32^3 voxels, width 2) and one synthetic volume for it."""
    p = bench.quick_preset("cpu-small").replace(width=2)
    case = generate_case(0, p.spacing_mm, p.shape_vox)
    return p, case


def test_quick_preset_keeps_the_field_of_view() -> None:
    for name in ("cpu-small", "paper"):
        q, p = bench.quick_preset(name), get_preset(name)
        assert q.shape_vox == bench.QUICK_SHAPE and q.width == bench.QUICK_WIDTH
        assert np.allclose(q.field_of_view_mm, p.field_of_view_mm)


def test_detect_split_adds_up_to_the_end_to_end_time(tiny) -> None:
    p, case = tiny
    det = bench.untrained_detector(p, CPU)
    d = bench.bench_detect(det, case.volume, case.affine, repeats=1, warmup=1)
    parts = [d["network_ms"], d["candidates_ms"], d["prior_ms"], d["other_ms"]]
    assert all(isinstance(v, float) and v >= 0 for v in parts)
    # one timed run: the parts and the rest are that run's, and add up to it
    assert sum(parts) == pytest.approx(d["end_to_end"]["median_ms"], abs=0.01)
    assert 0 <= d["candidates_prior_share"] <= 1
    assert d["precision"] == "fp32" and d["grid_shape"] == [32, 32, 32]
    assert d["n_anchors"] == (32 // p.stride) ** 3 * 64
    # the detector's network setting is one the levers time, so the two can be set side by side
    assert d["network_setting"] == "fp32, channels_last_3d, BN folded + oneDNN"
    assert bench.default_detector_setting().label() == d["network_setting"]  # what bench_sizes times
    labels = [s.label() for s in bench.lever_settings(torch.device("cpu"), autocast=["bf16"])]
    assert d["network_setting"] in labels and "bf16, channels_last_3d, BN folded + oneDNN" in labels
    d3 = bench.bench_detect(bench.untrained_detector(p, CPU, amp=True), case.volume, case.affine, repeats=3, warmup=0)
    assert d3["precision"] == "bf16" and len(d3["end_to_end"]["runs_ms"]) == 3
    assert d3["network_setting"] == "bf16, channels_last_3d, BN folded + oneDNN"
    assert d3["network_ms"] + d3["candidates_ms"] + d3["prior_ms"] <= d3["end_to_end"]["max_ms"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_step_parts(tiny, precision: str) -> None:
    p, _ = tiny
    t = bench.bench_train_step(p, CPU, precision, repeats=1, warmup=0, batch_size=1)
    assert t["precision"] == precision and t["batch_size"] == 1 and t["method"] == "rpn"
    for k in ("data_ms", "forward_ms", "loss_ms", "backward_ms", "optimizer_ms"):
        assert isinstance(t[k], float) and t[k] >= 0, k
    assert t["forward_ms"] + t["loss_ms"] == pytest.approx(t["forward_loss_ms"], abs=0.01)
    parts = t["data_ms"] + t["forward_loss_ms"] + t["backward_ms"] + t["optimizer_ms"]
    assert parts <= t["step"]["median_ms"] + 0.01
    assert t["samples_per_s"] == pytest.approx(1000.0 / t["step"]["median_ms"], rel=1e-3)


def test_training_step_rejects_fp16_on_cpu(tiny) -> None:
    with pytest.raises(ValueError, match="training precision"):
        bench.bench_train_step(tiny[0], CPU, "fp16", repeats=1, warmup=0)


def test_lever_settings() -> None:
    labels = [s.label() for s in bench.lever_settings(CPU, threads=[1, 2], compile=True, autocast=["bf16"])]
    assert labels[0] == "fp32" and len(set(labels)) == len(labels)
    for want in ("fp32, no_grad", "fp32, channels_last_3d", "bf16", "bf16, channels_last_3d", "fp32, batch 2",
                 "bf16, batch 2", "fp32, 1 thread", "fp32, 2 threads", "fp32, torch.compile"):
        assert want in labels
    assert not any("fp16" in lb or "cudnn" in lb for lb in labels)  # GPU-only levers
    assert not any("compile" in s.label() for s in bench.lever_settings(CPU))
    # without autocast (a CPU that emulates bf16): fp32 levers only, the thread levers on channels_last_3d
    labels = [s.label() for s in bench.lever_settings(CPU, threads=[1], autocast=[])]
    assert not any("bf16" in lb for lb in labels) and "fp32, channels_last_3d, 1 thread" in labels
    assert len(set(labels)) == len(labels)


def test_levers_side_by_side() -> None:
    torch.manual_seed(0)
    model = IGRPN(width=2, stride=4).eval()
    settings = [bench.ForwardSetting(), bench.ForwardSetting(precision="bf16", channels_last=True),
                bench.ForwardSetting(batch=2, threads=1)]
    rows = bench.bench_levers(model, (16, 16, 16), CPU, repeats=1, warmup=0, settings=settings)
    assert [r["label"] for r in rows] == ["fp32", "bf16, channels_last_3d", "fp32, batch 2, 1 thread"]
    assert rows[0]["x_baseline"] == 1.0
    assert all(r["error"] is None and r["ms_per_volume"] > 0 for r in rows)
    assert rows[2]["x_baseline"] == pytest.approx(rows[2]["ms_per_volume"] / rows[0]["ms_per_volume"], rel=1e-2)
    # channels_last_3d was tried on a copy: the caller's weights keep their layout
    assert all(w.is_contiguous() for w in model.parameters())


def test_a_lever_that_fails_is_a_row_with_its_error() -> None:
    model = IGRPN(width=2, stride=4).eval()
    settings = [bench.ForwardSetting(), bench.ForwardSetting(grad_mode="bogus")]
    rows = bench.bench_levers(model, (16, 16, 16), CPU, repeats=1, warmup=0, settings=settings)
    assert rows[1]["ms_per_volume"] is None and "grad_mode" in rows[1]["error"]
    with pytest.raises(ValueError, match="grad_mode"):
        bench.bench_levers(model, (16, 16, 16), CPU, repeats=1, warmup=0, settings=settings[::-1])


def test_time_per_convolution() -> None:
    """One row per convolution in forward order; their FLOPs add up to the independent count
    of the whole network (FlopCounterMode), and the convolutions' time fits inside the pass."""
    torch.manual_seed(0)
    model = IGRPN(width=2, stride=4).eval()
    lay = bench.bench_layers(model, (16, 16, 16), CPU, repeats=1, warmup=0)
    names = [r["name"] for r in lay["rows"]]
    assert names[0] == "backbone.block1.0.0" and names[-2:] == ["head.cls", "head.reg"]
    assert len(names) == sum(isinstance(m, nn.Conv3d) for m in model.modules())
    total = bench.count_flops(model, (1, 1, 16, 16, 16))
    assert sum(r["gflop"] for r in lay["rows"]) == pytest.approx(total / 1e9, abs=1e-4 * len(names))
    assert all(r["ms"] > 0 and r["gflops_per_s"] > 0 for r in lay["rows"])
    assert lay["convs_ms"] == pytest.approx(sum(r["ms"] for r in lay["rows"]), abs=1e-2)
    assert lay["other_ms"] >= 0 and lay["forward_ms"] == pytest.approx(lay["convs_ms"] + lay["other_ms"], abs=1e-2)
    assert any(isinstance(m, nn.BatchNorm3d) for m in model.modules())  # the rewrite worked on a copy
    assert all(w.is_contiguous() for w in model.parameters())
    with pytest.raises(ValueError, match="repeats"):
        bench.bench_layers(model, (16, 16, 16), CPU, repeats=0)


def test_sizes_table() -> None:
    s = bench.bench_sizes([8, 16], width=2, device=CPU, repeats=1, warmup=0)
    assert [r["size"] for r in s["rows"]] == [8, 16] and s["width"] == 2
    f8, f16 = (r["flops"] for r in s["rows"])
    assert f16 == 8 * f8  # every convolution is 8 times larger at twice the side
    # timed as the detector runs its network, unless told otherwise
    assert s["setting"] == "fp32, channels_last_3d, BN folded + oneDNN" and s["precision"] == "fp32"
    plain = bench.bench_sizes([8], width=2, device=CPU, repeats=1, warmup=0, setting=bench.ForwardSetting())
    assert plain["setting"] == "fp32" and plain["rows"][0]["flops"] == f8
    with pytest.raises(ValueError, match="multiples of 8"):
        bench.bench_sizes([12], width=2, device=CPU)


def test_missing_peers_are_reported_not_fatal(tiny, monkeypatch) -> None:
    p, case = tiny
    monkeypatch.setitem(sys.modules, "rpn_lib.baselines.heatmap", None)  # import now fails
    monkeypatch.setitem(sys.modules, "rpn_lib.baselines.retinanet_peer", None)
    det = bench.untrained_detector(p, CPU)
    res = bench.bench_peers(p, det, CPU, rounds=1, warmup=0, names=("heatmap", "retinanet"),
                            volume=case.volume, affine=case.affine)
    rows = res["rows"]
    assert [r["name"] for r in rows] == ["heatmap", "retinanet"]
    for r in rows:
        assert r["available"] is False and r["reason"].startswith("not available") and r["network_ms"] is None
    assert len(res["igrpn"]["runs_end_to_end_ms"]) == 1  # the IG-RPN still ran its round
    with pytest.raises(ValueError, match="unknown peer"):
        bench.bench_peers(p, det, CPU, names=("nope",))
    with pytest.raises(ValueError, match="rounds"):
        bench.bench_peers(p, det, CPU, rounds=0, names=("ssd",))


def test_peers_run_in_rotating_rounds_and_ratios_are_paired(tiny, monkeypatch) -> None:
    """Every round runs each model once, the order rotated by one each round; a peer's ratio is
    the median of its per-round ratios to the IG-RPN, not a ratio of medians."""
    p, case = tiny
    det = bench.untrained_detector(p, CPU)
    calls: list[str] = []
    # fake clocks: the IG-RPN takes 10, 20, 30 ms in rounds 1-3, the ssd 12, 18, 45 ms
    clock = {bench.IGRPN_KEY: iter([5.0, 10.0, 20.0, 30.0]), "ssd": iter([5.0, 12.0, 18.0, 45.0])}

    def fake_runner(d, net, volume, affine, grid, dev, precision="fp32"):
        key = bench.IGRPN_KEY if d is det else "ssd"

        def run(repeats, warmup):
            calls.append((key, warmup))
            t = next(clock[key])
            return t, t / 2, {"cpu_peak_rss_mb": 1.0}
        return run

    monkeypatch.setattr(bench, "_runner", fake_runner)
    res = bench.bench_peers(p, det, CPU, rounds=3, warmup=0, names=("ssd",), volume=case.volume, affine=case.affine)
    # first the memory runs (IG-RPN, then the peer), then rounds in rotated order, each model
    # timed after one untimed run of its own (warmup=1)
    ig = bench.IGRPN_KEY
    assert calls == [(ig, 0), ("ssd", 0), (ig, 1), ("ssd", 1), ("ssd", 1), (ig, 1), (ig, 1), ("ssd", 1)]
    (row,) = res["rows"]
    assert res["igrpn"]["runs_end_to_end_ms"] == [10.0, 20.0, 30.0] and res["igrpn"]["end_to_end_ms"] == 20.0
    assert row["runs_end_to_end_ms"] == [12.0, 18.0, 45.0] and row["end_to_end_ms"] == 18.0
    assert row["x_igrpn_end_to_end"] == 1.2  # median of 1.2, 0.9, 1.5 (the ratio of medians is 0.9)
    assert row["x_igrpn_end_to_end_range"] == [0.9, 1.5] and row["slower_rounds"] == 2 and row["rounds"] == 3
    assert row["x_igrpn_network"] == 1.2 and row["memory"] == {"cpu_peak_rss_mb": 1.0}
    assert bench.paired_range_text(row) == "0.90-1.50, slower in 2 of 3"


def test_a_peer_failing_in_a_round_keeps_its_error(tiny, monkeypatch) -> None:
    p, case = tiny
    det = bench.untrained_detector(p, CPU)
    n = {"ssd": 0}

    def fake_runner(d, net, volume, affine, grid, dev, precision="fp32"):
        def run(repeats, warmup):
            if d is not det:
                n["ssd"] += 1
                if n["ssd"] == 3:
                    raise RuntimeError("out of memory")
            return 10.0, 5.0, {}
        return run

    monkeypatch.setattr(bench, "_runner", fake_runner)
    res = bench.bench_peers(p, det, CPU, rounds=3, warmup=0, names=("ssd",), volume=case.volume, affine=case.affine)
    (row,) = res["rows"]
    assert row["error"] == "RuntimeError: out of memory" and row["rounds"] == 1
    assert row["runs_end_to_end_ms"] == [10.0, None, None] and row["x_igrpn_end_to_end"] == 1.0


def test_peers_run_in_the_precision_of_the_igrpn_detector(tiny, monkeypatch) -> None:
    """Beside an IG-RPN detector with ``amp``, every peer's detector has ``amp`` too, and the
    result says which precision the rounds ran in."""
    p, case = tiny
    built: list = []
    real = bench._build_peer

    def spy(name, preset, dev, seed, amp=False):
        net, det = real(name, preset, dev, seed, amp=amp)
        built.append(det)
        return net, det

    monkeypatch.setattr(bench, "_build_peer", spy)
    for amp, precision in ((True, "bf16"), (False, "fp32")):
        built.clear()
        res = bench.bench_peers(p, bench.untrained_detector(p, CPU, amp=amp), CPU, rounds=1, warmup=0,
                                names=("ssd", bench.ONE_CONV_PEER), volume=case.volume, affine=case.affine)
        assert res["precision"] == precision and len(built) == 2
        assert all(det.amp is amp for det in built)
        assert all(row["error"] is None and row["end_to_end_ms"] > 0 for row in res["rows"])


def test_peer_list_words() -> None:
    from rpn_lib.cli import _peer_list

    assert _peer_list("all") == list(bench.PEERS) and bench.ONE_CONV_PEER in _peer_list("all")
    assert _peer_list("none") == [] and _peer_list("ssd, retinanet") == ["ssd", "retinanet"]


def test_one_conv_peer_times_the_deviation(tiny) -> None:
    """The one-conv-block-1 peer is the IG-RPN less block 1's second conv: fewer FLOPs by
    exactly that layer's, on the same grid."""
    p, case = tiny
    (row,) = bench.bench_peers(p, bench.untrained_detector(p, CPU), CPU, rounds=1, warmup=0,
                               names=(bench.ONE_CONV_PEER,), volume=case.volume, affine=case.affine)["rows"]
    assert row["available"] and row["error"] is None and row["end_to_end_ms"] > 0
    full = bench.count_flops(bench.build_model(p), (1, 1, *p.shape_vox))
    layer = 2 * p.width * p.width * 27 * int(np.prod(p.shape_vox))
    assert row["gflop"] == pytest.approx((full - layer) / 1e9, abs=1e-4)  # rounded to 4 decimals


def test_matmul_peak_keys() -> None:
    m = bench.matmul_peak(64, "bf16", CPU, repeats=1, warmup=0)
    assert m["n"] == 64 and m["precision"] == "bf16" and m["gflops_per_s"] > 0 and m["best_gflops_per_s"] > 0


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``rpn-lib bench --quick --preset all`` with a (width-2, untrained) cpu-small model file, a
    two-case dataset for the accuracy check, and one peer."""
    root = tmp_path_factory.mktemp("bench")
    p = bench.quick_preset("cpu-small").replace(name="cpu-small", width=2)  # a 32^3 "cpu-small" model
    torch.manual_seed(0)
    save_model(root / "model.pt", IGRPN(width=2, stride=p.stride), p,
               GraphPrior.fit(bench.synthetic_landmarks(p, n=4)))
    write_synthetic_dataset(root / "data", n=2, n_test=1, seed=0, preset="cpu-small", progress=False)
    out, md = root / "res" / "bench.json", root / "res" / "bench.md"
    argv = ["bench", "--quick", "--preset", "all", "--model", str(root / "model.pt"), "--sizes", "16,24", "--peers", "ssd",
            "--accuracy-data", str(root / "data"), "--out", str(out), "--markdown", str(md), "--quiet",
            "--autocast", "bf16"]  # bf16 measured on any CPU, native or not
    return root, argv, out, md


def test_quick_command_writes_json_and_table(quick_run, capsys) -> None:
    root, argv, out, md = quick_run
    assert main(argv) == 0
    printed = capsys.readouterr().out
    res = _strict_json(out)
    assert res["format"] == bench.BENCH_FORMAT and res["settings"]["quick"] is True
    assert set(res) >= {"machine", "matmul_peak", "presets", "sizes", "accuracy", "seconds", "created"}
    m = res["machine"]
    assert isinstance(m["cpu"], str) and m["usable_cores"] >= 1 and m["torch"] == torch.__version__
    assert isinstance(m["torch_threads"], int)
    assert set(res["matmul_peak"]) == {"fp32", "bf16"} and res["settings"]["autocast"] == ["bf16"]
    assert res["bf16_emulation"] is None  # bf16 was asked for: measured, not replaced by the probe
    assert m["bf16_native"] == bool(m["bf16_instructions"]) and isinstance(m["cpu_capability"], str)
    assert list(res["presets"]) == ["cpu-small", "paper"]
    small, paper = res["presets"]["cpu-small"], res["presets"]["paper"]
    assert small["model"] == str(root / "model.pt") and small["preset"]["width"] == 2
    assert small["detect"]["fp32"]["grid_shape"] == list(bench.QUICK_SHAPE)
    assert paper["model"].startswith("untrained") and paper["preset"]["shape_vox"] == list(bench.QUICK_SHAPE)
    for r in (small, paper):
        assert set(r["detect"]) == {"fp32", "bf16"} and set(r["train"]) == {"fp32", "bf16"}
        assert r["flops_forward"] > 0 and isinstance(r["gflop_forward"], float)
        for e in r["efficiency"].values():
            assert e["gflops_per_s"] > 0 and e["fraction_of_peak"] > 0 and e["end_to_end_over_floor"] > 0
        assert r["levers"][0]["x_baseline"] == 1.0
        assert [row["name"] for row in r["layers"]["rows"]][:1] == ["backbone.block1.0.0"]
        assert [pe["name"] for pe in r["peers"]] == ["ssd"]
        amp = r["peers_amp"]  # the same peers again, every model under the detector's bf16 autocast
        assert amp["precision"] == "bf16" and [pe["name"] for pe in amp["rows"]] == ["ssd"]
        assert amp["rounds"] == r["peers_paired"]["rounds"] == 1 and amp["igrpn"]["end_to_end_ms"] > 0
        pe = r["peers"][0]
        assert pe["available"] in (True, False) and (pe["available"] or pe["reason"])
        if pe["available"] and not pe["error"]:  # one round: the ratio is that round's
            mine = r["peers_paired"]["igrpn"]
            assert pe["rounds"] == r["peers_paired"]["rounds"] == 1
            assert pe["x_igrpn_network"] == pytest.approx(pe["network_ms"] / mine["network_ms"], rel=1e-2)
        ra = r["read_ahead"]  # with the fastest precision measured, over files 1.5x finer than the grid
        assert ra["precision"] == "bf16" and ra["default_depth"] == READ_AHEAD and ra["n_files"] == 2 * READ_AHEAD
        assert ra["file_shape"] == [round(s * bench.READ_AHEAD_FINER) for s in bench.QUICK_SHAPE]
        assert 0 < ra["read_ms"] and ra["file_mb"] > 0
        assert [row["depth"] for row in ra["rows"]] == [0, 1, READ_AHEAD]
        in_turn = ra["rows"][0]["ms_per_file"]
        assert ra["rows"][0]["x_in_turn"] == 1.0
        for row in ra["rows"]:  # one round: the ratio is that round's
            assert row["x_in_turn"] == pytest.approx(in_turn / row["ms_per_file"], rel=1e-2)
        assert ra["ideal_x"] == pytest.approx(in_turn / (in_turn - ra["read_ms"]), rel=1e-2)
        al = r["allocator"]
        if m["allocator"]["libc"] is None:
            assert al["error"] and not al["rows"]
        else:  # the child ran the same detector with the other allocator setting
            assert al["error"] is None and al["here"] != al["other"]
            assert [row["precision"] for row in al["rows"]] == ["fp32", "bf16"]
            for row in al["rows"]:
                assert row["end_to_end_ms_here"] == r["detect"][row["precision"]]["end_to_end"]["median_ms"]
                assert row["end_to_end_ms_other"] > 0
                assert row["x_here"] == pytest.approx(row["end_to_end_ms_other"] / row["end_to_end_ms_here"], rel=1e-2)
    assert [row["size"] for row in res["sizes"]["rows"]] == [16, 24]
    acc = res["accuracy"]
    assert acc["n_cases"] == 1 and acc["amp_precision"] == "bf16"
    assert acc["d_mean_diff_mm"] == pytest.approx(acc["d_mean_amp_mm"] - acc["d_mean_fp32_mm"], abs=1e-3)
    assert acc["within_0_1_mm"] == (abs(acc["d_mean_diff_mm"]) <= 0.1)
    table = md.read_text()
    assert table in printed and f"wrote {out} and {md}" in printed
    for heading in ("Detection latency", "Reading files ahead", "hardware limit", "Training step", "Levers", "Peers",
                    "volume size", "autocast", "Allocator", "Peers on the same input (bf16 autocast, every model"):
        assert heading in table
    assert not list(out.parent.glob(".*tmp*"))  # atomic writes leave no temporary file


def test_benchmark_leaves_out_emulated_bf16(monkeypatch, tmp_path) -> None:
    """On a CPU without native bf16 the benchmark measures fp32 only and records, instead,
    what bf16 would cost (a small matmul in both precisions)."""
    monkeypatch.setattr(bench, "autocast_precisions", lambda device: [])
    res = bench.run_benchmark(["cpu-small"], quick=True, sizes=[], peers=[], device="cpu",
                              out=tmp_path / "b.json", markdown=tmp_path / "b.md")
    assert res["settings"]["autocast"] == [] and list(res["matmul_peak"]) == ["fp32"]
    r = res["presets"]["cpu-small"]
    assert list(r["detect"]) == ["fp32"] and list(r["train"]) == ["fp32"] and list(r["efficiency"]) == ["fp32"]
    assert not any(row["setting"]["precision"] != "fp32" for row in r["levers"])
    emu = res["bf16_emulation"]
    assert emu["n"] == bench.EMULATION_N and emu["fp32"]["precision"] == "fp32" and emu["bf16"]["precision"] == "bf16"
    assert emu["slowdown"] == pytest.approx(emu["bf16"]["ms"] / emu["fp32"]["ms"], rel=0.01, abs=0.05)
    text = (tmp_path / "b.md").read_text()
    assert "bf16 is not native on this CPU" in text and f"{emu['slowdown']:.1f}x as long" in text
    with pytest.raises(ValueError, match="autocast precisions"):
        bench.run_benchmark(["cpu-small"], quick=True, autocast=["fp32"])


def test_list_arguments() -> None:
    from rpn_lib.cli import _peer_list, _size_list

    assert _size_list("64,96") == [64, 96] and _size_list("none") == []
    assert _peer_list("ssd,retinanet") == ["ssd", "retinanet"] and _peer_list("none") == []


@pytest.mark.parametrize("extra,what", [
    (["--sizes", "20"], "multiples of 8"),
    (["--sizes", "a,b"], "expected sizes"),
    (["--repeats", "0"], "positive integer"),
    (["--preset", "huge"], "invalid choice"),
    (["--peers", "heatmap,yolo"], "unknown peer"),
])
def test_bad_arguments_exit_2(extra: list[str], what: str, tmp_path: Path, capsys) -> None:
    assert main(["bench", "--quick", "--out", str(tmp_path / "b.json"), *extra]) == 2
    assert what in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("extra,what", [
    (["--model", "{tmp}/missing.pt"], "model file not found"),
    (["--accuracy-data", "{tmp}"], "needs a trained model"),
    (["--out", "{tmp}"], "is a folder"),
    (["--preset", "paper", "--model", "{model}"], "trained at preset 'cpu-small'"),
    (["--model", "{model}", "--accuracy-data", "{tmp}/nodata"], "dataset folder not found"),
])
def test_bad_inputs_exit_2_with_one_line_before_measuring(extra: list[str], what: str, tmp_path: Path, quick_run,
                                                          capsys) -> None:
    root = quick_run[0]
    argv = [a.format(tmp=tmp_path, model=root / "model.pt") for a in extra]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "b.json")]
    assert main(["bench", "--quick", "--quiet", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("rpn-lib: error: ") and captured.err.count("\n") == 1 and what in captured.err
    assert captured.out == ""
    assert not (tmp_path / "b.json").exists()


# --------------------------------------------------------------------------------------------
# scripts/bench_cuda.sh (the benchmark on a CUDA machine); here only what it refuses
# --------------------------------------------------------------------------------------------

BENCH_CUDA = Path(__file__).resolve().parents[1] / "scripts" / "bench_cuda.sh"


def _bench_cuda(*args: str, **env: str):
    import os
    import subprocess

    return subprocess.run(["bash", str(BENCH_CUDA), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_bench_cuda_script_checks_its_arguments(tmp_path: Path) -> None:
    r = _bench_cuda()
    assert r.returncode == 2 and "usage:" in r.stderr
    (tmp_path / "wheels").mkdir()
    r = _bench_cuda(str(tmp_path / "out"), str(tmp_path / "wheels"))
    assert r.returncode == 2 and "no .whl file" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_bench_cuda_script_stops_without_a_gpu(tmp_path: Path) -> None:
    r = _bench_cuda(str(tmp_path / "out"), BENCH_DEVICE="cuda")
    assert r.returncode != 0 and "torch sees no CUDA device" in r.stderr
    assert not (tmp_path / "out" / "bench-cuda.json").exists()
