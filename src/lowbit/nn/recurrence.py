"""The fast k-bit recurrence: one ``autograd.Function`` per layer and direction, with a hand-written backward.

:meth:`lowbit.nn.recurrent.QuantRNNBase._loop` runs the recurrence of a layer whose activations are quantized.
The reference (``QuantRNNBase._cell``, kept and used with ``force_loop``/``fast=False``/an observer) records
every elementwise op of every time step in autograd's graph: with 100 time steps and ~20 small ops per
step, a training step is dominated by per-op overhead (graph nodes, saved tensors, the backward engine),
3.6x the step of the fused ``torch.nn.LSTM`` at 32 bits.

Here the forward is the same sequence of torch ops on the same values (so its outputs are bit for bit
those of the reference; :func:`fast_act` reorders one clamp of the ``linear`` quantizer in a way that
cannot change a result), run without autograd, keeping what the backward needs; the backward is the
closed-form gradient of the cell, whose time-independent factors are computed for all steps at once
before a short loop (about 5 small ops per step for the LSTM); the gradient of ``W_hh`` is one GEMM over
all steps afterwards. The input projections of all steps are one GEMM outside (as before), and the weights
are quantized once per call, outside.

Straight-through estimator: every supported quantizer (:func:`fast_act`) passes the gradient where
``|x| <= a`` with ``a >= 1``, and every value the cells quantize lies in [-1, 1] (tanh outputs, ``2 s - 1``
for a sigmoid ``s``, ``o * tanh(c)``, the GRU's convex combination of two such values), except the ReLU RNN's
``relu(.)``, whose mask ``relu(.) <= a`` is applied. So the gradients equal the reference's up to float
rounding (the order of the sums differs), not bit for bit; the tests check both.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..quant.base import Identity, SteSign, StochasticSign
from ..quant.kbit import LinearQuant
from ..quant.recurrent import is_identity


class _Act:
    """What the fast recurrence needs of an activation quantizer: the no-grad forward (``None``: identity),
    the STE range ``a`` (gradient passes where ``|x| <= a``)."""

    def __init__(self, fn: Optional[Callable], a: float, bounded: Optional[Callable] = None):
        self.fn = fn
        self.a = a
        # bounded(x, out): the same values for inputs known to lie in [-1, 1] (fewer ops), the result written
        # into ``out``; None: fn, then a copy
        self.bounded = bounded

    def __call__(self, x):
        return x if self.fn is None else self.fn(x)


def _scalar(value: float) -> torch.Tensor:
    """A 0-dim float32 tensor for a constant of the step loops: ``x * 2.5`` wraps and converts the Python
    number on every call (aten::to + copy, about as costly as the multiply on these small tensors); a 0-dim
    tensor is read as the same scalar, so results are unchanged."""
    return torch.tensor(value, dtype=torch.float32)


def _linear_nearest(bits: int, a: float):
    n = 2 ** bits - 1
    half = 2 ** (bits - 1)
    scale = _scalar(n / (2.0 * a))
    n_t = _scalar(n)

    def q(x):
        # kbit._uniform_levels (symmetric, nearest): clamp(x * s, -n/2, n/2) -> floor -> clamp(-half, half-1)
        # -> (2 j + 1) / n * a. floor(clamp(v, -n/2, n/2)) and clamp(floor(v), -half, half - 1) are equal for
        # every v (n is odd), so the first clamp is dropped; * 1.0 is exact, so it is dropped for a = 1.
        v = x * scale
        v.floor_().clamp_(-half, half - 1)
        v.mul_(2.0).add_(1.0).div_(n)
        return v.mul_(a) if a != 1.0 else v

    two = _scalar(2.0)
    one = _scalar(1.0)
    a_t = _scalar(a)

    def bounded(x, out):
        # |x| <= 1 <= a: x * s lies in [-n/2, n/2], so floor(x * s) is already in [-half, half - 1] (n/2 =
        # half - 1/2, and x * s = +-n/2 exactly only at x = +-1); 2 j + 1 as one exact addcmul.
        v = x * scale
        v.floor_()
        v = torch.addcmul(one, v, two)
        torch.div(v, n_t, out=out)
        return out.mul_(a_t) if a != 1.0 else out

    return q, bounded


def fast_act(q) -> Optional[_Act]:
    """The fast-path description of an activation quantizer, or ``None`` when it is not supported (then the
    reference loop runs): identity, ``linear`` (symmetric, ``max_value >= 1``), ``ste_sign``
    (``clip_value >= 1``)."""
    if is_identity(q) and (type(q) is Identity or isinstance(q, torch.nn.Identity)):
        return _Act(None, float("inf"))
    if type(q) is LinearQuant:
        if q.mode != "symmetric" or q.max_value < 1.0:
            return None
        if q.rounding == "nearest" or not q.training:
            fn, bounded = _linear_nearest(q.bits, q.max_value)
            return _Act(fn, q.max_value, bounded)
        return _Act(q, q.max_value)  # stochastic rounding: the module itself (same RNG draws, same order)
    if type(q) is SteSign and not isinstance(q, StochasticSign) and q.clip_value >= 1.0:
        return _Act(q, q.clip_value)
    return None


# ---- LSTM ------------------------------------------------------------------------------------------------


class LSTMRecurrence(torch.autograd.Function):
    """``(xproj (T, B, 4H) with both biases, h0, c0, w_hh (4H, H), mult, a_aff, b_aff, act) -> (out (T, B, H),
    c_T)``; ``h_T = out[-1]``. The cell is :meth:`QuantRNNBase._cell`'s LSTM branch."""

    @staticmethod
    def forward(ctx, xproj, h0, c0, w_hh, mult, aa, bb, act):
        T, B = xproj.shape[:2]
        H = h0.size(-1)
        # (xproj + h W^T) * mult with mult in {1/2, 1}: scaling by a power of two commutes with every rounding
        # of the sum and the GEMM, so xproj * mult + h (W * mult)^T is the same tensor, bit for bit
        xs = (xproj * mult).unbind(0)
        wt = (w_hh * mult.unsqueeze(1)).t()
        # what the backward needs, written in place step by step (no lists to stack, no fresh big buffers);
        # the per-step views are made once (unbind), not by indexing in the loop: on small tensors every op,
        # even a view, costs about as much as the arithmetic
        out = xproj.new_empty(T, B, H)
        cs = xproj.new_empty(T, B, H)
        vs = xproj.new_empty(T, B, 4 * H)
        gs = xproj.new_empty(T, B, 4 * H)
        tcs = xproj.new_empty(T, B, H)
        ug = xproj.new_empty(B, 4 * H)
        out_t, cs_t, vs_t, gs_t, tcs_t = out.unbind(0), cs.unbind(0), vs.unbind(0), gs.unbind(0), tcs.unbind(0)
        i_t, f_t, g_t, o_t = (gs[:, :, k * H:(k + 1) * H].unbind(0) for k in range(4))
        h, c = h0, c0
        qb = act.bounded
        for t in range(T):
            v = torch.tanh(torch.addmm(xs[t], h, wt), out=vs_t[t])
            torch.addcmul(bb, act(v) if qb is None else qb(v, ug), aa, out=gs_t[t])
            c = torch.addcmul(f_t[t] * c, i_t[t], g_t[t], out=cs_t[t])
            tc = torch.tanh(c, out=tcs_t[t])
            if qb is None:
                h = act(o_t[t] * tc)
                out_t[t].copy_(h)
            else:
                h = qb(o_t[t] * tc, out_t[t])
        ctx.save_for_backward(w_hh, h0, c0, out, cs, vs, gs, tcs, mult, aa)
        return out, cs[-1].clone()

    @staticmethod
    def backward(ctx, d_out, d_cn):
        w_hh, h0, c0, out, cs, vs, gs, tcs, mult, aa = ctx.saved_tensors
        T, B, H = out.shape
        ma = mult * aa                                   # d gate value / d u * d (x mult) / d x
        dG = torch.empty_like(gs)
        dG_t = dG.unbind(0)
        dGk = [dG[:, :, k * H:(k + 1) * H].unbind(0) for k in range(4)]
        i_t, f_t, g_t, o_t = (gs[:, :, k * H:(k + 1) * H].unbind(0) for k in range(4))
        d_out_t, vs_t, tcs_t = d_out.unbind(0), vs.unbind(0), tcs.unbind(0)
        c_prev = (c0,) + cs[:-1].unbind(0)
        dc = d_cn
        one = _scalar(1.0)
        for t in range(T - 1, -1, -1):
            # per step, on cache-resident (B, 4H) tensors: fewer passes over memory than whole-sequence factors
            dh = d_out_t[t] if t == T - 1 else torch.addmm(d_out_t[t], dG_t[t + 1], w_hh)
            tc = tcs_t[t]
            dc = torch.addcmul(dc, dh * o_t[t], torch.addcmul(one, tc, tc, value=-1.0))  # * (1 - tanh^2)
            torch.mul(dc, g_t[t], out=dGk[0][t])
            torch.mul(dc, c_prev[t], out=dGk[1][t])
            torch.mul(dc, i_t[t], out=dGk[2][t])
            torch.mul(dh, tc, out=dGk[3][t])
            v = vs_t[t]
            dG_t[t].mul_(torch.addcmul(ma, v * v, ma, value=-1.0))  # * ma (1 - v^2)
            dc = dc * f_t[t]
        dh0 = dG[0] @ w_hh if ctx.needs_input_grad[1] else None
        dw = None
        if ctx.needs_input_grad[3]:  # sum_t dG_t^T h_{t-1}: one GEMM over steps 1..T-1, one for step 0
            dw = torch.addmm(dG[0].t() @ h0, dG[1:].reshape(-1, 4 * H).t(), out[:-1].reshape(-1, H))
        return dG, dh0, dc, dw, None, None, None, None


