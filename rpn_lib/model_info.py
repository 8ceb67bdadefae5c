"""What a model file holds, in a few lines: method, scale, departures from its preset,
size and arithmetic of the network, how it was trained, and which graph prior it chooses with.

``rpn-lib info MODEL`` prints it (``--json`` as JSON); in Python :func:`model_info`. Reading a
file validates it exactly as :func:`rpn_lib.checkpoint.load_model` does, so a file that
``info`` describes is one that :class:`rpn_lib.detect.Detector` can load.
"""

from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rpn_lib.checkpoint import LoadedModel, load_model
from rpn_lib.presets import PRESETS, preset_changes

TEXT_WIDTH = 88
"""Characters per line of :class:`ModelInfo`'s text (a long value wraps under its column)."""

TRAINING_KEYS: tuple[str, ...] = ("steps", "seed", "precision", "iou_balance")
"""Metadata of the training run that :func:`model_info` reports, when the file has them."""


@dataclass(frozen=True)
class ModelInfo:
    """A model file described (:func:`model_info`).

    Attributes:
        path: the file.
        file_mb: its size, MB.
        method: the method's name (``rpn``, ``ssd``, ...) and ``method_title`` its title.
        method_options: the method's options as stored in the file.
        preset: the full preset, as JSON (:meth:`rpn_lib.presets.Preset.to_dict`).
        changed: ``{field: [named preset's value, this file's value]}`` for every field that
            differs from the named preset of :data:`rpn_lib.presets.PRESETS` (empty when the
            name is not one of them).
        parameters: trainable and other parameters of the network.
        gflop: floating-point operations of one forward pass on the preset's input, GFLOP
            (:func:`rpn_lib.bench.count_flops`); None when not counted.
        training: what the file records of its training (:data:`TRAINING_KEYS`).
        prior_rule: the rule the detector ranks combinations by unless told otherwise.
        prior_calibration: the calibration record (:mod:`rpn_lib.calibrate`) without the
            previous prior, or None for a prior fitted on true landmarks only (the paper's).
    """

    path: str
    file_mb: float
    method: str
    method_title: str
    method_options: dict[str, Any]
    preset: dict[str, Any]
    changed: dict[str, list[Any]]
    parameters: int
    gflop: float | None
    training: dict[str, Any] = field(default_factory=dict)
    prior_rule: str = "penalty"
    prior_calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    def __str__(self) -> str:
        p = self.preset
        shape = "x".join(str(s) for s in p["shape_vox"])
        extent = ", ".join(f"{s * p['spacing_mm']:.0f}" for s in p["shape_vox"])
        options = ", ".join(f"{k}={v}" for k, v in self.method_options.items())
        rows = [
            ("file", f"{self.path} ({self.file_mb:.1f} MB)"),
            ("method", f"{self.method_title} ({self.method}{'; ' + options if options else ''})"),
            ("scale", f"{p['name']}: {shape} voxels at {p['spacing_mm']} mm ({extent} mm), width {p['width']}"),
        ]
        if self.changed:
            rows.append((f"unlike {p['name']}", "; ".join(f"{k} {old} -> {new}" for k, (old, new) in self.changed.items())))
        net = f"{self.parameters / 1e6:.2f} M parameters"
        if self.gflop is not None:
            net += f", {self.gflop:.1f} GFLOP per volume"
        rows.append(("network", net))
        if self.training:
            rows.append(("training", ", ".join(f"{k} {v}" for k, v in self.training.items())))
        cal = self.prior_calibration
        if cal:
            rows.append(("graph prior", f"calibrated: noise {cal['localisation_sd_mm']:.2f} mm per axis, from "
                                        f"{cal['n_cases']} {cal['split']} volumes"))
        else:
            rows.append(("graph prior", "fitted on the true landmarks (the paper's)"))
        rows.append(("prior rule", self.prior_rule))
        width = max(len(k) for k, _ in rows)
        lines = []
        for k, v in rows:  # values wrapped to TEXT_WIDTH, under their column
            parts = textwrap.wrap(v, TEXT_WIDTH - width - 2, break_long_words=False, break_on_hyphens=False)
            lines += [f"{k:<{width}}  {parts[0]}"] + [" " * (width + 2) + part for part in parts[1:]]
        return "\n".join(lines)


def model_info(model: str | Path | LoadedModel, flops: bool = True) -> ModelInfo:
    """Describe a model file (or a model already loaded).

    Args:
        model: a ``model.pt`` written by ``rpn-lib train``, or its :class:`~rpn_lib.checkpoint.LoadedModel`.
        flops: count the forward pass's FLOPs (on the ``meta`` device: no arithmetic, well
            under a second).

    Raises:
        ModelError: as :func:`rpn_lib.checkpoint.load_model`.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    preset = loaded.preset.to_dict()
    named = PRESETS.get(loaded.preset.name)
    changed = preset_changes(named, preset) if named is not None else {}
    gflop = None
    if flops:
        from rpn_lib.bench import count_flops

        gflop = count_flops(loaded.model, (1, 1, *loaded.preset.shape_vox)) / 1e9
    meta = loaded.meta
    cal = meta.get("prior_calibration")
    return ModelInfo(
        path=str(loaded.path),
        file_mb=loaded.path.stat().st_size / 1e6,
        method=loaded.method.name,
        method_title=loaded.method.title,
        method_options=loaded.method.options(),
        preset=preset,
        changed=changed,
        parameters=sum(p.numel() for p in loaded.model.parameters()),
        gflop=gflop,
        training={k: meta[k] for k in TRAINING_KEYS if k in meta},
        prior_rule=str(meta.get("prior_rule", "penalty")),
        prior_calibration={k: v for k, v in cal.items() if k != "previous_prior"} if isinstance(cal, dict) else None,
    )
