"""Shift-based batch normalization (QNN paper, Algorithm 3): batch norm whose multiplications are shifts.

With AP2(x) = sign(x) 2^round(log2|x|) (:func:`lowbit.kbit.ap2`), per channel over the batch (and the
spatial positions for 2-D inputs):

    C     = x - mean(x)
    var   = mean(C * AP2(C))                  (C * AP2(C): a shift of C by its own exponent)
    x_hat = C * AP2(1 / sqrt(var + eps))      (a shift)
    y     = AP2(gamma) * x_hat + beta         (a shift, then an add; beta stays full precision)

Evaluation uses the running statistics instead of the batch's: x_hat = (x - running_mean) *
AP2(1 / sqrt(running_var + eps)). The running statistics are updated as ``nn.BatchNorm`` does
(``running = (1 - momentum) running + momentum batch``, ``momentum=None`` a cumulative average), with the
shift variance of the batch times n / (n - 1) (the unbiased correction nn.BatchNorm applies).
Parameters, buffers and state-dict keys are those of ``nn.BatchNorm``, so the modules are drop-ins.

Gradient: autograd through the formulas above with every AP2 straight-through (d AP2(z) / dz := 1, see
:func:`lowbit.kbit.ap2_ste`): d/dC [C AP2(C)] = AP2(C) + C (about 2C, the derivative of C^2);
d x_hat / d var = -C (var + eps)^(-3/2) / 2; d y / d gamma = x_hat; d y / d beta = 1. The mean and the
variance are differentiated through, as in a float batch norm.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _NormBase

from ..errors import ConfigError
from ..quant.kbit import ap2_ste


class _ShiftBatchNorm(_NormBase):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        if not eps > 0:
            raise ConfigError(f"{type(self).__name__}: eps must be > 0, got {eps}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)

        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or self.running_mean is None

        if use_batch:
            mean = x.mean(dims)
            c = x - mean.view(shape)
            var = (c * ap2_ste(c)).mean(dims)
            if self.training and self.running_mean is not None:
                n = x.numel() // x.shape[1]
                with torch.no_grad():
                    self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                    unbiased = var.detach() * (n / max(n - 1, 1))
                    self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        else:
            c = x - self.running_mean.view(shape)
            var = self.running_var
        x_hat = c * ap2_ste(torch.rsqrt(var + self.eps)).view(shape)
        if not self.affine:
            return x_hat
        return ap2_ste(self.weight).view(shape) * x_hat + self.bias.view(shape)


class ShiftBatchNorm1d(_ShiftBatchNorm):
    """Shift-based batch norm over (N, C) or (N, C, L) inputs; the ``nn.BatchNorm1d`` arguments."""

    def _check_input_dim(self, x):
        if x.dim() not in (2, 3):
            raise ValueError(f"ShiftBatchNorm1d expects 2-D or 3-D input, got {x.dim()}-D")


class ShiftBatchNorm2d(_ShiftBatchNorm):
    """Shift-based batch norm over (N, C, H, W) inputs; the ``nn.BatchNorm2d`` arguments."""

    def _check_input_dim(self, x):
        if x.dim() != 4:
            raise ValueError(f"ShiftBatchNorm2d expects 4-D input, got {x.dim()}-D")


@torch.no_grad()
def recalibrate_batch_norm(model: torch.nn.Module, images: torch.Tensor, batch_size: int, device=None) -> int:
    """Re-estimate every batch norm's running mean/variance from ``images``; returns how many were reset.

    Why: a batch norm evaluates with running statistics, an exponential average (momentum 0.1) over the
    last few dozen training batches. While binary weights still flip, that average describes weights that
    no longer exist; shift-BN is hit hardest, since AP2(1 / sqrt(running_var)) turns a small mismatch into
    a factor-2 jump (benchmarks/results/bn_recalibration.md: a W1A1 shift-BN ConvNet, 64.5% -> 97.0%).

    How: every running statistic is reset and set to a cumulative average (momentum None), then the
    network runs forward over ``images`` in batches of ``batch_size`` with only the batch norms in training
    mode: dropout and stochastic quantizers behave as at evaluation, so the statistics describe the network
    that is evaluated. Each running mean/variance ends as the plain average of the per-batch mean/(unbiased)
    variance, as ``torch.optim.swa_utils.update_bn`` computes it. Weights are untouched; no gradient; the
    global RNG is not drawn from. Train/eval modes and momenta are restored afterwards.
    """
    norms = [m for m in model.modules()
             if isinstance(m, _NormBase) and m.track_running_stats and m.running_mean is not None]
    if not norms or len(images) == 0:
        return 0
    if batch_size < 1:
        raise ConfigError(f"recalibrate_batch_norm: batch_size must be >= 1, got {batch_size}")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            model((batch if device is None else batch.to(device)).float())
    finally:
        for m, mode in modes.items():
            m.training = mode
        for m, momentum in momenta.items():
            m.momentum = momentum
    return len(norms)


NORMS = ("bn", "shift_bn")


def check_norm(model: str, norm: str) -> None:
    """ConfigError naming ``model`` unless ``norm`` is one of :data:`NORMS` (a network constructor's check)."""
    if norm not in NORMS:
        raise ConfigError(f"{model}: norm must be one of {NORMS}, got {norm!r}")


def batch_norm(kind: str, dims: int, num_features: int, eps: float = 1e-5, momentum=0.1):
    """``nn.BatchNorm{1,2}d`` for ``kind="bn"``, :class:`ShiftBatchNorm1d`/``2d`` for ``"shift_bn"``."""
    from torch import nn

    if kind not in NORMS:
        raise ConfigError(f"norm must be one of {NORMS}, got {kind!r}")
    if kind == "bn":
        cls = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
    else:
        cls = ShiftBatchNorm1d if dims == 1 else ShiftBatchNorm2d
    return cls(num_features, eps=eps, momentum=momentum)
