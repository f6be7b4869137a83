"""Export a trained binarized network (a training checkpoint) to a ``.lbt`` model file.

What export does to each block ``QuantConv2d/QuantLinear -> [MaxPool2d] -> BatchNorm -> QuantAct(sign)``:

* **weights** become bits (the first layer's too: unpacked to +-1 floats when loaded) (``sign(w)``, bit 1 = -1), packed 64 to a word along the reduction axis. Conv
  weights are laid out (out, kh, kw, C) to match the runtime's NHWC activations, and an FC layer after a
  ``Flatten`` of conv features is permuted from PyTorch's (C, H, W) order to (H, W, C). Channels are padded
  to a multiple of 64 with bit 0 (= +1) in weights *and* activations; those pad bits match and add a known
  constant (``pad_bits``) to every dot product, which the runtime subtracts.
* **batch norm + sign** become one integer threshold per channel. The layer computes an integer
  accumulator ``a`` with pre-BN value ``z = scale * a + offset`` (hidden binary layers: ``z = a``; the first
  layer on 8-bit pixels p: ``z = sum_k w_k (2 p_k / 255 - 1) = (2/255) a - sum_k w_k`` with ``a = sum_k
  w_k p_k``). BN + sign outputs +1 iff ``c (z - mean) + beta >= 0`` with ``c = gamma / sqrt(var + eps)``:

      c > 0:  a >= ceil((mean - beta / c - offset) / scale)      ("ge" threshold)
      c < 0:  a <= floor((mean - beta / c - offset) / scale)     (the flip: "le" threshold)
      c = 0:  constant: +1 iff beta >= 0

  computed in float64. Max-pooling sits between the layer and its BN, so the runtime pools the integer
  accumulators (scale > 0 keeps max-pooling exact on ``a``).
* the **last** layer's BN stays in floating point and gives the logits: ``c (scale a + offset - mean) + beta``.
"""

from __future__ import annotations


from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..nn.layers import PixelScale, QuantAct, QuantConv2d, QuantLinear
from ..nn.norm import ShiftBatchNorm1d, ShiftBatchNorm2d
from ..quant.base import Identity, is_binary
from ..quant.kbit import ap2
from ..runtime.modelfile import save_model_file

KIND = "binary_sequential"
INT32_MAX = np.iinfo(np.int32).max
INT32_MIN = np.iinfo(np.int32).min


def words_for(bits: int) -> int:
    return (bits + 63) // 64


def pack_rows(pm1: np.ndarray) -> np.ndarray:
    """Pack each row of a {-1, +1} (or any real: >= 0 is +1) matrix into uint64 words, bit 1 = -1."""
    bits = np.asarray(pm1) < 0
    n, k = bits.shape
    padded = np.zeros((n, words_for(k) * 64), dtype=bool)
    padded[:, :k] = bits
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").astype(np.uint64)


NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, ShiftBatchNorm1d, ShiftBatchNorm2d)


def _bn_params(bn: nn.Module) -> Tuple[np.ndarray, np.ndarray]:
    """(c, d) with BN(z) = c * z + d, in float64, from eval-mode statistics (:func:`bn_eval_affine`)."""
    if not isinstance(bn, NORMS) or not bn.track_running_stats:
        raise CheckpointError(f"runtime export: expected a BatchNorm with running statistics, got {bn}")
    return bn_eval_affine(bn)


def bn_eval_affine(bn: nn.Module) -> Tuple[np.ndarray, np.ndarray]:
    """(c, d) with BN(z) = c * z + d, in float64, from the eval-mode statistics of a BatchNorm or a shift BN
    that has them (both exporters fold BN with it).

    Shift-based BN in eval mode is the same kind of affine map, with both factors powers of two:
    c = AP2(gamma) * AP2(1 / sqrt(running_var + eps)). The AP2s are taken with the module's own float32
    ops (as its forward does), so a value next to a rounding boundary lands on the same power of two."""
    mean = bn.running_mean.detach().double().numpy()
    beta = bn.bias.detach().double().numpy() if bn.affine else np.zeros_like(mean)
    if isinstance(bn, (ShiftBatchNorm1d, ShiftBatchNorm2d)):
        with torch.no_grad():
            c_t = ap2(torch.rsqrt(bn.running_var + bn.eps))
            if bn.affine:
                c_t = c_t * ap2(bn.weight)  # a product of powers of two: exact
        c = c_t.double().numpy()
    else:
        gamma = bn.weight.detach().double().numpy() if bn.affine else np.ones_like(mean)
        c = gamma / np.sqrt(bn.running_var.detach().double().numpy() + bn.eps)
    return c, beta - c * mean


