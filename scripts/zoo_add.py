"""Add (or replace) a model-zoo entry from a finished ``lowbit train`` run, measuring everything it states.

    python scripts/zoo_add.py NAME RUN_DIR --command "lowbit train ..." --description "..." --data-dir DATA

Writes into src/lowbit/zoo/files/: NAME.lbt (``lowbit export``: the runtime model file; a language model's
integer LSTM is calibrated on its training text), NAME.safetensors (the compact PyTorch checkpoint,
:mod:`lowbit.zoo.compact`) and NAME's row of index.json. Before writing the row it checks that the compact
checkpoint's eval forward equals the training checkpoint's bit for bit on the whole test split, then
measures both engines on the full test split and on the subset the tests re-check (the first 1000 test
images; a language model: the first CHECK_TOKENS test tokens).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lowbit import zoo
from lowbit.benchmarking import cpu_model
from lowbit.export import export_checkpoint
from lowbit.train.checkpoint import model_from_checkpoint, read_checkpoint
from lowbit.zoo.compact import model_from_compact, write_compact

CHECK_IMAGES = 1000
CHECK_TOKENS = 20000


def _image_figures(model, net, test) -> dict:
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(test.images[i:i + 1000]).float())
                            for i in range(0, len(test.labels), 1000)])
    torch_pred = logits.argmax(1).numpy()
    rt_pred = np.concatenate([net.classify(test.images[i:i + 1000]) for i in range(0, len(test.labels), 1000)])
    acc = lambda p, n=None: float((p[:n] == test.labels[:n]).mean())
    return {
        "metric": {"name": "accuracy", "split": f"{len(test.labels)} test images", "pytorch": acc(torch_pred),
                   "runtime": acc(rt_pred), "differing_predictions": int((torch_pred != rt_pred).sum())},
        "check": {"subset": f"first {CHECK_IMAGES} test images", "count": CHECK_IMAGES,
                  "pytorch": acc(torch_pred, CHECK_IMAGES), "runtime": acc(rt_pred, CHECK_IMAGES)},
    }, logits


def _lm_figures(model, net, cfg, data_dir) -> dict:
    from lowbit.models.lm import split_model_args
    from lowbit.train.config import TrainConfig
    from lowbit.train.tasks.lm import evaluate_lm, lm_columns, load_lm_data

    corpus = load_lm_data(TrainConfig.from_dict(cfg), data_dir)
    batch, bptt = int(cfg["eval_batch_size"]), int(split_model_args(cfg["model_args"])[1]["bptt"])

    def both(ids):
        loss, _ = evaluate_lm(model, lm_columns(ids, batch), bptt, "cpu")
        return math.exp(loss), math.exp(net.perplexity(ids, batch_size=batch, bptt=bptt)["loss"])

    full, check = both(corpus.test), both(corpus.test[:CHECK_TOKENS])
    return {
        "metric": {"name": "perplexity", "split": f"{len(corpus.test)} test tokens", "pytorch": full[0],
                   "runtime": full[1]},
        "check": {"subset": f"first {CHECK_TOKENS} test tokens", "count": CHECK_TOKENS, "pytorch": check[0],
                  "runtime": check[1], "batch_size": batch, "bptt": bptt},
    }, corpus


def _same_eval_forward(original, compact, task, test) -> None:
    """The compact checkpoint must give the training checkpoint's outputs, bit for bit."""
    with torch.no_grad():
        if task == "lm":
            ids = torch.from_numpy(np.ascontiguousarray(test[:4000].reshape(-1, 10)))
            a, b = original(ids)[0], compact(ids)[0]
        else:
            x = torch.from_numpy(test.images).float()
            a, b = original(x), compact(x)
    if not torch.equal(a, b):
        sys.exit(f"the compact checkpoint's outputs differ from the training checkpoint's "
                 f"(max abs difference {float((a - b).abs().max())})")


def _file_info(path: Path) -> dict:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": zoo._sha256(path)}


def _write_index(row: dict, folder: Path) -> None:
    path = folder / zoo.INDEX
    table = json.loads(path.read_text()) if path.is_file() else {"entries": []}
    rows = [r for r in table["entries"] if r["name"] != row["name"]]
    order = [r["name"] for r in table["entries"]]
    rows.insert(order.index(row["name"]) if row["name"] in order else len(rows), row)
    table = {"about": "lowbit model zoo: one row per model, written by scripts/zoo_add.py (measured, not typed in)",
             "entries": rows}
    path.write_text(json.dumps(table, indent=1) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--command", required=True, help="the exact command that trained the run")
    p.add_argument("--description", required=True, help="architecture and widths, one line")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--files", type=Path, default=zoo.FILES)
    p.add_argument("--how", default="1 torch thread (niced, shared 2-core machine)",
                   help="how the training ran (threads, alone or shared), written after the CPU's name")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    ck = args.run_dir / "checkpoint.pt"
    data = read_checkpoint(ck)
    cfg = data["config"]
    task = cfg.get("task", "image")
    metrics = json.loads((args.run_dir / "metrics.json").read_text())
    original = model_from_checkpoint(data, str(ck)).eval()
    args.files.mkdir(parents=True, exist_ok=True)
    lbt, compact_path = args.files / f"{args.name}.lbt", args.files / f"{args.name}.safetensors"

    extra = {"vocab": data["vocab"]} if task == "lm" else {}
    write_compact(original, cfg, compact_path, extra=extra)
    compact, _ = model_from_compact(compact_path)
    export_checkpoint(ck, lbt, data_dir=args.data_dir)
    from lowbit.runtime import load

    net = load(lbt)
    t = time.perf_counter()
    if task == "lm":
        figures, corpus = _lm_figures(compact, net, cfg, args.data_dir)
        _same_eval_forward(original, compact, task, corpus.test)
        trained_on = metrics.get("data_source") or "the recipe's training split"
    else:
        from lowbit.data import load_dataset

        test = load_dataset(cfg["dataset"], "test", data_dir=args.data_dir)
        _same_eval_forward(original, compact, task, test)
        figures, _ = _image_figures(compact, net, test)
        train = load_dataset(cfg["dataset"], "train", data_dir=args.data_dir)
        trained_on = f"{cfg['dataset']} train split, {len(train.labels)} images"
    row = {
        "name": args.name, "task": "language model" if task == "lm" else "image classification",
        "dataset": cfg.get("dataset"), "recipe": cfg.get("recipe"), "description": args.description,
        "command": args.command, "trained_on": trained_on, "epochs": int(data.get("epoch", 0)),
        "train_minutes": round(float(metrics.get("wall_time", 0.0)) / 60.0, 1),
        **figures,
        "files": {"runtime": _file_info(lbt), "pytorch": _file_info(compact_path)},
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_model()}, {args.how}",
        "lowbit_version": data.get("lowbit_version"), "torch": torch.__version__,
    }
    _write_index(row, args.files)
    print(json.dumps(row, indent=1))
    print(f"measured in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
