"""``lowbit summary``: per-layer precision, size, multiply-accumulates and an energy estimate.

The energy model uses the 45 nm per-operation figures of Horowitz (ISSCC 2014) that the QNN paper cites:

    32-bit float: add 0.9 pJ, multiply 3.7 pJ       -> one float MAC = 4.6 pJ
    8-bit int:    add 0.03 pJ, multiply 0.2 pJ
    32-bit int:   add 0.1 pJ,  multiply 3.1 pJ
    memory, per 64-bit access: 8 KB cache 10 pJ, 32 KB cache 20 pJ, 1 MB cache 100 pJ, DRAM 1.3-2.6 nJ

Assumptions stated with the figures (the paper gives none for XNOR-popcount): a binary MAC costs 1/64 of
(a 64-bit XNOR, counted as free, plus its share of a popcount and a 32-bit accumulate, 2 x 0.1 pJ), i.e.
0.2/64 pJ; a MAC of an 8-bit input with a 1-bit weight is one 8-bit add (0.03 pJ); a k-bit x k-bit MAC
with 2 <= k <= 8 is an 8-bit multiply + 32-bit add (0.3 pJ); anything else a float MAC. Every weight is
read once per inference from DRAM (1.3 nJ per 64 bits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import torch
from torch import nn

ENERGY_PJ = {
    "float_mac": 3.7 + 0.9,
    "int8_mac": 0.2 + 0.1,
    "int8_x_binary_mac": 0.03,
    "binary_mac": 0.2 / 64,
    "dram_per_64bit": 1300.0,
}
HOROWITZ = ("Horowitz 2014, 45 nm: fp32 add 0.9 pJ, mult 3.7 pJ; int8 add 0.03 pJ, mult 0.2 pJ; int32 add "
            "0.1 pJ, mult 3.1 pJ; DRAM 1.3-2.6 nJ per 64-bit access")


#: one MAC column per precision (as larq.models.summary): row key, column heading
MAC_COLUMNS = (("binary_macs", "1x1-bit MACs"), ("int8_x_binary_macs", "8x1-bit MACs"),
               ("int8_macs", "k-bit MACs"), ("float_macs", "float MACs"))
_KIND_KEY = {"binary_mac": "binary_macs", "int8_x_binary_mac": "int8_x_binary_macs", "int8_mac": "int8_macs",
             "float_mac": "float_macs"}


def _mac_columns(macs: int, kind: str) -> Dict[str, int]:
    return {key: (macs if _KIND_KEY[kind] == key else 0) for key, _ in MAC_COLUMNS}


def _mac_kind(wbits: int, abits: int) -> str:
    if wbits == 1 and abits == 1:
        return "binary_mac"
    if wbits == 1 and abits <= 8:
        return "int8_x_binary_mac"
    if wbits <= 8 and abits <= 8:
        return "int8_mac"
    return "float_mac"


def summarize(model: nn.Module, input_shape) -> Dict:
    """Walk the model with one dummy input; one row per layer with weights."""
    from .nn.layers import QuantAct, QuantLayerMixin

    rows: List[Dict] = []
    act_bits = {"current": 8}  # lowbit models take 8-bit pixels
    hooks = []

    def on_act(mod, inp, out):
        act_bits["current"] = mod.bits

    def on_layer(mod, inp, out):

        if isinstance(mod, QuantLayerMixin):
            wbits = mod.weight_bits
            abits = mod.input_bits if mod.input_bits < 32 else act_bits["current"]
        else:
            wbits, abits = 32, act_bits["current"]
        if isinstance(mod, nn.Conv2d):
            macs = out[0].numel() * mod.weight[0].numel()
        else:
            macs = mod.weight.numel()
        params = sum(p.numel() for p in mod.parameters(recurse=False))
        wparams = mod.weight.numel()
        kind = _mac_kind(wbits, abits)
        rows.append({
            "layer": names[mod], "type": type(mod).__name__, "weight_bits": wbits, "input_bits": abits,
            "params": params, "memory_bytes": (wparams * wbits + (params - wparams) * 32) / 8,
            "macs": macs, **_mac_columns(macs, kind), "mac_kind": kind,
        })
        act_bits["current"] = 32  # until the next quantized activation

    def on_other(mod, inp, out):
        params = sum(p.numel() for p in mod.parameters(recurse=False))
        if params:
            rows.append({"layer": names[mod], "type": type(mod).__name__, "weight_bits": 32, "input_bits": 32,
                         "params": params, "memory_bytes": params * 4.0, "macs": 0,
                         **_mac_columns(0, "float_mac"), "mac_kind": "float_mac"})

    names = {m: n for n, m in model.named_modules()}
    for m in model.modules():
        if isinstance(m, QuantAct):
            hooks.append(m.register_forward_hook(on_act))
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            hooks.append(m.register_forward_hook(on_layer))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            hooks.append(m.register_forward_hook(on_other))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    for h in hooks:
        h.remove()

    total_params = sum(r["params"] for r in rows)
    total_bytes = sum(r["memory_bytes"] for r in rows)
    fp32_bytes = total_params * 4.0
    macs = sum(r["macs"] for r in rows)
    energy_ops = sum(r["macs"] * ENERGY_PJ[r["mac_kind"]] for r in rows)
    energy_mem = total_bytes * 8 / 64 * ENERGY_PJ["dram_per_64bit"]
    fp32_energy = macs * ENERGY_PJ["float_mac"] + fp32_bytes * 8 / 64 * ENERGY_PJ["dram_per_64bit"]
    return {
        "layers": rows,
        "totals": {
            "params": total_params, "memory_bytes": total_bytes, "fp32_memory_bytes": fp32_bytes,
            "compression": fp32_bytes / total_bytes if total_bytes else 1.0,
            "macs": macs, **{key: sum(r[key] for r in rows) for key, _ in MAC_COLUMNS},
            "binary_mac_fraction": sum(r["binary_macs"] for r in rows) / macs if macs else 0.0,
            "energy_uj": (energy_ops + energy_mem) / 1e6, "energy_compute_uj": energy_ops / 1e6,
            "energy_memory_uj": energy_mem / 1e6, "fp32_energy_uj": fp32_energy / 1e6,
        },
        "energy_model": {"pj_per_op": ENERGY_PJ, "source": HOROWITZ},
    }


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def format_summary(s: Dict, title: str = "") -> str:
    lines = [title] if title else []
    lw = max([len("layer")] + [len(str(r["layer"])) for r in s["layers"]])
    tw = max([len("type")] + [len(r["type"]) for r in s["layers"]])
    lines.append(f"{'layer':<{lw}} {'type':<{tw}} {'W bits':>6} {'A bits':>6} {'params':>9} {'memory':>10} "
                 f"{'MACs':>9} " + " ".join(f"{head:>{len(head)}}" for _, head in MAC_COLUMNS))
    for r in s["layers"]:
        lines.append(f"{r['layer']:<{lw}} {r['type']:<{tw}} {r['weight_bits']:>6} {r['input_bits']:>6} "
                     f"{_fmt(r['params']):>9} {_fmt(r['memory_bytes']) + 'B':>10} {_fmt(r['macs']):>9} "
                     + " ".join(f"{_fmt(r[key]):>{len(head)}}" for key, head in MAC_COLUMNS))
    t = s["totals"]
    lines += [
        f"total: {_fmt(t['params'])} parameters, {_fmt(t['memory_bytes'])}B "
        f"(fp32: {_fmt(t['fp32_memory_bytes'])}B, {t['compression']:.1f}x smaller)",
        f"MACs: {_fmt(t['macs'])}, of which binary {100 * t['binary_mac_fraction']:.1f}% ("
        + ", ".join(f"{head} {_fmt(t[key])}" for key, head in MAC_COLUMNS) + ")",
        f"energy per inference (estimate): {t['energy_uj']:.2f} uJ (compute {t['energy_compute_uj']:.3f}, "
        f"weight reads {t['energy_memory_uj']:.2f}) vs fp32 {t['fp32_energy_uj']:.2f} uJ",
        f"energy figures: {s['energy_model']['source']}; binary MAC {ENERGY_PJ['binary_mac']:.4f} pJ, "
        f"8-bit x 1-bit MAC {ENERGY_PJ['int8_x_binary_mac']} pJ (assumptions, see lowbit.summary)",
    ]
    return "\n".join(lines)


def summarize_target(target: str) -> Dict:
    """A recipe name or a checkpoint path -> summary dict (with 'title')."""
    from .train.checkpoint import model_from_checkpoint, model_from_config, read_checkpoint
    from .train.config import get_recipe

    if Path(target).is_file():
        data = read_checkpoint(target)
        cfg = data["config"]
        model = model_from_checkpoint(data, target)
        title = f"{target} (recipe {cfg.get('recipe')})"
    else:
        cfg = get_recipe(target).to_dict()
        model = model_from_config(cfg)
        title = f"recipe {target}"
    s = summarize(model, cfg["model_args"]["in_shape"])
    s["title"] = title
    return s
