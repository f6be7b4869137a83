"""One way to register things by name: quantizers, models, optimizers, losses, recipes, training tasks and
the command line's subcommands.

Each kind has one :class:`Registry` below. A module registers what it defines with the decorator::

    @QUANTIZERS.register("ste_sign", "sign")
    class SteSign(Quantizer): ...

and the package that owns the kind imports its own modules in its ``__init__`` (``lowbit.quant`` imports
``base``, ``kbit``, ``pact_sawb``), so the built-ins are there as soon as the package is. A registry names
that package (``home``) and imports it on first lookup, so ``MODELS.get("rnn_lm")`` works from anywhere
(a checkpoint loader, the CLI) without an import for its side effect in an unrelated module.

A third-party plug-in does the same from its own module: import it, then register.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Iterator, Mapping, Optional

from .errors import ConfigError


class Registry(Mapping):
    """Name -> object for one kind of plug-in. Names are matched lower-case; the first name given to
    :meth:`register` is the canonical one (stored as the object's ``registry_name`` for lowbit's own)."""

    def __init__(self, kind: str, home: Optional[str] = None):
        self.kind = kind
        self.home = home  # the package whose import registers the built-ins
        self._items: Dict[str, Any] = {}
        self._loaded = home is None

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first, so a lookup during the package's own import does not recurse
            importlib.import_module(self.home)

    def register(self, *names: str, obj: Any = None) -> Callable:
        """Register ``obj`` under ``names``; without ``obj``, a decorator. Re-registering a name to another
        object is an error (two plug-ins claiming one name)."""
        if not names:
            raise ConfigError(f"register a {self.kind} under at least one name")

        def add(target):
            for name in names:
                key = name.strip().lower()
                if key in self._items and self._items[key] is not target:
                    raise ConfigError(f"{self.kind} name {name!r} is already registered to {self._items[key]!r}")
                self._items[key] = target
            if str(getattr(target, "__module__", "")).startswith("lowbit"):  # never tag torch's own classes
                target.registry_name = names[0]
            return target

        return add if obj is None else add(obj)

    def get(self, name: str, default: Any = ...) -> Any:  # type: ignore[override]
        """The object registered as ``name``; an unknown name raises ConfigError listing the known ones."""
        self._load()
        key = name.strip().lower() if isinstance(name, str) else name
        if key in self._items:
            return self._items[key]
        if default is not ...:
            return default
        raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}")

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self._load()
        return isinstance(name, str) and name.strip().lower() in self._items

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._items))

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._items)} entries)"


QUANTIZERS = Registry("quantizer", home="lowbit.quant")
MODELS = Registry("model", home="lowbit.models")
OPTIMIZERS = Registry("optimizer", home="lowbit.train.optim")
LOSSES = Registry("loss", home="lowbit.train.losses")
RECIPES = Registry("recipe", home="lowbit.train.recipes")
TASKS = Registry("task", home="lowbit.train.tasks")
COMMANDS = Registry("command", home="lowbit.cli")  # `lowbit SUBCOMMAND`: functions (parser) -> run(args)
