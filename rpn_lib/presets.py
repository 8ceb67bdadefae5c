"""Every number of a run in one place: the ``cpu-small`` teaching scale and the ``paper`` scale.

Both presets cover the same field of view (about 166 mm per side, the paper's 128 voxels at
1.3 mm). ``cpu-small`` renders it at 2.6 mm (64^3 voxels) with a narrower network so that a
2-core CPU can train it; ``paper`` is the paper's own scale (128^3 at 1.3 mm, width 32).
Sizes the paper gives in voxels at 1.3 mm (anchor base sizes, box sizes) are converted to mm
and back, so they scale with the spacing.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, get_args, get_origin, get_type_hints

PAPER_SPACING_MM = 1.3
"""Voxel spacing of the paper's data (Sec. 3)."""

PAPER_ANCHOR_BASE_VOX = (13.0, 16.0, 20.0, 28.0)
"""Anchor base sizes per axis in voxels at 1.3 mm (Sec. 2.2): 4^3 = 64 anchor shapes."""

ANCHOR_LAYOUTS: tuple[str, ...] = ("all", "cubes")
"""Values of :attr:`Preset.anchor_layout` and of ``layout`` in :func:`rpn_lib.anchors.anchor_shapes`."""

EYE_SIDES: tuple[str, ...] = ("learned", "geometry")
"""Values of :attr:`Preset.eye_sides`."""


