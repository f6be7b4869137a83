"""PACT (learned activation clipping) and SAWB (statistics-aware weight binning): Choi et al., arXiv
1805.06085 and 1807.06964. Together they make 2-bit ResNets train close to full precision.

* PACT replaces the ReLU of a quantized network by ``clip(x, 0, alpha)`` with a learnable ``alpha`` per
  layer, quantized uniformly to k bits over [0, alpha]; an L2 penalty on alpha (added to the loss by the
  training loop when ``TrainConfig.pact_l2 > 0``, see :func:`pact_l2_penalty`) pulls it down to where the
  clipping error and the rounding error balance.
* SAWB sets the weight quantizer's range from two moments of the weights, ``alpha* = c1 sqrt(E[w^2]) -
  c2 E[|w|]``, with (c1, c2) per bit width fitted once so that alpha* tracks the MSE-optimal scale over a
  family of weight distributions (:func:`fit_sawb`, run by ``scripts/fit_sawb.py``, shipped in
  :data:`SAWB_COEFFICIENTS`).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from . import kbit as _kbit
from ..errors import ConfigError
from .base import Quantizer, register_quantizer

# --------------------------------------------------------------------------------------------------------
# PACT
# --------------------------------------------------------------------------------------------------------

PACT_MIN_ALPHA = 1e-4  # alpha is used as max(alpha, 1e-4) so a step that drives it to <= 0 cannot divide by 0


class _Pact(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, bits):
        a = torch.clamp(alpha.detach(), min=PACT_MIN_ALPHA)
        ctx.save_for_backward(x, a)
        n = 2 ** bits - 1
        y = torch.minimum(torch.clamp(x, min=0.0), a)
        return a * (torch.floor(y * n / a + 0.5) / n)

    @staticmethod
    def backward(ctx, grad_output):
        x, a = ctx.saved_tensors
        pass_x = (x >= 0) & (x < a)
        grad_x = grad_output * pass_x.to(grad_output.dtype)
        grad_alpha = (grad_output * (x >= a).to(grad_output.dtype)).sum().reshape(a.shape)
        return grad_x, grad_alpha, None


def pact(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """PACT activation, k-bit.

    forward:  y = clip(x, 0, alpha) = (|x| - |x - alpha| + alpha) / 2,
              y_q = round(y (2^k - 1) / alpha) alpha / (2^k - 1)   (ties up; levels {0, alpha/n, ..., alpha})
    backward: d y_q / d x = 1{0 <= x < alpha}   (STE through the rounding)
              d y_q / d alpha = 1{x >= alpha}    (the paper's estimate: inside the range the rounding's own
              dependence on alpha, round(y n/alpha)/n - y/alpha, is ignored), summed over the tensor.
    ``alpha`` is a 0-dim tensor (used as max(alpha, 1e-4)).
    """
    return _Pact.apply(x, alpha, _kbit._check_bits("pact", bits))


@register_quantizer("pact")
class PACT(Quantizer):
    """PACT activation quantizer with a learnable clipping level ``alpha`` (an ``nn.Parameter``).

    Use it as an activation (``QuantAct("pact:bits=2")``, ``act_quantizer="pact:bits=2,alpha=10"``) or as a
    layer's ``input_quantizer``; each instance has its own alpha. It is an activation quantizer only: its
    output is in [0, alpha] (it replaces a ReLU), so a weight that used it would lose its sign.

    Args:
        bits: 1..8.
        alpha: initial clipping level (> 0). The PACT paper initializes it to 10 and lets the L2 penalty
            bring it down; on batch-normalized inputs (unit scale) a smaller start (e.g. 3) wastes fewer
            early steps.
    """

    roles = frozenset({"activation"})
    # The training loop adds ``cfg.pact_l2 * regularization()`` to the loss (the paper's lambda ||alpha||^2):
    # any module may declare such a term by naming its coefficient's config key here.
    regularizer = "pact_l2"

    def __init__(self, bits: int = 4, alpha: float = 10.0):
        super().__init__()
        self.bits = _kbit._check_bits("pact", bits)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
            raise ConfigError(f"pact: alpha must be a finite number > 0, got {alpha!r}")
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Pact.apply(x, self.alpha, self.bits)

    def regularization(self) -> torch.Tensor:
        """alpha^2, the L2 term PACT puts on its clipping level."""
        return self.alpha.square().sum()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha.detach()):.4g}"


def pact_l2_penalty(model: nn.Module) -> torch.Tensor:
    """sum over the model's PACT quantizers of alpha^2 (the training loop adds ``pact_l2 *`` this to the loss,
    the paper's lambda_alpha ||alpha||^2). A zero tensor when the model has none."""
    terms = [m.regularization() for m in model.modules() if isinstance(m, PACT)]
    if not terms:
        p = next(model.parameters(), None)
        return torch.zeros((), device=None if p is None else p.device)
    return torch.stack(terms).sum()


