"""Export any network built from lowbit's layers to the graph runtime (:mod:`lowbit.runtime.graph`).

    from lowbit.export import export_model
    report = export_model(model, example_input, "model.lbt")   # model: any nn.Module; input: 8-bit pixels

The model is traced with ``torch.fx`` (lowbit's layers, batch norms and activations are leaves; residual
adds, flattens and pooling are recorded as they are written in ``forward``), each traced value is given
one runtime representation (float, k-bit codes, or packed bits), and the ops are lowered and fused:

* a quantized conv/linear becomes one ``gemm`` node. Its integer accumulator ``acc`` stands for the
  pre-activation ``z = A * acc + B`` per channel (A from the activation and weight units and the code step,
  B from the code offset, the channel pad bits and the bias), so what follows folds into its epilogue:
  a max-pool (on the accumulators: A > 0 keeps max-pooling exact), BatchNorm or shift-BN (``A, B <- c A,
  c B + d``), and a quantizer: its decision boundaries ``b_m`` (found by bisection on the quantizer's own
  float32 forward, so any monotone quantizer works) become integer thresholds ``acc >= ceil((b_m - B) / A)``
  (A < 0: ``acc <= floor(...)``). A ReLU/hardtanh right before the quantizer folds in when it cannot move
  any boundary. Anything else (a residual add, a pooling average, the logits) reads the float affine map.
* the weights' quantized values must be ``unit * integer`` in one of the kernels' level sets (binary,
  ternary, oK, uK, sK); the activations' codes likewise (``unit * table[code]``). Padding with a value that
  is no code (zero padding of a +-1 or symmetric k-bit input) adds an exact integer border map.
* float layers (a full-precision stem, shortcut or classifier) run in float32.

What cannot be represented exactly is refused with a :class:`~lowbit.errors.CheckpointError` naming the
module and the reason; nothing is approximated silently.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.fx
from torch import nn

from ..errors import CheckpointError
from ..kernels.levels import LEVEL_SETS
from ..nn.layers import PixelScale, QuantAct, QuantConv2d, QuantLinear
from ..nn.norm import ShiftBatchNorm2d
from ..quant.base import Identity
from ..runtime.modelfile import save_model_file
from .image import NORMS, bn_eval_affine

KIND = "graph"
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
PASS_THROUGH = (nn.Dropout, nn.Identity)


def _fail(where: str, why: str):
    raise CheckpointError(f"runtime export: {where}: {why}")


# ---- quantizers as level tables -----------------------------------------------------------------------------


def _float_probe() -> torch.Tensor:
    """Float32 inputs spanning every magnitude a quantizer may care about: +-2^e (1 + j/32) for e in
    -149..40, a fine linear grid over [-16, 16], and 0."""
    e = torch.arange(-149, 41, dtype=torch.float64)
    mant = 1 + torch.arange(32, dtype=torch.float64) / 32
    mags = (torch.exp2(e)[:, None] * mant[None]).flatten()
    lin = torch.linspace(-16, 16, 65537, dtype=torch.float64)
    x = torch.cat([-mags, mags, lin, torch.zeros(1, dtype=torch.float64)]).float()
    return torch.unique(x[torch.isfinite(x)])


def _f32_key(x: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 keys that order like the floats (for bisection over float32 values)."""
    i = x.view(torch.int32).long()
    return torch.where(i < 0, -(i & 0x7FFFFFFF), i)


def _key_f32(k: torch.Tensor) -> torch.Tensor:
    i = torch.where(k < 0, (-k) | (-(2**31)), k)
    return i.to(torch.int32).view(torch.float32)


@dataclass
class Levels:
    """A quantizer seen from the runtime: its sorted output values ``unit * table`` and the float32
    boundaries ``b`` (code >= m exactly where input >= b[m-1])."""

    table: np.ndarray  # int64 (L,)
    unit: float
    boundaries: np.ndarray  # float64 (L-1,)

    @property
    def affine(self) -> Optional[Tuple[int, int]]:
        """(step, offset) when table[c] = step * c + offset, else None."""
        if len(self.table) < 2:
            return None
        d = np.diff(self.table)
        return (int(d[0]), int(self.table[0])) if (d == d[0]).all() else None

    @property
    def bits(self) -> int:
        return max(1, int(np.ceil(np.log2(len(self.table)))))

    @property
    def is_binary(self) -> bool:
        return list(self.table) == [-1, 1]

    def code_of(self, value_int) -> Optional[int]:
        hits = np.nonzero(self.table == value_int)[0]
        return int(hits[0]) if len(hits) else None


def _integer_grid(values: np.ndarray, where: str) -> Tuple[np.ndarray, float]:
    """(ints, unit) with values == unit * ints, the smallest such integers (values sorted, distinct)."""
    vals = np.asarray(values, np.float64)
    nz = np.abs(vals[vals != 0])
    if len(vals) == 1:
        unit = float(nz[0]) if len(nz) else 1.0
        return np.round(vals / unit).astype(np.int64), unit
    gap = float(np.min(np.diff(vals)))
    for unit in (gap, gap / 2, gap / 3, gap / 4):
        ints = vals / unit
        r = np.round(ints)
        if np.all(np.abs(ints - r) <= 1e-4 * np.maximum(1, np.abs(r))) and np.abs(r).max() < 2**15:
            # the unit that fits every level best (levels are float32: one gap alone has its rounding)
            return r.astype(np.int64), float(np.dot(vals, r) / np.dot(r, r))
    _fail(where, f"its values {vals[:6]}... are not multiples of one unit (no integer code table fits)")


