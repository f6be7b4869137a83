"""Model zoo: networks trained with lowbit's recipes on the real data, shipped inside the package.

    lowbit zoo                                   # the table: name, task, measured metric, size, command
    lowbit eval zoo:mnist-cnn [--engine pytorch]  # score one (runtime by default), offline
    import lowbit.zoo
    model = lowbit.zoo.load("mnist-cnn")          # the eval-mode PyTorch model
    net = lowbit.zoo.load_runtime("mnist-cnn")    # the runtime model (NumPy + C, no torch)

Each entry has two files under ``files/``: the runtime model file (``.lbt``, as ``lowbit export`` writes it:
bit-packed binary weights, k-bit codes, or the integer LSTM) and a compact PyTorch checkpoint
(:mod:`lowbit.zoo.compact`: the quantized weights as palettes, lossless for the eval forward). One table,
``files/index.json``, describes them: the recipe and the exact command that trained it, what it was trained
and tested on, the measured figures of both engines on the full test split and on the subset the tests
re-check, each file's size and SHA-256, the date and the machine. ``scripts/zoo_add.py`` writes an entry
from a training run, measuring everything it states; nothing in the table is typed in by hand.

This module imports neither torch nor the training half at import time: :func:`load_runtime` runs without
torch, :func:`load` imports it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..errors import CheckpointError, ConfigError

FILES = Path(__file__).resolve().parent / "files"
INDEX = "index.json"
PREFIX = "zoo:"
KINDS = ("runtime", "pytorch")


def _read_index() -> List[Dict[str, Any]]:
    path = FILES / INDEX
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"the model zoo's table {path} is missing: reinstall lowbit") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"the model zoo's table {path} is unreadable ({exc}): reinstall lowbit") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise CheckpointError(f"the model zoo's table {path} has no list of entries: reinstall lowbit")
    return data["entries"]


def entries() -> Dict[str, Dict[str, Any]]:
    """Every zoo entry by name, in the table's order."""
    return {e["name"]: e for e in _read_index()}


def names() -> List[str]:
    return list(entries())


def entry(name: str) -> Dict[str, Any]:
    """The table row of ``name`` (a ``zoo:`` prefix is accepted); ConfigError listing the known names."""
    name = strip_prefix(name)
    table = entries()
    if name not in table:
        raise ConfigError(f"no zoo model named {name!r}; the zoo has: {', '.join(table) or 'nothing'}")
    return table[name]


def strip_prefix(ref: str) -> str:
    return ref[len(PREFIX):] if ref.startswith(PREFIX) else ref


def is_zoo_ref(ref: str) -> bool:
    """Whether a command-line model argument names a zoo entry (``zoo:NAME``)."""
    return isinstance(ref, str) and ref.startswith(PREFIX)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_path(name: str, kind: str = "runtime") -> Path:
    """The verified path of an entry's ``runtime`` (.lbt) or ``pytorch`` (compact checkpoint) file:
    CheckpointError when it is missing or its bytes are not those the table records (a damaged install)."""
    if kind not in KINDS:
        raise ConfigError(f"zoo file kind must be one of {', '.join(KINDS)}, got {kind!r}")
    info = entry(name)["files"][kind]
    path = FILES / info["file"]
    if not path.is_file():
        raise CheckpointError(f"zoo model {name!r}: its {kind} file {path} is missing (reinstall lowbit)")
    if path.stat().st_size != info["bytes"] or _sha256(path) != info["sha256"]:
        raise CheckpointError(f"zoo model {name!r}: its {kind} file {path} is corrupt (size or SHA-256 differs "
                              f"from the zoo table): reinstall lowbit")
    return path


def load_runtime(name: str):
    """The runtime model of a zoo entry (``lowbit.runtime.load``; no torch): ``.predict`` / ``.classify``
    for image classifiers, ``.perplexity`` / ``.log_probs`` for language models."""
    from ..runtime import load as load_model_file

    return load_model_file(file_path(name, "runtime"))


def load_with_metadata(name: str) -> Tuple[Any, Dict[str, Any]]:
    """``(eval-mode PyTorch model, compact-checkpoint metadata)``: the metadata holds the training
    configuration (``config``) and, for a language model, its vocabulary (``vocab``)."""
    from .compact import model_from_compact

    return model_from_compact(file_path(name, "pytorch"))


def load(name: str):
    """The eval-mode PyTorch model of a zoo entry (an ``nn.Module``; imports torch)."""
    return load_with_metadata(name)[0]


def total_bytes(e: Dict[str, Any]) -> int:
    return sum(int(f["bytes"]) for f in e["files"].values())


def describe_metric(e: Dict[str, Any]) -> str:
    """``'accuracy 99.12% (runtime 99.12%)'`` / ``'perplexity 271.3 (runtime 272.0)'`` on the full test split."""
    m = e["metric"]
    fmt = (lambda v: f"{100 * v:.2f}%") if m["name"] == "accuracy" else (lambda v: f"{v:.1f}")
    return f"{m['name']} {fmt(m['pytorch'])} (runtime {fmt(m['runtime'])})"