def thresholds(c: np.ndarray, d: np.ndarray, scale: float, offset: np.ndarray):
    """Integer thresholds on the accumulator for sign(c * (scale * a + offset) + d) = +1; see module doc."""
    t = np.empty(c.shape, dtype=np.float64)
    flip = c < 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        bound = (-d / c - offset) / scale  # the real-valued a where the BN output crosses 0
    ge = c > 0
    t[ge] = np.ceil(bound[ge] - 1e-9 * np.abs(bound[ge]))
    t[flip] = np.floor(bound[flip] + 1e-9 * np.abs(bound[flip]))
    zero = c == 0
    # c == 0: output is sign(d), constant. "ge" with threshold -inf (always +1) or +inf (never).
    t[zero] = np.where(d[zero] >= 0, -np.inf, np.inf)
    # Saturate in float before the integer cast: a tiny BN scale puts the crossing far outside any reachable
    # accumulator (|a| <= K < 2^31), where the answer is exactly "always +1" or "never"; casting such a
    # float straight to an integer would wrap and invert the channel.
    return np.clip(t, INT32_MIN, INT32_MAX).astype(np.int32), flip


def _check_binary_weights(layer: nn.Module, index: int) -> None:
    if not is_binary(layer.weight_quantizer):
        raise CheckpointError(
            f"runtime export: layer {index} ({type(layer).__name__}) has {layer.weight_bits}-bit weights; the "
            f"bit-packed runtime runs binary (1-bit) weights only"
        )
    if layer.bias is not None:
        raise CheckpointError(f"runtime export: layer {index} has a bias; lowbit's binary layers are bias-free")


