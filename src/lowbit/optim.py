"""Optimizer set-up for quantized networks.

Two things the BNN/QNN method needs from every optimizer, done here once so no training loop has to
remember them:

* **Per-layer learning-rate scale** (BinaryConnect): the latent weights of a quantized layer get
  ``lr * 1/sqrt(1.5 / (fan_in + fan_out))``; biases, batch-norm and other parameters get plain ``lr``.
* **Latent-weight clipping**: after every ``optimizer.step()`` the latent weights of quantized layers are
  clipped to ``[-clip, clip]`` (1.0 by default). The clip value travels in the parameter group
  (``group["weight_clip"]``) and a step post-hook applies it, so it works for any ``torch.optim`` class.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional

import torch
from torch import nn

from .errors import ConfigError
from .layers import QuantLayerMixin

OPTIMIZERS: Dict[str, type] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def register_optimizer(name: str, cls: type) -> None:
    """Make an optimizer class available to :func:`build_optimizer` and recipes by name."""
    OPTIMIZERS[name] = cls


def param_groups(model: nn.Module, lr: float, lr_scale: bool = True) -> List[dict]:
    """One group per quantized layer's latent weight (scaled LR, clip), one group for everything else."""
    groups: List[dict] = []
    seen = set()
    for name, module in model.named_modules():
        if isinstance(module, QuantLayerMixin) and module.weight_clip is not None:
            scale = module.glorot_lr_scale if lr_scale else 1.0
            groups.append(
                {
                    "params": [module.weight],
                    "lr": lr * scale,
                    "lr_scale": scale,
                    "weight_clip": module.weight_clip,
                    "name": f"{name}.weight",
                }
            )
            seen.add(id(module.weight))
    rest = [p for p in model.parameters() if id(p) not in seen and p.requires_grad]
    if rest:
        groups.append({"params": rest, "lr": lr, "lr_scale": 1.0, "weight_clip": None, "name": "other"})
    return groups


@torch.no_grad()
def clip_latent_weights(optimizer: torch.optim.Optimizer, *args, **kwargs) -> None:
    """Clip every parameter group that carries a ``weight_clip`` to ``[-clip, clip]`` (a step post-hook)."""
    for group in optimizer.param_groups:
        clip = group.get("weight_clip")
        if clip is not None:
            for p in group["params"]:
                p.clamp_(-clip, clip)


def attach_weight_clipping(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Install :func:`clip_latent_weights` as a post-step hook (idempotent)."""
    if not getattr(optimizer, "_lowbit_clipping", False):
        optimizer.register_step_post_hook(clip_latent_weights)
        optimizer._lowbit_clipping = True
    return optimizer


def build_optimizer(
    model: nn.Module,
    name: str = "adam",
    lr: float = 1e-3,
    lr_scale: bool = True,
    **kwargs,
) -> torch.optim.Optimizer:
    """The optimizer for a (partly) quantized model, with LR scaling and latent-weight clipping installed."""
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(sorted(OPTIMIZERS))}")
    if not lr > 0:
        raise ConfigError(f"learning rate must be > 0, got {lr}")
    optimizer = OPTIMIZERS[key](param_groups(model, lr, lr_scale), lr=lr, **kwargs)
    return attach_weight_clipping(optimizer)


def exponential_decay(lr_start: float, lr_end: float, total_steps: int):
    """Multiplier for ``LambdaLR``: lr goes from ``lr_start`` to ``lr_end`` geometrically over
    ``total_steps`` (the paper's schedule: e.g. 3e-3 -> 3e-7 over the run).

    factor(t) = (lr_end / lr_start) ** (t / total_steps)
    """
    if not (lr_start > 0 and lr_end > 0):
        raise ConfigError(f"learning rates must be > 0, got start={lr_start} end={lr_end}")
    ratio = lr_end / lr_start
    total = max(int(total_steps), 1)

    def factor(step: int) -> float:
        return ratio ** (min(step, total) / total)

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, lr_start: float, lr_end: float, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Exponential decay applied to every group (each keeps its own LR scale)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, exponential_decay(lr_start, lr_end, total_steps))
