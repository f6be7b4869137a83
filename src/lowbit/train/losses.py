"""Losses. The BNN/QNN papers train with the square hinge loss on +-1 one-hot targets."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..registry import LOSSES


def square_hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean over batch and classes of max(0, 1 - t * y)^2, with t = +1 for the true class, -1 elsewhere."""
    targets = -torch.ones_like(logits)
    targets.scatter_(1, labels.view(-1, 1), 1.0)
    return torch.clamp(1.0 - targets * logits, min=0.0).pow(2).mean()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


LOSSES.register("square_hinge", obj=square_hinge)
LOSSES.register("cross_entropy", "ce", obj=cross_entropy)


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss function registered as ``name`` (:data:`lowbit.registry.LOSSES`)."""
    return LOSSES.get(name)
