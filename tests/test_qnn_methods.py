"""The QNN methods: k-bit linear and log quantization, quantized gradients, shift-based batch norm and AdaMax,
the bit-plane first layer, PACT and SAWB. Hand-computed values and float64 re-implementations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lowbit.nn.bitplane import BitPlaneConv2d, BitPlaneLinear, bitplane_conv2d, bitplane_dot, bitplane_matmul
from lowbit.errors import ConfigError, ShapeError
from lowbit.quant.kbit import GradQuant, LinearQuant, LogQuant, ap2, ap2_scalar, linear_quantize, log_quantize, quantize_gradient
from lowbit.nn.layers import QuantAct, QuantConv2d, QuantLinear
from lowbit.models import convnet, mlp
from lowbit.nn.norm import ShiftBatchNorm1d, ShiftBatchNorm2d
from lowbit.train.optim import ShiftAdaMax, build_optimizer, build_scheduler
from lowbit.quant.pact_sawb import PACT, SAWB, SAWB_COEFFICIENTS, fit_sawb, pact, pact_l2_penalty, sawb_family, sawb_quantize, sawb_scale
from lowbit.quant.base import get_quantizer, ste_sign


def _ap2_ref(x: torch.Tensor) -> torch.Tensor:
    """AP2 straight from the formula, in float64: sign(x) 2^round(log2|x|)."""
    x = x.double()
    return torch.sign(x) * torch.exp2(torch.round(torch.log2(x.abs())))


def _ap2_ste_ref(x):
    return x + (_ap2_ref(x) - x).detach()


# ---- AP2 -------------------------------------------------------------------------------------------------


def test_ap2_matches_formula_and_is_exact_power_of_two():
    torch.manual_seed(0)
    x = torch.randn(20000) * torch.exp2(torch.randint(-40, 40, (20000,)).float())
    q = ap2(x)
    assert torch.equal(q.double(), _ap2_ref(x))
    m, _ = torch.frexp(q.abs())
    assert torch.all(m == 0.5)  # a power of two: mantissa exactly 1/2
    assert torch.equal(ap2(torch.tensor([0.0, -0.0, 0.7, 0.71, -3.0, 1.4142, 1.4143])),
                       torch.tensor([0.0, 0.0, 0.5, 1.0, -4.0, 1.0, 2.0]))
    assert ap2_scalar(3.0) == 4.0 and ap2_scalar(-0.7) == -0.5 and ap2_scalar(0.0) == 0.0
    assert ap2_scalar(2.0 ** -10 / (1 - 0.875)) == 2.0 ** -7


# ---- linear quantization -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(1, 9))
def test_linear_symmetric_level_set(bits):
    n = 2 ** bits - 1
    x = torch.linspace(-1.5, 1.5, 20001, dtype=torch.float64)
    q = linear_quantize(x, bits, 1.0, "symmetric")
    expected = torch.tensor([(2 * j + 1) / n for j in range(-(2 ** (bits - 1)), 2 ** (bits - 1))], dtype=torch.float64)
    assert torch.allclose(q.unique(), expected, atol=1e-12)
    assert len(q.unique()) == 2 ** bits
    assert q.max() == 1.0 and q.min() == -1.0  # both range ends are levels, exactly


@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_linear_unsigned_level_set(bits):
    n = 2 ** bits - 1
    q = linear_quantize(torch.linspace(-1, 4, 20001, dtype=torch.float64), bits, 3.0, "unsigned")
    assert torch.allclose(q.unique(), torch.arange(n + 1, dtype=torch.float64) * 3.0 / n, atol=1e-12)


def test_linear_hand_values_ties_and_range_symmetric():
    # bits 2 over [-1.5, 1.5]: step 1, levels -1.5 -0.5 0.5 1.5, boundaries at -1, 0, 1 (ties go up)
    x = torch.tensor([-3.0, -1.5, -1.2, -1.0, -0.5, -1e-7, 0.0, 0.3, 1.0, 1.5, 2.0], requires_grad=True)
    q = linear_quantize(x, 2, 1.5)
    assert torch.equal(q, torch.tensor([-1.5, -1.5, -1.5, -0.5, -0.5, -0.5, 0.5, 0.5, 1.5, 1.5, 1.5]))
    q.backward(torch.arange(1.0, 12.0))
    # cancelled strictly beyond the range; the ends pass
    assert torch.equal(x.grad, torch.tensor([0.0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0]))


def test_linear_hand_values_unsigned():
    x = torch.tensor([-1.0, 0.0, 0.49, 0.5, 1.5, 2.5, 3.0, 3.5], requires_grad=True)
    q = linear_quantize(x, 2, 3.0, "unsigned")  # levels 0 1 2 3
    assert torch.equal(q, torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 3.0, 3.0]))
    q.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1, 1, 1, 1, 1, 1, 0]))


def test_one_bit_linear_is_ste_sign():
    x = torch.cat([torch.randn(1000), torch.tensor([0.0, -1e-8, 1e-8, -1.0, 1.0, -1.0001, 1.0001])])
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    g = torch.randn_like(x)
    q1 = get_quantizer("linear:bits=1")(x1)
    q2 = ste_sign(x2)
    assert torch.equal(q1, q2)
    q1.backward(g)
    q2.backward(g)
    assert torch.equal(x1.grad, x2.grad)
    assert get_quantizer("linear:bits=1").binary and not get_quantizer("linear:bits=2").binary


@pytest.mark.parametrize("mode,a", [("symmetric", 1.0), ("unsigned", 2.0)])
def test_linear_stochastic_rounding_is_unbiased(mode, a):
    torch.manual_seed(0)
    values = torch.tensor([-0.9, -0.41, -0.1, 0.0, 0.2, 0.37, 0.95, 1.7]) if mode == "symmetric" else \
        torch.tensor([0.0, 0.1, 0.37, 0.5, 1.1, 1.9, 2.0])
    draws = 100_000
    x = values.repeat(draws, 1)
    q = linear_quantize(x, 2, a, mode, rounding="stochastic")
    # each value lands only on its two neighbouring levels
    nearest_down = linear_quantize(values, 2, a, mode)
    for i in range(len(values)):
        assert len(q[:, i].unique()) <= 2
    assert torch.allclose(q.mean(0), values.clamp(-a if mode == "symmetric" else 0, a), atol=0.01 * a)
    assert not torch.equal(q[0], nearest_down) or not torch.equal(q[1], nearest_down)


def test_stochastic_module_rounds_to_nearest_in_eval():
    qz = LinearQuant(bits=3, rounding="stochastic")
    x = torch.linspace(-1, 1, 301)
    qz.eval()
    assert torch.equal(qz(x), linear_quantize(x, 3))
    qz.train()
    torch.manual_seed(0)
    assert not torch.equal(qz(x), linear_quantize(x, 3))


# ---- logarithmic quantization ------------------------------------------------------------------------------


def test_log_quantize_hand_values_and_gradient():
    # 3 bits, maxV 1: sign bit + 2 exponent bits -> magnitudes 1, 1/2, 1/4, 1/8
    x = torch.tensor([0.0, 0.01, 0.1, 0.17, 0.18, 0.3, 0.7, 0.71, 1.0, 1.5, 3.0, -0.2, -2.0], requires_grad=True)
    q = log_quantize(x, 3, 1.0)
    expected = torch.tensor([0.125, 0.125, 0.125, 0.125, 0.25, 0.25, 0.5, 1.0, 1.0, 1.0, 1.0, -0.25, -1.0])
    assert torch.equal(q, expected)
    q.sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0]))


@pytest.mark.parametrize("bits", range(1, 9))
def test_log_level_set(bits):
    qz = LogQuant(bits=bits, max_value=4.0)
    x = torch.logspace(-140, 3, 8000, base=2.0, dtype=torch.float64)
    x = torch.cat([-x, x])
    levels = qz(x).unique()
    mags = [4.0 * 2.0 ** -i for i in range(2 ** (bits - 1))]
    expected = torch.tensor(sorted([-m for m in mags] + mags), dtype=torch.float64)
    assert torch.equal(levels, expected)
    assert len(levels) == 2 ** bits
    assert qz.min_value == mags[-1] and qz.max_value == 4.0


# ---- gradient quantization ---------------------------------------------------------------------------------


def _level_index(t: torch.Tensor, bits: int) -> torch.Tensor:
    """j' in 0..n with t = s (2 j' - n) / n, s = max|t|; raises if t is not on that grid."""
    n = 2 ** bits - 1
    s = t.abs().max()
    idx = (t.double() / s.double() * n + n) / 2
    assert torch.allclose(idx, idx.round(), atol=1e-4), "values are not on the k-bit grid"
    return idx.round()


def test_quantize_gradient_levels_scale_and_zero():
    torch.manual_seed(0)
    g = torch.randn(64, 33) * 1e-3
    q = quantize_gradient(g, 4, per_sample=False)  # one scale: the whole tensor on one 16-level grid
    idx = _level_index(q, 4)
    assert len(q.unique()) <= 16 and idx.min() >= 0 and idx.max() <= 15
    assert q.abs().max() == g.abs().max()  # the largest entry is a level: the scale is max|g|
    assert torch.equal(quantize_gradient(torch.zeros(3, 3), 6), torch.zeros(3, 3))
    draws = quantize_gradient(g[:4, :5].expand(20000, 4, 5).contiguous(), 2)  # scale max|g| as for g alone
    step = 2 * float(g[:4, :5].abs().max()) / 3
    assert torch.allclose(draws.mean(0), g[:4, :5], atol=0.03 * step)


def _dorefa_fg(g: torch.Tensor, bits: int, noise: torch.Tensor) -> torch.Tensor:
    """DoReFa-Net's fg, written from the paper's code in float64: per-sample max, uniform noise of half a
    step, round, rescale. ``noise`` are U(0, 1) draws (shifted here to DoReFa's U(-1/2n, 1/2n))."""
    g = g.double()
    n = 2.0 ** bits - 1
    maxx = g.abs().amax(dim=tuple(range(1, g.dim())), keepdim=True)
    x = g / maxx
    x = x * 0.5 + 0.5 + (noise.double() - 0.5) / n
    x = x.clamp(0.0, 1.0)
    x = torch.round(x * n) / n - 0.5
    return x * maxx * 2


def test_gradient_quantizer_is_dorefa_fg_per_sample():
    """Against an independent float64 re-implementation of DoReFa's formula, on a batch where one sample's
    gradients are 1000x smaller: it keeps its own grid (whole-tensor scaling would round it to +-M/n)."""
    torch.manual_seed(0)
    g = torch.randn(8, 3, 5, 5)
    g[3] *= 1e-3
    bits = 6
    q = quantize_gradient(g, bits, generator=torch.Generator().manual_seed(7))
    noise = torch.rand(g.shape, generator=torch.Generator().manual_seed(7))
    ref = _dorefa_fg(g, bits, noise)
    close = torch.isclose(q.double(), ref, rtol=1e-5, atol=0)
    assert close.float().mean() > 0.999  # float32 vs float64 may round differently exactly at a level edge
    small = q[3]
    assert small.abs().max() <= g[3].abs().max() * (1 + 1e-6) and small.abs().max() > 0
    assert len(small.unique()) > 10  # a real 6-bit grid, not two values
    whole = quantize_gradient(g, bits, per_sample=False)
    step = 2 * float(g.abs().max()) / (2 ** bits - 1)
    assert whole[3].abs().min() >= step / 2 - 1e-6  # the old scaling: every entry of sample 3 is at least a half step
    with pytest.raises(ConfigError, match="scale"):
        GradQuant(6, scale="batch")


def test_layer_grad_quantizer_low_bit_gradients_and_unbiased():
    torch.manual_seed(0)
    bits = 3
    layer = QuantLinear(6, 4, bias=False, grad_quantizer=f"grad:bits={bits},scale=tensor")
    ref = QuantLinear(6, 4, bias=False)
    ref.load_state_dict(layer.state_dict())
    x0 = torch.randn(5, 6)
    g_out = torch.randn(5, 4)

    xr = x0.clone().requires_grad_(True)
    ref(xr).backward(g_out)
    sum_x = torch.zeros(5, 6, dtype=torch.float64)
    sum_w = torch.zeros(4, 6, dtype=torch.float64)
    runs = 3000
    for i in range(runs):
        x = x0.clone().requires_grad_(True)
        layer.weight.grad = None
        layer(x).backward(g_out)
        if i < 20:  # each tensor takes at most 2^k levels of its own scale
            for t in (x.grad, layer.weight.grad):
                assert len(t.unique()) <= 2 ** bits
                _level_index(t, bits)
        sum_x += x.grad.double()
        sum_w += layer.weight.grad.double()
    # unbiased: the mean over draws approaches the full-precision gradient
    for mean, exact in ((sum_x / runs, xr.grad), (sum_w / runs, ref.weight.grad)):
        scale = exact.abs().max().item()
        assert torch.allclose(mean.float(), exact, atol=0.05 * scale)


def test_output_gradient_entering_the_products_is_low_bit():
    # With x = I the weight gradient is g_q^T itself: the output gradient after quantization.
    torch.manual_seed(1)
    layer = QuantLinear(8, 3, bias=False, grad_quantizer="grad:bits=2,weight_grad=False,input_grad=False,scale=tensor")
    layer(torch.eye(8)).backward(torch.randn(8, 3))
    gq = layer.weight.grad
    assert len(gq.unique()) <= 4
    _level_index(gq, 2)
    # a conv layer too: forward unchanged, weight gradient on the k-bit grid
    conv = QuantConv2d(2, 3, 3, padding=1, pad_value=1.0, grad_quantizer="grad:bits=2")  # weight grads: one scale
    plain = QuantConv2d(2, 3, 3, padding=1, pad_value=1.0)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 2, 5, 5)
    assert torch.equal(conv(x), plain(x))
    conv(x).sum().backward()
    assert len(conv.weight.grad.unique()) <= 4


