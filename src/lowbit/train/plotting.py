"""PNG plots of training runs (matplotlib, no display needed).

The training curves are per step: each epoch's history record carries ``steps``, a list of
``[fractional epoch, smoothed training loss, smoothed training accuracy]`` sampled every few steps (so a
resumed run keeps them), drawn as lines; the evaluations (test, validation) are points at the end of each
epoch. The x axis counts epochs in whole numbers; the title says which data the run used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _label(key: str) -> str:
    return key.replace("_", " ")


def curves_figure(history: List[Dict], title: str = "",
                  accuracy_keys: Sequence[str] = ("train_accuracy", "test_accuracy"),
                  loss_keys: Sequence[str] = ("train_loss", "test_loss"), loss_label: str = "loss",
                  step_loss: Optional[Callable[[float], float]] = None):
    """The figure :func:`plot_curves` saves: (left) the per-step smoothed training loss, in the unit
    ``step_loss`` converts nats to (identity by default; perplexity or bits per character for language
    models, whose ``loss_keys`` then name the epoch records in that unit), with each epoch's evaluation
    points; (right) the same for accuracy (in %)."""
    to_unit = step_loss or (lambda x: x)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [s for h in history for s in h.get("steps", [])]
    epochs = [h["epoch"] for h in history]
    for ax, keys, col, scale in ((ax_loss, loss_keys, 1, None), (ax_acc, accuracy_keys, 2, 100.0)):
        train_keys = [k for k in keys if k.startswith("train_")]
        if steps and train_keys:
            ys = [(s[col] * scale if scale else to_unit(s[col])) for s in steps]
            ax.plot([s[0] for s in steps], ys, lw=1.2, label=_label(train_keys[0]) + " (per step, smoothed)")
        elif history and train_keys and train_keys[0] in history[0]:  # records written before per-step curves
            ax.plot(epochs, [h[train_keys[0]] * (scale or 1.0) for h in history], marker="o",
                    label=_label(train_keys[0]))
        for key in keys:
            if key.startswith("train_") or not history or key not in history[0]:
                continue
            ax.plot(epochs, [h[key] * (scale or 1.0) for h in history], marker="o", ms=6, clip_on=False,
                    ls="--" if len(epochs) > 1 else "",
                    label=_label(key) + " (end of epoch)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0, max(epochs) if epochs else 1)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    ax_loss.set_ylabel(loss_label)
    ax_acc.set_ylabel("accuracy (%)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(history: List[Dict], path, title: str = "", accuracy_keys: Sequence[str] = ("train_accuracy", "test_accuracy"),
                loss_keys: Sequence[str] = ("train_loss", "test_loss"), loss_label: str = "loss",
                step_loss: Optional[Callable[[float], float]] = None) -> Path:
    """Write :func:`curves_figure` to ``path`` (PNG)."""
    fig = curves_figure(history, title, accuracy_keys, loss_keys, loss_label, step_loss)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class StepCurve:
    """Smoothed per-step training loss and accuracy of one epoch, sampled about ``points`` times: an
    exponential moving average (bias-corrected, so the first steps are not pulled towards 0)."""

    def __init__(self, epoch: int, steps_per_epoch: int, points: int = 50, decay: float = 0.9):
        self.epoch, self.n = epoch, max(1, int(steps_per_epoch))
        self.every = max(1, self.n // max(1, points))
        self.decay = decay
        self.loss = self.acc = 0.0
        self.weight = 0.0
        self.step = 0
        self.samples: List[List[float]] = []

    def update(self, loss: float, accuracy: float) -> None:
        self.step += 1
        if not math.isfinite(loss):
            loss = float("nan")
        self.loss = self.decay * self.loss + (1 - self.decay) * loss
        self.acc = self.decay * self.acc + (1 - self.decay) * accuracy
        self.weight = self.decay * self.weight + (1 - self.decay)
        if self.step % self.every == 0 or self.step == self.n:
            self.samples.append([round(self.epoch + min(self.step, self.n) / self.n, 6),
                                 self.loss / self.weight, self.acc / self.weight])
