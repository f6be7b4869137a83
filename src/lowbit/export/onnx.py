"""Export a trained image classifier (a training checkpoint) to a standard ONNX graph.

    lowbit export runs/x/checkpoint.pt -o model.onnx          (format from the extension, or --format onnx)
    from lowbit.export.onnx import export_onnx_model          (an eval-mode nn.Sequential -> onnx.ModelProto)

The graph is built node by node with ``onnx.helper`` from the eval-mode ``nn.Sequential`` (the way
``export/image.py`` walks it), so it computes what PyTorch's forward computes, op for op, in float32:

* **weights** are constant initializers holding their *quantized* values (``weight_quantizer(W)`` in eval
  mode: +-1 for binary weights, the 2^k SAWB / linear levels for k-bit ones). A bias stays a bias.
* the **first layer** takes raw 8-bit pixels (``pixel_input=True``) in the integer-exact form of
  ``nn/layers.py``: ``(2/255) (p . w) - sum(w)``, with the conv's padding done by a ``Pad`` to the pixel value
  of ``pad_value``. Hidden convs padding with a nonzero ``pad_value`` (+1 in the binary ConvNets) get an
  explicit ``Pad`` too.
* **binary activations** are the paper's sign with sign(0) = +1: ``Where(GreaterOrEqual(x, 0), 1, -1)``
  (ONNX ``Sign`` maps 0 to 0).
* **k-bit activations** (``linear``, PACT) are the quantizer's own round/clip arithmetic in the same order
  (``Clip``/``Min``/``Max``, ``Mul``, ``Div``, ``Floor``), so the levels are bit-identical to PyTorch's.
  With ``activations="qdq"`` they are ``QuantizeLinear``/``DequantizeLinear`` pairs instead (uint8, uint4 for
  3-4 bits, uint2 for 2 bits) after the same clip; QuantizeLinear rounds ties to even and computes
  ``x / scale``, so a value on a rounding boundary may land one level away from PyTorch's.
* with ``weights="qdq"`` quantized weights are integer codes and a ``DequantizeLinear`` (binary: int2
  codes +-1; symmetric 2-/3-bit: int4 odd codes, see :func:`_weight_dq` for why not int2).
* **int2**: 2-bit codes use ONNX's int2/uint2 (opset 25, IR 13) where the installed onnx has them
  (``onnx >= 1.20``; onnxruntime executes them in recent releases, older ones refuse the file: export with
  ``int2=False`` / ``--onnx-int2 no`` for those, and int4/uint4 carry the 2-bit codes at opset 21).
* ``BatchNorm1d/2d`` are ``BatchNormalization`` with the running statistics; ``MaxPool2d`` is ``MaxPool``;
  ``Flatten`` is ``Flatten``; ``Dropout`` is left out (eval mode).

The batch dimension is dynamic (``batch``). Any other module, or a quantizer without an ONNX form here
(``log``, a custom function), raises :class:`lowbit.errors.ExportError`-style ``CheckpointError`` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..nn.layers import PIXEL_GAIN, PixelScale, QuantAct, QuantConv2d, QuantLinear
from ..quant.base import Identity, SteSign, is_binary, quantizer_bits
from ..quant.kbit import LinearQuant
from ..quant.pact_sawb import PACT, PACT_MIN_ALPHA, SAWB, sawb_scale

OPSET = 21  # QuantizeLinear/DequantizeLinear with int4/uint4 (opset 21); onnxruntime >= 1.18
INT2_OPSET = 25  # ... with int2/uint2 (opset 25, IR 13: onnx >= 1.20; onnxruntime runs them from 1.23 or so)
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"


QONNX_DOMAIN = "qonnx.custom_op.general"


class _Graph:
    """Nodes and initializers being collected, with fresh names. ``qonnx``: emit the QONNX dialect."""

    def __init__(self, qonnx: bool = False, prefix: str = "", int2: bool = False, qdq_weights: bool = False):
        self.qonnx = qonnx
        self.int2 = int2  # 2-bit Q/DQ codes as int2/uint2 (else int4/uint4); raises the opset to INT2_OPSET
        self.qdq_weights = qdq_weights  # quantized weights as integer codes + DequantizeLinear
        self.opset = OPSET
        self.prefix = prefix  # a subgraph's names must not shadow the outer graph's
        self.nodes: List = []
        self.inits: List = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{self.prefix}{stem}_{self._n}"

    def const(self, value, stem: str = "c", dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], stem: Optional[str] = None, **attrs) -> str:
        from onnx import helper

        out = self.name(stem or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


def int2_available() -> bool:
    """Whether the installed onnx has the 2-bit integer types for Q/DQ (``TensorProto.INT2``/``UINT2``,
    QuantizeLinear opset 25)."""
    import onnx

    return hasattr(onnx.TensorProto, "INT2") and onnx.defs.onnx_opset_version() >= INT2_OPSET


def _resolve_int2(int2: Optional[bool]) -> bool:
    """``None``: int2 where the installed onnx has it; ``True``: required; ``False``: int4 carries 2-bit codes."""
    if int2 is None:
        return int2_available()
    if int2 and not int2_available():
        import onnx

        raise CheckpointError(f"ONNX export: int2 Q/DQ needs onnx >= 1.20 (TensorProto.INT2, opset {INT2_OPSET}); "
                              f"the installed onnx {onnx.__version__} has not got it: export with int2=False "
                              f"(--onnx-int2 no), where int4 carries the 2-bit codes")
    return bool(int2)


def _code_type(g: "_Graph", bits: int, signed: bool):
    """The narrowest ONNX integer type for ``bits``-bit codes: int2/uint2 where the graph allows them (which
    raises its opset to INT2_OPSET), else int4/uint4, else int8/uint8."""
    from onnx import TensorProto

    if bits <= 2 and g.int2:
        g.opset = max(g.opset, INT2_OPSET)
        return TensorProto.INT2 if signed else TensorProto.UINT2
    if bits <= 4:
        return TensorProto.INT4 if signed else TensorProto.UINT4
    return TensorProto.INT8 if signed else TensorProto.UINT8


def _f32(v) -> np.float32:
    """A Python scalar as PyTorch uses it against a float32 tensor."""
    return np.float32(v)


def _sign(g: _Graph, x: str) -> str:
    """The paper's sign: +1 where x >= 0 else -1 (0 -> +1)."""
    ge = g.op("GreaterOrEqual", [x, g.const(0.0, "zero")], "ge0")
    return g.op("Where", [ge, g.const(1.0, "one"), g.const(-1.0, "minus_one")], "sign")


