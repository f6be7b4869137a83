"""The side-by-side reference: a plain ``torch.nn.LSTM`` language model, no lowbit code in the loop.

    PYTHONPATH=src python benchmarks/plain_lstm_lm.py --data shakespeare [--epochs 1] [--seed 0]
    PYTHONPATH=src python benchmarks/plain_lstm_lm.py --data ptb --hidden 200 --emb 200 --dropout 0.5 ...

Same data and split as the lowbit recipes (Tiny Shakespeare 90/10, characters of the whole file; PTB trained on
ptb.valid.txt, tested on ptb.test.txt, closed vocabulary), read with lowbit's loaders only so that the token
ids are the same. The model and training loop below are the textbook ones (PyTorch's word_language_model
example): nn.Embedding -> dropout -> nn.LSTM(dropout between layers) -> dropout -> nn.Linear, each stream a
contiguous column of the text, hidden state carried (detached) across BPTT windows, Adam with an exponential
LR decay over the run, gradient-norm clip over all parameters, mean cross-entropy; torch's default inits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
import torch  # noqa: E402
from torch import nn  # noqa: E402


class PlainLM(nn.Module):
    def __init__(self, vocab, emb, hidden, layers, dropout, cell="lstm"):
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.emb, self.drop = nn.Embedding(vocab, emb), nn.Dropout(dropout)
        self.rnn = rnn(emb, hidden, layers, dropout=dropout if layers > 1 else 0.0)
        self.dec = nn.Linear(hidden, vocab)

    def forward(self, x, h=None):
        out, h = self.rnn(self.drop(self.emb(x)), h)
        return self.dec(self.drop(out)), h


def columns(ids, batch):  # (N, B): column j is the j-th contiguous 1/B of the stream
    ids = torch.as_tensor(ids[: len(ids) // batch * batch])
    return ids.view(batch, -1).t().contiguous()


def detach(h):
    return tuple(t.detach() for t in h) if isinstance(h, tuple) else h.detach()


@torch.no_grad()
def evaluate(model, data, bptt):
    model.eval()
    h, tot, n = None, 0.0, 0
    for i in range(0, data.size(0) - 1, bptt):
        x, y = data[i:i + bptt], data[i + 1:i + 1 + bptt]
        x = x[: y.size(0)]
        logits, h = model(x, h)
        tot += float(nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum"))
        n += y.numel()
    return tot / n


def train(train_ids, test_ids, vocab, *, cell="lstm", emb=64, hidden=256, layers=2, dropout=0.1, batch=32,
          bptt=100, lr=3e-3, lr_end=3e-4, clip=1.0, epochs=1, seed=0, eval_batch=32, log=print):
    torch.manual_seed(seed)
    model = PlainLM(vocab, emb, hidden, layers, dropout, cell)
    data, test = columns(train_ids, batch), columns(test_ids, eval_batch)
    steps = math.ceil((data.size(0) - 1) / bptt)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (lr_end / lr) ** (min(t, steps * epochs) / (steps * epochs)))
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        h = None
        for i in range(0, data.size(0) - 1, bptt):
            x, y = data[i:i + bptt], data[i + 1:i + 1 + bptt]
            x = x[: y.size(0)]
            logits, h = model(x, h)
            h = detach(h)
            loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
        log(f"epoch {ep + 1}: last train loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    train_time = time.time() - t0
    return {"test_loss": evaluate(model, test, bptt), "train_seconds": train_time, "steps": steps * epochs}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["shakespeare", "ptb"], default="shakespeare")
    p.add_argument("--data-dir", default=os.environ.get("LOWBIT_DATA") or str(ROOT.parent / "shared" / "data"))
    p.add_argument("--cell", default="lstm")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a train() argument, e.g. hidden=200")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from lowbit.data.text import load_ptb, load_shakespeare

    if a.data == "shakespeare":
        c, kw = load_shakespeare(a.data_dir), {}
    else:
        c = load_ptb(a.data_dir, "ptb.valid.txt", "", "ptb.test.txt", "auto")
        kw = dict(emb=200, hidden=200, dropout=0.5, batch=20, eval_batch=10, bptt=35, lr=2e-3, lr_end=2e-4, clip=0.25)
    for s in a.sets:
        k, v = s.split("=", 1)
        kw[k] = type(train.__kwdefaults__[k])(v) if not isinstance(train.__kwdefaults__[k], float) else float(v)
    r = train(c.train, c.test, len(c.vocab), cell=a.cell, epochs=a.epochs, seed=a.seed, **kw)
    r["test_bpc" if a.data == "shakespeare" else "test_perplexity"] = (
        r["test_loss"] / math.log(2) if a.data == "shakespeare" else math.exp(r["test_loss"]))
    print(json.dumps(r))
    return r


if __name__ == "__main__":
    main()