def quantizer_levels(q: nn.Module, where: str) -> Levels:
    """The :class:`Levels` of an activation quantizer, from its own eval-mode forward."""
    q = q.eval()
    with torch.no_grad():
        x = _float_probe()
        y = q(x).double()
    if not torch.isfinite(y).all():
        _fail(where, "the quantizer gives non-finite outputs")
    if (torch.diff(y) < 0).any():
        _fail(where, f"quantizer {type(q).__name__} is not monotone, so it cannot fold into thresholds")
    levels = torch.unique(y)
    if len(levels) > 256:
        _fail(where, f"quantizer {type(q).__name__} has {len(levels)} output levels (at most 256 fit a code)")
    # bisection: for each level m >= 1, the smallest float32 input whose output is >= levels[m]
    lo = torch.stack([x[y < lv].max() for lv in levels[1:]]) if len(levels) > 1 else x[:0]
    hi = torch.stack([x[y >= lv].min() for lv in levels[1:]]) if len(levels) > 1 else x[:0]
    klo, khi = _f32_key(lo), _f32_key(hi)
    target = levels[1:]
    with torch.no_grad():
        while bool((khi - klo > 1).any()):
            mid = (klo + khi) // 2
            ym = q(_key_f32(mid)).double()
            up = ym >= target
            khi = torch.where(up, mid, khi)
            klo = torch.where(up, klo, mid)
    boundaries = _key_f32(khi).double().numpy()
    table, unit = _integer_grid(levels.numpy(), where)
    return Levels(table, unit, boundaries)


def _weight_level_set(ints: np.ndarray) -> Optional[str]:
    """The smallest named level set of the kernels that holds every integer weight, or None."""
    vals = set(int(v) for v in np.unique(ints))
    order = ["binary", "ternary"] + [f"o{k}" for k in range(2, 5)] + [f"u{k}" for k in range(1, 9)] + \
            [f"s{k}" for k in range(2, 9)]
    for name in order:
        ls = LEVEL_SETS[name]
        if ls.contains(np.array(sorted(vals))).all():
            return name
    return None


def _act_level_set(table: np.ndarray) -> Tuple[Optional[str], bool]:
    """(level set the GEMM reads the activations in, whether it reads raw codes (affine table) or values)."""
    if len(table) >= 2 and (np.diff(table) == np.diff(table)[0]).all():
        return f"u{max(1, int(np.ceil(np.log2(len(table)))))}", True
    for k in range(2, 9):
        ls = LEVEL_SETS[f"s{k}"]
        if ls.contains(table).all():
            return ls.name, False
    return None, False


# ---- batch norm -------------------------------------------------------------------------------------------


def bn_affine(bn: nn.Module, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """(c, d) with BN(z) = c z + d in float64 from eval statistics; shift-BN's c is the product of its
    float32 AP2s, as its forward computes it."""
    if not bn.track_running_stats or bn.running_mean is None:
        _fail(where, "a BatchNorm without running statistics cannot be folded")
    return bn_eval_affine(bn)


# ---- traced values ----------------------------------------------------------------------------------------


@dataclass
class Val:
    """A traced value: materialized (``repr`` float/codes/bits, runtime value ``name``) or ``pending``
    (the accumulators of ``gemm``, standing for z = A acc + B until an epilogue is chosen)."""

    repr: str
    shape: Tuple[int, ...]  # PyTorch's (C, H, W) or (F,)
    name: str = ""
    levels: Optional[Levels] = None  # codes/bits
    gemm: Optional[Dict] = None  # pending
    A: Optional[np.ndarray] = None
    B: Optional[np.ndarray] = None
    clamp: Optional[Tuple[float, float]] = None  # a ReLU/hardtanh waiting to fold into a quantizer
    integer_acc: bool = True
    flat_from: Optional[Tuple[Tuple[int, ...], str]] = None  # (C, H, W), repr before a flatten
    materialized: Optional["Val"] = None
    # PyTorch's own float32 pre-activation of an integer accumulator, where the trained layer computes it
    # exactly from integers (binary and 8-bit pixel layers), and the modules applied since (BN, clamps):
    # with them, thresholds reproduce PyTorch's float32 decisions at near-ties too (see _faithful)
    zfun: Optional[Any] = None
    chain: Tuple[Any, ...] = ()

    def then(self, shape, **changes) -> "Val":
        """The pending value after one more foldable op."""
        return replace(self, shape=tuple(shape), materialized=None, **changes)


class _Tracer(torch.fx.Tracer):
    LEAVES = (QuantConv2d, QuantLinear, QuantAct, PixelScale) + NORMS

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self.LEAVES) or type(m).__name__ == "Normalize":
            return True
        return super().is_leaf_module(m, qualname)


