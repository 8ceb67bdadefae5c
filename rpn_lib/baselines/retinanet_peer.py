"""MONAI's 3D RetinaNet as an external peer: what a reader might pick instead of the IG-RPN.

The peer is trained through MONAI's own detection API (``RetinaNetDetector`` with its
ATSS matcher, its hard-negative sampler and its default losses: sigmoid binary cross-entropy
and smooth-L1 on the box deltas) on the same data, augmentation, batch size, number of steps,
optimiser (AdamW) and learning-rate schedule (:func:`rpn_lib.train.learning_rate`) as the
IG-RPN, and scored by the same metrics code (:func:`rpn_lib.evaluate.evaluate`) through
:class:`RetinaNetPeerDetector`, which produces the library's :class:`~rpn_lib.detect.Detection`.

MONAI is optional (the ``[peers]`` extra): nothing here imports it at module import time, and
every entry point raises an :class:`~rpn_lib.errors.RpnLibError` naming
``pip install -e ".[peers]"`` when it is missing.

Choices, and why
----------------
**Feature extractor.** MONAI's ``resnet_fpn_feature_extractor`` wraps its ResNet in
``BackboneWithFPN``, which takes the intermediate layers with torchvision's
``IntermediateLayerGetter``; the only torchvision release installable here needs torch >= 2.14
(a 5.5 GB CUDA build beside the pinned torch 2.13). Instead of a second environment,
:class:`ResNetFPN` does that one job itself (run the ResNet's stem and layers, keep the
requested ones) and feeds them to MONAI's own ``FeaturePyramidNetwork`` block with its
``LastLevelMaxPool``: the same network ``resnet_fpn_feature_extractor`` would build, from MONAI
blocks only, in the pinned environment the rest of the project uses. MONAI's training step
also touches torchvision once, in an ``isinstance`` test on its matcher even when the ATSS
matcher is set; a one-method subclass (:func:`_atss_detector_class`) matches anchors through
the ATSS matcher only, as MONAI's own error message for other matchers suggests.

**Network size.** MONAI's LUNA16 recipe (model-zoo ``lung_nodule_ct_detection``) uses a
ResNet-50 trunk with ``returned_layers=[1, 2]`` (feature levels at strides 4 and 8 plus a
max-pooled level at 16). Here the trunk is a ResNet-18 layout (basic blocks, two per layer)
with widths ``2w, 4w, 8w, 16w`` for the preset's ``width`` ``w``, the same three levels, and
an FPN of ``4w`` channels: at ``cpu-small`` (64^3 voxels, ``w = 16``) it needs 6.0 GMAC per
volume (convolutions counted by hooks), the IG-RPN of the same preset 6.3 GMAC at stride 4 and
7.7 at stride 2, so the comparison is at a similar compute budget rather than against a network
ten times larger. It has 1.7 M parameters (the IG-RPN 1.3-1.4 M).

**Anchors.** Cubes with the paper's base sizes (:attr:`~rpn_lib.presets.Preset.anchor_base_vox`: 13, 16, 20, 28
voxels at 1.3 mm) on the finest level, doubled and quadrupled on the next two
(``AnchorGeneratorWithAnchorShape``, ``feature_map_scales=(1, 2, 4)``): 4 anchors per cell. The
landmark boxes are cubes, so MONAI's elongated LUNA16 shapes would not help.

**Matcher, sampler, losses.** MONAI's LUNA16 settings: ATSS with 4 candidates per level and
no centre-in-box requirement (recommended by MONAI for small objects), hard-negative sampler
with 64 anchors per image, 30 % positives, a pool of 20 x the negatives needed and at least 16
negatives; MONAI's default losses (``BCEWithLogitsLoss`` and ``SmoothL1Loss(beta=1/9)``),
summed with equal weights as in MONAI's tutorial. IoU-balance does not apply (it is the
IG-RPN's loss); the graph prior can be applied at inference to the peer's top-2 per class.

**Candidates at inference.** MONAI's ``BoxSelector`` ranks all (anchor, class) scores together
and may leave a class without any box; the metrics need every landmark. The peer's candidates
are therefore chosen by the IG-RPN's rule (:func:`rpn_lib.candidates.select_candidates`): per
class, the ``pre_nms_top_n`` anchors of highest (sigmoid) probability, decoded with MONAI's box
coder, class-wise NMS at the preset's ``nms_iou``, best first (:class:`PeerInference`). The rest
of inference is the library's :class:`~rpn_lib.detect.Detector` (resampling, graph prior on the
top-2 per class when asked, :class:`~rpn_lib.detect.Detection`), so the peer is timed and scored
exactly as the other detectors.

**Box convention.** rpn_lib boxes are ``(cz, cy, cx, d, h, w)`` in voxels of the array axes
0, 1, 2, with voxel centres at integer coordinates. MONAI's detection boxes are "xyzxyz"
(``StandardMode``) on the image tensor's spatial axes in the same order (its "x" is array axis
0), with a voxel ``i`` covering ``[i, i + 1]`` (its anchors sit at ``stride * j + stride // 2``,
the centre of cell ``j``). So :func:`to_monai_boxes` converts to corners and shifts by half a
voxel, and :func:`from_monai_boxes` undoes both; the tests check this against MONAI's
``convert_box_mode`` and its box-to-mask rasteriser.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rpn_lib.augment import augmented_batch
from rpn_lib.boxes import corners_to_cs, cs_to_corners, nms
from rpn_lib.checkpoint import _load, _save  # the library's safe (weights-only, atomic) .pt I/O
from rpn_lib.data.dataset import LandmarkDataset
from rpn_lib.detect import Detector
from rpn_lib.device import resolve_device
from rpn_lib.errors import DataError, ModelError, RpnLibError
from rpn_lib.fileio import atomic_write, atomic_write_json
from rpn_lib.inference import prepare_for_inference
from rpn_lib.landmarks import LANDMARK_NAMES, NUM_LANDMARKS
from rpn_lib.precision import resolve_precision, warn_if_emulated
from rpn_lib.presets import Preset, get_preset
from rpn_lib.methods import CandidateSettings, ClassCandidates
from rpn_lib.prior import GraphPrior, check_prior_rule
from rpn_lib.train import (
    RunningLog,
    TrainingSet,
    TrainResult,
    check_run_folder,
    clear_run_files,
    gt_boxes_from_landmarks,
    learning_rate,
    load_training_set,
)

__all__ = [
    "METHOD", "MissingPeerError", "RetinaNetConfig", "require_monai", "to_monai_boxes", "from_monai_boxes", "ResNetFPN",
    "build_retinanet", "monai_targets", "train_retinanet", "PeerOutput", "PeerInference", "RetinaNetPeerDetector",
    "load_retinanet",
]

METHOD = "retinanet-monai"
"""Name of the peer in run folders, tables and ``train.json``."""

PEERS_INSTALL = 'pip install -e ".[peers]"'
MODEL_FORMAT = "rpn-lib-retinanet-model/1"
CHECKPOINT_FORMAT = "rpn-lib-retinanet-checkpoint/1"
MONAI_VOXEL_OFFSET = 0.5
"""MONAI image coordinate of a voxel centre minus rpn_lib's (see the module docstring)."""