@dataclass(frozen=True)
class Preset:
    """A complete, serialisable configuration of data, model and training.

    Attributes:
        name: preset name.
        spacing_mm: isotropic voxel spacing the model works at.
        shape_vox: input volume shape ``(D, H, W)`` in voxels.
        width: channels of the first backbone block (blocks have w, 2w, 4w, 8w).
        anchor_base_mm: anchor base sizes per axis in mm.
        anchor_layout: ``"all"`` (the paper, Sec. 2.2): every combination of the base sizes
            along the three axes, ``4^3 = 64`` shapes per cell; ``"cubes"`` (a deviation): only
            the 4 cubes (:func:`rpn_lib.anchors.anchor_shapes` says why). Used by the IG-RPN
            and the Faster R-CNN baseline; the SSD baseline has its own anchors.
        stride: voxels per feature-map cell of the fused map (three down-samplings, one
            up-sampling: 4).
        block1_convs: conv layers of the IG-RPN's first backbone block: 2 (the paper, Fig. 2)
            or 1 (a documented deviation for speed: the block's second conv is the network's
            costliest layer, :mod:`rpn_lib.model`). Used by the IG-RPN only.
        eta: exponent of the IoU-balanced loss (Eq. 3).
        pos_iou: anchors above this IoU with a ground truth are positive (Sec. 3: 0.5;
            ``cpu-small``: 0.35, see :data:`PRESETS`).
        neg_iou: anchors below this IoU with every ground truth are negative (Sec. 3).
        anchors_per_volume: anchors sampled per volume for the classification loss; 0 takes
            every labelled anchor (dense, used with ``focal_gamma > 0``).
        ambiguous: what an anchor between the thresholds is: ``"ignore"`` (the paper, Sec. 3:
            left out of the loss) or ``"partial"`` (default, a documented deviation: it may be
            background or a landmark it overlaps, and no other landmark;
            :func:`rpn_lib.anchors.allowed_classes` says why).
        min_positives: each landmark's ``k`` best anchors are positive when their IoU reaches
            ``neg_iou`` (:class:`rpn_lib.anchors.Matcher`); 1 is the paper's "best anchor" rule.
        focal_gamma: 0: the paper's softmax cross-entropy over the sampled anchors; ``> 0``:
            softmax focal loss with this exponent over all anchors, normalised by the number of
            positives (:func:`rpn_lib.losses.classification_loss`).
        max_pos_fraction: at most this share of the sampled anchors are positives.
        hard_negative_fraction: share of the sampled negatives that are the hardest ones (highest
            foreground probability); the rest are drawn at random. 0 gives Faster R-CNN's
            purely random minibatch.
        hard_negative_start: hard negatives are mined only after this share of the steps:
            mined from the first step they drown the few positives while the features still
            cannot tell a landmark from its surroundings, and the class scores collapse to a
            constant (measured: a flat foreground probability after 800 steps).
        steps: default number of training steps.
        batch_size: volumes per training step.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        rotation_deg: augmentation rotation range, +- degrees about each axis (Sec. 3).
        flip: whether flips augment the training data (Sec. 3).
        flip_axes: array axes a flip may mirror. Choice: ``(1, 2)``, the axes across the beam
            (axis 0 is depth in the synthetic data and in the usual scanner export): a mirror in
            depth would show the probe below the face, which no scan does.
        box_weights: the box coder's delta normalisation ``(wz, wy, wx, wd, wh, ww)``
            (:class:`rpn_lib.boxes.BoxCoder`): ``(1,) * 6`` is Eq. 1 exactly (the paper);
            Faster R-CNN's ``(10, 10, 10, 5, 5, 5)`` scales the centre deltas, a few tenths
            of an anchor, up to where the smooth-L1 loss is linear, so that the centres are
            regressed as firmly as the sizes.
        eye_sides: how left and right eye are told apart. ``"learned"`` (the paper): two eye
            classes learnt from the labels. ``"geometry"`` (a documented deviation): the network
            learns "an eye" (either eye class is right on an eye's anchors,
            :func:`rpn_lib.anchors.merge_classes`), inference pools the two eye classes into
            one eye score, and the face's handedness names the sides
            (:mod:`rpn_lib.handedness`). A mirror swaps the labels but a scan shows a face at
            any orientation, so the side of an eye is not a local image feature: measured
            on the ``learned`` model, its two eye classes fire on the same eye in 23 of 32
            test volumes (chapter *Evaluation*).
        nms_iou: class-wise NMS threshold before the top-k candidates are taken.
        top_k: candidates per class kept for the graph prior (Sec. 2.3); with
            ``eye_sides="geometry"`` the prior chooses two eyes among the ``2 * top_k`` best
            pooled eye candidates.
    """

    name: str
    spacing_mm: float
    shape_vox: tuple[int, int, int]
    width: int
    anchor_base_mm: tuple[float, ...] = tuple(s * PAPER_SPACING_MM for s in PAPER_ANCHOR_BASE_VOX)
    anchor_layout: str = "all"
    stride: int = 4
    block1_convs: int = 2
    eta: float = 1.75
    pos_iou: float = 0.5
    neg_iou: float = 0.25
    anchors_per_volume: int = 512
    focal_gamma: float = 0.0
    ambiguous: str = "partial"
    min_positives: int = 1
    max_pos_fraction: float = 0.25
    hard_negative_fraction: float = 0.5
    hard_negative_start: float = 0.4
    steps: int = 2000
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    rotation_deg: float = 25.0
    flip: bool = True
    flip_axes: tuple[int, ...] = (1, 2)
    box_weights: tuple[float, ...] = (1.0,) * 6
    eye_sides: str = "learned"
    nms_iou: float = 0.3
    top_k: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def anchor_base_vox(self) -> tuple[float, ...]:
        """Anchor base sizes in voxels at this preset's spacing (13/16/20/28 at 1.3 mm)."""
        return tuple(s / self.spacing_mm for s in self.anchor_base_mm)

    @property
    def num_anchors(self) -> int:
        """Anchors per feature cell: ``L^3`` for ``"all"``, ``L`` for ``"cubes"`` (``L`` base sizes)."""
        n = len(self.anchor_base_mm)
        return n if self.anchor_layout == "cubes" else n ** 3

    @property
    def field_of_view_mm(self) -> tuple[float, float, float]:
        """Physical extent of the input volume in mm."""
        return tuple(n * self.spacing_mm for n in self.shape_vox)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (lists instead of tuples)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preset":
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    def __post_init__(self) -> None:
        if self.stride not in (2, 4):
            raise ValueError(f"stride must be 2 or 4, got {self.stride}")
        if self.block1_convs not in (1, 2):
            raise ValueError(f"block1_convs must be 1 or 2, got {self.block1_convs}")
        if self.ambiguous not in ("ignore", "partial"):
            raise ValueError(f"ambiguous must be 'ignore' or 'partial', got {self.ambiguous!r}")
        if self.focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if not self.flip_axes or any(a not in (0, 1, 2) for a in self.flip_axes):
            raise ValueError(f"flip_axes must be a non-empty subset of (0, 1, 2), got {self.flip_axes}")
        if len(self.box_weights) != 6 or any(not w > 0 for w in self.box_weights):
            raise ValueError(f"box_weights must be 6 positive numbers, got {self.box_weights}")
        if self.anchor_layout not in ANCHOR_LAYOUTS:
            raise ValueError(f"anchor_layout must be one of {ANCHOR_LAYOUTS}, got {self.anchor_layout!r}")
        if self.eye_sides not in EYE_SIDES:
            raise ValueError(f"eye_sides must be one of {EYE_SIDES}, got {self.eye_sides!r}")
        if not 0 <= self.neg_iou <= self.pos_iou <= 1:
            raise ValueError(f"need 0 <= neg_iou <= pos_iou <= 1, got {self.neg_iou}, {self.pos_iou}")
        if not (self.spacing_mm > 0 and math.isfinite(self.spacing_mm)):
            raise ValueError(f"spacing_mm must be a positive number of mm, got {self.spacing_mm}")
        if len(self.shape_vox) != 3 or any(n < 8 or n % 8 for n in self.shape_vox):
            raise ValueError("shape_vox must be 3 sides in voxels, each a positive multiple of 8 (the backbone "
                             f"down-samples three times), got {self.shape_vox}")
        if not self.anchor_base_mm or any(not (s > 0 and math.isfinite(s)) for s in self.anchor_base_mm):
            raise ValueError(f"anchor_base_mm must be positive sizes in mm, got {self.anchor_base_mm}")
        for name, low in (("width", 1), ("steps", 1), ("batch_size", 1), ("min_positives", 1), ("top_k", 1),
                          ("anchors_per_volume", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")
        for name in ("max_pos_fraction", "hard_negative_fraction", "hard_negative_start", "nms_iou"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        for name in ("eta", "weight_decay"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)}")
        if not 0 <= self.rotation_deg <= 180:
            raise ValueError(f"rotation_deg must be between 0 and 180 degrees, got {self.rotation_deg}")

    def replace(self, **changes: Any) -> "Preset":
        """A copy with some fields changed."""
        return replace(self, **changes)


PRESETS: dict[str, Preset] = {
    # cpu-small deviates from the paper where its coarser grid needs it. Its anchor grid is twice
    # as coarse relative to the boxes as the paper's (10.4 mm cells against 18-31 mm boxes), so
    # few anchors pass the paper's IoU 0.5 (an eye box has none for 60 % of positions, chapter
    # Anchors): positives from IoU 0.35 (``pos_iou``; in single 800-step runs, test d-mean 20.3 mm
    # against 26.8 mm at 0.5 and 23.4 mm at 0.3: results/sweep/cpu-small-800.json) and at least
    # four per landmark (``min_positives``). 2,400 steps: about 15-20 minutes on 2 CPU cores.
    "cpu-small": Preset(name="cpu-small", spacing_mm=2.6, shape_vox=(64, 64, 64), width=16,
                        pos_iou=0.35, min_positives=4, steps=2400),
    "paper": Preset(
        name="paper", spacing_mm=PAPER_SPACING_MM, shape_vox=(128, 128, 128), width=32,
        steps=20000, batch_size=2, anchors_per_volume=1024,
    ),
}
"""The two presets by name: ``cpu-small`` (the book's teaching scale) and ``paper``."""


def get_preset(name_or_preset: "str | Preset") -> Preset:
    """Look a preset up by name (``cpu-small`` or ``paper``); a :class:`Preset` passes through."""
    if isinstance(name_or_preset, Preset):
        return name_or_preset
    try:
        return PRESETS[name_or_preset]
    except KeyError:
        raise ValueError(
            f"unknown preset {name_or_preset!r}; choose one of {sorted(PRESETS)}"
        ) from None


SETTABLE: tuple[str, ...] = tuple(f.name for f in fields(Preset) if f.name not in ("name", "extra"))
"""Fields of :class:`Preset` that :func:`parse_setting` and ``rpn-lib train --set`` change."""

_TYPES = get_type_hints(Preset)
_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _scalar(name: str, kind: type, text: str) -> Any:
    if kind is bool:
        if text.lower() not in _BOOLS:
            raise ValueError(f"{name} is true or false, got {text!r}")
        return _BOOLS[text.lower()]
    if kind is str:
        return text
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name} needs {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def parse_setting(text: str) -> tuple[str, Any]:
    """Read one ``FIELD=VALUE`` setting of a :class:`Preset`, typed as the field is.

    ``lr=5e-4`` gives ``("lr", 0.0005)``; tuples are comma-separated (``shape_vox=96,96,96``);
    booleans are ``true``/``false`` (also ``yes``/``no``, ``1``/``0``). Only the value's type is
    checked here: whether it makes a valid preset is :class:`Preset`'s to say, when the setting is
    applied (:func:`with_settings`).

    Raises:
        ValueError: no ``=``, a field that is not in :data:`SETTABLE` (with the closest names), or
            a value of the wrong type or length.
    """
    name, sep, value = text.partition("=")
    name, value = name.strip().replace("-", "_"), value.strip()
    if not sep or not name:
        raise ValueError(f"a setting is FIELD=VALUE, e.g. lr=5e-4; got {text!r}")
    if name not in SETTABLE:
        close = difflib.get_close_matches(name, SETTABLE, n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ValueError(f"{name!r} is not a preset setting{hint}; settings: {', '.join(SETTABLE)}")
    kind = _TYPES[name]
    if get_origin(kind) is tuple:
        args = get_args(kind)
        parts = [v.strip() for v in value.split(",")] if value else []
        if (args[-1] is Ellipsis and not parts) or (args[-1] is not Ellipsis and len(parts) != len(args)):
            n = "one or more" if args[-1] is Ellipsis else str(len(args))
            raise ValueError(f"{name} needs {n} comma-separated values, got {value!r}")
        return name, tuple(_scalar(name, args[0], v) for v in parts)
    return name, _scalar(name, kind, value)


def with_settings(preset: str | Preset, settings: Iterable[str] | Mapping[str, Any] = ()) -> Preset:
    """``preset`` with some of its fields changed: ``FIELD=VALUE`` strings read by
    :func:`parse_setting` (the last one wins when a field is named twice), or a mapping of
    fields to values. The result keeps the preset's name; :func:`preset_changes` (and
    ``rpn-lib info``) tells it from the named one.

    Raises:
        ValueError: as :func:`parse_setting`, or a setting :class:`Preset` refuses.
    """
    base = get_preset(preset)
    changes = dict(settings) if isinstance(settings, Mapping) else dict(parse_setting(s) for s in settings)
    unknown = sorted(set(changes) - set(SETTABLE))
    if unknown:
        raise ValueError(f"not preset settings: {', '.join(unknown)}; settings: {', '.join(SETTABLE)}")
    return base.replace(**changes) if changes else base


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
        return numbers and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def preset_changes(old: str | Preset | Mapping[str, Any],
                   new: str | Preset | Mapping[str, Any]) -> dict[str, list[Any]]:
    """``{field: [old value, new value]}`` for every field where two presets (names, presets or
    :meth:`Preset.to_dict` dictionaries) differ, in field order. Numbers that agree to 9
    significant digits count as equal: ``--set anchor_base_mm=16.9,...``, as
    :func:`settings_text` shows it, is the preset's ``13 * 1.3 = 16.900000000000002``."""
    a = get_preset(old).to_dict() if isinstance(old, (str, Preset)) else dict(old)
    b = get_preset(new).to_dict() if isinstance(new, (str, Preset)) else dict(new)
    keys = list(a) + [k for k in b if k not in a]
    return {k: [a.get(k), b.get(k)] for k in keys if not _same(a.get(k), b.get(k))}


def format_setting(value: Any) -> str:
    """A field's value as ``rpn-lib train --set FIELD=VALUE`` writes it (:func:`parse_setting`'s
    inverse; floats to 10 significant digits, so ``13 * 1.3`` shows as ``16.9``)."""
    if isinstance(value, (tuple, list)):
        return ",".join(format_setting(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def settings_text(preset: str | Preset) -> str:
    """Every setting of a preset, one per line, written as ``--set`` takes it (``rpn-lib info PRESET``)."""
    p = get_preset(preset)
    width = max(map(len, SETTABLE)) + 2
    lines = [f"preset {p.name}: its settings, as rpn-lib train --set FIELD=VALUE takes them"]
    lines += [f"  {name:<{width}}{format_setting(getattr(p, name))}" for name in SETTABLE]
    return "\n".join(lines)