def _levels_qdq(g: _Graph, y: str, scale: float, zero_point: int, bits: int, signed: bool) -> str:
    """QuantizeLinear/DequantizeLinear to ``bits``-bit codes: the narrowest ONNX integer type that holds them
    (int2/uint2 for 2-bit codes when the graph allows it)."""
    from onnx import helper

    dtype = _code_type(g, bits, signed)
    zp_name = g.name("zero_point")
    zp = helper.make_tensor(zp_name, dtype, [], [int(zero_point)])
    g.inits.append(zp)
    s = g.const(scale, "scale")
    q = g.op("QuantizeLinear", [y, s, zp_name], "q")
    return g.op("DequantizeLinear", [q, s, zp_name], "dq")


def _qonnx_quant(g: _Graph, x: str, scale: float, zeropt: float, bits: int, signed: bool, rounding: str) -> str:
    """QONNX ``Quant``: (clamp(x / scale + zeropt) to the ``bits``-bit range, rounded, - zeropt) * scale."""
    return g.op("Quant", [x, g.const(_f32(scale), "scale"), g.const(zeropt, "zeropt"), g.const(float(bits), "bitwidth")],
                "quant", domain=QONNX_DOMAIN, signed=int(signed), narrow=0, rounding_mode=rounding)


def _qonnx_bipolar(g: _Graph, x: str, scale: float = 1.0) -> str:
    """QONNX ``BipolarQuant``: +scale where x >= 0, else -scale (the paper's sign)."""
    return g.op("BipolarQuant", [x, g.const(_f32(scale), "scale")], "bipolar_quant", domain=QONNX_DOMAIN)


