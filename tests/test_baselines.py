"""The in-house baselines (SSD, Faster R-CNN, heatmap regression): their parts, and that each
trains, saves, resumes and detects through the IG-RPN's loop and detector. Tiny and
single-threaded: 32^3 volumes, widths 2-4, two training cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rpn_lib.baselines.common import VGGEncoder3d, top_boxes_after_nms
from rpn_lib.baselines.faster_rcnn import FasterRCNN3d, clip_boxes, propose
from rpn_lib.baselines.heatmap import (
    HeatmapMethod, HeatmapNet, gaussian_heatmaps, heatmap_argmax, heatmap_peaks, refine_peaks,
)
from rpn_lib.baselines.roi_align import roi_align_3d
from rpn_lib.baselines.ssd import SSD3d, SSDMethod, ssd_level_base_sizes
from rpn_lib.boxes import BoxCoder, box_iou
from rpn_lib.checkpoint import load_model, save_model
from rpn_lib.data.dataset import LandmarkDataset, write_synthetic_dataset
from rpn_lib.detect import Detection, Detector
from rpn_lib.errors import DataError, ModelError
from rpn_lib.evaluate import evaluate
from rpn_lib.landmarks import box_size_vox
from rpn_lib.methods import METHOD_NAMES, CandidateSettings, get_method
from rpn_lib.presets import Preset
from rpn_lib.prior import GraphPrior
from rpn_lib.train import train

BASELINES = ("ssd", "faster-rcnn", "heatmap")
TINY = Preset(name="tiny", spacing_mm=5.2, shape_vox=(32, 32, 32), width=4, batch_size=2, anchors_per_volume=128,
              lr=1e-2, rotation_deg=0.0, flip=False, hard_negative_start=1.0)


@pytest.fixture(autouse=True)
def one_thread():
    """Single-threaded: bitwise reproducible reductions, and the machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(out, n=4, n_test=2, seed=1, preset=TINY, difficulty="easy", progress=False)
    return out


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each baseline trained 30 steps on the two training cases (one run folder each)."""
    torch.set_num_threads(1)
    runs = {}
    for m in BASELINES:
        run = tmp_path_factory.mktemp(m)
        train(tiny_data, run, TINY, steps=30, seed=0, log_every=1, progress=False, device="cpu", method=m)
        runs[m] = run
    return runs


# ---------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [2, 4])
def test_ssd_outputs_match_its_anchors(stride: int) -> None:
    torch.manual_seed(0)
    preset = TINY.replace(width=2, stride=stride)
    method = SSDMethod()
    net = method.build(preset)
    out = net(torch.rand(2, 1, 32, 32, 32))
    assert out.strides == (stride, 2 * stride)
    assert out.feature_shapes == ((32 // stride,) * 3, (16 // stride,) * 3)
    anchors = method.anchors(out, preset, torch.device("cpu"))
    n0 = (32 // stride) ** 3 * 8
    assert out.cls_logits.shape == (2, n0 + n0 // 8, 6) and out.box_deltas.shape == (2, n0 + n0 // 8, 6)
    assert anchors.shape == (n0 + n0 // 8, 6)
    small, large = ssd_level_base_sizes(preset.anchor_base_vox)
    assert anchors[:n0, 3:].unique().tolist() == pytest.approx(sorted(small), rel=1e-6)
    assert anchors[n0:, 3:].unique().tolist() == pytest.approx(sorted(large), rel=1e-6)
    # level centres sit on the centres of their cells (anchor_grid's convention)
    assert torch.allclose((anchors[:n0, :3] - (stride - 1) / 2) % stride, torch.zeros(1))
    assert torch.allclose((anchors[n0:, :3] - (2 * stride - 1) / 2) % (2 * stride), torch.zeros(1))
    # stride 2 needs only blocks 1-3
    assert hasattr(net.encoder, "block4") == (stride == 4)


def test_ssd_level_base_sizes_split() -> None:
    assert ssd_level_base_sizes((28, 13, 20, 16)) == [(13.0, 16.0), (20.0, 28.0)]
    assert ssd_level_base_sizes((1, 2, 3)) == [(1.0, 2.0), (3.0,)]
    with pytest.raises(ValueError):
        ssd_level_base_sizes((5,))


def test_encoder_has_the_backbone_block_shapes() -> None:
    feats = VGGEncoder3d(width=3, depth=4)(torch.rand(1, 1, 32, 32, 32))
    assert [tuple(f.shape) for f in feats.values()] == [(1, 3, 32, 32, 32), (1, 6, 16, 16, 16), (1, 12, 8, 8, 8),
                                                         (1, 24, 4, 4, 4)]


@pytest.mark.parametrize("stride", [2, 4])
def test_faster_rcnn_shapes(stride: int) -> None:
    torch.manual_seed(0)
    net = FasterRCNN3d(width=2, stride=stride, roi_size=3, hidden=16)
    out = net(torch.rand(2, 1, 32, 32, 32))
    f = 32 // stride
    assert out.objectness.shape == (2, f ** 3 * 64, 2) and out.box_deltas.shape == (2, f ** 3 * 64, 6)
    assert out.features.shape[-3:] == (f, f, f)
    rois = torch.tensor([[10.0, 12.0, 14.0, 8.0, 6.0, 7.0], [20.0, 20.0, 20.0, 12.0, 12.0, 12.0]])
    logits, deltas = net.classify(out.features[1], rois)
    assert logits.shape == (2, 6) and deltas.shape == (2, 5, 6)


@pytest.mark.parametrize("stride", [2, 4])
def test_heatmap_net_is_full_resolution(stride: int) -> None:
    net = HeatmapNet(width=2, stride=stride)
    assert net(torch.rand(2, 1, 32, 24, 16)).shape == (2, 5, 32, 24, 16)
    assert len(net.decoder) == {2: 1, 4: 2}[stride]
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 1, 30, 32, 32))


# ---------------------------------------------------------------------------------------------
# RoI Align
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride,sampling", [(1, 1), (2, 2), (4, 3)])
def test_roi_align_of_a_linear_ramp_is_the_ramp_at_bin_centres(stride: int, sampling: int) -> None:
    """Trilinear interpolation reproduces a linear function exactly, and the mean of samples
    placed symmetrically in a bin is the value at the bin's centre: each pooled value is the
    ramp at that centre, in feature coordinates f = (v - (stride - 1) / 2) / stride."""
    shape = (16, 12, 10)
    i0, i1, i2 = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    feats = torch.stack([1.5 * i0 - 2.0 * i1 + 0.5 * i2 + 3.0, i2])  # (2, 16, 12, 10)
    # boxes (input voxels) whose samples all lie inside the map
    rois = torch.tensor([[6.0, 5.0, 5.0, 4.0, 3.0, 2.0], [5.3, 4.2, 3.9, 2.5, 3.5, 1.5]], dtype=torch.float64) * stride
    p = 3
    out = roi_align_3d(feats, rois, stride=stride, output_size=p, sampling_ratio=sampling)
    assert out.shape == (2, 2, p, p, p) and out.dtype == torch.float64
    j = torch.arange(p, dtype=torch.float64)
    for r in range(2):
        c, s = rois[r, :3], rois[r, 3:]
        centres_vox = [c[a] - s[a] / 2 + (j + 0.5) * s[a] / p for a in range(3)]  # (P,) per axis
        f0, f1, f2 = [(v - (stride - 1) / 2) / stride for v in centres_vox]
        want = 1.5 * f0[:, None, None] - 2.0 * f1[None, :, None] + 0.5 * f2[None, None, :] + 3.0
        torch.testing.assert_close(out[r, 0], want, rtol=0, atol=1e-9)
        torch.testing.assert_close(out[r, 1], f2[None, None, :].expand(p, p, p), rtol=0, atol=1e-9)


def test_roi_align_hand_example_and_gradient() -> None:
    """A 1-bin RoI covering voxels 1..3 of a stride-1 ramp f(i) = i along axis 2 pools to 2."""
    ramp = torch.arange(5.0).expand(1, 5, 5, 5).clone().requires_grad_(True)  # value = index along axis 2
    box = torch.tensor([[2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])  # cube [1, 3]^3
    out = roi_align_3d(ramp, box, stride=1, output_size=1, sampling_ratio=2)
    assert out.shape == (1, 1, 1, 1, 1) and float(out.detach()) == pytest.approx(2.0)
    out.sum().backward()
    assert ramp.grad is not None and float(ramp.grad.sum()) == pytest.approx(1.0)  # a mean of samples
    assert roi_align_3d(ramp.detach(), torch.zeros(0, 6), 1).shape == (0, 1, 4, 4, 4)


# ---------------------------------------------------------------------------------------------
# heatmaps
# ---------------------------------------------------------------------------------------------


def test_gaussian_target_peaks_at_the_landmark() -> None:
    lm = torch.tensor([[[10.0, 20.0, 5.0], [3.0, 4.0, 30.0]]])
    h = gaussian_heatmaps(lm, (24, 28, 32), sigma_vox=2.0, dtype=torch.float64)
    assert h.shape == (1, 2, 24, 28, 32)
    assert h[0, 0, 10, 20, 5] == 1.0 and h[0, 1, 3, 4, 30] == 1.0
    assert float(h[0, 0, 12, 20, 5]) == pytest.approx(np.exp(-4 / 8))
    assert heatmap_argmax(h).tolist() == [[[10, 20, 5], [3, 4, 30]]]


@pytest.mark.parametrize("point", [(10.0, 20.0, 5.0), (10.3, 19.6, 5.49), (7.5 - 1e-3, 3.21, 14.0)])
def test_argmax_and_parabola_recover_a_planted_peak(point: tuple[float, float, float]) -> None:
    p = torch.tensor([[point]], dtype=torch.float64)
    h = gaussian_heatmaps(p, (20, 24, 16), sigma_vox=1.7, dtype=torch.float64)[0, 0]
    idx = heatmap_argmax(h)
    assert idx.tolist() == [round(v) for v in point]
    torch.testing.assert_close(refine_peaks(h, idx[None])[0], p[0, 0], rtol=0, atol=1e-9)


def test_refinement_is_bounded_and_safe_on_flat_maps() -> None:
    flat = torch.zeros(8, 8, 8)
    assert refine_peaks(flat, torch.tensor([[3, 4, 5]])).tolist() == [[3.0, 4.0, 5.0]]
    border = gaussian_heatmaps(torch.tensor([[[0.0, 3.3, 7.0]]]), (8, 8, 8), 1.5, torch.float64)[0, 0]
    pos = refine_peaks(border, heatmap_argmax(border)[None])[0]
    assert pos.tolist() == pytest.approx([0.0, 3.3, 7.0])  # no neighbour beyond the border: no shift


def _refine_reference(h: np.ndarray, peak: tuple[int, int, int], eps: float = 1e-12) -> list[float]:
    """One peak's parabola vertex, written out axis by axis in NumPy float64."""
    out = [float(v) for v in peak]
    for ax in range(3):
        if not 0 < peak[ax] < h.shape[ax] - 1:
            continue
        lo, hi = list(peak), list(peak)
        lo[ax] -= 1
        hi[ax] += 1
        lm, l0, lp = (np.log(max(float(h[tuple(q)]), eps)) for q in (lo, peak, hi))
        if lm - 2 * l0 + lp < 0:
            out[ax] += float(np.clip((lm - lp) / (2 * (lm - 2 * l0 + lp)), -0.5, 0.5))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_refinement_matches_a_per_peak_reference_and_returns_cpu_float64(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    h = torch.rand(9, 7, 11, generator=g).to(dtype)
    idx = torch.stack([torch.randint(0, n, (40,), generator=g) for n in h.shape], dim=1)
    idx[:3] = torch.tensor([[0, 3, 5], [8, 6, 10], [4, 0, 0]])  # corners and faces
    got = refine_peaks(h, idx)
    assert got.dtype == torch.float64 and got.device.type == "cpu"
    want = [_refine_reference(h.double().numpy(), tuple(int(v) for v in p)) for p in idx]
    np.testing.assert_allclose(got.numpy(), np.array(want), rtol=0, atol=1e-12)
    assert refine_peaks(h, idx[:0]).shape == (0, 3)


def test_heatmap_peaks_and_candidates_find_planted_landmarks() -> None:
    lm = torch.tensor([[[8.0, 9.0, 10.0], [12.25, 16.0, 16.0], [8.0, 9.0, 22.0], [18.0, 16.0, 16.0],
                        [26.5, 16.0, 15.5]]])
    heat = gaussian_heatmaps(lm, (32, 32, 32), sigma_vox=1.5)
    heat[0, 0] += 0.6 * gaussian_heatmaps(torch.tensor([[[25.0, 25.0, 25.0]]]), (32, 32, 32), 1.5)[0, 0]
    pts, vals = heatmap_peaks(heat[0, 0], 5)
    assert vals[:2].tolist() == pytest.approx([1.0, 0.6], abs=1e-3)  # then zeros of the far background
    torch.testing.assert_close(pts[0], lm[0, 0].double(), rtol=0, atol=1e-4)
    torch.testing.assert_close(pts[1], torch.full((3,), 25.0, dtype=torch.float64), rtol=0, atol=1e-4)
    preset = TINY.replace(spacing_mm=2.6)
    cands = HeatmapMethod().candidates(torch.nn.Identity(), heat, 0, preset, CandidateSettings(16, 0.3, 4))
    sizes = box_size_vox(preset.spacing_mm)
    for k, (boxes, scores) in enumerate(cands):
        torch.testing.assert_close(boxes[0, :3], lm[0, k], rtol=0, atol=1e-4)
        assert boxes[0, 3:].tolist() == pytest.approx([sizes[k]] * 3)
        assert float(scores[0]) == float(heat[0, k].max())  # the heatmap at its arg-max voxel
    assert cands[0][0][1].tolist() == pytest.approx([25.0, 25.0, 25.0] + [sizes[0]] * 3, abs=1e-4)  # the decoy
    assert float(cands[0][1][1]) == pytest.approx(0.6, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# Faster R-CNN pieces
# ---------------------------------------------------------------------------------------------


def test_clip_and_propose() -> None:
    boxes = torch.tensor([[-3.0, 5.0, 5.0, 4.0, 4.0, 4.0], [31.0, 31.0, 31.0, 8.0, 8.0, 8.0], [50.0, 5, 5, 2, 2, 2]])
    c = clip_boxes(boxes, (32, 32, 32))
    assert c[1].tolist() == pytest.approx([29.25, 29.25, 29.25, 4.5, 4.5, 4.5])
    assert ((c[:, :3] >= -0.5) & (c[:, :3] <= 31.5)).all()
    # outside the volume along axis 0: the minimum size there, the other axes unchanged
    assert c[0, 3:].tolist() == [1.0, 4.0, 4.0] and c[2, 3:].tolist() == [1.0, 2.0, 2.0]
    anchors = torch.tensor([[8.0, 8, 8, 6, 6, 6], [8.5, 8, 8, 6, 6, 6], [20.0, 20, 20, 6, 6, 6]])
    logits = torch.tensor([[0.0, 3.0], [0.0, 2.0], [0.0, 1.0]])
    props, scores = propose(logits, torch.zeros(3, 6), anchors, BoxCoder(), (32, 32, 32), 10, 0.7, 5)
    assert props.tolist() == anchors[[0, 2]].tolist()  # the near-duplicate is suppressed
    assert scores[0] > scores[1]


def test_top_boxes_after_nms_orders_and_suppresses() -> None:
    boxes = torch.tensor([[5.0, 5, 5, 4, 4, 4], [5.2, 5, 5, 4, 4, 4], [15.0, 5, 5, 4, 4, 4]])
    b, s = top_boxes_after_nms(boxes, torch.tensor([0.5, 0.9, 0.1]), 10, 0.3, 2)
    assert s.tolist() == pytest.approx([0.9, 0.1]) and b[:, 0].tolist() == pytest.approx([5.2, 15.0])
    assert float(box_iou(b[:1], b[1:])[0, 0]) == 0.0


# ---------------------------------------------------------------------------------------------
# registry, training, saving, detection
# ---------------------------------------------------------------------------------------------


def test_registry() -> None:
    assert METHOD_NAMES == ("rpn", "ssd", "faster-rcnn", "heatmap")
    for name in METHOD_NAMES:
        m = get_method(name)
        assert m.name == name and get_method(name, m.options()).options() == m.options()
        json.dumps(m.options())
    assert get_method("heatmap", {"sigma_mm": 3.0}).options() == {"sigma_mm": 3.0}
    with pytest.raises(ValueError, match="unknown method"):
        get_method("yolo")
    with pytest.raises(ValueError, match="no option"):
        get_method("ssd", {"sigma_mm": 1.0})
    with pytest.raises(ValueError, match="should be like"):
        get_method("faster-rcnn", {"hidden": "256"})


@pytest.mark.parametrize("method", BASELINES)
def test_each_baseline_learns(trained: dict[str, Path], method: str) -> None:
    """30 steps on two training volumes: the loss falls well below where it started."""
    rows = [line.split(",") for line in (trained[method] / "log.csv").read_text().splitlines()[1:]]
    loss = np.array([float(r[2]) for r in rows])
    assert len(loss) == 30 and np.isfinite(loss).all()
    assert loss[-5:].mean() < 0.7 * loss[:5].mean(), loss


@pytest.mark.parametrize("method", BASELINES)
def test_model_file_round_trip_and_detection(trained: dict[str, Path], tiny_data: Path, method: str) -> None:
    run = trained[method]
    loaded = load_model(run / "model.pt")
    assert loaded.meta["method"] == method and loaded.method.name == method
    assert json.loads((run / "train.json").read_text())["method"] == method

    det = Detector.from_file(run / "model.pt", device="cpu")
    case = LandmarkDataset(tiny_data, split="test")[0]
    d = det.detect(case.volume, case.affine)
    assert isinstance(d, Detection)
    assert d.boxes_vox.shape == (5, 6) and d.landmarks_world.shape == (5, 3) and d.landmarks_vox.shape == (5, 3)
    assert d.scores.shape == (5,) and len(d.candidates) == 5 and d.log_penalty is not None
    assert all(1 <= len(c) <= det.keep_candidates for c in d.candidates)
    assert np.isfinite(d.landmarks_world).all() and set(d.timing_ms) == {"network", "candidates", "prior"}
    np.testing.assert_allclose(d.landmarks_world, [d.candidates[k][d.choice[k]].world_mm for k in range(5)])
    if method == "heatmap":  # a landmark-sized box on each peak
        np.testing.assert_allclose(d.boxes_vox[:, 3:], np.repeat(np.array(box_size_vox(5.2))[:, None], 3, 1),
                                   rtol=1e-6)
    no_prior = det.detect(case.volume, case.affine, use_prior=False)
    assert (no_prior.choice == 0).all() and no_prior.log_penalty is None
    ev = evaluate(det, tiny_data, split="test", use_prior=False, progress=False)
    assert ev.metrics["n_cases"] == 2 and np.isfinite(ev.metrics["d_mean_mm"])


def test_a_baseline_resumes_exactly(tiny_data: Path, tmp_path: Path) -> None:
    """Faster R-CNN (two samplings per volume, two stages) interrupted after its step-3
    checkpoint and resumed equals an uninterrupted run, weights and log."""

    class Interrupted(Exception):
        pass

    def stop_at_step_4(step: int, row: dict) -> None:
        if step == 4:
            raise Interrupted

    preset = TINY.replace(rotation_deg=25.0, flip=True, hard_negative_start=0.5)
    kw = dict(steps=6, seed=3, checkpoint_every=3, log_every=1, progress=False, device="cpu",
              method="faster-rcnn", method_options={"hidden": 32})
    train(tiny_data, tmp_path / "full", preset, **kw)
    with pytest.raises(Interrupted):
        train(tiny_data, tmp_path / "part", preset, callback=stop_at_step_4, **kw)
    with pytest.raises(DataError, match="other settings"):
        train(tiny_data, tmp_path / "part", preset, resume=True, **{**kw, "method": "ssd", "method_options": None})
    with pytest.raises(DataError, match="other settings"):
        train(tiny_data, tmp_path / "part", preset, resume=True, **{**kw, "method_options": {"hidden": 16}})
    train(tiny_data, tmp_path / "part", preset, resume=True, **kw)
    a = load_model(tmp_path / "full" / "model.pt").model.state_dict()
    b = load_model(tmp_path / "part" / "model.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    def without_timing(path: Path) -> list[list[str]]:
        return [r.split(",")[:-1] for r in path.read_text().splitlines()]

    assert without_timing(tmp_path / "part" / "log.csv") == without_timing(tmp_path / "full" / "log.csv")


def test_bad_method_settings_in_a_model_file(tmp_path: Path) -> None:
    net = SSD3d(width=2, stride=4)
    prior = GraphPrior.fit(np.random.default_rng(0).normal(size=(8, 5, 3)) * 10 + np.arange(15).reshape(5, 3) * 10)
    save_model(tmp_path / "ok.pt", net, TINY.replace(width=2), prior, meta={"method": "ssd", "method_options": {}})
    assert isinstance(load_model(tmp_path / "ok.pt").model, SSD3d)
    save_model(tmp_path / "unknown.pt", net, TINY.replace(width=2), prior, meta={"method": "yolo"})
    with pytest.raises(ModelError, match="unknown method"):
        load_model(tmp_path / "unknown.pt")
    save_model(tmp_path / "badopt.pt", net, TINY.replace(width=2), prior,
               meta={"method": "heatmap", "method_options": {"sigma_mm": "wide"}})
    with pytest.raises(ModelError, match="sigma_mm"):
        load_model(tmp_path / "badopt.pt")
    save_model(tmp_path / "mismatch.pt", net, TINY.replace(width=2), prior, meta={"method": "heatmap"})
    with pytest.raises(ModelError, match="do not fit a width-2 heatmap regression"):
        load_model(tmp_path / "mismatch.pt")
    save_model(tmp_path / "old.pt", net, TINY.replace(width=2), prior, meta={})  # no method: an IG-RPN file
    with pytest.raises(ModelError, match="IG-RPN"):
        load_model(tmp_path / "old.pt")
    with pytest.raises(ValueError, match="unknown method"):
        train(tmp_path, tmp_path / "run", TINY, steps=1, method="yolo", progress=False)


def test_cli_train_passes_the_method(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import rpn_lib.train as train_module
    from rpn_lib.cli import command_parsers, main

    choices = next(a.choices for a in command_parsers()["train"]._actions if a.dest == "method")
    assert tuple(choices) == METHOD_NAMES
    seen = {}

    def fake_train(*args, **kw):
        seen.update(kw)
        return train_module.TrainResult(tmp_path, 1, 0.0, 0.0)

    monkeypatch.setattr(train_module, "train", fake_train)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--method", "faster-rcnn"]) == 0
    assert seen["method"] == "faster-rcnn"
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 0
    assert seen["method"] == "rpn" and seen["preset"].anchor_layout == "all"
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--anchor-layout", "cubes"]) == 0
    assert seen["preset"].anchor_layout == "cubes" and seen["preset"].num_anchors == 4
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--method", "yolo"]) != 0


def test_faster_rcnn_options_are_validated() -> None:
    with pytest.raises(ValueError, match="roi_size=0"):
        get_method("faster-rcnn", {"roi_size": 0})
    with pytest.raises(ValueError, match="roi_pos_fraction=1.5"):
        get_method("faster-rcnn", {"roi_pos_fraction": 1.5})
    with pytest.raises(ValueError, match="sigma_mm"):
        get_method("heatmap", {"sigma_mm": -1.0})
