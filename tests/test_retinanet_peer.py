"""The MONAI RetinaNet peer: box conventions against MONAI, forward, training, resume, scoring.

Everything runs on 32^3 volumes at one thread; the MONAI tests skip when MONAI (the
``[peers]`` extra) is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rpn_lib.data.dataset import LandmarkDataset, write_synthetic_dataset
from rpn_lib.detect import Detector
from rpn_lib.errors import ModelError, RpnLibError
from rpn_lib.evaluate import evaluate
from rpn_lib.presets import Preset

TINY = Preset(name="tiny", spacing_mm=5.2, shape_vox=(32, 32, 32), width=8, steps=40, batch_size=2, lr=2e-3)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small and bitwise reproducible (resume test)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(out, n=6, n_test=2, seed=1, preset=TINY, difficulty="easy", progress=False)
    return out


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("monai")
    from rpn_lib.baselines.retinanet_peer import train_retinanet

    run = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    res = train_retinanet(tiny_data, run, TINY.replace(rotation_deg=0.0, flip=False), steps=40, seed=0, log_every=5,
                          progress=False, device="cpu")
    return run, res


def test_importing_the_library_imports_no_monai() -> None:
    code = ("import sys, rpn_lib, rpn_lib.cli, rpn_lib.replicate, rpn_lib.baselines.retinanet_peer; "
            "sys.exit('monai' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], env={"OMP_NUM_THREADS": "1"}).returncode == 0


def test_missing_monai_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from rpn_lib.baselines import retinanet_peer

    monkeypatch.setitem(sys.modules, "monai", None)  # makes `import monai` fail
    with pytest.raises(RpnLibError, match=r'pip install -e "\.\[peers\]"'):
        retinanet_peer.build_retinanet(TINY)
    with pytest.raises(ImportError):  # for code that treats the peer as optional
        retinanet_peer.train_retinanet("data", "out", TINY)


def test_box_conversion_matches_monai_box_modes() -> None:
    pytest.importorskip("monai")
    from monai.data.box_utils import convert_box_mode

    from rpn_lib.baselines.retinanet_peer import from_monai_boxes, to_monai_boxes

    g = torch.Generator().manual_seed(0)
    boxes = torch.cat([torch.rand(50, 3, generator=g, dtype=torch.float64) * 60,
                       torch.rand(50, 3, generator=g, dtype=torch.float64) * 20 + 1], dim=1)
    monai_boxes = to_monai_boxes(boxes)
    # MONAI's centre-size mode "cccwhd" of the same boxes, half a voxel further along each axis
    shifted = boxes + torch.tensor([0.5, 0.5, 0.5, 0, 0, 0], dtype=torch.float64)
    tol = {"atol": 1e-5, "rtol": 1e-6}  # MONAI converts in float32
    torch.testing.assert_close(monai_boxes, convert_box_mode(shifted, src_mode="cccwhd", dst_mode="xyzxyz"), **tol)
    torch.testing.assert_close(convert_box_mode(monai_boxes, src_mode="xyzxyz", dst_mode="cccwhd"), shifted, **tol)
    torch.testing.assert_close(from_monai_boxes(monai_boxes), boxes)


def test_monai_box_covers_the_same_voxels() -> None:
    """Axis order and the half-voxel offset, checked by MONAI's own box rasteriser."""
    pytest.importorskip("monai")
    from monai.apps.detection.transforms.box_ops import convert_box_to_mask

    from rpn_lib.baselines.retinanet_peer import to_monai_boxes

    box = torch.tensor([[5.0, 10.0, 20.0, 5.0, 7.0, 3.0]], dtype=torch.float64)  # odd sizes: whole voxels
    mask = np.asarray(convert_box_to_mask(to_monai_boxes(box), np.array([1]), (16, 24, 32), bg_label=-1))[0]
    inside = np.nonzero(mask >= 0)
    assert [(int(a.min()), int(a.max())) for a in inside] == [(3, 7), (7, 13), (19, 21)]


def test_forward_on_a_tiny_volume() -> None:
    pytest.importorskip("monai")
    from rpn_lib.baselines.retinanet_peer import RetinaNetConfig, build_retinanet

    torch.manual_seed(0)
    det = build_retinanet(TINY).eval()
    assert RetinaNetConfig().size_divisible == 16
    with torch.no_grad():
        out = det.network(torch.rand(1, 1, 32, 32, 32))
    shapes = [tuple(t.shape) for t in out[det.cls_key]]
    assert shapes == [(1, 4 * 5, 8, 8, 8), (1, 4 * 5, 4, 4, 4), (1, 4 * 5, 2, 2, 2)]  # strides 4, 8, 16
    assert [tuple(t.shape) for t in out[det.box_reg_key]] == [(1, 4 * 6, *s[2:]) for s in shapes]
    assert all(torch.isfinite(t).all() for t in out[det.cls_key])


