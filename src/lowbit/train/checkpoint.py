"""Checkpoints: atomic saving and safe loading.

A checkpoint is a ``torch.save`` of plain data only (tensors, numbers, strings, lists, dicts), so it is
read back with ``torch.load(weights_only=True)``, which executes no code from the file. It carries the full
resolved training configuration, so :func:`load_checkpoint` rebuilds the model without the recipe.

Saving writes a temporary file in the same directory, flushes it to disk, then renames it over the target:
a run killed mid-save leaves the previous checkpoint intact, never a truncated one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

import torch
from torch import nn

from .._version import __version__
from ..errors import CheckpointError
from ..fileio import atomic_write

FORMAT = "lowbit-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: Union[str, Path], state: Dict[str, Any]) -> None:
    """Atomically save a checkpoint dict (adds the format marker and version)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "lowbit_version": __version__, **state}
    atomic_write(path, lambda f: torch.save(payload, f))


def read_checkpoint(path: Union[str, Path], map_location="cpu") -> Dict[str, Any]:
    """Load and check a checkpoint dict safely (no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many kinds for corrupt/foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable lowbit checkpoint ({first[:200]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a lowbit checkpoint (no '{FORMAT}' marker)")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path}: format_version is {version!r} ({type(version).__name__}), not a "
                              f"positive integer: the file is corrupt or was not written by lowbit")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this lowbit ({__version__}) reads up to "
            f"{FORMAT_VERSION}: upgrade lowbit"
        )
    check_structure(data, str(path))
    return data


def _kind(value: Any) -> str:
    return type(value).__name__


def check_structure(data: Dict[str, Any], source: str) -> None:
    """CheckpointError naming the entry if a checkpoint's fields have the wrong type or range (a crafted or
    damaged file must fail here with a message, not as a traceback deep in training or export)."""
    for key in ("config", "model_state"):
        if key not in data:
            raise CheckpointError(f"{source} is missing '{key}'")
    cfg = data["config"]
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: 'config' is a {_kind(cfg)}, expected a dict")
    for key, typ in (("model", str), ("model_args", dict)):
        if not isinstance(cfg.get(key), typ):
            raise CheckpointError(f"{source}: config['{key}'] is {cfg.get(key)!r}, expected a {typ.__name__}")
    for key in ("recipe", "dataset", "task"):
        if key in cfg and not isinstance(cfg[key], str):
            raise CheckpointError(f"{source}: config['{key}'] is {cfg[key]!r}, expected a str")
    if not all(isinstance(k, str) for k in cfg["model_args"]):
        raise CheckpointError(f"{source}: config['model_args'] has non-string keys")
    state = data["model_state"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: 'model_state' is a {_kind(state)}, expected a dict of tensors")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{source}: model_state entry {k!r} is a {_kind(v)}, expected a tensor")
    if "epoch" in data:
        epoch = data["epoch"]
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise CheckpointError(f"{source}: 'epoch' is {epoch!r}, expected an integer >= 0")
    if "history" in data:
        history = data["history"]
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise CheckpointError(f"{source}: 'history' is a {_kind(history)}, expected a list of per-epoch dicts")
        if "epoch" in data and len(history) != data["epoch"]:
            raise CheckpointError(f"{source}: 'history' has {len(history)} epochs but 'epoch' is {data['epoch']}")


def check_model_fits_state(config: Dict[str, Any], state: Dict[str, torch.Tensor], source: str) -> None:
    """Build the model the config describes on the meta device (no memory) and compare its tensors with
    the checkpoint's before the real model is allocated: a config claiming a huge model (``hidden=10**6``
    in a 4 MB file) is refused here instead of allocating terabytes."""
    from ..models import build_model

    try:
        with torch.device("meta"):
            meta = build_model(config["model"], **config["model_args"])
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to build from the file's config is the file's fault
        raise CheckpointError(f"{source}: its config does not describe a model lowbit can build ({exc})") from None
    _compare_states(meta.state_dict(), state, source)


def _compare_states(own: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor], source: str) -> None:
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if wrong:
            parts.append(
                "shape mismatch " + ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:5])
            )
        raise CheckpointError(f"{source} holds a different model: " + "; ".join(parts))


def model_from_config(config: Dict[str, Any]) -> nn.Module:
    """Build the (untrained) model a configuration dict describes."""
    from ..models import build_model

    return build_model(config["model"], **config["model_args"])


def load_model_state(model: nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with an error that says which checkpoint does not fit which model."""
    _compare_states(model.state_dict(), state, source)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as exc:  # e.g. a dtype torch cannot copy
        raise CheckpointError(f"{source}: its model state cannot be loaded ({str(exc).splitlines()[0][:200]})") from None


def model_from_checkpoint(data: Dict[str, Any], source: str) -> nn.Module:
    """The model of a checkpoint dict read by :func:`read_checkpoint`: checked against the stored tensors on
    the meta device first, then built and loaded (training mode; the caller sets eval)."""
    check_model_fits_state(data["config"], data["model_state"], source)
    model = model_from_config(data["config"])
    load_model_state(model, data["model_state"], source)
    return model


def check_finite(state: Dict[str, torch.Tensor], source: str) -> None:
    """CheckpointError naming the first tensor (layer weight, BN statistic) holding NaN or infinity."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = value[~torch.isfinite(value)].flatten()[0].item()
            raise CheckpointError(f"{source}: {key} holds non-finite values ({bad}); the training diverged or the "
                                  f"file is damaged, refusing to export it")


def load_checkpoint(path: Union[str, Path], map_location="cpu") -> nn.Module:
    """The trained model of a checkpoint, in evaluation mode."""
    data = read_checkpoint(path, map_location)
    model = model_from_checkpoint(data, str(path))
    model.eval()
    return model