def test_grad_quantizer_default_changes_nothing_and_models_pass_it_through():
    a = QuantLinear(5, 3)
    assert a.grad_quantizer is None and "grad_quantizer" not in repr(a)
    assert set(a.state_dict()) == {"weight", "bias"}
    m = mlp(in_shape=[1, 4, 4], hidden=8, depth=2, grad_quantizer="grad:bits=6")
    layers = [mod for mod in m.modules() if isinstance(mod, QuantLinear)]
    assert len(layers) == 3 and all(isinstance(l.grad_quantizer, GradQuant) and l.grad_bits == 6 for l in layers)
    c = convnet(in_shape=[1, 8, 8], channels=[4, "M"], fc=[8], grad_quantizer="grad:bits=6")
    assert all(l.grad_quantizer is not None for l in c.modules() if isinstance(l, (QuantLinear, QuantConv2d)))
    c(torch.rand(2, 1, 8, 8) * 255).sum().backward()
    assert "grad_quantizer=grad6" in repr(layers[0])


# ---- shift-based batch norm --------------------------------------------------------------------------------


def _shift_bn_ref(x, gamma, beta, eps, running=None):
    """Float64 shift BN from the formulas: C = x - mean; var = mean(C AP2(C)); x_hat = C AP2(1/sqrt(var+eps));
    y = AP2(gamma) x_hat + beta; AP2 straight-through."""
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    if running is None:
        mean = x.mean(dims)
        c = x - mean.view(shape)
        var = (c * _ap2_ste_ref(c)).mean(dims)
    else:
        mean, var = running
        c = x - mean.view(shape)
    x_hat = c * _ap2_ste_ref(1.0 / torch.sqrt(var + eps)).view(shape)
    return _ap2_ste_ref(gamma).view(shape) * x_hat + beta.view(shape), mean, var


