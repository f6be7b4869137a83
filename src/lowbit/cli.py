"""The ``lowbit`` command line.

    lowbit train RECIPE [--epochs N] [--data-dir DIR] [--out DIR] [--seed S] [--set key=value ...] [--resume]
    lowbit recipes

Subcommands register themselves in :data:`COMMANDS` (name -> (add_arguments, run)), so the runtime and
other parts add theirs (``eval``, ``export``, ``summary``, ``bench``) without this file knowing them.
Errors about the user's input (:class:`lowbit.errors.LowbitError`) print as one line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Dict, List, Optional, Tuple

from .errors import LowbitError

COMMANDS: Dict[str, Tuple[str, Callable, Callable]] = {}


def command(name: str, help: str):
    """Decorator pair: ``@command(name, help)`` on a function ``(parser) -> run(args)``."""

    def decorate(setup: Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]):
        COMMANDS[name] = (help, setup, None)
        return setup

    return decorate


@command("train", "train a recipe (writes metrics.json, checkpoint.pt, curves.png into --out)")
def _train(p: argparse.ArgumentParser):
    from .config import RECIPES

    p.description = (
        "Train a recipe. Writes into --out: metrics.json (per-epoch loss/accuracy, wall time, the resolved "
        "config, final test_accuracy), checkpoint.pt (atomic, every epoch) and curves.png. "
        "Data is read from --data-dir, else $LOWBIT_DATA, else ~/.cache/lowbit/data (downloaded when missing; "
        "MNIST falls back to a small embedded real sample when offline). "
        "Run data-parallel with: torchrun --nproc_per_node=2 -m lowbit train RECIPE ..."
    )
    p.add_argument("recipe", help="one of: " + ", ".join(sorted(RECIPES)))
    p.add_argument("--epochs", type=int, help="number of epochs (overrides the recipe)")
    p.add_argument("--data-dir", help="dataset directory (default: $LOWBIT_DATA or ~/.cache/lowbit/data)")
    p.add_argument("--out", default=None, help="output directory (default: runs/RECIPE)")
    p.add_argument("--seed", type=int, help="random seed (overrides the recipe)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set lr_start=0.01 --set model.hidden=1024 (repeatable); "
                        "'lowbit recipes --show RECIPE' lists the keys")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(args) -> int:
        from .config import apply_overrides, get_recipe
        from .train import run as train_run

        cfg = get_recipe(args.recipe)
        overrides = list(args.overrides)
        if args.epochs is not None:
            overrides.append(f"epochs={args.epochs}")
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        cfg = apply_overrides(cfg, overrides)
        out = args.out or f"runs/{args.recipe}"
        metrics = train_run(cfg, out, data_dir=args.data_dir, resume=args.resume, progress=not args.no_progress)
        for key, label in (("test_perplexity", "test perplexity"), ("test_bpc", "test bits per character"),
                           ("test_accuracy", "test accuracy")):
            if metrics.get(key) is not None:
                print(f"final {label} {metrics[key]:.4f}; results in {out}")
                break
        return 0

    return run


@command("recipes", "list the recipes, or show one's full configuration")
def _recipes(p: argparse.ArgumentParser):
    p.add_argument("--show", metavar="RECIPE", help="print this recipe's configuration as JSON")

    def run(args) -> int:
        from .config import RECIPES, get_recipe

        if args.show:
            print(json.dumps(get_recipe(args.show).to_dict(), indent=2))
            return 0
        for name in sorted(RECIPES):
            doc = (RECIPES[name].__doc__ or "").strip().splitlines()[0]
            print(f"{name:20s} {doc}")
        return 0

    return run


def _load_plugins() -> None:
    """Import the modules that register recipes and subcommands."""
    import importlib

    from .config import load_recipes

    load_recipes()
    try:
        importlib.import_module("lowbit.runtime.cli")
    except ModuleNotFoundError as exc:
        if not (exc.name and "lowbit.runtime.cli".startswith(exc.name)):
            raise


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    parser = argparse.ArgumentParser(
        prog="lowbit",
        description="Train quantized neural networks (1 to 8 bits) in PyTorch and deploy them to a fast "
                    "bit-packed CPU runtime.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, setup, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_run=setup(p))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except LowbitError as exc:
        print(f"lowbit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last completed epoch's checkpoint is intact (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