class GraphBuilder:
    """Lowers one traced model; ``nodes``/``values``/``arrays`` are the model file's graph."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        self.model = model
        self.nodes: List[Dict] = []
        self.values: Dict[str, Dict] = {}
        self.arrays: Dict[str, np.ndarray] = {}
        self.counter = 0
        try:
            self.gm = torch.fx.GraphModule(model, _Tracer().trace(model))
        except Exception as exc:  # noqa: BLE001 - fx raises many kinds; the user needs the reason
            raise CheckpointError(f"runtime export: torch.fx cannot trace {type(model).__name__} ({exc}); "
                                  f"its forward must not branch on tensor values") from None
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(self.gm).propagate(example)
        self.modules = dict(self.gm.named_modules())
        self.users = {n: list(n.users) for n in self.gm.graph.nodes}

    # -- bookkeeping --
    def new_name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def declare(self, val: Val) -> Val:
        val.name = val.name or self.new_name("v")
        shape = list(val.shape)
        rt_shape = [shape[1], shape[2], shape[0]] if len(shape) == 3 else shape
        info = {"repr": val.repr, "shape": rt_shape}
        if val.levels is not None:
            info.update(table=[int(v) for v in val.levels.table], unit=float(val.levels.unit))
        self.values[val.name] = info
        return val

    def emit(self, op: str, inputs: List[Val], result: Val, **fields) -> Val:
        result = self.declare(result)
        node = {"op": op, "name": self.new_name("n"), "inputs": [v.name for v in inputs], "outputs": [result.name]}
        node.update(fields)
        self.nodes.append(node)
        return result

    # -- representation changes --
    def to_float(self, v: Val, where: str) -> Val:
        if v.repr == "float":
            return v
        if v.repr == "pending":
            return self.materialize(v)
        table = (v.levels.table * v.levels.unit).astype(np.float32)
        out = Val("float", v.shape, flat_from=v.flat_from)
        out = self.emit("decode", [v], out)
        self.arrays[self.nodes[-1]["name"] + ".table"] = table
        return out

    def materialize(self, v: Val) -> Val:
        """The pending accumulators as float32 ``A acc + B`` (then a clamp if one waits)."""
        if v.materialized is not None:
            return v.materialized
        g = v.gemm
        g["epilogue"] = {"kind": "affine"}
        self.arrays[g["name"] + ".scale"] = v.A.astype(np.float32)
        self.arrays[g["name"] + ".bias"] = v.B.astype(np.float32)
        out = self.declare(Val("float", v.shape))
        g["outputs"] = [out.name]
        self.nodes.append(g)
        if v.clamp is not None:
            out = self.emit("clamp", [out], Val("float", v.shape), min=v.clamp[0], max=v.clamp[1])
        v.materialized = out
        return out

    def quantize_pending(self, v: Val, lv: Levels, out_repr: str, where: str, q_module=None) -> Val:
        """Fold the quantizer into the pending GEMM's epilogue as per-channel thresholds."""
        if v.clamp is not None:
            lo, hi = v.clamp
            if not all((lo is None or b > lo) and (hi is None or b <= hi) for b in lv.boundaries):
                v = Val("float", v.shape, name=self.materialize(v).name)
                return self.quantize_float(v, lv, out_repr, where)
        g = v.gemm
        t, sign = thresholds(v.A, v.B, lv.boundaries, integer=v.integer_acc)
        if v.zfun is not None and v.integer_acc and q_module is not None:
            t = _faithful(t, sign, v, q_module, lv)
        g["epilogue"] = {"kind": "threshold", "levels": len(lv.table), "out": out_repr}
        self.arrays[g["name"] + ".thresholds"] = t
        self.arrays[g["name"] + ".sign"] = sign
        out = self.declare(Val(out_repr, v.shape, levels=lv))
        g["outputs"] = [out.name]
        self.nodes.append(g)
        return out

    def quantize_float(self, v: Val, lv: Levels, out_repr: str, where: str) -> Val:
        out = self.emit("quantize", [v], Val(out_repr, v.shape, levels=lv), levels=len(lv.table), out=out_repr)
        self.arrays[self.nodes[-1]["name"] + ".thresholds"] = lv.boundaries.astype(np.float32)[None, :]
        return out

    # -- consumers: may a binary activation travel as packed bits? --
    def bits_ok(self, node: torch.fx.Node) -> bool:
        for user in self.users[node]:
            if user.op == "output":
                return False
            m = self.modules.get(user.target) if user.op == "call_module" else None
            if isinstance(m, (QuantConv2d, QuantLinear)):
                if not (_binary_weights(m) and isinstance(m.input_quantizer, Identity) and not m.pixel_input):
                    return False
            elif isinstance(m, (nn.MaxPool2d, nn.Flatten) + PASS_THROUGH) or _is_flatten_call(user):
                if not self.bits_ok(user):
                    return False
            else:
                return False
        return True

    # -- the walk --
    def run(self, input_shape) -> None:
        env: Dict[torch.fx.Node, Any] = {}
        for node in self.gm.graph.nodes:
            where = node.target if node.op == "call_module" else str(node.target)
            if node.op == "placeholder":
                if env:
                    _fail(str(node.target), "the model takes more than one input")
                lv = Levels(np.arange(256, dtype=np.int64), 1.0, np.arange(1, 256, dtype=np.float64) - 0.5)
                env[node] = self.declare(Val("codes", tuple(input_shape), name="input", levels=lv))
            elif node.op == "get_attr":
                _fail(str(node.target), "forward reads a tensor attribute directly; wrap it in a module")
            elif node.op == "output":
                out = node.args[0]
                if not isinstance(out, torch.fx.Node):
                    _fail("output", "the model must return one tensor (the logits)")
                v = self.to_float(env[out], "output")
                if len(v.shape) != 1:
                    _fail("output", f"the model returns shape {v.shape} per example; expected logits (classes,)")
                self.output = v
            elif node.op == "call_module":
                env[node] = self.call_module(node, self.modules[node.target], env, where)
            else:
                env[node] = self.call_function(node, env, where)

    def arg(self, env, node, i=0) -> Val:
        a = node.args[i]
        if not isinstance(a, torch.fx.Node):
            _fail(str(node.target), f"argument {i} is a constant ({a!r}); only tensors flowing from the input are supported")
        v = env[a]
        if v.repr == "pending" and self.fan_out(a) > 1:
            return self.materialize(v)  # read by several ops: one epilogue (float), each reader takes it from there
        return v

    def fan_out(self, node) -> int:
        """How many ops read ``node``'s value, looking through pass-through modules."""
        total = 0
        for user in self.users[node]:
            m = self.modules.get(user.target) if user.op == "call_module" else None
            total += self.fan_out(user) if isinstance(m, PASS_THROUGH) else 1
        return total

    def shape_of(self, node) -> Tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        return tuple(int(d) for d in meta.shape[1:])

    def call_module(self, node, m, env, where) -> Val:
        v = self.arg(env, node)
        out_shape = self.shape_of(node)
        if isinstance(m, PASS_THROUGH):
            return v
        if isinstance(m, (QuantConv2d, QuantLinear, nn.Conv2d, nn.Linear)):
            return self.gemm(node, m, v, out_shape, where)
        if isinstance(m, NORMS):
            c, d = bn_affine(m, where)
            if v.repr == "pending" and v.clamp is None:
                return v.then(out_shape, A=c * v.A, B=c * v.B + d, chain=v.chain + (_channelwise(m),))
            f = self.to_float(v, where)
            out = self.emit("affine", [f], Val("float", out_shape))
            self.arrays[self.nodes[-1]["name"] + ".scale"] = c.astype(np.float32)
            self.arrays[self.nodes[-1]["name"] + ".bias"] = d.astype(np.float32)
            return out
        if isinstance(m, QuantAct):
            if isinstance(m.quantizer, Identity):
                return self.clamp(v, {"hardtanh": (-1.0, 1.0), "relu": (0.0, None), "identity": (None, None)}
                                  [m.float_activation_name], out_shape, where)
            return self.quantize(node, m.quantizer, v, out_shape, where)
        if isinstance(m, PixelScale):
            if not _raw_pixels(v):
                _fail(where, "PixelScale must read the 8-bit input (through Flatten/Dropout at most)")
            lv = Levels(2 * np.arange(256, dtype=np.int64) - 255, 1.0 / 255.0, v.levels.boundaries)
            return Val("codes", v.shape, name=v.name, levels=lv)
        if type(m).__name__ == "Normalize":
            f = self.to_float(v, where)
            out = self.emit("affine", [f], Val("float", out_shape))
            mean = m.mean.detach().double().flatten().numpy()
            inv = m.inv_std.detach().double().flatten().numpy()
            self.arrays[self.nodes[-1]["name"] + ".scale"] = inv.astype(np.float32)
            self.arrays[self.nodes[-1]["name"] + ".bias"] = (-mean * inv).astype(np.float32)
            return out
        if isinstance(m, (nn.ReLU, nn.Hardtanh, nn.ReLU6)):
            lo, hi = (0.0, None) if isinstance(m, nn.ReLU) else (0.0, 6.0) if isinstance(m, nn.ReLU6) else (m.min_val, m.max_val)
            return self.clamp(v, (lo, hi), out_shape, where)
        if isinstance(m, nn.MaxPool2d):
            return self.maxpool(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, v, out_shape, where)
        if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            return self.avgpool(m, v, out_shape, where)
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                _fail(where, "only Flatten(start_dim=1) is supported")
            return self.flatten(v, out_shape, where)
        _fail(where, f"{type(m).__name__} has no runtime op (supported: quantized/float conv and linear, BatchNorm, "
                     f"shift-BN, QuantAct, ReLU, Hardtanh, max/avg pooling, Flatten, Dropout, residual add)")

    def call_function(self, node, env, where) -> Val:
        t = node.target
        if node.op == "call_method" and t == "size" or t is getattr:
            if all(_is_flatten_call(u) for u in self.users[node]):
                return None  # x.size(0) feeding x.view(x.size(0), -1): only the flatten uses it
            _fail(where, "reading a tensor's size is supported only for x.view(x.size(0), -1)")
        out_shape = self.shape_of(node)
        if t in (operator.add, torch.add) or (node.op == "call_method" and t == "add"):
            a, b = node.args[0], node.args[1]
            if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)) or node.kwargs:
                _fail(where, "only the sum of two tensors is supported (no constants or alpha)")
            fa, fb = self.to_float(env[a], where), self.to_float(env[b], where)
            return self.emit("add", [fa, fb], Val("float", out_shape))
        if _is_flatten_call(node):
            return self.flatten(self.arg(env, node), out_shape, where)
        if t in SCALAR_OPS and len(node.args) == 2 and not node.kwargs:
            a, b = node.args
            if isinstance(a, torch.fx.Node) and isinstance(b, (int, float)) and not isinstance(b, bool):
                scale, bias = SCALAR_OPS[t](float(b))
            elif isinstance(b, torch.fx.Node) and isinstance(a, (int, float)) and t in (operator.add, operator.mul):
                scale, bias = SCALAR_OPS[t](float(a))
                a = b
            else:
                _fail(where, f"{t.__name__} is supported between a tensor and a number only")
            f = self.to_float(self.arg(env, node, 0 if isinstance(node.args[0], torch.fx.Node) else 1), where)
            c = f.shape[0]
            out = self.emit("affine", [f], Val("float", out_shape, flat_from=f.flat_from))
            self.arrays[self.nodes[-1]["name"] + ".scale"] = np.full(c if len(f.shape) == 3 else f.shape[0], scale, np.float32)
            self.arrays[self.nodes[-1]["name"] + ".bias"] = np.full(c if len(f.shape) == 3 else f.shape[0], bias, np.float32)
            return out
        if t in (torch.relu, torch.nn.functional.relu) or (node.op == "call_method" and t == "relu"):
            return self.clamp(self.arg(env, node), (0.0, None), out_shape, where)
        if t is torch.nn.functional.hardtanh:
            return self.clamp(self.arg(env, node), (-1.0, 1.0), out_shape, where)
        _fail(where, f"the operation {t!r} has no runtime op")

    # -- op lowering --
    def clamp(self, v: Val, bounds, out_shape, where) -> Val:
        lo, hi = bounds
        if v.repr == "pending" and v.clamp is None:
            return v.then(out_shape, clamp=(lo, hi))
        f = self.to_float(v, where)
        return self.emit("clamp", [f], Val("float", out_shape), min=lo, max=hi)

    def quantize(self, node, q, v: Val, out_shape, where) -> Val:
        lv = quantizer_levels(q, where)
        out_repr = "bits" if lv.is_binary and abs(lv.unit - 1.0) < 1e-12 and self.bits_ok(node) else "codes"
        if v.repr == "pending":
            return self.quantize_pending(v, lv, out_repr, where, q_module=q)
        return self.quantize_float(self.to_float(v, where), lv, out_repr, where)

    def maxpool(self, kernel, stride, padding, dilation, ceil_mode, v: Val, out_shape, where) -> Val:
        pair = lambda x: [int(x), int(x)] if isinstance(x, int) else [int(e) for e in x]  # noqa: E731
        if ceil_mode or pair(dilation) != [1, 1]:
            _fail(where, "max-pooling with ceil_mode or dilation is not supported")
        if len(v.shape) != 3:
            _fail(where, "max-pooling needs (C, H, W) features")
        stride = kernel if stride is None else stride
        window = {"kernel": pair(kernel), "stride": pair(stride), "padding": pair(padding)}
        if v.repr == "pending" and v.clamp is None and v.gemm.get("pool") is None and (v.A > 0).all():
            v.gemm["pool"] = window  # on the accumulators, before the epilogue: exact since A > 0
            return v.then(out_shape)  # max commutes with every monotone map after it
        if v.repr == "pending":
            v = self.materialize(v)
        if v.repr == "codes" and not (v.levels.unit > 0 and (np.diff(v.levels.table) > 0).all()):
            v = self.to_float(v, where)
        return self.emit("maxpool", [v], Val(v.repr, out_shape, levels=v.levels), **window)

    def avgpool(self, m, v: Val, out_shape, where) -> Val:
        if isinstance(m, nn.AdaptiveAvgPool2d) and len(v.shape) == 3 and tuple(out_shape) == tuple(v.shape):
            return v  # the identity (AlexNet's 6x6 pool at 224x224 inputs)
        f = self.to_float(v, where)
        if len(f.shape) != 3:
            _fail(where, "average pooling needs (C, H, W) features")
        c, h, w = f.shape
        if isinstance(m, nn.AdaptiveAvgPool2d):
            oh, ow = out_shape[1], out_shape[2]
            if (oh, ow) == (1, 1):
                return self.emit("global_avgpool", [f], Val("float", out_shape))
            if (oh, ow) == (h, w):
                return f
            if h % oh or w % ow:
                _fail(where, f"adaptive average pooling {h}x{w} -> {oh}x{ow} is not a regular pooling")
            k = [h // oh, w // ow]
            return self.emit("avgpool", [f], Val("float", out_shape), kernel=k, stride=k, padding=[0, 0])
        pair = lambda x: [int(x), int(x)] if isinstance(x, int) else [int(e) for e in x]  # noqa: E731
        if m.ceil_mode or m.divisor_override is not None:
            _fail(where, "average pooling with ceil_mode or divisor_override is not supported")
        stride = m.kernel_size if m.stride is None else m.stride
        return self.emit("avgpool", [f], Val("float", out_shape), kernel=pair(m.kernel_size), stride=pair(stride),
                         padding=pair(m.padding), count_include_pad=bool(m.count_include_pad))

    def flatten(self, v: Val, out_shape, where) -> Val:
        if v.repr == "pending":
            v = self.materialize(v)
        if len(v.shape) == 1:
            return v
        return self.emit("flatten", [v], Val(v.repr, out_shape, levels=v.levels, flat_from=(v.shape, v.repr)))

    def gemm(self, node, m: nn.Module, v: Val, out_shape, where) -> Val:
        conv = isinstance(m, nn.Conv2d)
        if conv:
            if m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
                _fail(where, "convolutions with groups, dilation, string padding or a padding mode other than zeros are not supported")
        quantized = isinstance(m, (QuantConv2d, QuantLinear))
        pixel = quantized and m.pixel_input
        with torch.no_grad():
            w_real = (m.weight_quantizer(m.weight) if quantized else m.weight).detach().double().numpy()
        bias = None if m.bias is None else m.bias.detach().double().numpy()
        pad_real = float(getattr(m, "pad_value", 0.0)) if conv else 0.0
        if pixel:
            if not _raw_pixels(v):
                _fail(where, "a pixel_input layer must read the 8-bit input (through Flatten/Dropout at most)")
            v = Val("codes", v.shape, name=v.name, flat_from=v.flat_from,
                    levels=Levels(2 * np.arange(256, dtype=np.int64) - 255, 1.0 / 255.0, v.levels.boundaries))
        if quantized and not isinstance(m.input_quantizer, Identity):
            lv = quantizer_levels(m.input_quantizer, where + ".input_quantizer")
            v = self.quantize_pending(v, lv, "codes", where) if v.repr == "pending" else \
                self.quantize_float(self.to_float(v, where), lv, "codes", where)
        if v.repr == "pending":
            v = self.materialize(v)
        # the weights as (out, K) in the runtime's input order (NHWC patches, or HWC after a flatten)
        cout = w_real.shape[0]
        if conv:
            kh, kw = m.kernel_size
            wl = w_real.transpose(0, 2, 3, 1)  # (out, kh, kw, C)
        else:
            wl = w_real
            if v.flat_from is not None and len(v.flat_from[0]) == 3:
                c, h, w = v.flat_from[0]
                wl = w_real.reshape(cout, c, h, w).transpose(0, 2, 3, 1)  # PyTorch's CHW order -> HWC
        w_ints = w_unit = b_levels = None
        if quantized and not isinstance(m.weight_quantizer, Identity) and v.repr != "float":
            uniq = np.unique(w_real)
            if len(uniq) <= 256:
                ints, w_unit = _integer_grid(uniq, where + ".weight")
                lookup = dict(zip(uniq.tolist(), ints.tolist()))
                w_ints = np.vectorize(lookup.__getitem__, otypes=[np.int64])(wl)
                b_levels = _weight_level_set(w_ints)
        fields: Dict[str, Any] = {"kind": "conv2d" if conv else "dense", "out_channels": int(cout)}
        if conv:
            fields.update(kernel=[int(kh), int(kw)], stride=[int(s) for s in m.stride],
                          padding=[int(p) for p in m.padding])
        g = {"op": "gemm", "name": self.new_name("n"), "inputs": [], "outputs": []}
        ph, pw = (m.padding if conv else (0, 0))
        A = B = None
        border = None
        mul = 1
        in_shape = v.shape
        if v.repr == "bits" and b_levels == "binary":
            # XNOR-popcount on packed bits: acc = sum of +-1 products over K incl. channel pad bits (+1 each)
            c_in = in_shape[0] if conv else (v.flat_from[0][0] if v.flat_from and len(v.flat_from[0]) == 3 else in_shape[0])
            words = (c_in + 63) // 64
            if conv or (v.flat_from and len(v.flat_from[0]) == 3):
                lead = wl.shape[1:-1]  # (kh, kw) or (h, w)
                padded = np.ones((cout,) + lead + (words * 64,))
                padded[..., :c_in] = w_ints
                pad_bits = int(np.prod(lead)) * (words * 64 - c_in)
            else:
                padded = np.ones((cout, words * 64))
                padded[:, :c_in] = w_ints
                pad_bits = words * 64 - c_in
            flat = padded.reshape(cout, -1)
            self.arrays[g["name"] + ".weight"] = _pack_rows(flat)
            fields.update(format="bits", k=int(flat.shape[1]))
            unit = v.levels.unit * w_unit
            A = np.full(cout, unit)
            B = np.full(cout, -pad_bits * unit)
            if conv and (ph or pw) and pad_real != v.levels.unit:
                p_int = _pad_int(pad_real, v.levels.unit, where)
                wsum_pad = _padded_weight_sums(w_ints, in_shape[1:], m.stride, (ph, pw))  # (OH, OW, out)
                border = -pad_bits + (p_int - 1) * wsum_pad
                B = np.zeros(cout)
        elif v.repr in ("codes", "bits") and b_levels is not None:
            if v.repr == "bits":
                _fail(where, "internal: packed bits reached a non-binary GEMM")
            lv = v.levels
            a_levels, raw_codes = _act_level_set(lv.table)
            if a_levels is None:
                return self.float_gemm(g, fields, m, self.to_float(v, where), wl, w_real, bias, conv, pad_real, out_shape)
            k_total = int(np.prod(wl.shape[1:]))
            ls = LEVEL_SETS[b_levels]
            store = next(b for b in (1, 2, 4, 8) if b >= ls.bits)
            self.arrays[g["name"] + ".weight_codes"] = pack_codes(ls.codes(w_ints.reshape(cout, -1)), store)
            fields.update(format="codes", k=k_total, a_levels=a_levels, b_levels=b_levels, weight_bits=store)
            if not raw_codes:
                fields["a_table"] = [int(t) for t in lv.table]
            step, offset = (lv.affine if raw_codes else (1, 0))
            unit = lv.unit * w_unit
            wsum = w_ints.reshape(cout, -1).sum(1)
            if conv and (ph or pw):
                p_int = _pad_int(pad_real, lv.unit, where)
                cp = lv.code_of(p_int) if float(p_int).is_integer() else None
                fields["pad_code"] = int(cp if cp is not None else 0)
                pad_val = lv.table[fields["pad_code"]]
                if cp is None:
                    wsum_pad = _padded_weight_sums(w_ints, in_shape[1:], m.stride, (ph, pw))
                    mul = step
                    border = offset * wsum[None, None, :] + (p_int - pad_val) * wsum_pad
            if border is None:
                A = np.full(cout, unit * step)
                B = unit * offset * wsum
            else:
                A, B = np.full(cout, unit), np.zeros(cout)
        else:
            f = self.to_float(v, where)
            return self.float_gemm(g, fields, m, f, wl, w_real, bias, conv, pad_real, out_shape)
        if border is not None:
            if not np.all(border == np.round(border)):
                # a pad value that is no whole number of input units (e.g. +1 padding of PACT codes): fixed
                # point with f fractional bits, x' = 2^f x = (2^f mul) acc + round(2^f border), as large an f as
                # keeps x' in int32; the rounding (2^-f of a unit) is below float32's at these magnitudes
                acc_max = float(np.abs(w_ints).reshape(cout, -1).sum(1).max()) * float(np.abs(v.levels.table).max() + 1)
                room = 2.0**30 / (mul * acc_max + np.abs(border).max() + 1)
                frac = int(min(20, max(0, np.floor(np.log2(room)))))
                border, mul = np.round(border * 2.0**frac), mul * 2**frac
                A = A / 2.0**frac
            if np.abs(border).max() > 2**30:
                _fail(where, "the padding correction overflows int32")
            self.arrays[g["name"] + ".border"] = border.astype(np.int32)
            fields["mul"] = int(mul)
        if bias is not None:
            B = B + bias
        g.update(fields)
        g["inputs"] = [v.name]
        zfun = None
        if border is None and w_unit == 1.0 and b_levels == "binary":
            zfun = _torch_preactivation(v, pad_bits if v.repr == "bits" else None, w_ints, bias)
        return Val("pending", out_shape, gemm=g, A=A, B=B, zfun=zfun)

    def float_gemm(self, g, fields, m, f: Val, wl, w_real, bias, conv, pad_real, out_shape) -> Val:
        cout = w_real.shape[0]
        self.arrays[g["name"] + ".weight"] = np.ascontiguousarray(wl.reshape(cout, -1).T.astype(np.float32))
        fields.update(format="float", k=int(np.prod(wl.shape[1:])))
        if conv:
            fields["pad_value"] = pad_real
        g.update(fields)
        g["inputs"] = [f.name]
        B = np.zeros(cout) if bias is None else bias
        return Val("pending", out_shape, gemm=g, A=np.ones(cout), B=B, integer_acc=False)


SCALAR_OPS = {  # x op number -> (scale, bias) of the same per-channel affine map
    operator.mul: lambda k: (k, 0.0),
    operator.truediv: lambda k: (1.0 / k, 0.0),
    operator.add: lambda k: (1.0, k),
    operator.sub: lambda k: (1.0, -k),
}


def _raw_pixels(v: Val) -> bool:
    return (v.repr == "codes" and v.levels.unit == 1.0 and len(v.levels.table) == 256
            and (v.levels.table == np.arange(256)).all())


def _binary_weights(m: nn.Module) -> bool:
    """Whether a quantized layer's weights are exactly +-1 (what the XNOR kernel multiplies)."""
    with torch.no_grad():
        return bool(((m.weight_quantizer(m.weight) == 1) | (m.weight_quantizer(m.weight) == -1)).all())


def _channelwise(bn: nn.Module):
    """BN as a function of (R, C) float32 tensors (a 2-d BN sees them as (R, C, 1, 1))."""
    two_d = isinstance(bn, (nn.BatchNorm2d, ShiftBatchNorm2d))

    def apply(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return bn(z[:, :, None, None])[:, :, 0, 0] if two_d else bn(z)

    return apply


def _torch_preactivation(v: Val, pad_bits, w_ints: np.ndarray, bias):
    """acc (int64 (R, C)) -> the float32 pre-activation PyTorch computes, for layers whose product is exact
    in float32: +-1 x +-1 (z = acc - pad_bits) and 8-bit pixels x +-1 (z = acc * 2/255 - sum(w), as
    QuantLinear/QuantConv2d's pixel_input path computes it). None where the product itself rounds."""
    from ..nn.layers import PIXEL_GAIN

    b = None if bias is None else torch.tensor(bias, dtype=torch.float32)
    cout = w_ints.shape[0]
    if pad_bits is not None:
        def z(acc):
            out = torch.tensor(acc - pad_bits, dtype=torch.float32)
            return out if b is None else out + b
        return z
    table = v.levels.table
    if len(table) == 256 and (table == 2 * np.arange(256) - 255).all() and abs(v.levels.unit - 1 / 255) < 1e-12:
        wsum = torch.tensor(w_ints.reshape(cout, -1).sum(1), dtype=torch.float32)

        def z(acc):
            out = torch.tensor(acc, dtype=torch.float32) * PIXEL_GAIN - wsum
            return out if b is None else out + b
        return z
    return None


def _faithful(t: np.ndarray, sign: np.ndarray, v: Val, q: nn.Module, lv: Levels, reach: int = 3) -> np.ndarray:
    """Move each integer threshold (by at most ``reach``) to where PyTorch's float32 forward (v.zfun, the
    BN/clamp chain, the quantizer) switches codes, so a pre-activation within float32 rounding of a level
    boundary lands on the same code as in PyTorch eval. The exact thresholds and PyTorch's differ only at
    such near-ties; the real-valued crossing stays within the window."""
    C, M = t.shape
    deltas = np.arange(-reach, reach + 1)
    cand = t.astype(np.int64)[None, :, :] + deltas[:, None, None]  # (D, C, M)
    R = len(deltas) * M
    acc = cand.transpose(0, 2, 1).reshape(R, C)  # rows: (delta, m); columns: channels
    with torch.no_grad():
        z = v.zfun(acc)
        for f in v.chain:
            z = f(z)
        if v.clamp is not None:
            z = torch.clamp(z, v.clamp[0], v.clamp[1])
        y = q.eval()(z).double().numpy()
    level_values = lv.table * lv.unit
    y = y.reshape(len(deltas), M, C).transpose(0, 2, 1)  # (D, C, M)
    on = y >= (level_values[1:][None, None, :] - 1e-6 * np.abs(level_values).max())  # code >= m + 1
    up = sign[None, :, None] > 0
    out = t.copy()
    for c in range(C):
        for m in range(M):
            col = on[:, c, m]
            if col.all() or not col.any():
                continue  # no switch within reach: keep the exact threshold
            if sign[c] > 0 and (np.diff(col.astype(int)) >= 0).all():
                out[c, m] = cand[np.argmax(col), c, m]
            elif sign[c] < 0 and (np.diff(col.astype(int)) <= 0).all():
                out[c, m] = cand[len(col) - 1 - np.argmax(col[::-1]), c, m]
    del up
    return out


def _is_flatten_call(node) -> bool:
    t = node.target
    if node.op == "call_function" and t is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return start == 1 and len(node.args) <= 2
    if node.op == "call_method" and t in ("flatten",):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return start == 1
    if node.op == "call_method" and t in ("view", "reshape") and len(node.args) == 3:
        return node.args[2] == -1
    return False


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """(N, K) unsigned codes -> (N, ceil(K bits / 8)) bytes, ``8 / bits`` codes a byte, first in the low bits."""
    n, k = codes.shape
    per = 8 // bits
    padded = np.zeros((n, -(-k // per) * per), np.uint8)
    padded[:, :k] = codes
    groups = padded.reshape(n, -1, per).astype(np.uint16)
    return (groups << (bits * np.arange(per, dtype=np.uint16))).sum(axis=2).astype(np.uint8)


def _pad_int(pad_real: float, unit: float, where: str):
    """The pad value in input units: an int when it is a whole number of units, else the float."""
    p = pad_real / unit
    return int(round(p)) if abs(p - round(p)) <= 1e-4 * max(1.0, abs(p)) else p


def _padded_weight_sums(w: np.ndarray, hw, stride, padding) -> np.ndarray:
    """(OH, OW, out): for each output position the sum of the weights whose taps fall on padding."""
    cout, kh, kw, _ = w.shape
    h, wd = hw
    (sh, sw), (ph, pw) = stride, padding
    inside = np.zeros((h + 2 * ph, wd + 2 * pw))
    inside[ph:ph + h, pw:pw + wd] = 1
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    wk = w.sum(axis=3)  # (out, kh, kw): sum over input channels
    out = np.zeros((oh, ow, cout), np.int64)
    for i in range(kh):
        for j in range(kw):
            outside = 1 - inside[i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            out += (outside[:, :, None] * wk[None, None, :, i, j]).astype(np.int64)
    return out


def _pack_rows(pm1: np.ndarray) -> np.ndarray:
    bits = np.asarray(pm1) < 0
    n, k = bits.shape
    padded = np.zeros((n, (k + 63) // 64 * 64), dtype=bool)
    padded[:, :k] = bits
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").astype(np.uint64)


def thresholds(A: np.ndarray, B: np.ndarray, boundaries: np.ndarray, integer: bool = True):
    """Per-channel thresholds on acc for ``code = #{m : A acc + B >= b_m}``: (C, L-1) and the sign (C,).

    A > 0: acc >= ceil((b - B) / A);  A < 0: acc <= floor((b - B) / A), counted as -acc >= -t;
    A = 0: constant, the threshold saturates at the end of the range (always / never). Computed in float64;
    a bound within 1e-9 (relative) of an integer is taken as that integer, the exact answer for the
    rational value float64 approximates. Integer thresholds saturate at int32 before the cast."""
    A = np.asarray(A, np.float64)[:, None]
    B = np.asarray(B, np.float64)[:, None]
    b = np.asarray(boundaries, np.float64)[None, :]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        bound = (b - B) / A
    t = np.empty(np.broadcast(A, b).shape)
    pos, neg = np.broadcast_to(A > 0, t.shape), np.broadcast_to(A < 0, t.shape)
    if integer:
        t[pos] = np.ceil(bound[pos] - 1e-9 * np.abs(bound[pos]))
        t[neg] = np.floor(bound[neg] + 1e-9 * np.abs(bound[neg]))
    else:
        t[pos], t[neg] = bound[pos], bound[neg]
    zero = ~(pos | neg)
    const_on = np.broadcast_to(B >= b, t.shape)
    # A = 0 with sign +1: "acc >= -inf" always holds, "acc >= +inf" never does
    t[zero & const_on] = -np.inf
    t[zero & ~const_on] = np.inf
    sign = np.where(A[:, 0] < 0, -1, 1).astype(np.int8)
    if integer:
        return np.clip(t, INT32_MIN + 1, INT32_MAX - 1).astype(np.int32), sign
    return np.clip(t, -3e38, 3e38).astype(np.float32), sign


# ---- the public entry point ---------------------------------------------------------------------------------


PathLike = Union[str, Path]


def build_graph(model: nn.Module, example_input, meta: Optional[Dict] = None) -> Tuple[Dict, Dict[str, np.ndarray]]:
    """(meta, arrays) of the ``graph`` model file for ``model`` (put in eval mode) on inputs shaped like
    ``example_input`` (N, C, H, W) 8-bit pixels as floats."""
    x = torch.as_tensor(example_input)
    if x.dim() != 4:
        raise CheckpointError(f"runtime export: example_input must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    x = x.float()
    was_training = model.training
    model.eval()
    try:
        b = GraphBuilder(model, x)
        b.run(tuple(int(d) for d in x.shape[1:]))
    finally:
        model.train(was_training)
    out = dict(meta or {})
    num_classes = b.output.shape[0]
    out.update(input_shape=[int(d) for d in x.shape[1:]], num_classes=int(num_classes), task="image",
               graph={"input": "input", "output": b.output.name, "values": b.values, "nodes": b.nodes})
    return out, b.arrays


def export_model(model: nn.Module, example_input, path: PathLike, meta: Optional[Dict] = None) -> Dict[str, Any]:
    """Export ``model`` to a runtime model file at ``path``; returns a report: file size, the fp32
    state_dict size, and the kernel each layer runs on (read back from the written file)."""
    meta_out, arrays = build_graph(model, example_input, meta)
    save_model_file(path, KIND, meta_out, arrays)
    from ..runtime import load

    net = load(path)
    fp32 = sum(v.numel() * 4 for v in model.state_dict().values() if v.dtype.is_floating_point)
    size = Path(path).stat().st_size
    return {"model_file": str(path), "bytes": size, "fp32_state_dict_bytes": fp32, "ratio": fp32 / size,
            "layers": net.layers()}


def input_shape_of(cfg: Dict) -> Tuple[int, int, int]:
    """The (C, H, W) of the 8-bit images a checkpoint's model takes: its ``in_shape``, or ImageNet's crop."""
    args = cfg.get("model_args", {})
    if "in_shape" in args:
        return tuple(int(d) for d in args["in_shape"])
    if cfg.get("task") == "imagenet":
        from ..data.imagenet import CROP

        return (3, CROP, CROP)
    raise CheckpointError(f"runtime export: the checkpoint's config names no input shape (model {cfg.get('model')!r})")


def export_checkpoint(checkpoint: PathLike, out: PathLike) -> Dict[str, Any]:
    """``lowbit export`` of an image classifier checkpoint: the model it names, rebuilt and loaded, exported
    with :func:`export_model` on an example batch of its input shape."""
    from ..train.checkpoint import check_finite, model_from_checkpoint, read_checkpoint

    data = read_checkpoint(checkpoint)
    cfg = data["config"]
    check_finite(data["model_state"], str(checkpoint))
    model = model_from_checkpoint(data, str(checkpoint))
    example = torch.zeros((1,) + input_shape_of(cfg))
    meta = {"recipe": cfg.get("recipe"), "dataset": cfg.get("dataset"), "model": cfg.get("model"),
            "source_checkpoint": Path(checkpoint).name}
    return export_model(model, example, out, meta=meta)