LOG_FIELDS = ("step", "lr", "loss", "cls", "box", "sec_per_step")


class MissingPeerError(RpnLibError, ImportError):
    """MONAI (the ``[peers]`` extra) is not installed: an :class:`~rpn_lib.errors.RpnLibError` for the command
    line, and an ``ImportError`` for code that treats the peer as optional."""


def require_monai() -> SimpleNamespace:
    """Import the MONAI parts the peer uses, or raise :class:`MissingPeerError` with the install line."""
    try:
        import monai
        from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
        from monai.apps.detection.networks.retinanet_network import RetinaNet
        from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
        from monai.apps.detection.utils.detector_utils import preprocess_images
        from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
        from monai.networks.nets import resnet
    except ImportError as e:
        raise MissingPeerError(f"the MONAI RetinaNet peer needs MONAI ({e}); install it with: "
                               f"{PEERS_INSTALL}") from None
    return SimpleNamespace(
        version=monai.__version__, RetinaNetDetector=_atss_detector_class(RetinaNetDetector), RetinaNet=RetinaNet,
        AnchorGeneratorWithAnchorShape=AnchorGeneratorWithAnchorShape, preprocess_images=preprocess_images,
        FeaturePyramidNetwork=FeaturePyramidNetwork, LastLevelMaxPool=LastLevelMaxPool, resnet=resnet,
    )


