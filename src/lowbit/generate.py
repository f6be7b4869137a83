"""Sampling text from a trained language model: a float checkpoint (PyTorch) or an integer LSTM, GRU or RNN
model file (the runtime, no torch).

    lowbit generate runs/shakespeare-lstm/checkpoint.pt --prompt "ROMEO:" --tokens 200 --temperature 0.8 --seed 1
    from lowbit.generate import generate                       (the same in Python; returns the continuation)

The prompt is read through the model once (its state carried), then each next token is drawn from
softmax(log p / temperature) with a NumPy generator seeded by ``seed`` and fed back; ``temperature=0``
takes the most likely token. The same model, prompt and seed give the same text. A prompt with characters
(or, for a word-level model, words) outside the model's vocabulary is refused with a message naming them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np

from .errors import CheckpointError, ConfigError

PathLike = Union[str, Path]


def _prompt_tokens(prompt: str, level: str):
    """Characters (char level) or whitespace-separated words, a line break being ``<eos>`` (word level)."""
    if level == "char":
        return list(prompt)
    from .data.text import EOS

    tokens = []
    lines = prompt.split("\n")
    for i, line in enumerate(lines):
        tokens.extend(line.split())
        if i < len(lines) - 1:
            tokens.append(EOS)
    return tokens


def detokenize(tokens, level: str) -> str:
    if level == "char":
        return "".join(tokens)
    from .data.text import EOS

    out = []
    for t in tokens:
        if t == EOS:
            out.append("\n")
        else:
            out.append(t if not out or out[-1] == "\n" else " " + t)
    return "".join(out)


def _step_function(source) -> Tuple[Callable[[np.ndarray, Any], Tuple[np.ndarray, Any]], Any, str]:
    """(step(ids (T,), state) -> (log-probabilities of the next token after the last id, state), vocab, kind)."""
    from .runtime.modelfile import is_model_file

    path = Path(source)
    try:
        model_file = is_model_file(path)
    except OSError:
        raise CheckpointError(f"{source} does not exist or cannot be read") from None
    if model_file:
        from .runtime import load

        net = load(path)
        if getattr(net, "task", None) != "lm" or not hasattr(net, "log_probs"):
            raise CheckpointError(f"{source} is not a language model (model file kind {getattr(net, 'kind', '?')!r})")
        if net.vocab is None:
            raise CheckpointError(f"{source} stores no vocabulary; it cannot turn a prompt into tokens")

        def step_int(ids, state):
            lp, state = net.log_probs(np.asarray(ids, dtype=np.int64)[:, None], state)
            return lp[-1, 0].astype(np.float64), state

        return step_int, net.vocab, f"{net.description} ({net.backend})"
    import torch

    from .train.tasks.lm import load_lm_checkpoint

    model, vocab, _ = load_lm_checkpoint(path)

    def step_float(ids, state):
        with torch.no_grad():
            logits, state = model(torch.as_tensor(np.asarray(ids, dtype=np.int64))[:, None], state)
            lp = torch.log_softmax(logits[-1, 0].double(), dim=-1)
        return lp.numpy(), state

    return step_float, vocab, "PyTorch float"


def generate(source: PathLike, prompt: str, tokens: int = 100, temperature: float = 1.0,
             seed: Optional[int] = 0) -> str:
    """The ``tokens`` tokens sampled after ``prompt`` from the language model in ``source`` (a checkpoint.pt
    of ``lowbit train`` or an integer LSTM/GRU/RNN ``.lbt``), as text (char level: the characters; word level:
    words joined by spaces, ``<eos>`` as a line break), ready to append to the prompt."""
    if not isinstance(tokens, int) or tokens < 0:
        raise ConfigError(f"generate: tokens must be an integer >= 0, got {tokens!r}")
    if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"generate: temperature must be a finite number >= 0, got {temperature!r}")
    step, vocab, _ = _step_function(source)
    words = _prompt_tokens(prompt, vocab.level)
    if not words:
        raise ConfigError("generate: the prompt is empty; give at least one "
                          + ("character" if vocab.level == "char" else "word"))
    ids = vocab.encode(words, source="prompt")  # DataError naming the tokens outside the vocabulary
    rng = np.random.default_rng(seed)
    lp, state = step(ids, None)
    out = []
    for i in range(tokens):
        if temperature == 0:
            nxt = int(np.argmax(lp))
        else:
            z = lp / temperature
            p = np.exp(z - z.max())
            cdf = np.cumsum(p)
            nxt = int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))
        out.append(nxt)
        if i + 1 < tokens:
            lp, state = step(np.array([nxt]), state)
    text = detokenize(vocab.decode(out), vocab.level)
    if vocab.level == "word" and text and not text.startswith("\n") and not prompt[-1:].isspace():
        text = " " + text  # a word-level continuation starts a new word
    return text