def _qonnx_quantizer(g: _Graph, q: nn.Module, x: str, where: str) -> str:
    """Activation quantizers as QONNX nodes (same levels as the arithmetic form; see export_qonnx_model)."""
    if isinstance(q, SteSign):
        return _qonnx_bipolar(g, x)
    if isinstance(q, LinearQuant):
        n, a = 2 ** q.bits - 1, q.max_value
        if q.mode == "unsigned":
            return _qonnx_quant(g, x, a / n, 0.0, q.bits, False, "HALF_UP")
        if q.bits == 1:
            return _qonnx_bipolar(g, x, a)
        # levels (j + 1/2) bw, j = floor(x / bw) clamped to the signed k-bit range: Quant (FLOOR) + bw / 2
        bw = _f32(2.0 * a / n)
        y = _qonnx_quant(g, x, bw, 0.0, q.bits, True, "FLOOR")
        return g.op("Add", [y, g.const(bw / 2)], "half_step")
    if isinstance(q, PACT):
        a = float(torch.clamp(q.alpha.detach().float(), min=PACT_MIN_ALPHA))
        return _qonnx_quant(g, x, np.float32(a) / np.float32(2 ** q.bits - 1), 0.0, q.bits, False, "HALF_UP")
    raise CheckpointError(
        f"QONNX export: {where}: quantizer {getattr(q, 'registry_name', type(q).__name__)!r} has no QONNX form "
        f"(supported: ste_sign, linear, pact)"
    )


def _quantizer(g: _Graph, q: nn.Module, x: str, where: str, activations: str) -> str:
    """Emit the eval-mode forward of activation/input quantizer ``q`` on tensor ``x``."""
    if isinstance(q, Identity):
        return x
    if g.qonnx:
        return _qonnx_quantizer(g, q, x, where)
    if isinstance(q, SteSign):  # StochasticSign too: deterministic in eval mode
        return _sign(g, x)
    if isinstance(q, LinearQuant):
        n = 2 ** q.bits - 1
        a = q.max_value
        if q.bits == 1 and q.mode == "symmetric":
            # levels a (2j + 1) / 1, j in {-1, 0}: -a for x < 0, +a for x >= 0 (floor(x / (2a)) >= 0 iff x >= 0)
            s = _sign(g, x)
            return s if a == 1.0 else g.op("Mul", [s, g.const(a)])
        if q.mode == "symmetric":
            if activations == "qdq":  # the levels (2j + 1) a / n have no zero, which a Q/DQ pair needs
                raise CheckpointError(f"ONNX export: {where}: symmetric linear activations have no Q/DQ form "
                                      f"(levels without zero); export with activations='arith'")
            half = 2 ** (q.bits - 1)
            v = g.op("Mul", [x, g.const(_f32(n / (2.0 * a)))])
            v = g.op("Clip", [v, g.const(-n / 2.0), g.const(n / 2.0)])
            v = g.op("Floor", [v])
            v = g.op("Clip", [v, g.const(-half), g.const(half - 1)])
            v = g.op("Mul", [v, g.const(2.0)])
            v = g.op("Add", [v, g.const(1.0)])
            v = g.op("Div", [v, g.const(float(n))])
            return g.op("Mul", [v, g.const(a)])
        # unsigned
        if activations == "qdq":
            y = g.op("Clip", [x, g.const(0.0), g.const(a)])
            return _levels_qdq(g, y, a / n, 0, q.bits, signed=False)
        v = g.op("Mul", [x, g.const(_f32(n / a))])
        v = g.op("Clip", [v, g.const(0.0), g.const(float(n))])
        v = g.op("Add", [v, g.const(0.5)])
        v = g.op("Floor", [v])
        v = g.op("Clip", [v, g.const(0.0), g.const(float(n))])
        v = g.op("Div", [v, g.const(float(n))])
        return g.op("Mul", [v, g.const(a)])
    if isinstance(q, PACT):
        n = 2 ** q.bits - 1
        a = torch.clamp(q.alpha.detach().float(), min=PACT_MIN_ALPHA).numpy()
        a_name = g.const(a, "pact_alpha")
        y = g.op("Min", [g.op("Max", [x, g.const(0.0)]), a_name], "pact_clip")
        if activations == "qdq":
            return _levels_qdq(g, y, float(a) / n, 0, q.bits, signed=False)
        v = g.op("Mul", [y, g.const(float(n))])
        v = g.op("Div", [v, a_name])
        v = g.op("Add", [v, g.const(0.5)])
        v = g.op("Floor", [v])
        v = g.op("Div", [v, g.const(float(n))])
        return g.op("Mul", [a_name, v], "pact")
    raise CheckpointError(
        f"ONNX export: {where}: quantizer {getattr(q, 'registry_name', type(q).__name__)!r} has no ONNX form "
        f"(supported: ste_sign, linear, pact)"
    )


