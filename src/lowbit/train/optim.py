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

from typing import List

import torch
from torch import nn

from ..errors import ConfigError
from ..quant.kbit import ap2, ap2_scalar
from ..registry import OPTIMIZERS
from ..nn.layers import QuantLayerMixin

OPTIMIZERS.register("adam", obj=torch.optim.Adam)
OPTIMIZERS.register("adamw", obj=torch.optim.AdamW)
OPTIMIZERS.register("adamax", obj=torch.optim.Adamax)  # the float AdaMax that ShiftAdaMax approximates with shifts
OPTIMIZERS.register("sgd", obj=torch.optim.SGD)


def register_optimizer(name: str, cls: type) -> None:
    """Make an optimizer class (or factory ``(params, lr, **kw) -> Optimizer``) available to
    :func:`build_optimizer` and recipes by name (:data:`lowbit.registry.OPTIMIZERS`)."""
    OPTIMIZERS.register(name, obj=cls)


class ShiftAdaMax(torch.optim.Optimizer):
    """Shift-based AdaMax (QNN paper, Algorithm 4): AdaMax whose multiplications are shifts.

    Per parameter, with g its gradient, t the step count (from 1), AP2(x) = sign(x) 2^round(log2|x|):

        m      = b1 m + (1 - b1) g                    (1 - b1 = 2^-3: m - (m >> 3) + (g >> 3))
        v      = max(b2 v, |g|)                       (1 - b2 = 2^-10: v - (v >> 10))
        theta -= AP2(lr / (1 - b1^t)) * m * AP2(max(v, eps))^-1

    The step size and the divisor are powers of two, so the update is m shifted by a whole number of bits.
    ``lr`` is each parameter group's own: lowbit's groups already carry the per-layer Glorot scale in it
    (:func:`param_groups`), so AP2 rounds the scaled rate (within a factor 2^(1/2)), and a scheduler may
    change it between steps. The latent-weight clip is applied by the post-step hook of
    :func:`build_optimizer`, as for every optimizer.

    v = 0 (a parameter whose gradients have all been 0) is handled as Torch7's BinaryNet does, with
    eps = 2^-27: the divisor is AP2(max(v, eps)) (Torch7 adds eps to the stored AP2(v); clamping instead
    keeps the divisor a power of two, and is the same whenever v >> eps). There m = 0 too, so such a
    parameter does not move.

    Defaults: lr = 2^-10, betas = (1 - 2^-3, 1 - 2^-10), eps = 2^-27.
    """

    def __init__(self, params, lr: float = 2.0 ** -10, betas=(1 - 2.0 ** -3, 1 - 2.0 ** -10), eps: float = 2.0 ** -27):
        if not lr > 0:
            raise ConfigError(f"shift_adamax: lr must be > 0, got {lr}")
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ConfigError(f"shift_adamax: betas must be in [0, 1), got {betas}")
        if not eps > 0:
            raise ConfigError(f"shift_adamax: eps must be > 0, got {eps}")
        super().__init__(params, dict(lr=lr, betas=(float(b1), float(b2)), eps=float(eps)))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise ConfigError("shift_adamax does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_inf"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_inf"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                torch.maximum(v.mul_(b2), g.abs(), out=v)
                step_size = ap2_scalar(group["lr"] / (1 - b1 ** state["step"]))
                p.sub_(m / ap2(v.clamp(min=group["eps"])), alpha=step_size)
        return loss


register_optimizer("shift_adamax", ShiftAdaMax)


def sgd_momentum(params, lr, **kwargs):
    """SGD with momentum 0.9 and weight decay 5e-5 (the PACT/SAWB ImageNet setting)."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-5, **kwargs)


register_optimizer("sgd_momentum", sgd_momentum)


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
    # Parameters of modules that carry their own penalty (PACT's alpha: ``regularizer = "pact_l2"``) get no
    # optimizer weight decay on top of it: the paper regularizes alpha once.
    own_penalty = [p for m in model.modules() if getattr(m, "regularizer", None)
                   for p in m.parameters(recurse=False) if id(p) not in seen and p.requires_grad]
    seen.update(id(p) for p in own_penalty)
    if own_penalty:
        groups.append({"params": own_penalty, "lr": lr, "lr_scale": 1.0, "weight_clip": None, "weight_decay": 0.0,
                       "name": "own_penalty"})
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
    cls = OPTIMIZERS.get(name)
    if not lr > 0:
        raise ConfigError(f"learning rate must be > 0, got {lr}")
    groups = param_groups(model, lr, lr_scale)
    if cls in _FUSABLE and "fused" not in kwargs and "foreach" not in kwargs:
        # One vectorized pass per tensor instead of ~10 elementwise ones: the paper MLP's Adam step on
        # 37M latent weights goes from 195 ms to 43 ms (2 threads), a third of its training step. Same
        # update rule; torch refuses tensors it cannot fuse, and then the plain loop runs.
        try:
            return attach_weight_clipping(cls(groups, lr=lr, fused=True, **kwargs))
        except (RuntimeError, ValueError, TypeError):
            pass
    return attach_weight_clipping(cls(groups, lr=lr, **kwargs))


_FUSABLE = (torch.optim.Adam, torch.optim.AdamW)


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
