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
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this lowbit ({__version__}) reads up to "
            f"{FORMAT_VERSION}: upgrade lowbit"
        )
    for key in ("config", "model_state"):
        if key not in data:
            raise CheckpointError(f"{path} is missing '{key}'")
    return data


def model_from_config(config: Dict[str, Any]) -> nn.Module:
    """Build the (untrained) model a configuration dict describes."""
    from ..models import build_model

    return build_model(config["model"], **config["model_args"])


def load_model_state(model: nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with an error that says which checkpoint does not fit which model."""
    own = model.state_dict()
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
    model.load_state_dict(state)


def load_checkpoint(path: Union[str, Path], map_location="cpu") -> nn.Module:
    """The trained model of a checkpoint, in evaluation mode."""
    data = read_checkpoint(path, map_location)
    model = model_from_config(data["config"])
    load_model_state(model, data["model_state"], str(path))
    model.eval()
    return model