def _weight(m: nn.Module) -> np.ndarray:
    with torch.no_grad():
        return m.weight_quantizer(m.weight.detach().float()).numpy().astype(np.float32)


def _weight_step(m: nn.Module, w: np.ndarray, where: str) -> float:
    """The distance between a quantized weight tensor's neighbouring codes: binary +-a -> a (codes +-1);
    symmetric k-bit levels a (2j + 1) / n -> a / n (odd codes 2j + 1: the levels have no zero)."""
    q = m.weight_quantizer
    if is_binary(q):
        return float(np.abs(w).max())
    bits = quantizer_bits(q)
    if isinstance(q, SAWB):
        a = float(sawb_scale(m.weight.detach().float(), bits))
    elif isinstance(q, LinearQuant) and q.mode == "symmetric":
        a = float(q.max_value)
    else:
        raise CheckpointError(f"ONNX export: {where}: weight quantizer {getattr(q, 'registry_name', type(q).__name__)!r} "
                              f"has no Q/DQ form (supported: ste_sign, symmetric linear, sawb)")
    return a / (2 ** bits - 1)


def _weight_dq(g: _Graph, m: nn.Module, w: np.ndarray, stem: str, where: str) -> str:
    """Quantized weights as integer codes (an initializer of the narrowest integer type) and a
    ``DequantizeLinear`` (zero point 0, per-tensor scale): binary weights as codes +-1, which int2 (-2..1)
    holds; symmetric k-bit levels as their odd codes 2j + 1 at scale a / n. int2 cannot carry 2-bit
    symmetric weights: their codes +-1, +-3 need 3 bits, because the levels (j + 1/2) 2a/n sit half a step off
    an integer grid and a zero point of -1/2 does not exist; int4 carries them (and 3-bit), int8 beyond.
    ``code * scale`` is a float32 product where PyTorch computes ((2j + 1) / n) * a: a level may differ in
    its last bit (binary weights are exact)."""
    from onnx import helper

    step = _weight_step(m, w, where)
    codes = np.rint(w / np.float32(step)).astype(np.int64)
    if np.abs(codes * np.float64(step) - w).max() > 1e-5 * max(step, 1e-30) * max(1, np.abs(codes).max()):
        raise CheckpointError(f"ONNX export: {where}: the quantized weights are not on the grid of step {step:g}")
    dtype = _code_type(g, int(np.abs(codes).max()).bit_length() + 1, signed=True)
    name, zp = g.name(stem + "_codes"), g.name("zero_point")
    g.inits.append(helper.make_tensor(name, dtype, list(w.shape), codes.ravel().tolist()))
    g.inits.append(helper.make_tensor(zp, dtype, [], [0]))
    return g.op("DequantizeLinear", [name, g.const(step, "weight_scale"), zp], stem)


def _weight_input(g: _Graph, m: nn.Module, w: np.ndarray, stem: str, where: str) -> str:
    """The quantized weights ``w`` as an initializer; in QONNX followed by the node that states their
    quantization (``BipolarQuant`` for +-1, ``Quant`` for k-bit levels; on these values it is the identity);
    with ``qdq_weights`` integer codes and a ``DequantizeLinear`` (:func:`_weight_dq`)."""
    if g.qdq_weights and not isinstance(m.weight_quantizer, Identity):
        return _weight_dq(g, m, w, stem, where)
    name = g.const(w, stem)
    if not g.qonnx:
        return name
    q = m.weight_quantizer
    if is_binary(q):
        return _qonnx_bipolar(g, name)
    bits = quantizer_bits(q)
    if isinstance(q, SAWB):
        a, symmetric = float(sawb_scale(m.weight.detach().float(), bits)), True
    elif isinstance(q, LinearQuant):
        a, symmetric = q.max_value, q.mode == "symmetric"
    else:
        raise CheckpointError(f"QONNX export: {where}: weight quantizer "
                              f"{getattr(q, 'registry_name', type(q).__name__)!r} has no QONNX form "
                              f"(supported: ste_sign, linear, sawb)")
    n = 2 ** bits - 1
    if symmetric:
        # levels a (2j + 1) / n = (j + 1/2) bw, j in the signed k-bit range: zero point -1/2
        return _qonnx_quant(g, name, 2.0 * a / n, -0.5, bits, True, "ROUND")
    return _qonnx_quant(g, name, a / n, 0.0, bits, False, "ROUND")


