"""The ``lowbit`` command line.

    lowbit train RECIPE [--epochs N] [--data-dir DIR] [--out DIR] [--seed S] [--set key=value ...] [--resume]
    lowbit recipes [--show RECIPE]
    lowbit export CHECKPOINT -o MODEL.lbt|MODEL.onnx [--format lbt|onnx|qonnx]
    lowbit eval MODEL.lbt|CHECKPOINT.pt|zoo:NAME [--data-dir DIR]   (accuracy, perplexity or bits per character)
    lowbit zoo [--show NAME]                                 (the trained models shipped with lowbit)
    lowbit summary RECIPE|CHECKPOINT
    lowbit generate CHECKPOINT|MODEL.lbt --prompt TEXT [--tokens N] [--temperature T] [--seed S]
    lowbit bench [--show NAME] [--results DIR] | --run [--quick]

Each subcommand is a function ``(parser) -> run(args)`` registered with ``@command`` in this file: the
one command line of both halves. Everything heavy is imported inside ``run`` so ``lowbit --help`` is fast.
Errors about the user's input (:class:`lowbit.errors.LowbitError`) print as one line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from .errors import CheckpointError, ConfigError, LowbitError
from .registry import COMMANDS

def command(name: str, help: str):
    """``@command(name, help)`` on a function ``(parser) -> run(args)`` registers subcommand ``name`` in
    :data:`lowbit.registry.COMMANDS` (a plug-in adds its own the same way)."""

    def decorate(setup: Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]):
        setup.help = help
        return COMMANDS.register(name, obj=setup)

    return decorate


@command("train", "train a recipe (writes metrics.json, checkpoint.pt, curves.png into --out)")
def _train(p: argparse.ArgumentParser):
    from .registry import RECIPES

    p.description = (
        "Train a recipe. Writes into --out: metrics.json (per-epoch loss/accuracy, wall time, the resolved "
        "config, final test_accuracy, per-epoch flip ratios and latent-weight histograms), checkpoint.pt (atomic, every epoch), "
        "curves.png, flips.png and weights.png. "
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
    p.add_argument("--tensorboard", metavar="DIR", help="also log every epoch (metrics, flip ratios, latent-weight "
                                                        "histograms) to TensorBoard in DIR (needs 'tensorboard')")

    def run(args) -> int:
        from .train import apply_overrides, get_recipe, run as train_run

        cfg = get_recipe(args.recipe)
        overrides = list(args.overrides)
        if args.epochs is not None:
            overrides.append(f"epochs={args.epochs}")
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        cfg = apply_overrides(cfg, overrides)
        out = args.out or f"runs/{args.recipe}"
        metrics = train_run(cfg, out, data_dir=args.data_dir, resume=args.resume, progress=not args.no_progress,
                            tensorboard=args.tensorboard)
        if not _is_rank_zero():  # under torchrun every process runs this; only rank 0 reports
            return 0
        for key, label in (("test_perplexity", "test perplexity"), ("test_bpc", "test bits per character"),
                           ("test_accuracy", "test accuracy")):
            if metrics.get(key) is not None:
                print(f"final {label} {metrics[key]:.4f}; results in {out}")
                break
        return 0

    return run


def _is_rank_zero() -> bool:
    import os

    try:
        return int(os.environ.get("RANK", "0") or 0) == 0
    except ValueError:
        return True


@command("recipes", "list the recipes, or show one's full configuration")
def _recipes(p: argparse.ArgumentParser):
    p.add_argument("--show", metavar="RECIPE", help="print every setting of this recipe (the keys of --set), "
                                                    "with a one-line description each")
    p.add_argument("--json", action="store_true", help="with --show: the configuration as JSON")

    def run(args) -> int:
        from .registry import RECIPES
        from .train import get_recipe
        from .train.config import FIELD_DOCS

        if args.show:
            cfg = get_recipe(args.show).to_dict()
            if args.json:
                print(json.dumps(cfg, indent=2))
                return 0
            model_args = cfg.pop("model_args")
            rows = [(k, json.dumps(v), FIELD_DOCS.get(k, "")) for k, v in cfg.items()]
            rows += [(f"model.{k}", json.dumps(v), FIELD_DOCS["model_args"] if i == 0 else "")
                     for i, (k, v) in enumerate(model_args.items())]
            kw = max(len(r[0]) for r in rows)
            vw = min(max(len(r[1]) for r in rows), 28)
            print(f"recipe {args.show}: settings (change with --set KEY=VALUE)")
            for key, value, doc in rows:
                print(f"  {key:{kw}s} = {value:{vw}s}  {doc}".rstrip())
            return 0
        width = max(map(len, RECIPES))
        for name in RECIPES:
            doc = (RECIPES[name].__doc__ or "").strip().splitlines()[0]
            print(f"{name:{width}s}  {doc}")
        return 0

    return run


def _is_model_file(path: str) -> bool:
    from .runtime.modelfile import is_model_file

    try:
        return is_model_file(path)
    except OSError:
        raise CheckpointError(f"{path} does not exist or cannot be read") from None


@command("export", "export a training checkpoint: a bit-packed .lbt model file for the runtime, or ONNX (.onnx)")
def _export(p):
    p.add_argument("checkpoint", help="checkpoint.pt written by 'lowbit train'")
    p.add_argument("-o", "--output", required=True, help="file to write (model.lbt, or model.onnx for ONNX)")
    p.add_argument("--format", choices=["lbt", "onnx", "qonnx"], default=None,
                   help="output format (default: from the extension of --output; .onnx -> onnx, else lbt); "
                        "qonnx: the QONNX dialect (BipolarQuant/Quant nodes) that Brevitas and FINN use")
    p.add_argument("--onnx-activations", choices=["arith", "qdq"], default="arith",
                   help="ONNX only: k-bit activations as exact round/clip arithmetic (default) or as "
                        "QuantizeLinear/DequantizeLinear pairs (ties round to even)")
    p.add_argument("--onnx-weights", choices=["float", "qdq"], default="float",
                   help="ONNX only: quantized weights as float32 constants (default) or as integer codes + "
                        "DequantizeLinear (binary in int2, 2-/3-bit symmetric in int4)")
    p.add_argument("--onnx-int2", choices=["auto", "yes", "no"], default="auto",
                   help="ONNX Q/DQ only: 2-bit codes as int2/uint2 (opset 25, onnx >= 1.20; 'auto': when the "
                        "installed onnx has them) or as int4/uint4 ('no': for runtimes without int2)")
    p.add_argument("--calibration-batches", type=int, default=8,
                   help="integer LSTM/GRU/RNN only: batches of training text used to calibrate ranges")
    p.add_argument("--data-dir", help="integer LSTM/GRU/RNN only: data directory for calibration text")

    def run(args) -> int:
        from .export import export_checkpoint

        report = export_checkpoint(args.checkpoint, args.output, data_dir=args.data_dir,
                                   calibration_batches=args.calibration_batches, format=args.format,
                                   onnx_activations=args.onnx_activations, onnx_weights=args.onnx_weights,
                                   onnx_int2={"auto": None, "yes": True, "no": False}[args.onnx_int2])
        print(f"wrote {report['model_file']}: {report['bytes']} bytes "
              f"({report['ratio']:.1f}x smaller than the fp32 state_dict of {report['fp32_state_dict_bytes']} bytes)")
        if report.get("layers"):
            print("layers and the kernel each runs on:")
            for line in report["layers"]:
                print(f"  {line}")
        return 0

    return run


@command("generate", "sample text from a trained language model (checkpoint.pt or integer LSTM/GRU/RNN .lbt)")
def _generate(p):
    p.add_argument("model", help="a language-model checkpoint.pt (PyTorch, float) or .lbt (integer LSTM/GRU/RNN, no torch)")
    p.add_argument("--prompt", required=True, help="text to start from (characters/words of the model's vocabulary)")
    p.add_argument("--tokens", type=int, default=100, help="tokens to sample (characters or words; default 100)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature (default 1; 0: always the most likely token)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same text (default 0)")

    def run(args) -> int:
        from .generate import generate

        text = generate(args.model, args.prompt, tokens=args.tokens, temperature=args.temperature, seed=args.seed)
        print(args.prompt + text)
        return 0

    return run


@command("eval", "score a .lbt model file (runtime, no torch), a checkpoint.pt (PyTorch) or a zoo model (zoo:NAME): "
                 "accuracy, perplexity or bits per character")
def _eval(p):
    p.add_argument("model", help="a .lbt file from 'lowbit export' (runs the runtime, no torch), a checkpoint.pt, or "
                                 "zoo:NAME (a model shipped with lowbit, see 'lowbit zoo')")
    p.add_argument("--data-dir", help="dataset directory (default: $LOWBIT_DATA or ~/.cache/lowbit/data)")
    p.add_argument("--dataset", help="image models: dataset to evaluate on (default: the one the model was trained on)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (default 1000); language models: columns (default: as in training)")
    p.add_argument("--save-predictions", metavar="FILE.npy", help="image models: write the predicted class of every test image")
    p.add_argument("--engine", choices=["runtime", "pytorch"], default="runtime",
                   help="zoo:NAME only: score its runtime model file (default) or its PyTorch model")

    def run(args) -> int:
        if args.batch_size is not None and args.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
        from . import zoo

        if zoo.is_zoo_ref(args.model):
            if args.engine == "runtime":
                return _eval_model_file(args, zoo.load_runtime(args.model))
            model, meta = zoo.load_with_metadata(args.model)
            return _eval_pytorch(args, model, meta["config"], meta.get("vocab"))
        if args.engine != "runtime":
            raise ConfigError("--engine is for zoo:NAME models (a .lbt runs the runtime, a checkpoint.pt PyTorch)")
        if _is_model_file(args.model):
            from .runtime import load

            return _eval_model_file(args, load(args.model))
        from .train.checkpoint import load_checkpoint, read_checkpoint

        data = read_checkpoint(args.model)
        cfg = data["config"]
        task = cfg.get("task", "image")
        if task not in ("image", "lm"):
            raise ConfigError(f"{args.model} is a {task} model: evaluate it on its folders with "
                              f"'lowbit train ... --resume' metrics, 'lowbit eval' reads in-memory datasets")
        if task == "lm":
            from .train.tasks.lm import load_lm_checkpoint

            model, _, _ = load_lm_checkpoint(args.model)
            return _eval_pytorch(args, model, cfg, data["vocab"])
        return _eval_pytorch(args, load_checkpoint(args.model), cfg)

    return run


def _eval_model_file(args, net) -> int:
    if net.task == "lm":
        return _eval_lm_model_file(args, net, f"lowbit runtime ({net.backend})")
    return _eval_images(args, net.classify, args.dataset or net.meta.get("dataset"), "lowbit runtime")


def _eval_pytorch(args, model, cfg, vocab=None) -> int:
    """Score an eval-mode PyTorch image classifier or language model (with the vocabulary dict it was trained
    with) of training configuration ``cfg``."""
    import torch

    if cfg.get("task", "image") == "lm":
        return _eval_lm_pytorch(args, model, cfg, vocab)

    def predict(x):
        with torch.no_grad():
            return model(torch.from_numpy(x).float()).argmax(1).numpy()

    return _eval_images(args, predict, args.dataset or cfg.get("dataset"), "PyTorch")


def _eval_images(args, predict, dataset, engine: str) -> int:
    import numpy as np

    from .data import load_dataset
    from .fileio import atomic_write

    if not dataset:
        raise ConfigError("the model does not say which dataset it was trained on: pass --dataset")
    test = load_dataset(dataset, "test", data_dir=args.data_dir, allow_sample=True)
    if test.is_sample:
        print(f"NOTE: full {dataset} not found; evaluating on the {test.source} (the default data directory "
              f"has no {dataset}: put the files under --data-dir or LOWBIT_DATA for the full test set)")
    batch = args.batch_size or 1000
    t = time.perf_counter()
    preds = np.concatenate([predict(test.images[i:i + batch]) for i in range(0, len(test.labels), batch)])
    elapsed = time.perf_counter() - t
    acc = float((preds == test.labels).mean())
    print(f"{engine}: {dataset} test accuracy {acc:.4f} ({int((preds == test.labels).sum())}/{len(preds)}) "
          f"in {elapsed:.2f}s")
    if args.save_predictions:
        atomic_write(args.save_predictions, lambda f: np.save(f, preds.astype(np.int64)))
        print(f"predictions written to {args.save_predictions}")
    return 0


def _print_lm(engine: str, level: str, loss: float, tokens: int, elapsed: float) -> None:
    import math

    unit = f"perplexity {math.exp(min(loss, 700.0)):.3f}" if level == "word" else f"bits per character {loss / math.log(2):.4f}"
    print(f"{engine}: test {unit} (loss {loss:.4f} nats/token over {tokens} tokens) in {elapsed:.2f}s")


def _eval_lm_model_file(args, net, engine: str) -> int:
    from .data.text import load_corpus

    if args.save_predictions:
        raise ConfigError("--save-predictions is for image classifiers")
    ev = net.meta.get("evaluation")
    if not ev:
        raise ConfigError(f"{args.model} does not record its training data (exported by an older lowbit or from a "
                          f"bare recurrent layer): score a text with lowbit.runtime.load(...).perplexity(ids)")
    corpus = load_corpus(ev["data"], args.data_dir)
    if net.vocab is not None and corpus.vocab.tokens != net.vocab.tokens:
        raise ConfigError(f"the data under {args.data_dir or 'the data directory'} has another vocabulary than "
                          f"{args.model} was trained with")
    t = time.perf_counter()
    r = net.perplexity(corpus.test, batch_size=args.batch_size or int(ev["batch_size"]), bptt=int(ev["bptt"]))
    _print_lm(engine, corpus.level, r["loss"], r["tokens"], time.perf_counter() - t)
    return 0


def _eval_lm_pytorch(args, model, cfg, vocab) -> int:
    from .data.text import Vocabulary
    from .models.lm import split_model_args
    from .train.config import TrainConfig
    from .train.tasks.lm import evaluate_lm, load_lm_data, lm_columns

    if args.save_predictions:
        raise ConfigError("--save-predictions is for image classifiers")
    tc = TrainConfig.from_dict(cfg)
    corpus = load_lm_data(tc, args.data_dir)
    if corpus.vocab.tokens != Vocabulary.from_dict(vocab).tokens:
        raise ConfigError(f"the data has another vocabulary than {args.model} was trained with")
    bptt = int(split_model_args(cfg["model_args"])[1]["bptt"])
    t = time.perf_counter()
    data = lm_columns(corpus.test, args.batch_size or tc.eval_batch_size)
    loss, _ = evaluate_lm(model, data, bptt, "cpu")
    _print_lm("PyTorch", corpus.level, loss, int(data.size(0) - 1) * int(data.size(1)), time.perf_counter() - t)
    return 0


@command("zoo", "list the trained models shipped with lowbit (score one with 'lowbit eval zoo:NAME')")
def _zoo(p):
    p.add_argument("--show", metavar="NAME", help="print one entry in full (files, sizes, checksums, date, machine)")

    def run(args) -> int:
        from . import zoo

        if args.show:
            print(json.dumps(zoo.entry(args.show), indent=2))
            return 0
        table = zoo.entries()
        width = max(map(len, table), default=4)
        for name, e in table.items():
            print(f"{name:{width}s}  {e['task']}, {e['dataset']}: {e['description']}")
            print(f"{'':{width}s}  {zoo.describe_metric(e)} on {e['metric']['split']}; "
                  f"{zoo.total_bytes(e) / 1024:.0f} KB (runtime {e['files']['runtime']['bytes'] / 1024:.0f} KB)")
            print(f"{'':{width}s}  trained by: {e['command']}")
        print("score one: lowbit eval zoo:NAME [--engine pytorch]; in Python: lowbit.zoo.load(NAME) (PyTorch), "
              "lowbit.zoo.load_runtime(NAME) (runtime)")
        return 0

    return run


@command("summary", "per-layer bits, size, MACs and an energy estimate for a recipe or a checkpoint")
def _summary(p):
    p.add_argument("target", help="a recipe name (e.g. mnist-mlp) or a checkpoint.pt")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def run(args) -> int:
        from .summary import format_summary, summarize_target

        s = summarize_target(args.target)
        print(json.dumps(s, indent=2) if args.json else format_summary(s, s["title"]))
        return 0

    return run


@command("bench", "summarize the committed benchmark results (--show NAME: one in full), or run the runtime "
                  "benchmark (--run)")
def _bench(p):
    p.add_argument("--run", nargs="?", const="runtime", choices=["runtime", "networks", "all"], default=None,
                   help="measure now (minutes) instead of printing committed results: 'runtime' (default: the MNIST "
                        "MLP and the binary conv stack), 'networks' (every recipe's network vs PyTorch fp32 and "
                        "onnxruntime), or 'all'")
    p.add_argument("--show", metavar="NAME", help="print one results file in full (e.g. runtime, gemm)")
    p.add_argument("--results", default=None,
                   help="folder of results (default: $LOWBIT_BENCH_RESULTS, else benchmarks/results of the source "
                        "checkout lowbit is imported from); with --run, where to write")
    p.add_argument("--threads", type=int, default=None, help="threads for our kernels and for torch")
    p.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats (with --run)")

    def run(args) -> int:
        if args.run:
            from .bench import main as bench_main
            from .bench_networks import main as networks_main

            argv = (["--quick"] if args.quick else []) + ([f"--threads={args.threads}"] if args.threads else []) \
                + ([f"--out={args.results}"] if args.results else [])
            suites = {"runtime": [bench_main], "networks": [networks_main], "all": [bench_main, networks_main]}
            return max(main(argv) for main in suites[args.run])
        from .benchmarking import RESULTS_ENV, results_dir, summarize_results

        folder = Path(args.results) if args.results else results_dir()
        files = sorted(folder.glob("*.md")) if folder is not None and folder.is_dir() else []
        if not files:
            where = (f"{folder}" if folder is not None else
                     f"${RESULTS_ENV} (not set) and benchmarks/results beside the lowbit package "
                     f"({Path(__file__).resolve().parents[2] / 'benchmarks' / 'results'}: not there; lowbit is "
                     "installed without its source tree)")
            raise ConfigError(f"no benchmark results in {where}. Measure them with 'lowbit bench --run' (writes "
                              "runtime.json/.md; --results DIR chooses where), or clone the repository and run the "
                              "scripts in benchmarks/; point --results or $" + RESULTS_ENV + " at the folder")
        if args.show:
            name = args.show[:-3] if args.show.endswith(".md") else args.show
            chosen = [f for f in files if f.stem == name]
            if not chosen:
                raise ConfigError(f"no results named {args.show!r} in {folder}; there are: "
                                  + ", ".join(f.stem for f in files))
            print(chosen[0].read_text(), end="")
            return 0
        print(summarize_results(folder, files))
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit",
        description="Train quantized neural networks (1 to 8 bits) in PyTorch and deploy them to a fast "
                    "bit-packed CPU runtime.",
    )
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        setup = COMMANDS[name]
        p = sub.add_parser(name, help=setup.help, description=setup.help)
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