def export_model(model: nn.Sequential, input_shape, num_classes: int, meta: Dict = None,
                 binary_input: bool = False, output: str = "logits") -> Tuple[Dict, Dict]:
    """Translate a binarized ``nn.Sequential`` (eval mode) into runtime ops and arrays.

    ``binary_input``: the model has no PixelScale and takes +-1 activations (a block of a larger network).
    ``output="bits"`` allows the model to end in a binary activation (its output is then +-1 values).
    """
    if not isinstance(model, nn.Sequential):
        raise CheckpointError("runtime export: the model must be an nn.Sequential of lowbit layers")
    model = model.eval()
    kept = [(j, m) for j, m in enumerate(model) if not isinstance(m, nn.Dropout)]
    mods = [m for _, m in kept]
    pos = [j for j, _ in kept]  # messages number layers by their index in the model, as `lowbit summary` does
    ops: List[Dict] = []
    arrays: Dict[str, np.ndarray] = {}
    shape = list(input_shape)  # (C, H, W) of what flows, or [F] after flatten
    domain = "float"  # what the next layer receives: "pixels" (8-bit), "bits" (+-1), or "float"
    layout_hw = None  # (H, W, C) of conv features before a Flatten, for the FC permutation
    i = 0
    first_layer = next((m for m in mods if isinstance(m, (QuantConv2d, QuantLinear))), None)
    if mods and isinstance(mods[0], PixelScale):
        domain = "pixels"
        i = 1
    elif getattr(first_layer, "pixel_input", False):
        domain = "pixels"
    elif binary_input:
        domain = "bits"  # a block of a larger binary network: its input is already +-1
    else:
        raise CheckpointError("runtime export: the model's first layer must take 8-bit pixels (pixel_input=True)")
    input_domain = domain
    n_layers = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Flatten):
            if len(shape) == 3:
                layout_hw = (shape[1], shape[2], shape[0])
            shape = [int(np.prod(shape))]
            i += 1
            continue
        if not isinstance(m, (QuantConv2d, QuantLinear)):
            raise CheckpointError(f"runtime export: unsupported module at position {pos[i]}: {type(m).__name__}")
        _check_binary_weights(m, pos[i])
        if domain == "bits" and not isinstance(m.input_quantizer, Identity) and not is_binary(m.input_quantizer):
            raise CheckpointError(f"runtime export: layer {pos[i]} has a {m.input_bits}-bit input quantizer")
        if domain == "float":
            raise CheckpointError(f"runtime export: layer {pos[i]} receives real-valued activations; put a binary QuantAct before it")
        if domain == "pixels" and not isinstance(m.input_quantizer, Identity):
            raise CheckpointError(
                f"runtime export: layer {pos[i]} takes 8-bit pixels through a {m.input_bits}-bit input quantizer "
                f"({type(m.input_quantizer).__name__}); the runtime multiplies the pixels themselves: use "
                f"input_quantizer=None on a pixel_input layer")
        w = m.weight.detach().double().numpy()
        wsign = np.where(w >= 0, 1.0, -1.0)
        name = f"l{n_layers}"
        op: Dict = {"name": name, "input": domain}
        if isinstance(m, QuantConv2d):
            if len(shape) != 3:
                raise CheckpointError(f"runtime export: conv layer {pos[i]} after a Flatten")
            if m.groups != 1 or tuple(m.dilation) != (1, 1):
                raise CheckpointError(f"runtime export: conv layer {pos[i]}: groups/dilation other than 1 are not supported")
            cout, cin, kh, kw = wsign.shape
            ph, pw = m.padding
            sh, sw = m.stride
            expected_pad = -1.0 if domain == "pixels" else 1.0
            if (ph or pw) and m.pad_value != expected_pad:
                raise CheckpointError(
                    f"runtime export: conv layer {pos[i]} pads with {m.pad_value}; the runtime needs "
                    f"{expected_pad} ({'a black pixel' if domain == 'pixels' else '+1'}) to be exact"
                )
            H, W = shape[1], shape[2]
            oh, ow = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
            wl = wsign.transpose(0, 2, 3, 1)  # (out, kh, kw, C): matches NHWC patches
            op.update(op="conv2d", kernel=[kh, kw], stride=[sh, sw], padding=[ph, pw], in_channels=cin,
                      out_channels=cout, in_hw=[H, W], out_hw=[oh, ow])
            if domain == "pixels":
                arrays[name + ".weight_bits"] = pack_rows(wl.reshape(cout, -1))
                op["k"] = kh * kw * cin
                sum_w = wl.reshape(cout, -1).sum(1)
            else:
                cw = words_for(cin)
                padded = np.ones((cout, kh, kw, cw * 64))  # pad channels with +1 (bit 0)
                padded[..., :cin] = wl
                arrays[name + ".weight_bits"] = pack_rows(padded.reshape(cout * kh * kw, cw * 64)).reshape(cout, kh * kw * cw)
                op["pad_bits"] = kh * kw * (cw * 64 - cin)
            shape = [cout, oh, ow]
        else:
            fin, fout = m.in_features, m.out_features
            if shape != [fin]:
                raise CheckpointError(f"runtime export: layer {pos[i]} expects {fin} inputs, gets shape {shape}")
            op.update(op="dense", in_features=fin, out_features=fout)
            if layout_hw is not None and domain == "bits":
                # FC on flattened packed conv features: PyTorch's (C, H, W) order -> the runtime's (H, W, C)
                h, wdt, c = layout_hw
                wl = wsign.reshape(fout, c, h, wdt).transpose(0, 2, 3, 1)
                cw = words_for(c)
                padded = np.ones((fout, h, wdt, cw * 64))
                padded[..., :c] = wl
                arrays[name + ".weight_bits"] = pack_rows(padded.reshape(fout * h * wdt, cw * 64)).reshape(fout, h * wdt * cw)
                op["pad_bits"] = h * wdt * (cw * 64 - c)
            elif domain == "bits":
                arrays[name + ".weight_bits"] = pack_rows(wsign)
                op["pad_bits"] = words_for(fin) * 64 - fin
            else:
                arrays[name + ".weight_bits"] = pack_rows(wsign)
                op["k"] = fin
                sum_w = wsign.sum(1)
            shape = [fout]
            layout_hw = None  # pixels are fed in (C, H, W) order, so a first FC layer needs no permutation
        # the pre-BN value z = scale * a + offset of the integer accumulator a
        if domain == "pixels":
            scale, offset = 2.0 / 255.0, -sum_w
        else:
            scale, offset = 1.0, np.zeros(shape[0])
        i += 1
        if i < len(mods) and isinstance(mods[i], nn.MaxPool2d):
            mp = mods[i]
            k = mp.kernel_size if isinstance(mp.kernel_size, int) else mp.kernel_size[0]
            s = mp.stride if isinstance(mp.stride, int) else mp.stride[0]
            if k != 2 or s != 2 or mp.padding not in (0, (0, 0)) or len(shape) != 3:
                raise CheckpointError("runtime export: only 2x2/stride-2 max-pooling of conv features is supported")
            op["maxpool"] = 2
            shape = [shape[0], shape[1] // 2, shape[2] // 2]
            i += 1
        if i >= len(mods) or not isinstance(mods[i], NORMS):
            raise CheckpointError(f"runtime export: layer {pos[i - 1]} must be followed by BatchNorm (or shift-based BN)")
        c, d = _bn_params(mods[i])
        i += 1
        if i < len(mods) and isinstance(mods[i], QuantAct):
            if not mods[i].binary:
                raise CheckpointError(f"runtime export: activation at {pos[i]} is {mods[i].bits}-bit; the runtime needs binary")
            t, flip = thresholds(c, d, scale, offset)
            arrays[name + ".threshold"] = t
            arrays[name + ".flip"] = flip.astype(np.uint8)
            op["output"] = "bits"
            domain = "bits"
            i += 1
        else:
            if i != len(mods):
                raise CheckpointError("runtime export: a BatchNorm without a binary activation must end the network")
            # logits = c * (scale * a + offset) + d  ->  alpha * a + bias, in float64 then float32
            arrays[name + ".out_scale"] = (c * scale).astype(np.float32)
            arrays[name + ".out_bias"] = (c * offset + d).astype(np.float32)
            op["output"] = "logits"
            domain = "logits"
        ops.append(op)
        n_layers += 1
    if domain != output:
        raise CheckpointError(f"runtime export: the network must end in {output} (it ends in {domain})")
    meta = dict(meta or {})
    meta.update(input_shape=list(input_shape), num_classes=int(num_classes), ops=ops, input=input_domain,
                output=output)
    return meta, arrays


def export_checkpoint(checkpoint: Union[str, Path], out: Union[str, Path]) -> Dict:
    """``lowbit export``: read a training checkpoint, write the ``.lbt`` file; returns a size report."""
    from ..train.checkpoint import check_finite, model_from_checkpoint, read_checkpoint

    data = read_checkpoint(checkpoint)
    cfg = data["config"]
    check_finite(data["model_state"], str(checkpoint))
    model = model_from_checkpoint(data, str(checkpoint))
    args = cfg["model_args"]
    meta, arrays = export_model(model, args["in_shape"], args.get("num_classes", 10),
                                meta={"recipe": cfg.get("recipe"), "dataset": cfg.get("dataset"),
                                      "model": cfg.get("model"), "source_checkpoint": Path(checkpoint).name})
    save_model_file(out, KIND, meta, arrays)
    fp32 = sum(v.numel() * 4 for v in model.state_dict().values() if v.dtype.is_floating_point)
    size = Path(out).stat().st_size
    return {"model_file": str(out), "bytes": size, "fp32_state_dict_bytes": fp32, "ratio": fp32 / size}
