"""The longer Tiny Shakespeare run: the ``shakespeare-lstm`` recipe (2 x 256 LSTM, 4-bit weights and activations)
for ``--epochs`` epochs, and its 32-bit twin (same everything but the bit widths), one thread.

    PYTHONPATH=src python benchmarks/shakespeare_long.py [--epochs 4] [--bits 4 32]

Targets (issue 17): the 4-bit model within 5% of its 32-bit twin and <= 2.2 bits per character on the test split
within 30 minutes of training. Runs are ``lowbit train`` run directories under runs/bench/rnn_perplexity/
(cached by config). Writes benchmarks/results/shakespeare_long.json and .md (per-epoch test bpc and wall time).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from lowbit.benchmarking import command_line, machine_record, write_report  # noqa: E402

from rnn_perplexity import run_one  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("LOWBIT_DATA") or str(ROOT.parent / "shared" / "data"))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--bits", nargs="*", type=int, default=[4, 32])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "shakespeare_long"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs_dir = ROOT / "runs" / "bench" / "rnn_perplexity"
    runs = []
    for bits in args.bits:
        print(f"shakespeare-lstm W{bits}A{bits}, {args.epochs} epochs", flush=True)
        m, out, _ = run_one("shakespeare-lstm", [f"epochs={args.epochs}", f"model.weight_bits={bits}",
                                                 f"model.act_bits={bits}", f"seed={args.seed}"],
                            runs_dir, args.data_dir, False, False)
        runs.append({"bits": bits, "test_bpc": m["test_bpc"], "wall_seconds": m["wall_time"],
                     "epochs": [{"epoch": e["epoch"], "test_bpc": e["test_bpc"], "train_bpc": e["train_bpc"],
                                 "wall_time": e["wall_time"]} for e in m["epochs"]],
                     "run_dir": str(out.relative_to(ROOT))})
    result = {"benchmark": "shakespeare_long", "epochs": args.epochs, "seed": args.seed, "threads": args.threads,
              "runs": runs, "machine": machine_record(),
              "command": command_line("shakespeare_long.py", argv)}
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md = [f"# Tiny Shakespeare, shakespeare-lstm recipe, {args.epochs} epochs: test bits per character", "",
          "| bits (W = A) | " + " | ".join(f"epoch {e + 1}" for e in range(args.epochs)) + " | training wall time |",
          "|---|" + "---:|" * (args.epochs + 1)]
    for r in runs:
        md.append(f"| {r['bits']} | " + " | ".join(f"{e['test_bpc']:.3f} ({e['wall_time'] / 60:.1f} min)" for e in r["epochs"])
                  + f" | {r['wall_seconds'] / 60:.1f} min |")
    by = {r["bits"]: r["test_bpc"] for r in runs}
    if 4 in by and 32 in by:
        rel = by[4] / by[32] - 1
        md += ["", f"4-bit vs 32-bit: {100 * rel:+.1f}% (within 5%: {'yes' if rel <= 0.05 else 'NO'}); 4-bit <= 2.2 bpc: "
                   f"{'yes' if by[4] <= 2.2 else 'NO'}."]
    md += ["", f"Wall time includes the per-epoch test evaluation. {args.threads} thread(s); machine: "
               f"{result['machine']['platform']}, {result['machine']['cpus']} CPUs, shared with other jobs; torch "
               f"{result['machine']['torch']}."]
    return write_report(stem, result, md)


if __name__ == "__main__":
    sys.exit(main())