@functools.cache
def _atss_detector_class(base: type) -> type:
    """MONAI's ``RetinaNetDetector`` with anchor matching that needs no torchvision.

    MONAI 1.6.1's ``compute_anchor_matched_idxs`` first asks ``isinstance(matcher, Matcher)``
    where ``Matcher`` is torchvision's, an optional import that raises when torchvision is
    absent, even with the ATSS matcher set. MONAI's error message for other matchers says to
    override this method; the override calls the ATSS matcher exactly as MONAI's ATSS branch
    does (per image: gt boxes, anchors, anchor locations per level, anchors per location).
    """

    class ATSSRetinaNetDetector(base):  # type: ignore[misc, valid-type]
        def compute_anchor_matched_idxs(self, anchors: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
                                        num_anchor_locs_per_level: Sequence[int]) -> list[torch.Tensor]:
            matched = []
            for anchors_i, targets_i in zip(anchors, targets):
                boxes = targets_i[self.target_box_key].to(anchors_i.device)
                _, idx = self.proposal_matcher(boxes, anchors_i, num_anchor_locs_per_level, self.num_anchors_per_loc)
                matched.append(idx)
            return matched

    return ATSSRetinaNetDetector


# ------------------------------------------------------------------------------------------
# box conventions
# ------------------------------------------------------------------------------------------


def to_monai_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """rpn_lib boxes ``(N, 6)`` as ``cz, cy, cx, d, h, w`` (voxels, centres at integers) ->
    MONAI ``StandardMode`` "xyzxyz" ``(N, 6)`` in MONAI image coordinates (voxel ``i`` covers
    ``[i, i + 1]``; MONAI's x, y, z are array axes 0, 1, 2)."""
    return cs_to_corners(boxes) + MONAI_VOXEL_OFFSET


