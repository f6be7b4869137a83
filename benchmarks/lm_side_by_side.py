"""lowbit at 32 bits against the plain ``torch.nn.LSTM`` language model (benchmarks/plain_lstm_lm.py), same
data, split, settings and steps, several seeds.

    PYTHONPATH=src python benchmarks/lm_side_by_side.py [--seeds 0 1 2] [--ptb-epochs 6] [--no-ptb] [--no-char]

* Tiny Shakespeare: the ``shakespeare-lstm`` recipe at 32 bits, ``--char-epochs`` (1) epoch(s), vs the plain model
  with the same settings (2 x 256, embedding 64, batch 32, BPTT 100, Adam 3e-3 -> 3e-4, clip 1.0, dropout 0.1).
* PTB (train on ptb.valid.txt, test on ptb.test.txt): the ``ptb-lstm`` recipe at 32 bits with
  benchmarks/rnn_perplexity.py's overrides (2 x 200, ``--ptb-epochs``), vs the plain model with the same settings.

Target (issue 17): the mean over seeds of lowbit within 1% of the plain model's (bits per character, perplexity).
lowbit runs are ordinary ``lowbit train`` run directories under runs/bench/rnn_perplexity/ (cached by config).
Writes benchmarks/results/lm_side_by_side.json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from lowbit.benchmarking import command_line, machine_record, write_report  # noqa: E402

import plain_lstm_lm  # noqa: E402
from rnn_perplexity import run_one  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("LOWBIT_DATA") or str(ROOT.parent / "shared" / "data"))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--char-epochs", type=int, default=1)
    p.add_argument("--ptb-epochs", type=int, default=6)
    p.add_argument("--ptb-hidden", type=int, default=200)
    p.add_argument("--no-ptb", action="store_true")
    p.add_argument("--no-char", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "lm_side_by_side"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lowbit.data.text import load_ptb, load_shakespeare
    from lowbit.train.engine import keep_freed_memory

    keep_freed_memory()
    runs_dir = ROOT / "runs" / "bench" / "rnn_perplexity"
    t0 = time.time()
    tables = {}
    jobs = []
    if not args.no_char:
        jobs.append(("shakespeare", "test_bpc", "shakespeare-lstm",
                     [f"epochs={args.char_epochs}", "model.weight_bits=32", "model.act_bits=32"],
                     lambda: load_shakespeare(args.data_dir), dict(epochs=args.char_epochs)))
    if not args.no_ptb:
        H = args.ptb_hidden
        jobs.append(("ptb", "test_perplexity", "ptb-lstm",
                     [f"epochs={args.ptb_epochs}", f"model.hidden_size={H}", f"model.emb_size={H}",
                      "model.train_file=ptb.valid.txt", "model.valid_file=", "model.test_file=ptb.test.txt",
                      "model.weight_bits=32", "model.act_bits=32"],
                     lambda: load_ptb(args.data_dir, "ptb.valid.txt", "", "ptb.test.txt", "auto"),
                     dict(epochs=args.ptb_epochs, emb=H, hidden=H, dropout=0.5, batch=20, eval_batch=10, bptt=35,
                          lr=2e-3, lr_end=2e-4, clip=0.25)))
    for name, key, recipe, sets, load, kw in jobs:
        corpus = load()
        rows = []
        for seed in args.seeds:
            print(f"{name} seed {seed}: plain torch.nn.LSTM", flush=True)
            # plain runs are cached like lowbit's: runs/bench/plain_lstm_lm/<name>-seed<s>-<settings hash>.json
            tag = hashlib.sha1(json.dumps(kw, sort_keys=True).encode()).hexdigest()[:10]
            cache = ROOT / "runs" / "bench" / "plain_lstm_lm" / f"{name}-seed{seed}-{tag}.json"
            if cache.is_file():
                r = json.loads(cache.read_text())
                print(f"  cached: {cache.name}")
            else:
                r = plain_lstm_lm.train(corpus.train, corpus.test, len(corpus.vocab), seed=seed,
                                        log=lambda *a: None, **kw)
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(r))
            plain = r["test_loss"] / math.log(2) if key == "test_bpc" else math.exp(r["test_loss"])
            print(f"{name} seed {seed}: lowbit 32 bits", flush=True)
            m, out, _ = run_one(recipe, sets + [f"seed={seed}"], runs_dir, args.data_dir, False, False)
            rows.append({"seed": seed, "plain": plain, "lowbit": m[key], "plain_train_seconds": r.get("train_seconds"),
                         "plain_note": r.get("note", ""),
                         "lowbit_wall_seconds": m["wall_time"], "lowbit_run_dir": str(out.relative_to(ROOT))})
            print(f"  plain {plain:.4f} lowbit {m[key]:.4f}", flush=True)
        mp, ml = statistics.mean(x["plain"] for x in rows), statistics.mean(x["lowbit"] for x in rows)
        tables[name] = {"metric": key, "rows": rows, "plain_mean": mp, "lowbit_mean": ml, "rel": ml / mp - 1,
                        "lowbit_config_overrides": sets, "plain_settings": kw}
    result = {"benchmark": "lm_side_by_side", "tables": tables, "threads": args.threads,
              "machine": machine_record(),
              "wall_seconds": time.time() - t0,
              "command": command_line("lm_side_by_side.py", argv)}
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md = ["# lowbit at 32 bits vs a plain torch.nn.LSTM language model (same data, settings and steps)", ""]
    for name, t in tables.items():
        unit = "test bits per character" if t["metric"] == "test_bpc" else "test perplexity"
        md += [f"## {'Tiny Shakespeare (90/10)' if name == 'shakespeare' else 'PTB (train on valid, test on test)'}: "
               f"{unit}", "", f"lowbit: `{' '.join(t['lowbit_config_overrides'])}`; plain: {t['plain_settings']}", "",
               "| seed | plain torch.nn.LSTM | lowbit 32-bit |", "|---|---:|---:|"]
        md += [f"| {x['seed']} | {x['plain']:.3f} | {x['lowbit']:.3f} |" for x in t["rows"]]
        md += [f"| mean | {t['plain_mean']:.3f} | {t['lowbit_mean']:.3f} |", "",
               f"lowbit vs plain: {100 * t['rel']:+.2f}% (within 1%: {'yes' if abs(t['rel']) <= 0.01 else 'NO'}).", ""]
        notes = [f"seed {x['seed']}: {x['plain_note']}" for x in t["rows"] if x.get("plain_note")]
        if notes:
            md += ["Plain-model values: " + "; ".join(notes) + ".", ""]
    md += [f"Threads: {args.threads}; machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs "
           f"(shared), torch {result['machine']['torch']}; total {result['wall_seconds'] / 60:.1f} min."]
    return write_report(stem, result, md)


if __name__ == "__main__":
    sys.exit(main())
