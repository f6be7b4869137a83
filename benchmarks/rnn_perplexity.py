"""Perplexity of quantized recurrent language models at (weight bits, activation bits).

    PYTHONPATH=src python benchmarks/rnn_perplexity.py [--data-dir ../shared/data] [--epochs 6] [--quick]

* Penn Treebank, word level: LSTM and GRU (2 layers x ``--hidden``) at (W, A) in {(2,2), (2,3), (3,3), (3,4),
  (4,4), (32,32)}. Offline there is no ptb.train.txt: every model trains on ptb.valid.txt and is tested on
  ptb.test.txt (closed vocabulary of both files' word types), so the numbers are NOT comparable to published
  PTB perplexities (which train on the 930k-word training file); they compare the bit widths with each other.
* Tiny Shakespeare, character level (90/10 split): LSTM at 2, 4 and 32 bits (W = A), bits per character.

Equal budgets: within each table every run has the same architecture, data, epochs, batch size, BPTT length,
optimizer and learning-rate schedule (the ``ptb-lstm`` / ``ptb-gru`` / ``shakespeare-lstm`` recipes with the
overrides below); only the bit widths differ. Each run is a normal ``lowbit train`` run directory under
runs/bench/rnn_perplexity/ (metrics.json, checkpoint.pt, curves.png) keyed by its configuration: a finished
run is reused, an interrupted one resumed, so the script can be stopped and restarted.

Writes benchmarks/results/rnn_perplexity.json and .md.

Time (2-core CPU, one thread): the activation-quantized recurrence is one autograd node per layer with a
hand-written backward (lowbit.rnn.recurrence; 1.1x-1.6x the 32-bit torch.nn step, 3.6x-4.6x before issue 17);
the defaults (6 epochs, 12 PTB runs, 3 Shakespeare runs of 1 epoch) take roughly an hour on a quiet machine.
Since issue 17 the language models use torch's initialisation (model.init=torch): results before that
(init "uniform") are not comparable. The side-by-side check against a plain torch.nn.LSTM model is
benchmarks/lm_side_by_side.py. ``--quick`` runs the whole grid on tiny subsets in about a minute (a smoke
test of the script, not a result).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from lowbit.benchmarking import machine_record, write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PTB_BITS = [(2, 2), (2, 3), (3, 3), (3, 4), (4, 4), (32, 32)]
CHAR_BITS = [2, 4, 32]


def run_one(recipe: str, sets, runs_dir: Path, data_dir, force: bool, progress: bool):
    """Train (or reuse) one configuration; returns (metrics, run directory, seconds spent now)."""
    from lowbit.train.config import apply_overrides, get_recipe
    from lowbit.train import run

    cfg = apply_overrides(get_recipe(recipe), sets)
    key = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    a = cfg.model_args
    out = runs_dir / f"{recipe}-w{a['weight_bits']}a{a['act_bits']}-{key}"
    metrics_path = out / "metrics.json"
    if not force and metrics_path.is_file():
        m = json.loads(metrics_path.read_text())
        if len(m.get("epochs", [])) >= cfg.epochs:
            print(f"  cached: {out.name}")
            return m, out, 0.0
    resume = not force and (out / "checkpoint.pt").is_file()
    t = time.time()
    m = run(cfg, out, data_dir=data_dir, resume=resume, progress=progress)
    return m, out, time.time() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("LOWBIT_DATA") or str(ROOT.parent / "shared" / "data"))
    p.add_argument("--epochs", type=int, default=6, help="PTB epochs per run (default 6)")
    p.add_argument("--char-epochs", type=int, default=1, help="Tiny Shakespeare epochs per run (default 1)")
    p.add_argument("--hidden", type=int, default=200, help="PTB embedding and hidden width (default 200)")
    p.add_argument("--char-hidden", type=int, default=256)
    p.add_argument("--subset", type=int, default=0, help="PTB: train on the first N tokens only (0: all)")
    p.add_argument("--test-subset", type=int, default=0, help="evaluate on the first N test tokens only (0: all)")
    p.add_argument("--char-subset", type=int, default=0, help="Shakespeare: first N training characters (0: all)")
    p.add_argument("--cells", nargs="*", default=["lstm", "gru"])
    p.add_argument("--bits", nargs="*", default=[f"{w},{a}" for w, a in PTB_BITS], help="W,A pairs for PTB")
    p.add_argument("--char-bits", nargs="*", type=int, default=CHAR_BITS)
    p.add_argument("--no-char", action="store_true", help="skip Tiny Shakespeare")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: small recurrent ops)")
    p.add_argument("--quick", action="store_true", help="smoke run on tiny subsets (not a result)")
    p.add_argument("--force", action="store_true", help="retrain even if a finished run is cached")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra override for every PTB run (repeatable), e.g. lr_start=0.005")
    p.add_argument("--out", default=None, help="output stem (default benchmarks/results/rnn_perplexity)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs_dir = ROOT / "runs" / "bench" / ("rnn_perplexity_quick" if args.quick else "rnn_perplexity")
    stem = Path(args.out) if args.out else (runs_dir / "result" if args.quick else RESULTS / "rnn_perplexity")
    if args.quick:
        args.epochs, args.char_epochs, args.hidden, args.char_hidden = 1, 1, 32, 32
        args.subset, args.test_subset, args.char_subset = 3000, 2000, 20000

    common = [f"epochs={args.epochs}", f"model.hidden_size={args.hidden}", f"model.emb_size={args.hidden}",
              "model.train_file=ptb.valid.txt", "model.valid_file=", "model.test_file=ptb.test.txt"]
    common += args.sets
    if args.subset:
        common.append(f"train_subset={args.subset}")
    if args.test_subset:
        common.append(f"test_subset={args.test_subset}")
    t0 = time.time()
    ptb = []
    for cell in args.cells:
        recipe = {"lstm": "ptb-lstm", "gru": "ptb-gru", "rnn": "ptb-rnn"}[cell]
        for wa in args.bits:
            w, a = (int(v) for v in wa.split(","))
            print(f"PTB {cell.upper()} W{w}A{a}")
            m, out, spent = run_one(recipe, common + [f"model.weight_bits={w}", f"model.act_bits={a}"], runs_dir,
                                    args.data_dir, args.force, not args.no_progress)
            last = m["epochs"][-1]
            ptb.append({"cell": cell, "weight_bits": w, "act_bits": a, "test_perplexity": m["test_perplexity"],
                        "train_perplexity": last.get("train_perplexity"), "epochs": len(m["epochs"]),
                        "train_seconds": last.get("wall_time"), "run_dir": str(out.relative_to(ROOT))})
            print(f"  -> test perplexity {m['test_perplexity']:.2f}")
    char = []
    if not args.no_char:
        sets = [f"epochs={args.char_epochs}", f"model.hidden_size={args.char_hidden}"]
        if args.char_subset:
            sets += [f"train_subset={args.char_subset}"]
        if args.test_subset:
            sets += [f"test_subset={args.test_subset * 5}"]
        for bits in args.char_bits:
            print(f"Tiny Shakespeare LSTM W{bits}A{bits}")
            m, out, spent = run_one("shakespeare-lstm", sets + [f"model.weight_bits={bits}", f"model.act_bits={bits}"],
                                    runs_dir, args.data_dir, args.force, not args.no_progress)
            last = m["epochs"][-1]
            char.append({"cell": "lstm", "weight_bits": bits, "act_bits": bits, "test_bpc": m["test_bpc"],
                         "train_bpc": last.get("train_bpc"), "epochs": len(m["epochs"]),
                         "train_seconds": last.get("wall_time"), "run_dir": str(out.relative_to(ROOT))})
            print(f"  -> test bits per character {m['test_bpc']:.3f}")

    from lowbit.train.config import apply_overrides, get_recipe

    result = {
        "benchmark": "rnn_perplexity",
        "quick": args.quick,
        "ptb": {"data": "train on ptb.valid.txt, test on ptb.test.txt (no ptb.train.txt offline); closed vocabulary "
                        "of both files", "hidden": args.hidden, "layers": 2, "epochs": args.epochs,
                "train_subset": args.subset, "test_subset": args.test_subset,
                "config": apply_overrides(get_recipe("ptb-lstm"), common).to_dict(), "runs": ptb},
        "shakespeare": {"data": "Tiny Shakespeare, first 90 % train, last 10 % test", "hidden": args.char_hidden,
                        "epochs": args.char_epochs, "train_subset": args.char_subset, "runs": char},
        "threads": args.threads,
        "machine": machine_record(args.threads),
        "wall_seconds": time.time() - t0,
        "command": "python benchmarks/rnn_perplexity.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
    }
    paths = write_results(stem, result, markdown(result))
    print(f"wrote {paths[0]} and {paths[1]} ({result['wall_seconds']:.0f}s)")
    return 0


def markdown(r) -> str:
    ptb = r["ptb"]
    cells = sorted({x["cell"] for x in ptb["runs"]}, key=["lstm", "gru", "rnn"].index)
    pairs = []
    for x in ptb["runs"]:
        if (x["weight_bits"], x["act_bits"]) not in pairs:
            pairs.append((x["weight_bits"], x["act_bits"]))
    lines = ["# Quantized recurrent language models" + (" (QUICK SMOKE RUN: not a result)" if r["quick"] else ""), "",
             f"## Penn Treebank, word level: test perplexity (2 x {ptb['hidden']}, {ptb['epochs']} epochs each)", "",
             f"Data: {ptb['data']}" + (f"; training subset {ptb['train_subset']} tokens" if ptb["train_subset"] else "")
             + ". Not comparable to published PTB numbers (those train on ptb.train.txt).", "",
             "| weights / activations (bits) | " + " | ".join(c.upper() for c in cells) + " |",
             "|---|" + "---|" * len(cells)]
    for w, a in pairs:
        vals = []
        for c in cells:
            hit = [x for x in ptb["runs"] if x["cell"] == c and (x["weight_bits"], x["act_bits"]) == (w, a)]
            vals.append(f"{hit[0]['test_perplexity']:.1f}" if hit else "")
        lines.append(f"| {'32 (float)' if w == 32 and a == 32 else f'{w} / {a}'} | " + " | ".join(vals) + " |")
    for c in cells:
        hit = {(x["weight_bits"], x["act_bits"]): x["test_perplexity"] for x in ptb["runs"] if x["cell"] == c}
        if (4, 4) in hit and (32, 32) in hit:
            rel = hit[(4, 4)] / hit[(32, 32)] - 1
            lines += ["", f"{c.upper()} 4-bit vs float: {100 * rel:+.1f}% perplexity "
                          f"(within 5%: {'yes' if rel <= 0.05 else 'NO'})."]
    sh = r["shakespeare"]
    if sh["runs"]:
        lines += ["", f"## Tiny Shakespeare, character level: test bits per character (LSTM 2 x {sh['hidden']}, "
                      f"{sh['epochs']} epoch(s))", "", f"Data: {sh['data']}.", "",
                  "| bits (W = A) | test bpc | train bpc |", "|---|---|---|"]
        for x in sh["runs"]:
            lines.append(f"| {x['weight_bits']} | {x['test_bpc']:.3f} | {x['train_bpc']:.3f} |")
    lines += ["", f"Threads: {r['threads']}; machine: {r['machine']['platform']}, {r['machine']['cpus']} CPUs, "
                  f"torch {r['machine']['torch']}; total {r['wall_seconds'] / 60:.1f} min.",
              "", f"Reproduce: `{r.get('command', 'python benchmarks/rnn_perplexity.py')}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