def from_monai_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_monai_boxes`: MONAI "xyzxyz" ``(N, 6)`` -> ``(N, 6)`` as
    ``cz, cy, cx, d, h, w`` in rpn_lib voxels."""
    return corners_to_cs(boxes - MONAI_VOXEL_OFFSET)


# ------------------------------------------------------------------------------------------
# network
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetinaNetConfig:
    """Every setting of the peer that is not in the :class:`~rpn_lib.presets.Preset` (see the module docstring).

    Attributes:
        layers: basic blocks per ResNet layer (ResNet-18 layout).
        width_factors: ResNet layer widths as multiples of the preset's ``width``.
        conv1_size: kernel of the ResNet's first convolution.
        conv1_stride: stride of the first convolution (the max-pool halves again).
        returned_layers: ResNet layers fed to the FPN (1-based, MONAI's convention).
        fpn_factor: FPN channels as a multiple of ``width`` (a multiple of 8: GroupNorm(8)).
        feature_map_scales: anchor scale of each FPN level (the max-pooled level included).
        atss_candidates: ATSS candidates per level and ground truth.
        center_in_gt: ATSS requires anchor centres inside the ground-truth box.
        sampler_batch: anchors sampled per image by the hard-negative sampler.
        sampler_pos_fraction: share of positives in that sample.
        sampler_pool_size: hard negatives are drawn from this many times the number needed.
        sampler_min_neg: at least this many negatives per image.
    """

    layers: tuple[int, ...] = (2, 2, 2, 2)
    width_factors: tuple[int, ...] = (2, 4, 8, 16)
    conv1_size: int = 7
    conv1_stride: int = 2
    returned_layers: tuple[int, ...] = (1, 2)
    fpn_factor: int = 4
    feature_map_scales: tuple[float, ...] = (1, 2, 4)
    atss_candidates: int = 4
    center_in_gt: bool = False
    sampler_batch: int = 64
    sampler_pos_fraction: float = 0.3
    sampler_pool_size: float = 20
    sampler_min_neg: int = 16

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RetinaNetConfig":
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @property
    def size_divisible(self) -> int:
        """Input sides must be multiples of this (the coarsest level's stride)."""
        return self.conv1_stride * 2 * 2 ** max(self.returned_layers)


class ResNetFPN(nn.Module):
    """A MONAI ResNet trunk with MONAI's FPN block on the layers in ``returned_layers``.

    Does what MONAI's ``BackboneWithFPN`` does without torchvision's ``IntermediateLayerGetter``:
    it keeps the ResNet's stem (``conv1``, ``bn1``, ``act``, ``maxpool``) and its layers up to
    the last returned one, and returns the FPN's maps, finest first.

    Args:
        resnet: a ``monai.networks.nets.ResNet`` (3D).
        returned_layers: 1-based layers to feed the FPN.
        in_channels_list: output channels of those layers.
        out_channels: FPN channels (the same on every level).
        fpn_cls, extra_block: MONAI's ``FeaturePyramidNetwork`` class and an extra block
            (``LastLevelMaxPool``) or None.

    Input ``(B, 1, D, H, W)``; output an ordered dict of ``(B, out_channels, D/s, H/s, W/s)``
    maps, one per returned layer (plus the extra block's).
    """

    def __init__(self, resnet: nn.Module, returned_layers: Sequence[int], in_channels_list: Sequence[int],
                 out_channels: int, fpn_cls: type[nn.Module], extra_block: nn.Module | None) -> None:
        super().__init__()
        stem = [resnet.conv1, resnet.bn1, resnet.act]
        if not getattr(resnet, "no_max_pool", False):
            stem.append(resnet.maxpool)
        self.stem = nn.Sequential(*stem)
        last = max(returned_layers)
        self.layers = nn.ModuleDict({f"layer{k}": getattr(resnet, f"layer{k}") for k in range(1, last + 1)})
        self.returned = {f"layer{k}": str(i) for i, k in enumerate(returned_layers)}
        self.fpn = fpn_cls(spatial_dims=3, in_channels_list=list(in_channels_list), out_channels=out_channels,
                           extra_blocks=extra_block)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        feats: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, layer in self.layers.items():
            x = layer(x)
            if name in self.returned:
                feats[self.returned[name]] = x
        return self.fpn(feats)


def build_retinanet(preset: str | Preset = "cpu-small", config: RetinaNetConfig | None = None) -> Any:
    """MONAI's ``RetinaNetDetector`` for ``preset``, ready to train (matcher and sampler set).

    ``detector.network`` maps ``(B, 1, D, H, W)`` images (sides multiples of
    ``config.size_divisible``) to MONAI's head outputs (per level, class logits
    ``(B, A * 5, ...)`` and box deltas ``(B, A * 6, ...)``); in ``eval()`` mode ``detector(x)``
    runs MONAI's own post-processing too. Seed ``torch`` before calling for reproducible weights.
    """
    m = require_monai()
    preset = get_preset(preset)
    cfg = config or RetinaNetConfig()
    w = preset.width
    inplanes = [f * w for f in cfg.width_factors]
    resnet = m.resnet.ResNet(block="basic", layers=list(cfg.layers), block_inplanes=inplanes, spatial_dims=3,
                             n_input_channels=1, conv1_t_size=cfg.conv1_size, conv1_t_stride=cfg.conv1_stride,
                             feed_forward=False)
    features = ResNetFPN(resnet, cfg.returned_layers, [inplanes[k - 1] for k in cfg.returned_layers],
                         cfg.fpn_factor * w, m.FeaturePyramidNetwork, m.LastLevelMaxPool(3))
    shapes = [(s, s, s) for s in preset.anchor_base_vox]
    anchors = m.AnchorGeneratorWithAnchorShape(feature_map_scales=list(cfg.feature_map_scales),
                                               base_anchor_shapes=shapes)
    network = m.RetinaNet(spatial_dims=3, num_classes=NUM_LANDMARKS, num_anchors=len(shapes),
                          feature_extractor=features, size_divisible=cfg.size_divisible)
    detector = m.RetinaNetDetector(network, anchors)
    detector.set_atss_matcher(num_candidates=cfg.atss_candidates, center_in_gt=cfg.center_in_gt)
    detector.set_hard_negative_sampler(batch_size_per_image=cfg.sampler_batch,
                                       positive_fraction=cfg.sampler_pos_fraction,
                                       pool_size=cfg.sampler_pool_size, min_neg=cfg.sampler_min_neg)
    return detector


def monai_targets(landmarks_vox: torch.Tensor, spacing_mm: float) -> list[dict[str, torch.Tensor]]:
    """``(B, 5, 3)`` landmark voxels -> MONAI training targets: per image ``boxes`` ``(5, 6)``
    "xyzxyz" (:func:`to_monai_boxes` of the Sec. 2.2 landmark boxes) and ``labels`` ``(5,)``
    0..4 in ``LANDMARK_NAMES`` order."""
    labels = torch.arange(NUM_LANDMARKS, device=landmarks_vox.device)
    return [{"boxes": to_monai_boxes(gt_boxes_from_landmarks(lm.float(), spacing_mm)), "labels": labels}
            for lm in landmarks_vox]


# ------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------


def _save_model(path: Path, detector: Any, preset: Preset, cfg: RetinaNetConfig, prior: GraphPrior,
                meta: dict[str, Any]) -> None:
    _save({"format": MODEL_FORMAT, "state_dict": detector.network.state_dict(),
           "preset_json": json.dumps(preset.to_dict()), "config_json": json.dumps(cfg.to_dict()),
           "prior_json": json.dumps(prior.to_dict()), "label_names": list(LANDMARK_NAMES),
           "meta_json": json.dumps(meta)}, path)


def _write_log(path: Path, rows: Sequence[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (int(r[k]) if k == "step" else f"{r[k]:.6g}") for k in LOG_FIELDS})
    atomic_write(path, buf.getvalue())


def _read_log(path: Path, upto_step: int) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return [r for r in rows if r["step"] <= upto_step]


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------


def train_retinanet(
    data: str | Path | LandmarkDataset,
    out: str | Path,
    preset: str | Preset = "cpu-small",
    steps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    checkpoint_every: int = 100,
    log_every: int = 10,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    progress: bool = True,
    max_cases: int | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    config: RetinaNetConfig | None = None,
    overwrite: bool = False,
    split: str | None = "train",
) -> TrainResult:
    """Train the MONAI RetinaNet peer on the ``train`` split and write a run folder.

    The loop is :func:`rpn_lib.train.train`'s: per step ``preset.batch_size`` volumes drawn
    with one seeded generator, each augmented by :func:`rpn_lib.augment.augmented_batch`, AdamW at
    :func:`rpn_lib.train.learning_rate`, gradients clipped at norm 10. The loss is MONAI's:
    ``detector(images, targets)`` returns its classification and box-regression losses
    (ATSS matching, hard-negative sampling), summed.

    The run folder gets ``checkpoint.pt`` (weights, optimiser, step, the data generator and
    torch's global random state, which MONAI's sampler draws from, so a resumed run repeats an
    uninterrupted one), ``model.pt`` (for :func:`load_retinanet`), ``log.csv`` and
    ``train.json``, as :func:`rpn_lib.train.train` writes them. Arguments as there (``overwrite``
    and ``split`` too); ``config``
    overrides the peer's settings (:class:`RetinaNetConfig`).

    ``precision="bf16"`` needs a coarsest feature map of at least 4^3 cells (inputs of 64^3 and
    more): with torch 2.13 on CPU, a bf16 ``Conv3d`` backward on a 2^3 map now and then returns
    NaN weight gradients (3 in 60 trials of a plain 32-channel convolution; none on 3^3 and
    larger), which MONAI reports as "cls_logits is NaN or Inf" one step later.
    """
    require_monai()
    preset = get_preset(preset)
    cfg = config or RetinaNetConfig()
    steps = int(steps if steps is not None else preset.steps)
    if steps <= 0:
        raise ValueError("steps must be positive")
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    if any(s % cfg.size_divisible for s in preset.shape_vox):
        raise ValueError(f"preset shape {preset.shape_vox} must be a multiple of {cfg.size_divisible} per side")
    if precision == "bf16" and min(preset.shape_vox) // cfg.size_divisible < 4:
        raise ValueError(f"bf16 training of the RetinaNet peer needs inputs of at least {4 * cfg.size_divisible} "
                         "voxels per side (see train_retinanet); use precision='fp32'")
    warn_if_emulated(precision, dev)
    out = Path(out)
    check_run_folder(out, resume, overwrite)
    dataset = data if isinstance(data, LandmarkDataset) else LandmarkDataset(data, split=split)
    ts = load_training_set(dataset, preset, progress=progress)
    if max_cases is not None:
        ts = TrainingSet(ts.volumes[:max_cases], ts.landmarks_vox[:max_cases], ts.landmarks_world[:max_cases],
                         ts.case_ids[:max_cases])
    prior = GraphPrior.fit(ts.landmarks_world)

    torch.manual_seed(seed)
    detector = build_retinanet(preset, cfg).to(dev)
    optimizer = torch.optim.AdamW(detector.network.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    run_config = {"method": METHOD, "preset": preset.to_dict(), "retinanet": cfg.to_dict(), "steps": steps,
                  "seed": seed, "iou_balance": False, "precision": precision, "train_cases": len(ts.case_ids)}
    ckpt_path = out / "checkpoint.pt"
    start_step = 0
    if resume:
        if not ckpt_path.exists():
            raise DataError("no checkpoint.pt to resume from", out)
        state = _load(ckpt_path, CHECKPOINT_FORMAT)
        saved = json.loads(state["config_json"])
        if saved["preset"] != run_config["preset"] or saved["retinanet"] != run_config["retinanet"]:
            raise DataError("checkpoint was made with other settings (preset or RetinaNet config)", ckpt_path)
        detector.network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_step = int(state["step"])
    log_rows = _read_log(out / "log.csv", start_step) if resume else []
    if overwrite:
        clear_run_files(out)

    def checkpoint(step: int) -> None:
        _save({"format": CHECKPOINT_FORMAT, "network": detector.network.state_dict(),
               "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
               "torch_rng": torch.get_rng_state(), "step": int(step), "config_json": json.dumps(run_config)}, ckpt_path)
        _save_model(out / "model.pt", detector, preset, cfg, prior,
                    {"method": METHOD, "steps": step, "seed": seed, "precision": precision})
        _write_log(out / "log.csv", log_rows)

    n_cases = ts.volumes.shape[0]
    t0 = time.perf_counter()
    last_loss = float("nan")
    detector.train()
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, desc="train retinanet", disable=not progress)
    log = RunningLog(("loss", "cls", "box"), log_rows, bar, log_every, steps, callback)
    for step in bar:
        lr = learning_rate(step, steps, preset.lr)
        for g in optimizer.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n_cases, (preset.batch_size,), generator=generator)
        x, lm_b = augmented_batch(ts.volumes[idx], ts.landmarks_vox[idx], generator, dev, preset.rotation_deg,
                                  preset.flip, preset.flip_axes)
        targets = monai_targets(lm_b, preset.spacing_mm)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            losses = detector(x, targets)
        cls_loss = losses[detector.cls_key].float()
        box_loss = losses[detector.box_reg_key].float()
        total = cls_loss + box_loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(detector.network.parameters(), 10.0)
        optimizer.step()
        last_loss = float(total.detach())
        done = step + 1
        log.add(done, lr, {"loss": last_loss, "cls": float(cls_loss.detach()), "box": float(box_loss.detach())})
        if done % checkpoint_every == 0 or done == steps:
            checkpoint(done)
    bar.close()
    seconds = time.perf_counter() - t0
    info = {**run_config, "seconds_this_session": round(seconds, 1), "device": str(dev), "torch": torch.__version__,
            "monai": require_monai().version, "threads": torch.get_num_threads()}
    atomic_write_json(out / "train.json", info)
    return TrainResult(out, steps, seconds, last_loss, log_rows)


# ------------------------------------------------------------------------------------------
# inference
# ------------------------------------------------------------------------------------------


@dataclass
class PeerOutput:
    """MONAI head outputs of a batch, flattened in MONAI's anchor order.

    Attributes:
        cls_logits: ``(B, N, 5)`` per-class logits (sigmoid, no background class).
        box_deltas: ``(B, N, 6)`` box deltas for MONAI's box coder.
        anchors: ``(N, 6)`` anchors, MONAI "xyzxyz" image coordinates.
    """

    cls_logits: torch.Tensor
    box_deltas: torch.Tensor
    anchors: torch.Tensor


class PeerInference:
    """The inference half of a :class:`rpn_lib.methods.Method` for the peer: what
    :meth:`rpn_lib.detect.Detector.detect_prepared` calls (``forward``, then ``candidates``
    per volume), so that the peer goes through the library's detector, graph prior and
    :class:`~rpn_lib.detect.Detection` unchanged.

    Args:
        detector: the MONAI ``RetinaNetDetector`` (its anchor generator, box coder, padding).
    """

    def __init__(self, detector: Any) -> None:
        self.detector = detector

    def forward(self, model: nn.Module, x: torch.Tensor, preset: Preset) -> PeerOutput:
        """MONAI's network on ``x`` ``(B, 1, D, H, W)`` (padded at the far end to MONAI's size
        multiple), its anchors, and MONAI's own flattening of the head maps."""
        m = require_monai()
        det = self.detector
        images, _ = m.preprocess_images(x, 3, det.size_divisible)
        head = model(images)
        head = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in head.items()}
        det.generate_anchors(images, head)
        logits = det._reshape_maps(head[det.cls_key]).float()  # MONAI's own flattening, in its anchor order
        deltas = det._reshape_maps(head[det.box_reg_key]).float()
        return PeerOutput(logits, deltas, det.anchors[0])

    def candidates(self, model: nn.Module, out: PeerOutput, index: int, preset: Preset,
                   settings: CandidateSettings) -> ClassCandidates:
        """Per landmark class: ``(boxes (k, 6) as cz, cy, cx, d, h, w voxels, scores (k,))``, best
        first: the ``settings.pre_nms_top_n`` anchors of highest sigmoid probability, decoded
        by MONAI's box coder, class-wise NMS at ``settings.nms_iou``, the first ``settings.keep``."""
        probs = torch.sigmoid(out.cls_logits[index])  # (N, 5)
        deltas, anchors = out.box_deltas[index], out.anchors.float()
        top = torch.topk(probs, min(settings.pre_nms_top_n, probs.shape[0]), dim=0)
        per_class = []
        for c in range(probs.shape[1]):
            idx, scores = top.indices[:, c], top.values[:, c]
            boxes = from_monai_boxes(self.detector.box_coder.decode_single(deltas[idx], anchors[idx]))
            keep = nms(boxes, scores, settings.nms_iou, max_keep=settings.keep)
            per_class.append((boxes[keep], scores[keep]))
        return per_class


class RetinaNetPeerDetector(Detector):
    """The trained peer behind the :class:`~rpn_lib.detect.Detector` interface.

    Everything but the network pass and the candidate step is the library's detector
    (resampling, validation, graph prior, results); those two are :class:`PeerInference`.
    ``scores`` are MONAI's per-class sigmoid probabilities.

    Args:
        detector: a MONAI ``RetinaNetDetector`` (from :func:`build_retinanet`), trained.
        preset: the preset it was trained with.
        prior: the graph prior fitted on its training landmarks.
        device: as for :class:`~rpn_lib.detect.Detector`, and so are ``amp``,
            ``pre_nms_top_n``, ``keep_candidates``, ``axis_order``, ``flip_axes``,
            ``prior_rule`` and ``fast_inference``.
        meta: the model file's metadata.
    """

    def __init__(self, detector: Any, preset: Preset, prior: GraphPrior, device: str | torch.device = "auto",
                 amp: bool = False, pre_nms_top_n: int = 64, keep_candidates: int = 10,
                 meta: dict[str, Any] | None = None, axis_order: tuple[int, int, int] = (0, 1, 2),
                 flip_axes: tuple[int, ...] = (), prior_rule: str = "penalty", fast_inference: bool = True) -> None:
        # Detector.__init__ reads an rpn_lib model file; set the attributes its methods use.
        self.set_orientation(axis_order, flip_axes)
        self.prior_rule = check_prior_rule(prior_rule)
        self.device = resolve_device(device)
        self.monai_detector = detector.to(self.device).eval()
        self.fast_inference = fast_inference
        if fast_inference:  # the IG-RPN's rewrite (rpn_lib.inference): a rewritten copy replaces the network
            self.monai_detector.network = prepare_for_inference(self.monai_detector.network)
        self.model = self.monai_detector.network
        self.loaded = None
        self.preset = preset
        self.prior = prior
        self.method = PeerInference(self.monai_detector)
        self.amp = amp
        self.channels_last = False  # MONAI's network runs as MONAI runs it
        self.pre_nms_top_n = pre_nms_top_n
        self.keep_candidates = max(keep_candidates, preset.top_k)
        self.meta = meta or {}

    def anchors(self, feature_shape: tuple[int, int, int]) -> torch.Tensor:
        raise NotImplementedError("the RetinaNet peer's anchors come from MONAI's anchor generator")


def load_retinanet(path: str | Path, device: str | torch.device = "auto", **kw: Any) -> RetinaNetPeerDetector:
    """Read a peer ``model.pt`` written by :func:`train_retinanet` and wrap it for detection.

    Raises:
        ModelError: missing, unreadable or damaged file, or weights that do not fit the
            network its settings describe.
        RpnLibError: MONAI is not installed.
    """
    require_monai()
    path = Path(path)
    obj = _load(path, MODEL_FORMAT)
    try:
        preset = Preset.from_dict(json.loads(obj["preset_json"]))
        cfg = RetinaNetConfig.from_dict(json.loads(obj["config_json"]))
        prior = GraphPrior.from_dict(json.loads(obj["prior_json"]))
        meta = json.loads(obj.get("meta_json", "{}"))
        names = [str(n) for n in obj["label_names"]]
        state = obj["state_dict"]
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"damaged model settings ({type(e).__name__}: {e})", path) from None
    if tuple(names) != LANDMARK_NAMES:
        raise ModelError(f"model predicts labels {names}, expected {list(LANDMARK_NAMES)}", path)
    detector = build_retinanet(preset, cfg)
    try:
        detector.network.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"weights do not fit the RetinaNet its settings describe ({str(e).splitlines()[0][:200]})",
                         path) from None
    return RetinaNetPeerDetector(detector, preset, prior, device=device, meta=meta, **kw)