@pytest.mark.parametrize("cls,shape", [(ShiftBatchNorm1d, (16, 4)), (ShiftBatchNorm2d, (6, 4, 3, 5))])
def test_shift_batch_norm_matches_float64_reference(cls, shape):
    torch.manual_seed(0)
    bn = cls(4, eps=1e-5, momentum=0.25)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.3, 0.9, 1.7, -0.6]))  # AP2: 0.25, 1, 2, -0.5
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.0, 0.5]))
    gamma = bn.weight.detach().double().requires_grad_(True)
    beta = bn.bias.detach().double().requires_grad_(True)
    run_mean, run_var = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    for step in range(3):
        x = (torch.randn(*shape) * torch.tensor([0.5, 2.0, 1.0, 3.0]).view([1, -1] + [1] * (len(shape) - 2))
             + torch.tensor([1.0, -2.0, 0.0, 0.5]).view([1, -1] + [1] * (len(shape) - 2)))
        xm = x.clone().requires_grad_(True)
        xr = x.double().requires_grad_(True)
        g = torch.randn(*shape)
        bn.zero_grad()
        gamma.grad = beta.grad = None
        y = bn(xm)
        y.backward(g)
        y_ref, mean, var = _shift_bn_ref(xr, gamma, beta, 1e-5)
        y_ref.backward(g.double())
        assert torch.allclose(y.double(), y_ref, atol=1e-5)
        assert torch.allclose(xm.grad.double(), xr.grad, atol=1e-4)
        assert torch.allclose(bn.weight.grad.double(), gamma.grad, atol=1e-4)
        assert torch.allclose(bn.bias.grad.double(), beta.grad, atol=1e-4)
        n = x.numel() // 4
        run_mean = 0.75 * run_mean + 0.25 * mean.detach()
        run_var = 0.75 * run_var + 0.25 * var.detach() * n / (n - 1)
        assert torch.allclose(bn.running_mean.double(), run_mean, atol=1e-5)
        assert torch.allclose(bn.running_var.double(), run_var, atol=1e-5)
    bn.eval()
    x = torch.randn(*shape)
    y_ref, _, _ = _shift_bn_ref(x.double(), gamma, beta, 1e-5, (run_mean, run_var))
    assert torch.allclose(bn(x).double(), y_ref, atol=1e-5)
    assert int(bn.num_batches_tracked) == 3
    # a drop-in: the same state-dict keys as nn.BatchNorm
    ref_bn = torch.nn.BatchNorm1d(4) if cls is ShiftBatchNorm1d else torch.nn.BatchNorm2d(4)
    assert set(bn.state_dict()) == set(ref_bn.state_dict())
    ref_bn.load_state_dict(bn.state_dict())


