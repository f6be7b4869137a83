"""Text corpora for language models: word-level Penn Treebank and character-level plain text (NumPy only).

Word level (the Mikolov PTB files ``ptb.{train,valid,test}.txt``, one sentence per line, rare words already
``<unk>``): every line is ``line.split() + ["<eos>"]`` and the vocabulary is built from the training file
(word types by decreasing count, ties alphabetical, ids 0..V-1). Offline there is no ``ptb.train.txt``: with
``train_file="auto"`` the loader then trains on ``ptb.valid.txt`` and evaluates on ``ptb.test.txt``, and the
vocabulary is the union of the word types of both files (a closed vocabulary, as the official 10k list
covers every split; no counts of the test file are used) -- :attr:`TextCorpus.note` says so, and the
training loop copies it into ``metrics.json``.

Character level (e.g. Tiny Shakespeare ``input.txt``): the characters of the whole file form the
vocabulary (sorted by code point), the first ``split`` fraction (0.9) is the training text and the rest the
test text.

Bad input raises :class:`lowbit.errors.DataError` naming the file: missing, empty (or no words), not UTF-8,
or (when encoding a text for a trained model) words/characters that are not in the model's vocabulary.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from ..errors import ConfigError, DataError
from .base import data_root, is_data_file

PathLike = Union[str, Path]
EOS = "<eos>"
LEVELS = ("word", "char")


def resolve_data_dir(data_dir: Optional[PathLike] = None) -> Path:
    """``data_dir`` > ``$LOWBIT_DATA`` > ``~/.cache/lowbit/data`` (the image loaders' rule, checked the same
    way: a directory the user named must exist and be a directory)."""
    return data_root(data_dir)


# ---- reading and tokenizing ----------------------------------------------------------------------------


def read_text(path: PathLike) -> str:
    """The UTF-8 text of ``path``; DataError if it is missing, empty or not UTF-8."""
    path = Path(path)
    if not is_data_file(path):
        raise DataError(f"text file {path} does not exist")
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"text file {path} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"text file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            f"convert it to UTF-8"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def tokenize(text: str, level: str) -> List[str]:
    """Word level: ``line.split() + ["<eos>"]`` for every line; char level: the characters."""
    if level == "word":
        out: List[str] = []
        for line in text.splitlines():
            out.extend(line.split())
            out.append(EOS)
        return out
    if level == "char":
        return list(text)
    raise ConfigError(f"unknown text level {level!r}; use one of {', '.join(LEVELS)}")


def read_tokens(path: PathLike, level: str) -> List[str]:
    """Tokens of a text file; DataError when it holds no words (word level) or no characters."""
    tokens = tokenize(read_text(path), level)
    if level == "word" and not any(t != EOS for t in tokens):
        raise DataError(f"text file {path} contains no words")
    if not tokens:
        raise DataError(f"text file {path} is empty")
    return tokens


# ---- vocabulary ----------------------------------------------------------------------------------------


class Vocabulary:
    """Token <-> id map. ``tokens[i]`` is the token of id ``i``; ``level`` is ``"word"`` or ``"char"``."""

    def __init__(self, tokens: Sequence[str], level: str = "word"):
        if level not in LEVELS:
            raise ConfigError(f"unknown text level {level!r}; use one of {', '.join(LEVELS)}")
        self.tokens: List[str] = list(tokens)
        self.level = level
        self.index: Dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise DataError("vocabulary has duplicate tokens")
        if not self.tokens:
            raise DataError("vocabulary is empty")

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], level: str = "word") -> "Vocabulary":
        """Types of the first list by decreasing count (ties in sorted order), then new types of the
        following lists in sorted order (char level: every type sorted by code point)."""
        lists = list(token_lists)
        if level == "char":
            return cls(sorted(set().union(*[set(t) for t in lists])), level)
        counts = Counter(lists[0]) if lists else Counter()
        tokens = sorted(counts, key=lambda t: (-counts[t], t))
        seen = set(tokens)
        for more in lists[1:]:
            extra = sorted(set(more) - seen)
            tokens += extra
            seen.update(extra)
        return cls(tokens, level)

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and other.tokens == self.tokens and other.level == self.level

    def encode(self, tokens: Sequence[str], source: str = "text") -> np.ndarray:
        """int64 ids; DataError naming up to 5 unknown tokens of ``source`` (out-of-vocabulary)."""
        index = self.index
        try:
            return np.fromiter((index[t] for t in tokens), dtype=np.int64, count=len(tokens))
        except KeyError:
            pass
        unknown = sorted({t for t in tokens if t not in index})
        kind = "word types" if self.level == "word" else "characters"
        shown = ", ".join(repr(t) for t in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DataError(
            f"{source}: {len(unknown)} {kind} are not in the model's vocabulary of {len(self)} "
            f"({shown}); the text must use the vocabulary the model was trained with"
            + (" (PTB-style text maps rare words to <unk>)" if self.level == "word" and "<unk>" in index else "")
        )

    def decode(self, ids: Iterable[int]) -> List[str]:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.tokens):
                raise DataError(f"token id {i} is outside the vocabulary (valid ids 0..{len(self.tokens) - 1})")
            out.append(self.tokens[i])
        return out

    def to_dict(self) -> Dict:
        return {"level": self.level, "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, d: Dict) -> "Vocabulary":
        try:
            return cls(d["tokens"], d["level"])
        except (KeyError, TypeError) as exc:
            raise DataError(f"not a vocabulary record ({exc})") from None


def encode_file(path: PathLike, vocab: Vocabulary) -> np.ndarray:
    """Ids of a text file under a trained model's vocabulary; DataError for unknown tokens, an empty or
    non-UTF-8 file."""
    return vocab.encode(read_tokens(path, vocab.level), source=str(path))


# ---- corpora --------------------------------------------------------------------------------------------


@dataclass
class TextCorpus:
    """Encoded splits (int64 id streams; ``valid`` may be None) and where they came from."""

    level: str
    vocab: Vocabulary
    train: np.ndarray
    test: np.ndarray
    valid: Optional[np.ndarray] = None
    files: Dict[str, str] = field(default_factory=dict)
    note: str = ""

    def describe(self) -> Dict:
        return {
            "level": self.level, "vocab_size": len(self.vocab), "files": dict(self.files), "note": self.note,
            "tokens": {k: int(len(v)) for k, v in (("train", self.train), ("valid", self.valid), ("test", self.test))
                       if v is not None},
        }


def _in_dir(root: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else root / p


def load_ptb(data_dir: Optional[PathLike] = None, train_file: str = "auto", valid_file: str = "auto",
             test_file: str = "ptb.test.txt", vocab: str = "auto") -> TextCorpus:
    """Word-level PTB from ``<data_dir>/ptb/``.

    ``train_file="auto"``: ``ptb.train.txt`` if present, else ``ptb.valid.txt`` (then ``valid_file="auto"``
    means no validation split). ``valid_file``: a file name, ``"auto"`` or ``""`` (none). ``vocab``:
    ``"train"`` (types of the training file; the other files must not have others), ``"all"`` (union of the
    files' types) or ``"auto"`` (``"train"`` when training on ``ptb.train.txt``, else ``"all"``). File names
    are relative to ``<data_dir>/ptb`` unless absolute.
    """
    root = resolve_data_dir(data_dir) / "ptb"
    note = ""
    if train_file == "auto":
        if is_data_file(root / "ptb.train.txt"):
            train_file = "ptb.train.txt"
        elif is_data_file(root / "ptb.valid.txt"):
            train_file = "ptb.valid.txt"
            note = ("ptb.train.txt not found: training on ptb.valid.txt and evaluating on ptb.test.txt "
                    "(not comparable to published PTB perplexities, which train on ptb.train.txt)")
        else:
            raise DataError(f"no PTB files in {root} (expected ptb.train.txt or ptb.valid.txt, ptb.test.txt); "
                            f"set --data-dir or LOWBIT_DATA")
    if valid_file == "auto":
        valid_file = "ptb.valid.txt" if train_file != "ptb.valid.txt" and is_data_file(root / "ptb.valid.txt") else ""
    if vocab == "auto":
        vocab = "train" if Path(train_file).name == "ptb.train.txt" else "all"
    if vocab not in ("train", "all"):
        raise ConfigError(f"vocab must be 'train', 'all' or 'auto', got {vocab!r}")
    paths = {"train": _in_dir(root, train_file), "test": _in_dir(root, test_file)}
    if valid_file:
        paths["valid"] = _in_dir(root, valid_file)
    tokens = {k: read_tokens(p, "word") for k, p in paths.items()}
    order = ["train"] + [k for k in ("valid", "test") if k in tokens]
    if vocab == "train":
        v = Vocabulary.build([tokens["train"]], "word")
    else:
        v = Vocabulary.build([tokens[k] for k in order], "word")
        note = (note + "; " if note else "") + (
            f"vocabulary: the word types of {', '.join(paths[k].name for k in order)} ({len(v)} types)")
    enc = {k: v.encode(tokens[k], source=str(paths[k])) for k in tokens}
    return TextCorpus(level="word", vocab=v, train=enc["train"], test=enc["test"], valid=enc.get("valid"),
                      files={k: str(p) for k, p in paths.items()}, note=note)


def load_char_corpus(path: PathLike, split: float = 0.9) -> TextCorpus:
    """Character-level corpus: first ``split`` of the file for training, the rest for testing."""
    if not 0.0 < float(split) < 1.0:
        raise ConfigError(f"split must be between 0 and 1, got {split}")
    text = read_text(path)
    cut = int(len(text) * float(split))
    if cut < 2 or len(text) - cut < 2:
        raise DataError(f"text file {path} is too short ({len(text)} characters) for a {split:.0%} split")
    vocab = Vocabulary.build([text], "char")
    ids = vocab.encode(list(text), source=str(path))
    return TextCorpus(level="char", vocab=vocab, train=ids[:cut], test=ids[cut:], valid=None,
                      files={"train": str(path), "test": str(path)},
                      note=f"character level: first {split:.0%} of {Path(path).name} for training, the rest for test; "
                           f"vocabulary: the {len(vocab)} characters of the whole file")


def load_shakespeare(data_dir: Optional[PathLike] = None, file: str = "tinyshakespeare/input.txt",
                     split: float = 0.9) -> TextCorpus:
    return load_char_corpus(_in_dir(resolve_data_dir(data_dir), file), split)


# ---- batching --------------------------------------------------------------------------------------------


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
    """Cut a token stream into ``batch_size`` contiguous columns: (N // batch_size, batch_size), the tail
    dropped (as in the Zaremba et al. setup). Column j continues in the next batch of truncated BPTT."""
    ids = np.asarray(ids)
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    n = len(ids) // batch_size
    if n < 2:
        raise DataError(f"{len(ids)} tokens are too few for {batch_size} columns of at least 2 tokens")
    return np.ascontiguousarray(ids[: n * batch_size].reshape(batch_size, n).T)


def unigram_entropy_bits(ids: np.ndarray, vocab_size: int) -> float:
    """Entropy (bits/token) of the empirical unigram distribution of ``ids``."""
    counts = np.bincount(np.asarray(ids), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def load_corpus(settings: Dict, data_dir: Optional[PathLike] = None) -> TextCorpus:
    """The corpus a language model's data settings name (the keys of ``lowbit.models.lm.LM_SETTINGS``:
    ``level`` "word" -> :func:`load_ptb` with its file names; "char" -> :func:`load_char_corpus` of
    ``text_file`` under the data directory with the ``split`` training fraction)."""
    level = settings.get("level")
    if level == "word":
        return load_ptb(data_dir, settings["train_file"], settings["valid_file"], settings["test_file"],
                        settings["vocab_from"])
    if level == "char":
        path = Path(str(settings["text_file"])).expanduser()
        if not path.is_absolute():
            path = resolve_data_dir(data_dir) / path
        return load_char_corpus(path, float(settings["split"]))
    raise ConfigError(f"model.level must be 'word' or 'char', got {level!r}")
