"""The zoo's compact PyTorch checkpoint: exactly the eval-mode model, in a fraction of the bytes.

A training checkpoint keeps every latent weight in float32 (what the optimizer needs). In evaluation a
quantized layer only ever uses ``weight_quantizer(latent)``, so where that quantized tensor is a fixed point
of its own quantizer (``q(q(w)) == q(w)``: binary signs, max-scaled k-bit levels of the recurrent layers)
it can stand in for the latent weight and the eval forward is unchanged, bit for bit. Such tensors hold a
handful of distinct values, stored as a *palette*: the distinct float32 values plus 1-, 2- or 4-bit codes
(binary weights cost one bit each). Everything else (batch-norm statistics, biases, PACT clip levels,
SAWB latent weights, whose scale is a statistic of the latent tensor, so their levels are no fixed point) is
kept as it is. Lossless by construction: every stored value is decoded to the same float32 bits.

The file is a lowbit model file (:mod:`lowbit.runtime.modelfile`: safetensors with a SHA-256 over every
byte, no pickle) of kind ``zoo_checkpoint``; its metadata holds the training configuration (to rebuild the
model), each tensor's encoding and shape, and extras (a language model's vocabulary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..runtime.modelfile import load_model_file, save_model_file

FORMAT = 1
KIND = "zoo_checkpoint"
PALETTE_BITS = (1, 2, 4)  # codes per byte: 8, 4, 2


def eval_weights(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The state-dict entries that may be replaced by their quantized values: each ``weight*`` parameter of
    a module with a ``weight_quantizer`` whose quantized tensor the quantizer maps to itself."""
    model.eval()
    out = {}
    with torch.no_grad():
        for prefix, module in model.named_modules():
            q = getattr(module, "weight_quantizer", None)
            if not isinstance(q, nn.Module):
                continue
            for name, p in module.named_parameters(recurse=False):
                if not name.startswith("weight"):
                    continue
                wq = q(p.detach())
                if wq.dtype == p.dtype and wq.shape == p.shape and torch.equal(q(wq), wq):
                    out[f"{prefix}.{name}" if prefix else name] = wq.clone()
    return out


def _pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    per = 8 // bits
    padded = np.zeros(-(-codes.size // per) * per, np.uint8)
    padded[:codes.size] = codes.ravel()
    groups = padded.reshape(-1, per)
    return np.bitwise_or.reduce(groups << (np.arange(per, dtype=np.uint8) * bits), axis=1).astype(np.uint8)


def _unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    per = 8 // bits
    codes = (packed[:, None] >> (np.arange(per, dtype=np.uint8) * bits)) & np.uint8((1 << bits) - 1)
    return codes.ravel()[:count]


def encode_tensor(name: str, t: torch.Tensor) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """``({stored name: array}, layout)`` of one tensor: a palette when it has at most 16 distinct float32
    values (compared as bit patterns, so -0.0 and NaN payloads survive), else the raw array."""
    a = t.detach().cpu().numpy()
    if a.dtype == np.float32 and a.size:
        levels, codes = np.unique(a.view(np.uint32).ravel(), return_inverse=True)
        bits = next((b for b in PALETTE_BITS if len(levels) <= 1 << b), None)
        if bits is not None:
            packed = _pack_codes(codes.astype(np.uint8), bits)
            return ({f"{name}:levels": levels.view(np.float32), f"{name}:codes": packed},
                    {"encoding": "palette", "bits": bits, "shape": list(a.shape)})
    return {name: np.ascontiguousarray(a)}, {"encoding": "raw", "shape": list(a.shape)}


def decode_tensor(name: str, layout: Dict[str, Any], arrays: Dict[str, np.ndarray], source: str) -> torch.Tensor:
    shape = tuple(int(d) for d in layout.get("shape", ()))
    try:
        if layout.get("encoding") == "palette":
            levels, packed = arrays[f"{name}:levels"], arrays[f"{name}:codes"]
            bits, count = int(layout["bits"]), int(np.prod(shape, dtype=np.int64))
            if bits not in PALETTE_BITS or packed.size * (8 // bits) < count:
                raise ValueError(f"{packed.size} bytes of {bits}-bit codes for {count} values")
            codes = _unpack_codes(packed, bits, count)
            if codes.size and int(codes.max()) >= levels.size:
                raise ValueError(f"a code beyond its {levels.size} levels")
            return torch.from_numpy(levels[codes].reshape(shape).copy())
        if layout.get("encoding") == "raw":
            a = arrays[name]
            if a.size != int(np.prod(shape, dtype=np.int64)):  # the container stores a 0-d array as (1,)
                raise ValueError(f"shape {a.shape}, expected {shape}")
            return torch.from_numpy(a.reshape(shape).copy())
        raise ValueError(f"unknown encoding {layout.get('encoding')!r}")
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: tensor {name!r} cannot be decoded ({exc})") from None


def write_compact(model: nn.Module, config: Dict[str, Any], path: Union[str, Path],
                  extra: Dict[str, Any] = None) -> Dict[str, Any]:
    """Write the compact checkpoint of an eval-mode ``model`` built from ``config`` (a training
    configuration dict). Returns the per-tensor layout."""
    state = {**model.state_dict(), **eval_weights(model)}
    arrays, layout = {}, {}
    for name, t in state.items():
        a, layout[name] = encode_tensor(name, t)
        arrays.update(a)
    save_model_file(path, KIND, {"format": FORMAT, "config": config, "tensors": layout, **(extra or {})}, arrays)
    return layout


def read_compact(path: Union[str, Path]) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """``(metadata, state dict)`` of a compact checkpoint; CheckpointError naming the file when it is not one
    or is damaged (the container's checksum covers every byte)."""
    kind, meta, arrays = load_model_file(path)
    if kind != KIND:
        raise CheckpointError(f"{path} is a lowbit {kind!r} model file, not a zoo checkpoint")
    if meta.get("format") != FORMAT or not isinstance(meta.get("tensors"), dict):
        raise CheckpointError(f"{path}: unknown zoo checkpoint format {meta.get('format')!r}")
    state = {name: decode_tensor(name, layout, arrays, str(path)) for name, layout in meta["tensors"].items()}
    return meta, state


def model_from_compact(path: Union[str, Path]) -> Tuple[nn.Module, Dict[str, Any]]:
    """The eval-mode model of a compact checkpoint, and its metadata."""
    from ..train.checkpoint import model_from_checkpoint

    meta, state = read_compact(path)
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path}: no training configuration in its metadata")
    model = model_from_checkpoint({"config": meta["config"], "model_state": state}, str(path))
    return model.eval(), meta