@pytest.mark.slow
def test_training_lowers_the_loss(trained) -> None:
    run, res = trained
    losses = [r["loss"] for r in res.log]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.6 * np.mean(losses[:2]), losses
    for name in ("model.pt", "checkpoint.pt", "log.csv", "train.json"):
        assert (run / name).is_file()
    assert (run / "log.csv").read_text().splitlines()[0] == "step,lr,loss,cls,box,sec_per_step"


def test_resume_continues_exactly(tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("monai")
    from rpn_lib.baselines.retinanet_peer import _load, train_retinanet, CHECKPOINT_FORMAT

    class Interrupted(Exception):
        pass

    def stop_at_step_4(step: int, row: dict) -> None:
        if step == 4:
            raise Interrupted

    kw = dict(steps=6, seed=3, checkpoint_every=3, log_every=1, progress=False, device="cpu")
    train_retinanet(tiny_data, tmp_path / "full", TINY, **kw)
    with pytest.raises(Interrupted):
        train_retinanet(tiny_data, tmp_path / "part", TINY, callback=stop_at_step_4, **kw)
    assert _load(tmp_path / "part" / "checkpoint.pt", CHECKPOINT_FORMAT)["step"] == 3
    train_retinanet(tiny_data, tmp_path / "part", TINY, resume=True, **kw)
    a = _load(tmp_path / "full" / "model.pt", "rpn-lib-retinanet-model/1")["state_dict"]
    b = _load(tmp_path / "part" / "model.pt", "rpn-lib-retinanet-model/1")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def without_timing(path: Path) -> list[list[str]]:
        return [r.split(",")[:-1] for r in path.read_text().splitlines()]

    assert without_timing(tmp_path / "part" / "log.csv") == without_timing(tmp_path / "full" / "log.csv")


@pytest.mark.slow
def test_peer_is_scored_by_the_library_metrics(trained, tiny_data: Path) -> None:
    from rpn_lib.baselines.retinanet_peer import RetinaNetPeerDetector, load_retinanet

    run, _ = trained
    det = load_retinanet(run / "model.pt", device="cpu")
    assert isinstance(det, Detector) and isinstance(det, RetinaNetPeerDetector)
    cases = LandmarkDataset(tiny_data, split="test")
    for use_prior in (True, False):
        ev = evaluate(det, cases, use_prior=use_prior, progress=False)
        m = ev.metrics
        assert m["n_cases"] == 2 and np.isfinite(m["d_mean_mm"]) and 0 <= m["dr50"] <= 1 and m["use_prior"] is use_prior
        for d in ev.detections:
            assert d.boxes_vox.shape == (5, 6) and d.landmarks_world.shape == (5, 3) and d.landmarks_vox.shape == (5, 3)
            assert all(1 <= len(c) <= det.keep_candidates for c in d.candidates)
            assert np.all((d.scores > 0) & (d.scores < 1))
            for k, cands in enumerate(d.candidates):
                assert [c.score for c in cands] == sorted((c.score for c in cands), reverse=True)
                assert np.allclose(d.boxes_vox[k], cands[d.choice[k]].box_vox)
            if use_prior:
                assert d.log_penalty is not None and np.all(d.choice < TINY.top_k)
            else:
                assert d.log_penalty is None and not d.choice.any()  # the top-scoring box of each class


def test_loading_rejects_other_files(trained, tmp_path: Path) -> None:
    from rpn_lib.baselines.retinanet_peer import load_retinanet

    run, _ = trained
    with pytest.raises(ModelError, match="not an rpn-lib-retinanet-model"):
        load_retinanet(run / "checkpoint.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a readable"):
        load_retinanet(bad)


@pytest.mark.slow
def test_the_replication_runner_trains_and_scores_the_peer(tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("monai")
    from rpn_lib.replicate import run_replication

    tables = run_replication(tiny_data, tmp_path, methods=["retinanet-monai"], seeds=[0], steps=6, preset=TINY,
                             device="cpu", precision="fp32", progress=False, echo=lambda s: None)
    run = tmp_path / "retinanet-monai" / "seed0"
    info = json.loads((run / "train.json").read_text())
    assert info["method"] == "retinanet-monai" and info["steps"] == 6
    for name in ("metrics.json", "metrics_no_prior.json"):
        m = json.loads((run / name).read_text())
        assert m["steps"] == 6 and m["seed"] == 0 and len(m["per_case"]) == 2 * 5
    row = next(r for r in tables["table1"]["rows"] if r["label"] == "MONAI RetinaNet (peer)")
    assert row["n_seeds"] == 1 and np.isfinite(row["mean"]["d_mean_mm"])
    assert tables["table2"]["prior_changes"]["retinanet-monai"]["total"]["landmarks"] == 10