def _linear(g: _Graph, m: QuantLinear, x: str, where: str, activations: str) -> str:
    x = _quantizer(g, m.input_quantizer, x, where + " input", activations)
    w = _weight(m)
    y = g.op("MatMul", [x, _weight_input(g, m, np.ascontiguousarray(w.T), "weight_t", where)], "matmul")
    if m.pixel_input:
        y = g.op("Mul", [y, g.const(_f32(PIXEL_GAIN))])
        y = g.op("Sub", [y, g.const(torch.from_numpy(w).sum(1).numpy(), "weight_sum")])
    if m.bias is not None:
        y = g.op("Add", [y, g.const(m.bias.detach().float().numpy(), "bias")])
    return y


def _conv(g: _Graph, m: QuantConv2d, x: str, where: str, activations: str) -> str:
    if m.padding_mode != "zeros":
        raise CheckpointError(f"ONNX export: {where}: padding_mode {m.padding_mode!r} is not supported")
    x = _quantizer(g, m.input_quantizer, x, where + " input", activations)
    w = _weight(m)
    ph, pw = m.padding
    attrs = dict(strides=list(m.stride), dilations=list(m.dilation), group=m.groups,
                 kernel_shape=list(w.shape[2:]))
    pads = g.const(np.array([0, 0, ph, pw, 0, 0, ph, pw], dtype=np.int64), "pads", dtype=np.int64)
    if m.pixel_input:
        if ph or pw:
            x = g.op("Pad", [x, pads, g.const(_f32((m.pad_value + 1.0) / PIXEL_GAIN), "pad_value")], "pad")
        y = g.op("Conv", [x, _weight_input(g, m, w, "weight", where)], "conv", pads=[0, 0, 0, 0], **attrs)
        y = g.op("Mul", [y, g.const(_f32(PIXEL_GAIN))])
        wsum = torch.from_numpy(w).sum((1, 2, 3)).view(1, -1, 1, 1).numpy()
        y = g.op("Sub", [y, g.const(wsum, "weight_sum")])
        if m.bias is not None:
            y = g.op("Add", [y, g.const(m.bias.detach().float().view(1, -1, 1, 1).numpy(), "bias")])
        return y
    inputs = [x, _weight_input(g, m, w, "weight", where)]
    if m.bias is not None:
        inputs.append(g.const(m.bias.detach().float().numpy(), "bias"))
    if m.pad_value != 0.0 and (ph or pw):
        inputs[0] = g.op("Pad", [x, pads, g.const(_f32(m.pad_value), "pad_value")], "pad")
        return g.op("Conv", inputs, "conv", pads=[0, 0, 0, 0], **attrs)
    return g.op("Conv", inputs, "conv", pads=[ph, pw, ph, pw], **attrs)


def _pair(v) -> List[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v]