# ---- GRU -------------------------------------------------------------------------------------------------


class GRURecurrence(torch.autograd.Function):
    """``(xproj (T, B, 3H) with b_ih, h0, w_hh (3H, H), b_hh or None, act) -> out (T, B, H)``; the cell is
    :meth:`QuantRNNBase._cell`'s GRU branch."""

    @staticmethod
    def forward(ctx, xproj, h0, w_hh, b_hh, act):
        import torch.nn.functional as F

        T, B = xproj.shape[:2]
        H = h0.size(-1)
        out = xproj.new_empty(T, B, H)
        hns = xproj.new_empty(T, B, H)
        ss = xproj.new_empty(T, B, 2 * H)
        rzs = xproj.new_empty(T, B, 2 * H) if act.fn is not None else ss
        tns = xproj.new_empty(T, B, H)
        ns = xproj.new_empty(T, B, H)
        out_t, hns_t, ss_t, rzs_t, tns_t, ns_t = (a.unbind(0) for a in (out, hns, ss, rzs, tns, ns))
        xr_t, xz_t, xn_t = (xproj[:, :, k * H:(k + 1) * H].unbind(0) for k in range(3))
        r_t, z_t = rzs[:, :, :H].unbind(0), rzs[:, :, H:].unbind(0)
        h = h0
        one, two, half = _scalar(1.0), _scalar(2.0), _scalar(0.5)
        for t in range(T):
            hp = F.linear(h, w_hh, b_hh)
            hr, hz, hn = hp.chunk(3, 1)
            s = torch.sigmoid(torch.cat([xr_t[t] + hr, xz_t[t] + hz], 1), out=ss_t[t])
            if act.fn is not None:
                torch.mul(act(s * two - one) + one, half, out=rzs_t[t])
            hns_t[t].copy_(hn)
            tn = torch.tanh(torch.addcmul(xn_t[t], r_t[t], hn), out=tns_t[t])
            n = act(tn)
            ns_t[t].copy_(n)
            h = act(torch.lerp(n, h, z_t[t]))
            out_t[t].copy_(h)
        ctx.has_bias = b_hh is not None
        ctx.save_for_backward(w_hh, h0, out, hns, ss, rzs, tns, ns)
        return out

    @staticmethod
    def backward(ctx, d_out):
        w_hh, h0, out, hns, ss, rzs, tns, ns = ctx.saved_tensors
        T, B, H = out.shape
        S = ss * (1.0 - ss)                              # d rz / d pre (the gate mapping's STE slope is 1)
        r, z = rzs[:, :, :H], rzs[:, :, H:]
        h_prev = torch.cat([h0.unsqueeze(0), out[:-1]])
        K1 = ((1.0 - z) * (1.0 - tns * tns)).unbind(0)  # d h / d (pre-activation of n)
        hnS = (hns * S[:, :, :H]).unbind(0)
        hmnS = (h_prev - ns).mul_(S[:, :, H:]).unbind(0)
        dX = torch.empty(T, B, 3 * H, dtype=out.dtype, device=out.device)
        dP = torch.empty_like(dX)
        dX_rz, dX_r, dX_z, dX_n = (dX[:, :, a:b].unbind(0) for a, b in ((0, 2 * H), (0, H), (H, 2 * H), (2 * H, 3 * H)))
        dP_t, dP_rz, dP_n = dP.unbind(0), dP[:, :, :2 * H].unbind(0), dP[:, :, 2 * H:].unbind(0)
        z_t, r_t, d_out_t = z.unbind(0), r.unbind(0), d_out.unbind(0)
        dh = None
        for t in range(T - 1, -1, -1):
            if t == T - 1:
                dh = d_out_t[t]
            else:
                dh = torch.addmm(torch.addcmul(d_out_t[t], dh, z_t[t + 1]), dP_t[t + 1], w_hh)
            dpn = torch.mul(dh, K1[t], out=dX_n[t])
            torch.mul(dpn, r_t[t], out=dP_n[t])
            torch.mul(dpn, hnS[t], out=dX_r[t])
            torch.mul(dh, hmnS[t], out=dX_z[t])
            dP_rz[t].copy_(dX_rz[t])
        dh0 = torch.addmm(dh * z_t[0], dP[0], w_hh) if ctx.needs_input_grad[1] else None
        dw = dP.reshape(T * B, 3 * H).t() @ h_prev.reshape(T * B, H) if ctx.needs_input_grad[2] else None
        db = dP.sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return dX, dh0, dw, db, None


