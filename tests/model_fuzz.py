"""Structured mutations of model files (shared by tests/test_model_fuzz.py and benchmarks/model_fuzz.py).

:func:`mutants` yields ``(what, meta, arrays)``: the original with one metadata field replaced, removed or
nested, or one array replaced; the caller saves each as a valid (checksummed) file. :func:`outcome` loads a
file and runs it on ``x``, returning the outputs or the exception raised.
"""
import copy

import numpy as np

BAD_VALUES = [None, -1, 0, 1, 2**40, -(2**40), 1.5, float("nan"), "x", "", True, [], {}, [1, 2], {"a": 1}]


def _leaves(obj, path=()):
    """Every (path, value) of a JSON tree, containers included."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))


def _set(tree, path, value=None, delete=False):
    node = tree
    for p in path[:-1]:
        node = node[p]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


def _nested(depth: int):
    v = 0
    for _ in range(depth):
        v = [v]
    return v


def mutants(meta: dict, arrays: dict, rng: np.random.Generator, count: int):
    paths = [p for p, _ in _leaves(meta) if p]
    names = sorted(arrays)
    for _ in range(count):
        kind = rng.integers(0, 10)
        m, a = copy.deepcopy(meta), dict(arrays)
        if kind < 6:  # one metadata field
            path = paths[rng.integers(len(paths))]
            if kind == 5:
                _set(m, path, delete=True)
                what = f"delete {path}"
            else:
                value = _nested(300) if rng.random() < 0.05 else BAD_VALUES[rng.integers(len(BAD_VALUES))]
                _set(m, path, value)
                what = f"{path} = {str(value)[:30]}"
        else:  # one array
            name = names[rng.integers(len(names))]
            arr = arrays[name]
            choice = rng.integers(0, 5)
            if choice == 0:
                a[name] = arr.astype(np.float64 if arr.dtype != np.float64 else np.int64)
                what = f"{name} as {a[name].dtype}"
            elif choice == 1:
                a[name] = arr.reshape(-1)[: max(0, arr.size - 1)]
                what = f"{name} one element short"
            elif choice == 2:
                a[name] = np.zeros((0,), arr.dtype)
                what = f"{name} empty"
            elif choice == 3:
                a[name] = arr.reshape(-1) if arr.ndim > 1 else arr.reshape(1, -1)
                what = f"{name} reshaped"
            else:
                big = np.iinfo(arr.dtype).max if arr.dtype.kind in "iu" else np.nan
                a[name] = np.full_like(arr, big)
                what = f"{name} filled with {big}"
        yield what, m, a


def damaged(blob: bytes, rng: np.random.Generator, count: int):
    """``(what, bytes)``: the file with one bit flipped, cut short, or one digit of its JSON header changed."""
    header_len = int.from_bytes(blob[:8], "little") if len(blob) >= 8 else 0
    digits = [i for i in range(8, min(len(blob), 8 + header_len)) if 48 <= blob[i] <= 57]
    for _ in range(count):
        kind = rng.integers(0, 3)
        b = bytearray(blob)
        if kind == 0:
            i = int(rng.integers(len(b)))
            b[i] ^= 1 << int(rng.integers(8))
            what = f"bit flip at byte {i}"
        elif kind == 1:
            n = int(rng.integers(len(b)))
            b = b[:n]
            what = f"cut at {n}"
        else:
            i = digits[rng.integers(len(digits))] if digits else 0
            b[i] = 48 + (b[i] - 48 + 1 + int(rng.integers(9))) % 10
            what = f"header digit at byte {i}"
        yield what, bytes(b)


def outcome(path, x):
    """The outputs of the model file at ``path`` on ``x`` (images, or token ids for a language model), or the
    exception that loading or running raised."""
    from lowbit.runtime import load

    try:
        net = load(path)
        if getattr(net, "task", "image") == "lm":
            return (net.log_probs(x)[0],)
        return (net.predict(x),)
    except BaseException as exc:  # noqa: BLE001 - the fuzz test sorts them
        if isinstance(exc, KeyboardInterrupt):
            raise
        return exc


def build_models(d):
    """{kind: (path, input)}: a small exported model of each kind written to folder ``d``."""
    import torch
    from torch import nn

    from conftest import tiny_phrase_lm
    from lowbit.export import export_model
    from lowbit.export.lstm import export_int_rnn
    from lowbit.nn.layers import QuantAct, QuantConv2d

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = QuantConv2d(1, 8, 3, padding=1, bias=False, pixel_input=True, pad_value=-1.0)
            self.bn0 = nn.BatchNorm2d(8)
            self.act = QuantAct("ste_sign")
            self.conv = QuantConv2d(8, 8, 3, padding=1, bias=False, pad_value=1.0)
            self.bn1 = nn.BatchNorm2d(8)
            self.act2 = QuantAct("linear:bits=2")
            self.conv2 = QuantConv2d(8, 8, 3, padding=1, bias=False, weight_quantizer="sawb:bits=2", pad_value=0.0)
            self.bn2 = nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(8 * 3 * 3, 4)

        def forward(self, x):
            x = self.bn0(self.stem(x))
            x = self.bn1(self.conv(self.act(x))) + x
            x = self.pool(self.bn2(self.conv2(self.act2(x))))
            return self.fc(torch.flatten(x, 1))

    net = Net().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-2, 2)
            m.running_var.uniform_(0.5, 3)
    export_model(net, torch.zeros(1, 1, 6, 6), d / "graph.lbt")
    files = {"graph": (d / "graph.lbt", np.random.default_rng(0).integers(0, 256, (3, 1, 6, 6)).astype(np.uint8))}
    for cell in ("lstm", "gru"):
        model, stream = tiny_phrase_lm(cell, 32)
        export_int_rnn(model, stream[:400], d / f"{cell}.lbt", max_batches=2, batch_size=4, bptt=10)
        files[cell] = (d / f"{cell}.lbt", stream[-40:].reshape(10, 4))
    return files


