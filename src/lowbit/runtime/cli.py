"""Subcommands of the deployment side: ``export``, ``eval``, ``summary``, ``bench``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..cli import command
from ..errors import CheckpointError, ConfigError


def _is_model_file(path: str) -> bool:
    from .modelfile import MAGIC

    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        raise CheckpointError(f"{path} does not exist or cannot be read") from None


@command("export", "export a training checkpoint to a bit-packed .lbt model file for the runtime")
def _export(p):
    p.add_argument("checkpoint", help="checkpoint.pt written by 'lowbit train'")
    p.add_argument("-o", "--output", required=True, help="model file to write (e.g. model.lbt)")
    p.add_argument("--calibration-batches", type=int, default=8,
                   help="integer LSTM only: batches of training text used to calibrate ranges")
    p.add_argument("--data-dir", help="integer LSTM only: data directory for calibration text")

    def run(args) -> int:
        from ..checkpoint import read_checkpoint

        cfg = read_checkpoint(args.checkpoint)["config"]
        if cfg.get("task") == "lm":
            from ..rnn.int_lstm import export_int_lstm_checkpoint

            report = export_int_lstm_checkpoint(args.checkpoint, args.output, data_dir=args.data_dir,
                                                batches=args.calibration_batches)
        else:
            from .export import export_checkpoint

            report = export_checkpoint(args.checkpoint, args.output)
        print(f"wrote {report['model_file']}: {report['bytes']} bytes "
              f"({report['ratio']:.1f}x smaller than the fp32 state_dict of {report['fp32_state_dict_bytes']} bytes)")
        return 0

    return run


@command("eval", "test accuracy of a .lbt model file (runtime) or a checkpoint.pt (PyTorch)")
def _eval(p):
    p.add_argument("model", help="a .lbt file from 'lowbit export' (runs the runtime, no torch) or a checkpoint.pt")
    p.add_argument("--data-dir", help="dataset directory (default: $LOWBIT_DATA or ~/.cache/lowbit/data)")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the one the model was trained on)")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--save-predictions", metavar="FILE.npy", help="write the predicted class of every test image")

    def run(args) -> int:
        import numpy as np

        from ..data import load_dataset
        from ..fileio import atomic_write

        if _is_model_file(args.model):
            from . import load

            net = load(args.model)
            if not hasattr(net, "classify"):
                raise ConfigError(f"{args.model} is not an image classifier; evaluate it with its own tools")
            dataset = args.dataset or net.meta.get("dataset")
            engine = "lowbit runtime"
            predict = net.classify
        else:
            import torch

            from ..checkpoint import load_checkpoint, read_checkpoint

            cfg = read_checkpoint(args.model)["config"]
            if cfg.get("task", "image") != "image":
                raise ConfigError(f"{args.model} is a {cfg.get('task')} model; 'lowbit eval' scores image classifiers")
            model = load_checkpoint(args.model)
            dataset = args.dataset or cfg.get("dataset")
            engine = "PyTorch"

            def predict(x):
                with torch.no_grad():
                    return model(torch.from_numpy(x).float()).argmax(1).numpy()

        if not dataset:
            raise ConfigError("the model does not say which dataset it was trained on: pass --dataset")
        test = load_dataset(dataset, "test", data_dir=args.data_dir)
        t = time.perf_counter()
        preds = np.concatenate([predict(test.images[i:i + args.batch_size])
                                for i in range(0, len(test.labels), args.batch_size)])
        elapsed = time.perf_counter() - t
        acc = float((preds == test.labels).mean())
        print(f"{engine}: {dataset} test accuracy {acc:.4f} ({int((preds == test.labels).sum())}/{len(preds)}) "
              f"in {elapsed:.2f}s")
        if args.save_predictions:
            atomic_write(args.save_predictions, lambda f: np.save(f, preds.astype(np.int64)))
            print(f"predictions written to {args.save_predictions}")
        return 0

    return run


@command("summary", "per-layer bits, size, MACs and an energy estimate for a recipe or a checkpoint")
def _summary(p):
    p.add_argument("target", help="a recipe name (e.g. mnist-mlp) or a checkpoint.pt")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def run(args) -> int:
        from ..summary import format_summary, summarize_target

        s = summarize_target(args.target)
        print(json.dumps(s, indent=2) if args.json else format_summary(s, s["title"]))
        return 0

    return run


@command("bench", "print the committed benchmark results, or run the runtime benchmark (--run)")
def _bench(p):
    p.add_argument("--run", action="store_true", help="measure now (minutes) instead of printing committed results")
    p.add_argument("--results", default="benchmarks/results", help="where committed results live")
    p.add_argument("--threads", type=int, default=None, help="threads for our kernels and for torch")
    p.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats (with --run)")

    def run(args) -> int:
        if args.run:
            from .bench import main as bench_main

            argv = (["--quick"] if args.quick else []) + ([f"--threads={args.threads}"] if args.threads else [])
            return bench_main(argv)
        folder = Path(args.results)
        files = sorted(folder.glob("*.md")) if folder.is_dir() else []
        if not files:
            raise ConfigError(f"no benchmark results in {folder}; run 'lowbit bench --run' or the scripts in benchmarks/")
        for f in files:
            print(f.read_text())
        return 0

    return run