def _module(g: _Graph, m: nn.Module, x: str, where: str, activations: str) -> str:
    if isinstance(m, (nn.Dropout, nn.Identity)):
        return x
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise CheckpointError(f"ONNX export: {where}: only Flatten(start_dim=1) is supported")
        return g.op("Flatten", [x], "flatten", axis=1)
    if isinstance(m, PixelScale):
        return g.op("Sub", [g.op("Mul", [x, g.const(_f32(2.0 / 255.0))]), g.const(1.0)], "pixel_scale")
    if isinstance(m, QuantLinear):
        return _linear(g, m, x, where, activations)
    if isinstance(m, QuantConv2d):
        return _conv(g, m, x, where, activations)
    if type(m) is nn.Linear:
        y = g.op("MatMul", [x, g.const(m.weight.detach().float().numpy().T.copy(), "weight_t")], "matmul")
        return y if m.bias is None else g.op("Add", [y, g.const(m.bias.detach().float().numpy(), "bias")])
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
        if not m.track_running_stats or m.running_mean is None:
            raise CheckpointError(f"ONNX export: {where}: BatchNorm without running statistics")
        c = m.num_features
        gamma = m.weight.detach().float().numpy() if m.affine else np.ones(c, np.float32)
        beta = m.bias.detach().float().numpy() if m.affine else np.zeros(c, np.float32)
        return g.op("BatchNormalization", [x, g.const(gamma, "bn_scale"), g.const(beta, "bn_bias"),
                                           g.const(m.running_mean.detach().float().numpy(), "bn_mean"),
                                           g.const(m.running_var.detach().float().numpy(), "bn_var")],
                    "batchnorm", epsilon=float(m.eps))
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            raise CheckpointError(f"ONNX export: {where}: MaxPool2d(return_indices=True) is not supported")
        k = _pair(m.kernel_size)
        s = _pair(m.stride if m.stride is not None else m.kernel_size)
        p = _pair(m.padding)
        return g.op("MaxPool", [x], "maxpool", kernel_shape=k, strides=s, pads=[p[0], p[1], p[0], p[1]],
                    dilations=_pair(m.dilation), ceil_mode=int(m.ceil_mode))
    if isinstance(m, QuantAct):
        if isinstance(m.quantizer, Identity):
            return _module(g, m.float_activation, x, where, activations)
        return _quantizer(g, m.quantizer, x, where, activations)
    if isinstance(m, nn.Hardtanh):
        return g.op("Clip", [x, g.const(m.min_val), g.const(m.max_val)], "hardtanh")
    if isinstance(m, nn.ReLU):
        return g.op("Relu", [x], "relu")
    raise CheckpointError(
        f"ONNX export: {where}: module {type(m).__name__} has no ONNX form in lowbit's exporter (supported: "
        f"QuantLinear, QuantConv2d, QuantAct, BatchNorm1d/2d, MaxPool2d, Flatten, Dropout, PixelScale, Linear, "
        f"ReLU, Hardtanh)"
    )