# --------------------------------------------------------------------------------------------------------
# SAWB
# --------------------------------------------------------------------------------------------------------

# (c1, c2) per bit width, from ``python scripts/fit_sawb.py`` (fit_sawb with its defaults: generalized
# Gaussians of shape 1 (Laplace) .. 8, uniform, and three mixtures; 2^17 quantile points each).
# Published (1807.06964 and public code): 2 bits (3.212, 2.178) or (3.12, 2.064), 3 (7.509, 6.892),
# 4 (12.68, 12.80), 5 (17.74, 18.64), 8 (31.76, 35.04). 1 bit is exact: the MSE-optimal binary scale is E|w|.
SAWB_COEFFICIENTS: Dict[int, Tuple[float, float]] = {
    1: (0.0, -1.0),
    2: (3.261, 2.249),
    3: (7.430, 6.769),
    4: (11.875, 11.690),
    5: (16.562, 16.968),
    6: (21.425, 22.516),
    7: (26.244, 28.032),
    8: (31.072, 33.590),
}


def sawb_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """alpha* = c1 sqrt(E[w^2]) - c2 E[|w|] (a 0-dim tensor, no gradient), falling back to max|w| when that
    is <= 0 (possible only for an extreme, e.g. all-but-one-zero, weight tensor)."""
    if bits not in SAWB_COEFFICIENTS:
        raise ConfigError(f"sawb: bits must be one of {sorted(SAWB_COEFFICIENTS)}, got {bits!r}")
    c1, c2 = SAWB_COEFFICIENTS[bits]
    w = w.detach()
    alpha = c1 * w.square().mean().sqrt() - c2 * w.abs().mean()
    # amax over every dim by name: torch.onnx.export (dynamo) rejects amax() without dim
    fallback = w.abs().amax(dim=tuple(range(w.dim())))
    alpha = torch.where(alpha > 0, alpha, fallback)
    return torch.clamp(alpha, min=torch.finfo(w.dtype).tiny)


class _Sawb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, bits):
        return _kbit._uniform_levels(w, bits, sawb_scale(w, bits), signed=True, stochastic=False)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None


def sawb_quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """SAWB weight quantization.

    forward:  alpha = sawb_scale(w, k) (per tensor, treated as a constant), then the symmetric k-bit linear
              quantizer over [-alpha, alpha] (2^k levels, no zero): 2 bits {-alpha, -alpha/3, alpha/3, alpha}.
    backward: g_r = g_q (plain straight-through, no cancellation: alpha follows the weights, so a weight
              beyond alpha is not saturated for good, and cancelling its gradient would freeze the tails
              that set alpha).
    """
    if isinstance(bits, bool) or bits not in SAWB_COEFFICIENTS:
        raise ConfigError(f"sawb: bits must be one of {sorted(SAWB_COEFFICIENTS)}, got {bits!r}")
    return _Sawb.apply(w, int(bits))


@register_quantizer("sawb")
class SAWB(Quantizer):
    """SAWB weight quantizer; see :func:`sawb_quantize`. A weight quantizer only (its scale is a statistic
    of the whole weight tensor). Args: bits 1..8."""

    roles = frozenset({"weight"})

    def __init__(self, bits: int = 2):
        super().__init__()
        if isinstance(bits, bool) or bits not in SAWB_COEFFICIENTS:
            raise ConfigError(f"sawb: bits must be one of {sorted(SAWB_COEFFICIENTS)}, got {bits!r}")
        self.bits = int(bits)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _Sawb.apply(w, self.bits)

    def extra_repr(self) -> str:
        c1, c2 = SAWB_COEFFICIENTS[self.bits]
        return f"bits={self.bits}, c1={c1}, c2={c2}"


# ---- fitting the coefficients ----------------------------------------------------------------------------