# ---- tanh / ReLU RNN -------------------------------------------------------------------------------------


class RNNRecurrence(torch.autograd.Function):
    """``(xproj (T, B, H) with both biases, h0, w_hh, relu, act) -> out (T, B, H)``."""

    @staticmethod
    def forward(ctx, xproj, h0, w_hh, relu, act):
        T = xproj.size(0)
        wt = w_hh.t()
        out = torch.empty_like(h0).unsqueeze(0).expand(T, -1, -1).contiguous()
        ys = torch.empty_like(out)
        xs, out_t, ys_t = xproj.unbind(0), out.unbind(0), ys.unbind(0)
        h = h0
        for t in range(T):
            pre = torch.addmm(xs[t], h, wt)
            y = torch.relu(pre) if relu else torch.tanh(pre, out=ys_t[t])
            if relu:
                ys_t[t].copy_(y)
            h = act(y)
            out_t[t].copy_(h)
        ctx.relu, ctx.a = relu, act.a
        ctx.save_for_backward(w_hh, h0, out, ys)
        return out

    @staticmethod
    def backward(ctx, d_out):
        w_hh, h0, out, ys = ctx.saved_tensors
        T, B, H = out.shape
        if ctx.relu:
            keep = ys > 0
            if ctx.a != float("inf"):
                keep &= ys <= ctx.a
            fac = keep.to(ys.dtype)
        else:
            fac = 1.0 - ys * ys
        dP = torch.empty_like(out)
        dP_t, d_out_t, fac_t = dP.unbind(0), d_out.unbind(0), fac.unbind(0)
        for t in range(T - 1, -1, -1):
            dh = d_out_t[t] if t == T - 1 else torch.addmm(d_out_t[t], dP_t[t + 1], w_hh)
            torch.mul(dh, fac_t[t], out=dP_t[t])
        dh0 = dP[0] @ w_hh if ctx.needs_input_grad[1] else None
        dw = None
        if ctx.needs_input_grad[2]:
            h_prev = torch.cat([h0.unsqueeze(0), out[:-1]])
            dw = dP.reshape(T * B, H).t() @ h_prev.reshape(T * B, H)
        return dP, dh0, dw, None, None