def test_shift_batch_norm_output_scale_is_a_power_of_two():
    torch.manual_seed(0)
    bn = ShiftBatchNorm1d(3, affine=False)
    x = torch.randn(32, 3) * 3 + 1
    y = bn(x)
    ratio = (y / (x - x.mean(0))).mean(0)  # per channel: AP2(1/sqrt(var + eps))
    assert torch.equal(ap2(ratio), ratio)


def test_models_take_shift_bn():
    m = mlp(in_shape=[1, 4, 4], hidden=8, depth=1, norm="shift_bn")
    kinds = {type(mod) for mod in m.modules()}
    assert ShiftBatchNorm1d in kinds and torch.nn.BatchNorm1d not in kinds
    c = convnet(in_shape=[1, 8, 8], channels=[4, "M"], fc=[8], norm="shift_bn")
    kinds = {type(mod) for mod in c.modules()}
    assert ShiftBatchNorm2d in kinds and torch.nn.BatchNorm2d not in kinds
    c(torch.rand(3, 1, 8, 8) * 255).sum().backward()


def _ap2_f64(z: torch.Tensor) -> torch.Tensor:
    """AP2 written from the formula, in float64: sign(z) 2^round(log2|z|) (0 stays 0)."""
    return torch.sign(z) * torch.exp2(torch.round(torch.log2(z.abs().clamp_min(1e-300))))


