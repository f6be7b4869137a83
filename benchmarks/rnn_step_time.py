"""Training-step time of k-bit recurrent language models against the same network on ``torch.nn.LSTM/GRU/RNN``.

    PYTHONPATH=src python benchmarks/rnn_step_time.py [--cells lstm gru rnn] [--bits 4] [--reps 15]

One step = forward + cross-entropy + backward + gradient-norm clip + Adam, of the ``shakespeare-lstm`` network
(vocabulary 65, embedding 64, 2 x 256, batch 32, BPTT 100) with the cell swapped. Variants, timed round-robin
in one process (so machine load hits them alike), one thread, median of ``--reps`` steps after warm-up:

* ``torch``: a plain model on ``torch.nn.{LSTM,GRU,RNN}`` (32 bits), the denominator of every ratio;
* ``lowbit-32``: ``RNNLanguageModel`` at 32 bits (the fused ATen call);
* ``lowbit-k``: k-bit weights and activations, the fast recurrence (:mod:`lowbit.nn.recurrence`);
* ``lowbit-k-ref``: the same, through the reference loop of ``QuantRNNBase._cell`` (before issue 17).

Writes benchmarks/results/rnn_step_time.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from lowbit.benchmarking import command_line, machine_record, write_report  # noqa: E402
from torch import nn  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


class TorchLM(nn.Module):
    def __init__(self, cell, vocab, emb, hidden, layers):
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.emb, self.rnn, self.dec = nn.Embedding(vocab, emb), rnn(emb, hidden, layers), nn.Linear(hidden, vocab)

    def forward(self, x, h=None):
        out, h = self.rnn(self.emb(x), h)
        return self.dec(out), h


def make_step(model, x, y, reference=False):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if reference:
        rnn = model.rnn
        rnn.forward = lambda inp, hx=None: rnn._forward_impl(inp, hx, reference=True)

    def step():
        logits, _ = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="*", default=["lstm", "gru", "rnn"])
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reference-cells", nargs="*", default=["lstm"], help="cells also timed through the (slow) "
                   "reference loop")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "rnn_step_time"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lowbit.models.lm import RNNLanguageModel
    from lowbit.train.engine import keep_freed_memory

    keep_freed_memory()  # as train_lm does: no page faults on each step's big temporaries (all variants alike)

    V, E, H, L, B, T = 65, 64, 256, 2, 32, 100
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (T, B), generator=g)
    y = torch.randint(0, V, (T, B), generator=g)
    rows = []
    k = args.bits
    for cell in args.cells:
        torch.manual_seed(0)
        variants = {"torch": make_step(TorchLM(cell, V, E, H, L), x, y),
                    "lowbit-32": make_step(RNNLanguageModel(V, cell, E, H, L), x, y),
                    f"lowbit-{k}": make_step(RNNLanguageModel(V, cell, E, H, L, weight_bits=k, act_bits=k), x, y)}
        if cell in args.reference_cells:
            variants[f"lowbit-{k}-ref"] = make_step(
                RNNLanguageModel(V, cell, E, H, L, weight_bits=k, act_bits=k), x, y, reference=True)
        times = {n: [] for n in variants}
        for r in range(args.warmup + args.reps):
            for n, step in variants.items():
                t = time.perf_counter()
                step()
                if r >= args.warmup:
                    times[n].append(time.perf_counter() - t)
        med = {n: statistics.median(v) for n, v in times.items()}
        row = {"cell": cell, "median_ms": {n: 1e3 * v for n, v in med.items()},
               "ratio_to_torch": {n: v / med["torch"] for n, v in med.items()}}
        rows.append(row)
        print(cell, " ".join(f"{n} {1e3 * v:.0f} ms ({v / med['torch']:.2f}x)" for n, v in med.items()), flush=True)
    result = {"benchmark": "rnn_step_time", "shape": dict(vocab=V, emb=E, hidden=H, layers=L, batch=B, bptt=T),
              "bits": k, "reps": args.reps, "threads": args.threads, "rows": rows,
              "machine": machine_record(),
              "command": command_line("rnn_step_time.py", argv)}
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(n for row in rows for n in row["median_ms"]))
    md = ["# Training-step time: k-bit recurrent LMs vs torch.nn at 32 bits", "",
          f"Network: embedding {E}, {L} x {H}, vocabulary {V}, batch {B}, BPTT {T}; one step = forward, "
          f"cross-entropy, backward, clip, Adam. {args.threads} thread(s), median of {args.reps} steps, "
          "variants timed round-robin in one process.", "",
          "| cell | " + " | ".join(f"{n} (ms)" for n in names) + " | " + " | ".join(f"{n} / torch" for n in names[1:]) + " |",
          "|---|" + "---:|" * (2 * len(names) - 1)]
    for row in rows:
        md.append(f"| {row['cell']} | " + " | ".join(f"{row['median_ms'][n]:.0f}" if n in row["median_ms"] else "" for n in names)
                  + " | " + " | ".join(f"{row['ratio_to_torch'][n]:.2f}" if n in row["ratio_to_torch"] else ""
                                       for n in names[1:]) + " |")
    md += ["", f"Machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs (shared), torch "
               f"{result['machine']['torch']}."]
    return write_report(stem, result, md)


if __name__ == "__main__":
    sys.exit(main())
