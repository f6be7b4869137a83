"""Per-epoch diagnostics of the latent weights of a quantized network (issue 14).

* **flip ratio** (the one Larq reports): for every binary weight tensor, the fraction of its weights whose
  sign (the paper's: w >= 0 is +1) changed during the epoch. Near 0 the binary network has stopped
  learning; a large ratio late in training means the latent weights hover around 0.
* **latent-weight histograms** of every quantized weight tensor over [-clip, clip] (the layer's
  ``weight_clip``, else its largest |w|), and the fraction **saturated** at the clip (|w| >= 0.99 clip): latent
  weights piling up at +-1 stop receiving gradient through the STE (the known failure mode of BNNs).

``WeightDiagnostics(model)`` remembers the signs at construction (the start of training, or the resumed
epoch); ``.epoch()`` returns the record entries of the epoch that just ended and remembers the new signs.
The training loop puts them into each epoch's record in metrics.json; :func:`plot_diagnostics` draws
``flips.png`` and ``weights.png`` from the history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..quant.base import is_binary, quantizer_bits

BINS = 40
SATURATION = 0.99  # |w| >= SATURATION * clip counts as saturated
FLIPS_PNG = "flips.png"
WEIGHTS_PNG = "weights.png"


def quantized_weights(model: nn.Module) -> List[Tuple[str, nn.Parameter, nn.Module]]:
    """(name, latent weight, owning module) for every weight of a module with a non-identity weight quantizer,
    in module order (``QuantLinear``/``QuantConv2d``: ``weight``; recurrent layers: ``weight_ih_l0`` ...)."""
    out = []
    for mname, m in model.named_modules():
        q = getattr(m, "weight_quantizer", None)
        if not isinstance(q, nn.Module) or quantizer_bits(q) >= 32:  # identity: full-precision weights
            continue
        for pname, p in m.named_parameters(recurse=False):
            if pname.startswith("weight"):
                out.append((f"{mname}.{pname}" if mname else pname, p, m))
    return out


class WeightDiagnostics:
    """Flip ratios and latent-weight histograms of ``model``'s quantized weights, once per epoch."""

    def __init__(self, model: nn.Module, bins: int = BINS):
        self.bins = int(bins)
        self.weights = quantized_weights(model)
        self.binary = [(n, p) for n, p, m in self.weights if is_binary(m.weight_quantizer)]
        self._signs = self._current_signs()

    def _current_signs(self) -> Dict[str, torch.Tensor]:
        return {n: p.detach() >= 0 for n, p in self.binary}

    def flip_ratios(self) -> Dict[str, float]:
        """Fraction of each binary weight tensor whose sign changed since the last call (or construction)."""
        now = self._current_signs()
        ratios = {n: float((now[n] != self._signs[n]).float().mean()) for n in now}
        self._signs = now
        return ratios

    def histograms(self) -> Tuple[Dict[str, Dict], Dict[str, float]]:
        """({name: {"range": [lo, hi], "counts": [...]}}, {name: saturated fraction}) of the latent weights."""
        hists, saturated = {}, {}
        for n, p, m in self.weights:
            w = p.detach().float().flatten().cpu()
            clip = getattr(m, "weight_clip", None)
            c = float(clip) if clip else float(w.abs().max()) or 1.0
            counts = torch.histc(w.clamp(-c, c), bins=self.bins, min=-c, max=c)
            hists[n] = {"range": [-c, c], "counts": [int(v) for v in counts.tolist()]}
            saturated[n] = float((w.abs() >= SATURATION * c).float().mean()) if clip else 0.0
        return hists, saturated

    def epoch(self) -> Dict[str, Dict]:
        """The epoch record's entries: ``flip_ratio``, ``weight_saturation``, ``weight_histogram`` (per tensor)."""
        if not self.weights:
            return {}
        hists, saturated = self.histograms()
        return {"flip_ratio": self.flip_ratios(), "weight_saturation": saturated, "weight_histogram": hists}


def tensorboard_writer(log_dir):
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir``, or a ConfigError saying how to get one."""
    try:
        import tensorboard  # noqa: F401  (SummaryWriter needs it; torch does not depend on it)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from ..errors import ConfigError

        raise ConfigError("--tensorboard needs the 'tensorboard' package, which is not installed: "
                          "pip install tensorboard (or train without --tensorboard)") from None
    return SummaryWriter(log_dir=str(log_dir))


def log_tensorboard(writer, record: Dict, model: nn.Module) -> None:
    """One epoch on TensorBoard: every number of the record as a scalar (``train/loss`` style names),
    the flip ratios and saturation per tensor, and a histogram of each quantized tensor's latent weights."""
    step = int(record["epoch"])
    for key, value in record.items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key.replace("_", "/", 1) if key.startswith(("train_", "test_", "valid_")) else key,
                              value, step)
    for group in ("flip_ratio", "weight_saturation"):
        for name, value in record.get(group, {}).items():
            writer.add_scalar(f"{group}/{name}", value, step)
    for name, p, _ in quantized_weights(model):
        writer.add_histogram(f"latent_weights/{name}", p.detach().float().cpu(), step)
    writer.flush()


def plot_diagnostics(history: List[Dict], out_dir, title: str = "") -> List[Path]:
    """``flips.png`` (flip ratio per binary tensor per epoch) and ``weights.png`` (latent-weight histograms of
    the first and last recorded epoch, one panel per tensor, with the saturated fraction) in ``out_dir``.
    Nothing is drawn when the records hold no diagnostics."""
    records = [h for h in history if h.get("weight_histogram")]
    if not records:
        return []
    from .plotting import plt

    out_dir = Path(out_dir)
    written = []
    epochs = [h["epoch"] for h in records]
    names = list(records[-1].get("flip_ratio", {}))
    if names:
        fig, ax = plt.subplots(figsize=(6, 4))
        for n in names:
            ax.plot(epochs, [h["flip_ratio"].get(n, float("nan")) for h in records], marker="o", label=n)
        ax.set_xlabel("epoch"); ax.set_ylabel("fraction of signs flipped in the epoch"); ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"{title} flip ratio".strip())
        fig.tight_layout()
        fig.savefig(out_dir / FLIPS_PNG, dpi=100)
        plt.close(fig)
        written.append(out_dir / FLIPS_PNG)
    tensors = list(records[-1]["weight_histogram"])
    cols = min(3, len(tensors))
    rows = (len(tensors) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, n in zip(axes.flat, tensors):
        for h, style in ((records[0], "--"), (records[-1], "-")):
            hist = h["weight_histogram"].get(n)
            if hist is None:
                continue
            lo, hi = hist["range"]
            k = len(hist["counts"])
            edges = [lo + (hi - lo) * i / k for i in range(k + 1)]
            ax.stairs(hist["counts"], edges, linestyle=style,
                      label=f"epoch {h['epoch']} (saturated {100 * h['weight_saturation'].get(n, 0):.1f}%)")
        ax.set_title(n, fontsize=8); ax.legend(fontsize=6); ax.set_xlabel("latent weight")
    for ax in list(axes.flat)[len(tensors):]:
        ax.axis("off")
    if title:
        fig.suptitle(f"{title} latent weights")
    fig.tight_layout()
    fig.savefig(out_dir / WEIGHTS_PNG, dpi=100)
    plt.close(fig)
    written.append(out_dir / WEIGHTS_PNG)
    return written