def test_recalibrate_batch_norm_matches_float64_per_batch_averages():
    from lowbit.nn.norm import recalibrate_batch_norm

    torch.manual_seed(0)
    lin1, bn1, drop, lin2, bn2 = (torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5),
                                  torch.nn.Linear(4, 3), ShiftBatchNorm1d(3))
    model = torch.nn.Sequential(lin1, bn1, drop, lin2, bn2)
    for bn in (bn1, bn2):  # stale statistics from "training"
        bn.running_mean.fill_(7.0)
        bn.running_var.fill_(9.0)
        bn.weight.data.uniform_(0.5, 2.0)
        bn.bias.data.uniform_(-1, 1)
    model.train()
    x = torch.randn(30, 5) * 2 + 1
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k}
    rng = torch.get_rng_state()

    assert recalibrate_batch_norm(model, x, batch_size=10) == 2

    # reference: per batch of 10, float64, dropout off, each norm normalizing with its batch's statistics
    d = lambda t: t.detach().double()  # noqa: E731
    ref = {name: [] for name in ("m1", "v1", "m2", "v2")}
    for b in x.double().split(10):
        h = b @ d(lin1.weight).T + d(lin1.bias)
        m1, v1 = h.mean(0), h.var(0, unbiased=False)
        ref["m1"].append(m1)
        ref["v1"].append(v1 * 10 / 9)
        h = (h - m1) / torch.sqrt(v1 + bn1.eps) * d(bn1.weight) + d(bn1.bias)
        g = h @ d(lin2.weight).T + d(lin2.bias)
        c = g - g.mean(0)
        ref["m2"].append(g.mean(0))
        ref["v2"].append((c * _ap2_f64(c)).mean(0) * 10 / 9)
    avg = {k: torch.stack(v).mean(0) for k, v in ref.items()}
    for bn, m, v in ((bn1, "m1", "v1"), (bn2, "m2", "v2")):
        torch.testing.assert_close(bn.running_mean.double(), avg[m], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), avg[v], rtol=1e-5, atol=1e-6)
        assert bn.momentum == 0.1  # restored
    assert model.training and all(m.training for m in model.modules())  # modes restored
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k
    assert torch.equal(torch.get_rng_state(), rng)  # dropout stayed off: no random draws
    assert recalibrate_batch_norm(torch.nn.Linear(2, 2), x[:, :2], batch_size=10) == 0  # nothing to do


# ---- shift-based AdaMax ------------------------------------------------------------------------------------


def _ap2f(v: float) -> float:
    return math.copysign(2.0 ** round(math.log2(abs(v))), v) if v != 0 else 0.0


def test_shift_adamax_matches_float64_reference():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.0, 0.05, -0.7]))
    opt = ShiftAdaMax([p])  # defaults: lr 2^-10, 1 - b1 = 2^-3, 1 - b2 = 2^-10, eps 2^-27
    lrs = [2.0 ** -10] * 3 + [3e-3] * 3  # the group lr may change between steps (a schedule)
    grads = torch.randn(6, 5)
    grads[0, 2] = grads[1, 2] = 0.0  # v = 0 for entry 2 during the first two steps
    grads[:, 4] = 0.0  # never any gradient: v stays 0, the parameter must not move
    ref = p.detach().double().numpy().copy()
    m = np.zeros(5)
    v = np.zeros(5)
    b1, b2, eps = 1 - 2.0 ** -3, 1 - 2.0 ** -10, 2.0 ** -27
    for t in range(1, 7):
        opt.param_groups[0]["lr"] = lrs[t - 1]
        p.grad = grads[t - 1].clone()
        opt.step()
        g = grads[t - 1].double().numpy()
        m = b1 * m + (1 - b1) * g
        v = np.maximum(b2 * v, np.abs(g))
        step = _ap2f(lrs[t - 1] / (1 - b1 ** t))
        ref = ref - step * m / np.array([_ap2f(max(vi, eps)) for vi in v])
        assert np.allclose(p.detach().double().numpy(), ref, rtol=1e-6, atol=1e-8)
    assert p[4].item() == torch.tensor(-0.7).item()  # untouched


def test_shift_adamax_update_is_a_shift_of_m():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(200))
    opt = ShiftAdaMax([p], lr=0.01)
    p.grad = torch.randn(200)
    opt.step()
    m = opt.state[p]["exp_avg"]
    ratio = (-p.detach()) / m  # AP2(lr / (1 - b1)) / AP2(|g|): a power of two per entry
    assert torch.equal(ap2(ratio), ratio)


