"""Saving and loading runs safely.

Model and checkpoint files hold only tensors, numbers, strings, lists and dicts. Settings
(preset, graph prior, label names) are stored as JSON strings, never as pickled objects, and
files are read with ``torch.load(..., weights_only=True)``: a model file from someone else
cannot run code. Everything read is validated before use, and writes are atomic.

A model file records which method made it (``meta["method"]`` and ``meta["method_options"]``,
see :mod:`rpn_lib.methods`); files without it hold an IG-RPN.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rpn_lib.device import resolve_device
from rpn_lib.errors import ModelError
from rpn_lib.fileio import atomic_path
from rpn_lib.landmarks import LANDMARK_NAMES
from rpn_lib.presets import Preset
from rpn_lib.prior import GraphPrior

MODEL_FORMAT = "rpn-lib-model/1"
CHECKPOINT_FORMAT = "rpn-lib-checkpoint/1"


def _save(obj: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load(path: str | Path, fmt: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelError("model file not found", path)
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it then refuses; the error below says it all.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False: never here
        raise ModelError("not a readable rpn-lib file (it is not a PyTorch file, or it holds pickled Python "
                         "objects, which rpn-lib never loads: they could run code)", path) from None
    except Exception as e:  # noqa: BLE001 - any failure to read is the same problem for the user
        detail = (str(e).splitlines() or [""])[0].split(". ")[0][:200]  # torch's first sentence
        hint = "truncated or damaged? " if isinstance(e, RuntimeError) else ""
        raise ModelError(f"not a readable rpn-lib file ({hint}{type(e).__name__}: {detail})", path) from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        hint = ": a training checkpoint; the run folder's model.pt is its model" \
            if (found, fmt) == (CHECKPOINT_FORMAT, MODEL_FORMAT) else ""
        raise ModelError(f"not an {fmt} file (format: {found!r}){hint}", path)
    return obj


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, step: int, config: dict[str, Any]) -> None:
    """Write everything needed to resume training exactly at ``step``."""
    _save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
           "generator": generator.get_state(), "step": int(step), "config_json": json.dumps(config)}, Path(path))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``config`` parsed from JSON)."""
    obj = _load(path, CHECKPOINT_FORMAT)
    try:
        obj["config"] = json.loads(obj["config_json"])
        obj["step"] = int(obj["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"damaged checkpoint ({e})", path) from None
    return obj


def save_model(path: str | Path, model: nn.Module, preset: Preset, prior: GraphPrior,
               label_names: tuple[str, ...] = LANDMARK_NAMES, meta: dict[str, Any] | None = None) -> None:
    """Write what inference needs: weights, preset, graph prior, label names and metadata
    (``meta`` holds the method, see :func:`rpn_lib.methods.method_from_dict`)."""
    _save({"format": MODEL_FORMAT, "state_dict": model.state_dict(), "preset_json": json.dumps(preset.to_dict()),
           "prior_json": json.dumps(prior.to_dict()), "label_names": list(label_names),
           "meta_json": json.dumps(meta or {})}, Path(path))


@dataclass
class LoadedModel:
    """A model read from disk with its settings.

    Attributes:
        model: the network (an :class:`rpn_lib.model.IGRPN` or a baseline's), in eval mode.
        method: the :class:`rpn_lib.methods.Method` that built it (its inference steps).
    """

    model: nn.Module
    preset: Preset
    prior: GraphPrior
    label_names: list[str]
    meta: dict[str, Any]
    path: Path
    method: Any = None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Read and validate a ``model.pt`` written by :func:`save_model`; the network is put on
    ``device`` (:func:`rpn_lib.device.resolve_device`).

    Raises:
        DeviceError: ``device`` is not a device, or one this machine lacks.
        ModelError: missing or unreadable file, wrong format, damaged settings, an unknown
            method, weights that do not fit the preset's network.
    """
    from rpn_lib.methods import method_from_dict  # methods import the networks, which import little

    path = Path(path)
    obj = _load(path, MODEL_FORMAT)
    try:
        preset = Preset.from_dict(json.loads(obj["preset_json"]))
        prior = GraphPrior.from_dict(json.loads(obj["prior_json"]))
        names = [str(n) for n in obj["label_names"]]
        meta = json.loads(obj.get("meta_json", "{}"))
        state = obj["state_dict"]
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"damaged model settings ({type(e).__name__}: {e})", path) from None
    if tuple(names) != LANDMARK_NAMES:
        raise ModelError(f"model predicts labels {names}, expected {list(LANDMARK_NAMES)}", path)
    if not isinstance(meta, dict):
        raise ModelError(f"damaged model settings (metadata is a {type(meta).__name__}, not a dict)", path)
    try:
        method = method_from_dict(meta)
        model = method.build(preset)
    except (TypeError, ValueError) as e:
        raise ModelError(f"cannot build the model's network ({type(e).__name__}: {e})", path) from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ModelError(f"weights do not fit a width-{preset.width} {method.title} "
                         f"({str(e).splitlines()[0][:200]})", path) from None
    model.to(resolve_device(device)).eval()
    return LoadedModel(model, preset, prior, names, meta, path, method)
