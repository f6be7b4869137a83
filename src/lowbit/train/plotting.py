"""PNG plots of training runs (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: List[Dict], path, title: str = "", accuracy_keys: Sequence[str] = ("train_accuracy", "test_accuracy"),
                loss_keys: Sequence[str] = ("train_loss", "test_loss")) -> Path:
    """Loss and accuracy per epoch, side by side."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key in loss_keys:
        if history and key in history[0]:
            ax_loss.plot(epochs, [h[key] for h in history], marker="o", label=key.replace("_", " "))
    for key in accuracy_keys:
        if history and key in history[0]:
            ax_acc.plot(epochs, [100.0 * h[key] for h in history], marker="o", label=key.replace("_", " "))
    ax_loss.set_xlabel("epoch"); ax_loss.set_ylabel("loss"); ax_loss.legend(); ax_loss.grid(alpha=0.3)
    ax_acc.set_xlabel("epoch"); ax_acc.set_ylabel("accuracy (%)"); ax_acc.legend(); ax_acc.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