def test_shift_adamax_with_param_groups_scale_and_clip():
    torch.manual_seed(0)
    layer = QuantLinear(30, 10, bias=False)
    lr = 0.5
    opt = build_optimizer(torch.nn.Sequential(layer, torch.nn.BatchNorm1d(10)), "shift_adamax", lr=lr)
    assert isinstance(opt, ShiftAdaMax)
    scale = opt.param_groups[0]["lr_scale"]
    assert opt.param_groups[0]["lr"] == pytest.approx(lr * scale)
    w0 = layer.weight.detach().clone()
    layer(torch.randn(8, 30)).pow(2).sum().backward()
    g = layer.weight.grad.clone()
    opt.step()
    # step 1: m = g/8, v = |g|; the group's lr carries the Glorot scale: AP2(0.5 * 5.16 / 2^-3) = 16
    expected = (w0 - _ap2f(lr * scale / 2.0 ** -3) * (g / 8) / ap2(g.abs())).clamp(-1, 1)
    assert torch.allclose(layer.weight.detach(), expected, atol=1e-6)
    assert layer.weight.abs().max() <= 1.0 and (layer.weight.abs() == 1.0).any()  # big steps hit the clip
    sched = build_scheduler(opt, lr, lr / 16, 10)
    for _ in range(3):
        layer(torch.randn(8, 30)).pow(2).sum().backward()
        opt.step()
        sched.step()
    assert layer.weight.abs().max() <= 1.0


# ---- bit-plane first layer ---------------------------------------------------------------------------------


def test_bitplane_identity_on_random_uint8():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(7, 300), dtype=np.uint8)
    w = rng.choice([-1, 1], size=(300, 9)).astype(np.int8)
    exact = x.astype(np.int64) @ w.astype(np.int64)
    planes = sum((((x >> (n - 1)) & 1).astype(np.int64) @ w.astype(np.int64)) << (n - 1) for n in range(1, 9))
    assert np.array_equal(planes, exact)
    assert np.array_equal(bitplane_matmul(x, w), exact)
    # through a +-1 x +-1 GEMM (a @ b.T), as the runtime's binary kernel computes it
    calls = []

    def pm1_gemm(a, b):
        calls.append(1)
        assert set(np.unique(a)) <= {-1, 1} and set(np.unique(b)) <= {-1, 1}
        return a.astype(np.int64) @ b.astype(np.int64).T

    assert np.array_equal(bitplane_matmul(x, w, binary_matmul=pm1_gemm), exact)
    assert len(calls) == 8


def test_bitplane_torch_equals_plain_product_and_keeps_weight_gradient():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (5, 784), dtype=torch.uint8)
    w = torch.where(torch.randn(16, 784) >= 0, 1.0, -1.0).requires_grad_(True)
    w2 = w.detach().clone().requires_grad_(True)
    s = bitplane_dot(x, w)
    plain = F.linear(x.float(), w2)
    assert torch.equal(s, plain)
    assert torch.equal(s.double(), (x.double() @ w.detach().double().T))
    g = torch.randn(5, 16)
    s.backward(g)
    plain.backward(g)
    assert torch.allclose(w.grad, w2.grad, rtol=1e-5, atol=1e-3)
    # convolution with zero padding, and the first-layer modules
    xi = torch.randint(0, 256, (2, 3, 9, 9)).float()
    wc = torch.where(torch.randn(4, 3, 3, 3) >= 0, 1.0, -1.0)
    assert torch.equal(bitplane_conv2d(xi, wc, 2, 1), F.conv2d(xi, wc, None, 2, 1))
    lin = BitPlaneLinear(784, 16, bias=True)
    assert torch.equal(lin(x.float()), F.linear(x.float(), ste_sign(lin.weight), lin.bias))
    lin(x.float()).sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    conv = BitPlaneConv2d(3, 4, 3, padding=1, bias=False)
    assert torch.equal(conv(xi), F.conv2d(xi, ste_sign(conv.weight), None, 1, 1))


def test_bitplane_bad_inputs():
    with pytest.raises(ShapeError, match="8-bit"):
        bitplane_dot(torch.tensor([[0.5, 3.0]]), torch.ones(1, 2))
    with pytest.raises(ShapeError, match="8-bit"):
        bitplane_dot(torch.tensor([[256.0, 3.0]]), torch.ones(1, 2))
    with pytest.raises(ShapeError, match="-1 and \\+1"):
        bitplane_matmul(np.zeros((2, 3), np.uint8), np.zeros((3, 2)))
    with pytest.raises(ShapeError, match="8-bit"):
        bitplane_matmul(np.full((2, 3), 300), np.ones((3, 2)))
    with pytest.raises(ConfigError, match="input_quantizer"):
        BitPlaneLinear(4, 2, input_quantizer="ste_sign")


# ---- PACT --------------------------------------------------------------------------------------------------


def test_pact_forward_backward_hand_case():
    x = torch.tensor([-1.0, 0.0, 0.4, 0.5, 1.2, 2.5, 2.9, 3.0, 4.0], requires_grad=True)
    alpha = torch.tensor(3.0, requires_grad=True)
    y = pact(x, alpha, 2)  # levels 0 1 2 3; ties up
    assert torch.equal(y, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0]))
    y.backward(torch.arange(1.0, 10.0))
    assert torch.equal(x.grad, torch.tensor([0.0, 2, 3, 4, 5, 6, 7, 0, 0]))  # 1{0 <= x < alpha}
    assert alpha.grad.item() == 8.0 + 9.0  # sum of g where x >= alpha


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pact_level_set(bits):
    q = PACT(bits=bits, alpha=2.0)
    y = q(torch.linspace(-1, 3, 20001))
    n = 2 ** bits - 1
    assert torch.allclose(y.unique(), torch.arange(n + 1) * 2.0 / n, atol=1e-6)