def export_onnx_model(model: nn.Module, input_shape: Sequence[int], num_classes: Optional[int] = None,
                      activations: str = "arith", opset: int = OPSET, doc: str = "",
                      metadata: Optional[Dict[str, str]] = None, dialect: str = "onnx", weights: str = "float",
                      int2: Optional[bool] = None):
    """The ONNX graph (``onnx.ModelProto``) of an eval-mode ``nn.Sequential`` image classifier.

    Input ``pixels``: float32 (batch, *input_shape) raw pixel values in [0, 255] (as the models take them);
    output ``logits``: float32 (batch, num_classes). ``activations``: ``"arith"`` (exact round/clip arithmetic)
    or ``"qdq"`` (QuantizeLinear/DequantizeLinear pairs for k-bit unsigned activations). ``weights``:
    ``"float"`` (the quantized values as float32 constants) or ``"qdq"`` (integer codes + DequantizeLinear).
    ``int2``: 2-bit Q/DQ codes as int2/uint2 (opset 25) rather than int4/uint4: ``None`` where the installed
    onnx has the types, ``True`` to require them, ``False`` never."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:  # pragma: no cover - depends on the environment
        raise CheckpointError("ONNX export needs the 'onnx' package: pip install 'lowbit[onnx]'") from None
    if activations not in ("arith", "qdq"):
        raise CheckpointError(f"ONNX export: activations must be 'arith' or 'qdq', got {activations!r}")
    if not isinstance(model, nn.Sequential):
        raise CheckpointError("ONNX export: the model must be an nn.Sequential of lowbit layers")
    if dialect not in ("onnx", "qonnx"):
        raise CheckpointError(f"ONNX export: dialect must be 'onnx' or 'qonnx', got {dialect!r}")
    if weights not in ("float", "qdq"):
        raise CheckpointError(f"ONNX export: weights must be 'float' or 'qdq', got {weights!r}")
    if dialect == "qonnx" and (weights == "qdq" or activations == "qdq"):
        raise CheckpointError("ONNX export: the QONNX dialect states quantization with Quant nodes, not Q/DQ pairs")
    model = model.eval()
    g = _Graph(qonnx=dialect == "qonnx", int2=_resolve_int2(int2) if "qdq" in (weights, activations) else False,
               qdq_weights=weights == "qdq")
    g.opset = opset
    x = INPUT_NAME
    if g.qonnx:  # the input is 8-bit pixels: say so (identity on integers 0..255), as FINN reads input types
        x = _qonnx_quant(g, x, 1.0, 0.0, 8, False, "ROUND")
    for i, m in enumerate(model):
        x = _module(g, m, x, f"layer {i} ({type(m).__name__})", activations)
    g.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name="output"))
    out_shape = ["batch", int(num_classes)] if num_classes is not None else ["batch", None]
    graph = helper.make_graph(
        g.nodes, "lowbit", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", *map(int, input_shape)])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, out_shape)], initializer=g.inits,
    )
    from .._version import __version__

    opsets = [helper.make_opsetid("", g.opset)] + ([helper.make_opsetid(QONNX_DOMAIN, 1)] if g.qonnx else [])
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="lowbit",
                              producer_version=__version__, doc_string=doc)
    # the lowest IR version the opset allows: onnxruntime 1.16+ reads IR 10 (opset 21); int2 needs IR 13
    proto.ir_version = helper.find_min_ir_version_for(opsets[:1])
    for k, v in (metadata or {}).items():
        proto.metadata_props.add(key=str(k), value=str(v))
    # full_check adds strict shape inference, which cannot see through the QONNX custom ops
    onnx.checker.check_model(proto, full_check=not g.qonnx)
    return proto


def export_qonnx_model(model: nn.Module, input_shape: Sequence[int], num_classes: Optional[int] = None, **kwargs):
    """The QONNX graph of an eval-mode ``nn.Sequential``: the graph of :func:`export_onnx_model` with each
    quantization as a QONNX node (domain ``qonnx.custom_op.general``, as Brevitas and FINN write them):

    * the input: ``Quant`` 8-bit unsigned, scale 1 (raw pixels);
    * binary weights and sign activations: ``BipolarQuant`` (scale 1; +1 for x >= 0, as the paper's sign);
    * k-bit weights (SAWB, linear symmetric): the quantized values followed by ``Quant`` signed k-bit, scale
      bw = 2a/(2^k - 1), zero point -1/2 (the levels (j + 1/2) bw have no zero), rounding ROUND;
    * PACT and unsigned linear activations: ``Quant`` unsigned k-bit, scale a/(2^k - 1), rounding HALF_UP
      (Quant clamps to [0, 2^k - 1] first, which is PACT's clip to [0, alpha]);
    * symmetric k-bit activations: ``Quant`` signed k-bit, rounding FLOOR, then ``Add`` bw/2.

    No ``Trunc`` is needed: lowbit's classifiers have no average pooling or integer truncation."""
    return export_onnx_model(model, input_shape, num_classes, dialect="qonnx", **kwargs)


def export_onnx_checkpoint(checkpoint: Union[str, Path], out: Union[str, Path], activations: str = "arith",
                           dialect: str = "onnx", weights: str = "float", int2: Optional[bool] = None) -> Dict:
    """``lowbit export CHECKPOINT -o model.onnx [--format qonnx]``: write the ONNX (or QONNX) graph of an image
    classifier checkpoint."""
    from ..train.checkpoint import load_model_state, model_from_config, read_checkpoint

    data = read_checkpoint(checkpoint)
    cfg = data["config"]
    model = model_from_config(cfg)
    load_model_state(model, data["model_state"], str(checkpoint))
    if cfg.get("task", "image") != "image":
        raise CheckpointError(f"ONNX export: task {cfg.get('task')!r} is not supported (image classifiers here; "
                              f"language models: lowbit.export.onnx_lm)")
    args = cfg["model_args"]
    meta = {"recipe": cfg.get("recipe", ""), "dataset": cfg.get("dataset", ""), "model": cfg.get("model", ""),
            "source_checkpoint": Path(checkpoint).name, "input": "raw pixels in [0, 255], float32 NCHW"}
    proto = export_onnx_model(model, args["in_shape"], args.get("num_classes", 10), activations=activations,
                              dialect=dialect, weights=weights, int2=int2,
                              doc=f"lowbit {cfg.get('recipe', '')} exported from {Path(checkpoint).name}",
                              metadata=meta)
    return _save(proto, out, model)


def _save(proto, out, model: nn.Module) -> Dict:
    import onnx

    onnx.save(proto, str(out))
    fp32 = sum(v.numel() * 4 for v in model.state_dict().values() if v.dtype.is_floating_point)
    size = Path(out).stat().st_size
    return {"model_file": str(out), "bytes": size, "fp32_state_dict_bytes": fp32, "ratio": fp32 / size}
