"""Training configuration: one dataclass, the recipes that fill it, and ``--set key=value`` overrides.

A recipe is a named, complete configuration (dataset, model and its arguments, optimisation schedule).
``--set`` changes any field (``--set epochs=5``, ``--set lr_start=0.01``) or any model argument
(``--set model.hidden=1024``, ``--set model.channels=64,64,M,128,128,M``); the value is parsed to the type
of the current value, and unknown keys or unparsable values are refused with the list of valid keys.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List

from ..errors import ConfigError
from ..registry import RECIPES, TASKS


@dataclass
class TrainConfig:
    recipe: str
    dataset: str
    model: str
    model_args: Dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 100
    eval_batch_size: int = 1000
    optimizer: str = "adam"
    lr_start: float = 3e-3
    lr_end: float = 3e-7
    lr_scale: bool = True  # BinaryConnect per-layer LR scale for quantized weights
    loss: str = "square_hinge"  # or "cross_entropy"
    seed: int = 0
    train_subset: int = 0  # use only the first N training images (0: all); for quick runs and tests
    test_subset: int = 0
    # hold the last N training images out as a validation split (BinaryNet's Theano MNIST: 10000, i.e.
    # 50k/10k); the run then also reports the test accuracy at the best-validation epoch and keeps that
    # epoch's model in best.pt (0: no validation split, train on all)
    valid_size: int = 0
    task: str = "image"  # which training loop: "image" classification (others register more)
    pact_l2: float = 0.0  # L2 penalty on PACT clipping levels: loss += pact_l2 * sum(alpha^2) (0: none)
    # translate each training image by up to N pixels in x and y (uniform integer offsets, zero fill), a
    # fresh draw per image and epoch (0: off, the papers' setting: BNN and QNN train MNIST unaugmented)
    random_shift: int = 0
    bn_recalibrate: int = 0  # before each evaluation, re-estimate BN running statistics over this many training images (0: off)
    data_workers: int = 2  # DataLoader worker processes of streaming tasks (imagenet); 0 loads in-process
    amp: str = "none"  # "bf16": forward under bfloat16 autocast (GEMMs/convs in bf16; quantizers stay float32)
    compile: str = ""  # a torch.compile backend for the training forward ("inductor", "aot_eager"); "": eager
    # conv weights and image batches in NHWC: with amp=bf16 oneDNN's bf16 convs (AMX / AVX-512 BF16) need it
    # to be fast (mnist-cnn step at 2 threads on an AMX Xeon: 262 ms fp32, 206 ms bf16, 156 ms bf16 + NHWC)
    channels_last: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"configuration has unknown keys {sorted(unknown)}")
        return cls(**copy.deepcopy(d))


#: One line per :class:`TrainConfig` field, shown by ``lowbit recipes --show RECIPE``.
FIELD_DOCS: Dict[str, str] = {
    "recipe": "the recipe's name (fixed)",
    "dataset": "dataset to train on (mnist, fashion-mnist, cifar10, svhn, imagenet, ptb, shakespeare)",
    "model": "model builder by name (see lowbit.registry.MODELS)",
    "model_args": "arguments of the model builder (model.KEY=VALUE)",
    "epochs": "passes over the training data",
    "batch_size": "training examples per step (language models: columns of text)",
    "eval_batch_size": "examples per batch when evaluating",
    "optimizer": "optimizer by name (adam, sgd, ...)",
    "lr_start": "learning rate of the first step (> 0)",
    "lr_end": "learning rate of the last step; decays exponentially from lr_start (> 0)",
    "lr_scale": "BinaryConnect per-layer learning-rate scale for quantized weights",
    "loss": "training loss: square_hinge or cross_entropy",
    "seed": "random seed (initialisation and data order)",
    "train_subset": "train on only the first N training examples (0: all)",
    "test_subset": "evaluate on only the first N test examples (0: all)",
    "valid_size": "hold out the last N training images for validation; report test accuracy at the best-validation epoch, keep that model in best.pt (0: off)",
    "task": "training loop: image, imagenet or lm",
    "pact_l2": "L2 penalty on PACT clipping levels: loss += pact_l2 * sum(alpha^2) (0: none)",
    "random_shift": "augment: shift each training image by up to N pixels in x and y, zero fill (0: off)",
    "bn_recalibrate": "re-estimate batch-norm statistics over this many training images before each evaluation (0: off)",
    "data_workers": "DataLoader worker processes of streaming tasks (imagenet); 0 loads in-process",
    "amp": "mixed precision: none or bf16 (autocast; quantizers stay float32)",
    "compile": "torch.compile backend for the training forward (inductor, aot_eager); empty: eager",
    "channels_last": "keep conv weights and image batches in channels-last (NHWC) memory: faster convs, same values",
}


def recipe(name: str):
    """Decorator registering a function that returns a fresh :class:`TrainConfig` as recipe ``name``
    (:data:`lowbit.registry.RECIPES`; the built-ins live in :mod:`lowbit.train.recipes`)."""
    return RECIPES.register(name)


def get_recipe(name: str) -> TrainConfig:
    return RECIPES.get(name)()


# ---- value parsing for --set -------------------------------------------------------------------------


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_item(text: str):
    text = text.strip()
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_value(text: str, like: Any) -> Any:
    """Parse ``text`` into the type of ``like`` (the value it replaces)."""
    if isinstance(like, bool):
        return _parse_bool(text)
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return float(text)
    if isinstance(like, (list, tuple)):
        text = text.strip()
        if text.startswith("["):
            items = json.loads(text)
        else:
            items = [_parse_item(t) for t in text.split(",") if t.strip()]
        return list(items)
    if like is None:
        return _parse_item(text) if text.strip().lower() != "none" else None
    return text


def apply_overrides(cfg: TrainConfig, overrides: List[str]) -> TrainConfig:
    """Apply ``key=value`` strings to a copy of ``cfg``."""
    cfg = TrainConfig.from_dict(cfg.to_dict())
    top = {f.name for f in dataclasses.fields(TrainConfig)} - {"model_args", "recipe"}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if key.startswith("model."):
            arg = key[len("model."):]
            if arg not in cfg.model_args:
                raise ConfigError(
                    f"--set {key}: model {cfg.model!r} of recipe {cfg.recipe!r} has no argument {arg!r}; "
                    f"known: {', '.join('model.' + k for k in sorted(cfg.model_args))}"
                )
            target, like = cfg.model_args, cfg.model_args[arg]
            name = arg
        elif key in top:
            target, like, name = None, getattr(cfg, key), key
        else:
            raise ConfigError(
                f"--set {key}: no such setting; known: {', '.join(sorted(top))}, "
                f"{', '.join('model.' + k for k in sorted(cfg.model_args))}"
            )
        try:
            value = parse_value(text, like)
        except (ValueError, json.JSONDecodeError):
            raise ConfigError(
                f"--set {key}={text}: expected a value of type {type(like).__name__} (current: {like!r})"
            ) from None
        if target is None:
            setattr(cfg, name, value)
        else:
            target[name] = value
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    if cfg.epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 1 or cfg.eval_batch_size < 1:
        raise ConfigError(f"batch sizes must be >= 1, got {cfg.batch_size}/{cfg.eval_batch_size}")
    if cfg.train_subset < 0 or cfg.test_subset < 0:
        raise ConfigError("train_subset and test_subset must be >= 0 (0 means all)")
    if not (0 < cfg.lr_start < math.inf and 0 < cfg.lr_end < math.inf):
        raise ConfigError(f"learning rates must be finite and > 0, got lr_start={cfg.lr_start} lr_end={cfg.lr_end}")
    if not 0 <= cfg.pact_l2 < math.inf:
        raise ConfigError(f"pact_l2 must be >= 0, got {cfg.pact_l2}")
    if cfg.valid_size < 0:
        raise ConfigError(f"valid_size must be >= 0 (training images held out; 0: off), got {cfg.valid_size}")
    if cfg.random_shift < 0:
        raise ConfigError(f"random_shift must be >= 0 (pixels; 0: off), got {cfg.random_shift}")
    if cfg.bn_recalibrate < 0:
        raise ConfigError(f"bn_recalibrate must be >= 0 (training images; 0: off), got {cfg.bn_recalibrate}")
    for name in ("valid_size", "random_shift", "bn_recalibrate"):  # settings of the in-memory image task
        if getattr(cfg, name) and cfg.task != "image":
            raise ConfigError(f"{name} is supported by the image task only; recipe {cfg.recipe!r} has task "
                              f"{cfg.task!r}: set {name}=0")
    if cfg.channels_last and cfg.task not in ("image", "imagenet"):
        raise ConfigError(f"channels_last is for image tasks; recipe {cfg.recipe!r} has task {cfg.task!r}: "
                          f"set channels_last=false")
    if cfg.amp not in ("none", "bf16"):
        raise ConfigError(f"amp must be 'none' or 'bf16', got {cfg.amp!r}")
    if cfg.task not in TASKS:
        raise ConfigError(f"unknown task {cfg.task!r}; known: {', '.join(TASKS)}")
    if cfg.data_workers < 0:
        raise ConfigError(f"data_workers must be >= 0, got {cfg.data_workers}")
    validate_model_args(cfg)


#: the largest integer any model argument (a width, a depth, a vocabulary) may have
MAX_MODEL_INT = 1 << 22
#: bytes per parameter while training: fp32 weight, gradient and two Adam moments
TRAIN_BYTES_PER_PARAM = 16


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 40


def validate_model_args(cfg: TrainConfig) -> None:
    """Ranges of the model arguments: dropout probabilities in [0, 1), finite numbers, integers (sizes) in
    0..MAX_MODEL_INT, and a model whose parameters (counted on the meta device, without allocating) fit in
    this machine's memory while training."""
    for key, value in cfg.model_args.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"model.{key} must be finite, got {value}")
        if "dropout" in key and isinstance(value, (int, float)) and not 0.0 <= value < 1.0:
            raise ConfigError(f"model.{key} is a dropout probability: it must be in [0, 1), got {value}")
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool) and not -1 <= item <= MAX_MODEL_INT:
                raise ConfigError(f"model.{key}={value}: {item} is outside the sizes lowbit builds "
                                  f"(-1..{MAX_MODEL_INT})")
    params = count_parameters(cfg)
    if params is not None:
        need, have = params * TRAIN_BYTES_PER_PARAM, _memory_bytes()
        if need > have:
            raise ConfigError(f"model {cfg.model!r} with these arguments has {params:,} parameters: training needs "
                              f"about {need / 2**30:,.1f} GiB (weights, gradients, Adam state), this machine has "
                              f"{have / 2**30:,.1f} GiB; use smaller model.* sizes")


def count_parameters(cfg: TrainConfig):
    """Parameters of the model ``cfg`` describes, counted on the meta device (nothing allocated); None if the
    model cannot be built from the configuration alone (e.g. a vocabulary size the data fills in)."""
    import torch

    from ..models import build_model

    try:
        with torch.device("meta"):
            model = build_model(cfg.model, **cfg.model_args)
    except Exception:  # noqa: BLE001 - the real build reports its own error
        return None
    return sum(p.numel() for p in model.parameters())