def test_pact_l2_penalty_and_parameter():
    m = torch.nn.Sequential(QuantAct("pact:bits=2,alpha=2.0"), torch.nn.Linear(2, 2), QuantAct(PACT(4, alpha=3.0)))
    pen = pact_l2_penalty(m)
    assert pen.item() == pytest.approx(13.0)
    pen.backward()
    assert m[0].quantizer.alpha.grad.item() == pytest.approx(4.0)
    assert sorted(n for n, _ in m.named_parameters() if n.endswith("alpha")) == ["0.quantizer.alpha", "2.quantizer.alpha"]
    assert pact_l2_penalty(torch.nn.Linear(2, 2)).item() == 0.0


def test_training_loop_adds_pact_penalty(tmp_path, monkeypatch):
    monkeypatch.delenv("LOWBIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    from lowbit.train.config import apply_overrides, get_recipe
    from lowbit.train import run

    def alphas(pact_l2):
        cfg = apply_overrides(get_recipe("mnist-mlp-qnn"), [
            "epochs=1", "train_subset=200", "test_subset=100", "model.hidden=16", "model.depth=1",
            "model.act_quantizer=pact:bits=2,alpha=3.0", "model.weight_quantizer=sawb:bits=2",
            f"pact_l2={pact_l2}", "optimizer=sgd", "lr_start=0.01", "lr_end=0.01",
        ])
        out = tmp_path / f"l2_{pact_l2}"
        run(cfg, out, progress=False)  # the default data directory (HOME below): the MNIST sample
        state = torch.load(out / "checkpoint.pt", weights_only=True)["model_state"]
        return [v.item() for k, v in state.items() if k.endswith("alpha")]

    a0, a1 = alphas(0.0), alphas(10.0)
    # plain SGD, 2 steps: the penalty's gradient 2 * 10 * alpha ~ 60 moves alpha by ~0.6 per step more
    assert len(a0) == 1 and a1[0] < a0[0] - 0.5


# ---- SAWB --------------------------------------------------------------------------------------------------


def _brute_force_optimal_scale(w: torch.Tensor, bits: int):
    """The alpha on a fine grid (steps of 0.005 sigma) with the least quantization MSE."""
    n = 2 ** bits - 1
    half = 2 ** (bits - 1)
    w = w.double()
    alphas = torch.arange(0.5, 3.0, 0.005, dtype=torch.float64) * w.std()
    mses = []
    for chunk in alphas.split(50):
        a = chunk[:, None]
        j = torch.clamp(torch.floor(w[None, :] * n / (2 * a)), -half, half - 1)
        mses.append(((w[None, :] - a * (2 * j + 1) / n) ** 2).mean(1))
    mses = torch.cat(mses)
    i = int(mses.argmin())
    assert 0 < i < len(alphas) - 1  # an interior minimum
    return alphas[i].item(), mses[i].item()


def _mse(w, q):
    return ((w.double() - q.double()) ** 2).mean().item()


@pytest.mark.parametrize("dist", ["gauss", "laplace"])
def test_sawb_scale_close_to_mse_optimal(dist):
    torch.manual_seed(0)
    w = torch.randn(40_000) * 0.05 if dist == "gauss" else torch.distributions.Laplace(0.0, 0.03).sample((40_000,))
    alpha = sawb_scale(w, 2).item()
    best, best_mse = _brute_force_optimal_scale(w, 2)
    assert alpha == pytest.approx(best, rel=0.04)
    assert _mse(w, sawb_quantize(w, 2)) <= 1.01 * best_mse


def test_sawb_levels_and_ste():
    torch.manual_seed(0)
    w = (torch.randn(1000) * 0.1).requires_grad_(True)
    q = SAWB(2)(w)
    a = sawb_scale(w, 2)
    assert torch.allclose(q.unique(), torch.stack([-a, -a / 3, a / 3, a]))
    g = torch.randn(1000)
    q.backward(g)
    assert torch.equal(w.grad, g)  # plain straight-through
    # 1 bit: the scale is E|w| (exact MSE optimum of a binary quantizer)
    assert sawb_scale(w, 1).item() == pytest.approx(w.detach().abs().mean().item(), rel=1e-6)


def test_sawb_fit_reproduces_shipped_and_published_two_bit_coefficients():
    c1, c2, rows = fit_sawb(2, sawb_family(points=4096))
    assert c1 == pytest.approx(SAWB_COEFFICIENTS[2][0], abs=0.05)
    assert c2 == pytest.approx(SAWB_COEFFICIENTS[2][1], abs=0.05)
    assert abs(c1 - 3.212) < 0.15 and abs(c2 - 2.178) < 0.15  # published (1807.06964)
    assert max(abs(f / t - 1) for *_, t, f in rows) < 0.05


# ---- configuration and bad input ---------------------------------------------------------------------------


def test_spec_strings_and_overrides():
    from lowbit.train.config import apply_overrides, get_recipe
    from lowbit.train.checkpoint import model_from_config

    q = get_quantizer("linear:bits=3,mode=unsigned,max_value=2,rounding=stochastic")
    assert (q.bits, q.mode, q.max_value, q.rounding) == (3, "unsigned", 2.0, "stochastic")
    cfg = apply_overrides(get_recipe("mnist-mlp-qnn"), [
        "model.hidden=8", "model.weight_quantizer=linear:bits=2", "model.act_quantizer=log:bits=3",
        "model.grad_quantizer=grad:bits=6", "model.norm=shift_bn", "optimizer=shift_adamax", "pact_l2=0.001",
    ])
    model = model_from_config(cfg.to_dict())
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"LinearQuant", "LogQuant", "GradQuant", "ShiftBatchNorm1d"} <= kinds
    assert cfg.pact_l2 == 0.001
    with pytest.raises(ConfigError, match="pact_l2"):
        apply_overrides(get_recipe("mnist-mlp-qnn"), ["pact_l2=-1"])


