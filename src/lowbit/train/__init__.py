"""The training half's top: configuration, recipes, the one training loop and its tasks.

    from lowbit.train import get_recipe, run
    metrics = run(get_recipe("mnist-mlp"), "runs/x")

Modules:
    config      TrainConfig, ``--set`` parsing and validation
    recipes     every named recipe (registered in :data:`lowbit.registry.RECIPES`)
    engine      the training loop (:func:`fit`) and the :class:`Task` interface
    tasks/      image, imagenet, lm
    optim       per-layer LR scale, latent-weight clipping, schedules, shift-based AdaMax
    losses      square hinge, cross entropy
    checkpoint  atomic save, safe (``weights_only``) load, model rebuild from a config
    distributed torchrun integration;   plotting: curves.png
"""
from __future__ import annotations

from typing import Dict

from .config import TrainConfig, apply_overrides, get_recipe  # noqa: F401
from .engine import fit


def run(cfg: TrainConfig, out_dir, data_dir=None, resume: bool = False, progress: bool = True,
        tensorboard=None) -> Dict:
    """Train ``cfg`` with the loop; returns the metrics written to ``out_dir/metrics.json``."""
    return fit(cfg, out_dir, data_dir=data_dir, resume=resume, progress=progress, tensorboard=tensorboard)