def symmetric_quantization_mse(abs_w: np.ndarray, alphas: np.ndarray, bits: int) -> np.ndarray:
    """E[(w - Q_alpha(w))^2] for each alpha, Q the symmetric k-bit quantizer of :func:`sawb_quantize`;
    ``abs_w`` are equally weighted points of |w| (Q is odd, so |w| is enough)."""
    n, half = 2 ** bits - 1, 2 ** (bits - 1)
    out = np.empty(len(alphas))
    for start in range(0, len(alphas), 16):  # chunks keep the (alphas x points) matrix small
        a = np.asarray(alphas[start:start + 16], dtype=np.float64)[:, None]
        j = np.clip(np.floor(abs_w[None, :] * n / (2 * a)), -half, half - 1)
        out[start:start + 16] = ((abs_w[None, :] - a * (2 * j + 1) / n) ** 2).mean(axis=1)
    return out


def mse_optimal_scale(abs_w: np.ndarray, bits: int, coarse: int = 240, max_ratio: float = 12.0) -> float:
    """The MSE-optimal alpha for ``abs_w``: a coarse grid over (0, max_ratio * rms], then golden-section
    search in the best grid cell (MSE(alpha) is smooth there)."""
    rms = float(np.sqrt(np.mean(abs_w ** 2)))
    grid = np.linspace(0.05, max_ratio, coarse) * rms
    i = int(np.argmin(symmetric_quantization_mse(abs_w, grid, bits)))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, coarse - 1)]
    g = (math.sqrt(5) - 1) / 2
    for _ in range(48):
        x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
        f1, f2 = symmetric_quantization_mse(abs_w, np.array([x1, x2]), bits)
        if f1 < f2:
            hi = x2
        else:
            lo = x1
    return 0.5 * (lo + hi)


def sawb_family(points: int = 2 ** 17) -> Dict[str, np.ndarray]:
    """The weight distributions the coefficients are fitted over, as ``points`` quantiles of |w| (unit
    variance): generalized Gaussians exp(-|x|^beta) from beta = 1 (Laplace) through 2 (Gaussian) to 8 (near
    uniform), the uniform, and mixtures (Gaussian + Laplace, Gaussian + uniform, Gaussian + 10% of a Gaussian
    twice as wide). Shapes heavier-tailed than Laplace are left out: there the 2-bit optimum stops growing
    with the tails and no line in E|w|/sigma fits both (the published coefficients fit this range)."""
    from scipy import stats

    u = (np.arange(points) + 0.5) / points
    fam: Dict[str, np.ndarray] = {}
    for beta in (1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 8.0):
        d = stats.gennorm(beta)
        fam[f"gennorm{beta:g}"] = stats.gennorm(beta, scale=1.0 / d.std()).ppf((1 + u) / 2)
    r3 = math.sqrt(3.0)
    fam["uniform"] = stats.uniform(-r3, 2 * r3).ppf((1 + u) / 2)

    def mixture(dists, weights):
        hi = max(d.ppf(1 - 1e-12) for d in dists)
        grid = np.linspace(0.0, hi, 400_001)
        cdf = sum(w * (2 * d.cdf(grid) - 1) for d, w in zip(dists, weights))  # CDF of |w|
        return np.interp(u, cdf, grid)

    gauss, lap, uni = stats.norm(), stats.laplace(scale=1 / math.sqrt(2)), stats.uniform(-r3, 2 * r3)
    fam["gauss+laplace"] = mixture([gauss, lap], [0.5, 0.5])
    fam["gauss+uniform"] = mixture([gauss, uni], [0.5, 0.5])
    fam["gauss+wide"] = mixture([gauss, stats.norm(scale=2.0)], [0.9, 0.1])
    return fam


def fit_sawb(bits: int, family: Optional[Dict[str, np.ndarray]] = None, points: int = 2 ** 17):
    """Fit (c1, c2) for ``bits`` the way the SAWB paper does: for each distribution find the MSE-optimal
    scale alpha* by a 1-D search, then least-squares regress alpha* on the two moments,
    alpha* ~ c1 sqrt(E[w^2]) - c2 E|w|. Returns (c1, c2, rows) with rows = [(name, E|w|/rms, alpha*/rms,
    fitted/rms)]."""
    family = sawb_family(points) if family is None else family
    X, y, names = [], [], []
    for name, abs_w in family.items():
        X.append([math.sqrt(float(np.mean(abs_w ** 2))), -float(np.mean(abs_w))])
        y.append(mse_optimal_scale(abs_w, bits))
        names.append(name)
    X, y = np.array(X), np.array(y)
    (c1, c2), *_ = np.linalg.lstsq(X, y, rcond=None)
    fitted = X @ np.array([c1, c2])
    rows = [(n, -x[1] / x[0], t / x[0], f / x[0]) for n, x, t, f in zip(names, X, y, fitted)]
    return float(c1), float(c2), rows