@pytest.mark.parametrize("spec,match", [
    ("linear:bits=9", "linear.*bits.*9"),
    ("linear:bits=0", "linear.*bits.*0"),
    ("linear:bits=2.5", "linear.*bits.*2.5"),
    ("linear:bits=2,mode=signed", "linear.*mode.*signed"),
    ("linear:bits=2,max_value=0", "linear.*max_value.*0"),
    ("linear:bits=2,rounding=up", "linear.*rounding.*up"),
    ("log:bits=3,max_value=0", "log.*max_value.*0.*zero range"),
    ("log:bits=12", "log.*bits.*12"),
    ("pact:bits=2,alpha=0", "pact.*alpha.*0"),
    ("pact:bits=2,alpha=-3", "pact.*alpha.*-3"),
    ("pact:bits=16", "pact.*bits.*16"),
    ("sawb:bits=9", "sawb.*bits.*9"),
    ("grad:bits=17", "grad.*bits.*17"),
    ("linear:bits", "linear:bits.*key=value"),
])
def test_bad_quantizer_arguments(spec, match):
    with pytest.raises(ConfigError, match=match):
        get_quantizer(spec)


def test_quantizers_refused_where_they_cannot_work():
    with pytest.raises(ConfigError, match=r"QuantLinear\(4, 3\) weight_quantizer.*'pact'.*activations"):
        QuantLinear(4, 3, weight_quantizer="pact:bits=2")
    with pytest.raises(ConfigError, match=r"QuantConv2d\(2, 5\) input_quantizer.*'sawb'"):
        QuantConv2d(2, 5, 3, input_quantizer="sawb:bits=2")
    with pytest.raises(ConfigError, match="QuantAct.*'sawb'.*weights"):
        QuantAct("sawb:bits=2")
    with pytest.raises(ConfigError, match=r"QuantLinear\(4, 3\) weight_quantizer.*'grad'.*gradients"):
        QuantLinear(4, 3, weight_quantizer="grad:bits=6")
    with pytest.raises(ConfigError, match=r"QuantLinear\(4, 3\) grad_quantizer.*'linear'.*not a gradient"):
        QuantLinear(4, 3, grad_quantizer="linear:bits=6")
    with pytest.raises(ConfigError, match="mlp: norm.*'layernorm'"):
        mlp(in_shape=[1, 2, 2], hidden=4, depth=1, norm="layernorm")
    with pytest.raises(ConfigError, match="shift_adamax: lr.*-1"):
        ShiftAdaMax([torch.nn.Parameter(torch.zeros(2))], lr=-1)
    with pytest.raises(ConfigError, match="ShiftBatchNorm1d: eps.*0"):
        ShiftBatchNorm1d(3, eps=0)


def test_pact_alpha_is_regularized_once_not_also_by_weight_decay():
    """imagenet-resnet18-pact-sawb trains with SGD weight decay 5e-5 and pact_l2: alpha gets the L2 penalty
    only. With zero gradients, one SGD step decays an ordinary weight by lr * wd and leaves alpha alone."""
    from lowbit.models.imagenet import resnet18_pact_sawb
    from lowbit.train.optim import build_optimizer

    model = resnet18_pact_sawb(num_classes=3, widths=[4, 4, 8, 8], blocks=[1, 1, 1, 1])
    opt = build_optimizer(model, "sgd_momentum", lr=0.1, lr_scale=False)
    alphas = [m.alpha for m in model.modules() if isinstance(m, PACT)]
    assert alphas
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert all(by_id[id(a)]["weight_decay"] == 0.0 for a in alphas)
    other = next(p for p in model.parameters() if p.dim() == 4 and by_id[id(p)]["weight_decay"] > 0)
    before_a, before_w = [a.detach().clone() for a in alphas], other.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(alphas, before_a))
    assert torch.allclose(other, before_w * (1 - 0.1 * 5e-5))
