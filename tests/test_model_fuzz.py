"""Bounded model-file fuzzing of every model kind (seeded).

Two kinds of mutant of a small exported model of each kind (graph, integer LSTM, integer GRU):

* damaged files: bytes flipped, cut or edited anywhere (header digits included). Each must load and predict
  exactly what the original predicts, or raise lowbit's own error (a LowbitError); nothing else.
* crafted files: what someone writing a file by hand could produce, saved as a *valid* file (checksum
  recomputed) with one metadata field replaced (wrong type, negative, huge, deeply nested, missing) or one
  array replaced (wrong dtype or shape, empty, extreme values). Such a file is another model, so it may
  predict something else, but it must load and run or raise a LowbitError: never another exception.

``benchmarks/model_fuzz.py`` runs the longer campaign.
"""
import numpy as np
import pytest

from lowbit.errors import LowbitError
from lowbit.runtime import load, load_model_file, save_model_file

from model_fuzz import build_models, damaged, mutants, outcome  # tests/model_fuzz.py, shared with benchmarks/model_fuzz.py


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("kind", ["graph", "lstm", "gru"])
def test_damaged_model_files_predict_the_same_or_raise_lowbit_errors(model_files, kind, tmp_path):
    path, x = model_files[kind]
    reference = outcome(path, x)
    counts = {"same": 0, "named error": 0}
    for i, (what, blob) in enumerate(damaged(path.read_bytes(), np.random.default_rng(3), 100)):
        target = tmp_path / f"d{i}.lbt"
        target.write_bytes(blob)
        got = outcome(target, x)
        if isinstance(got, LowbitError):
            counts["named error"] += 1
            continue
        assert not isinstance(got, BaseException), f"damage {what}: {type(got).__name__}: {got}"
        assert all(np.array_equal(p, q) for p, q in zip(got, reference)), f"damage {what} predicts differently"
        counts["same"] += 1
    assert counts["named error"] >= 95, counts


@pytest.mark.parametrize("kind", ["graph", "lstm", "gru"])
def test_crafted_model_files_run_or_raise_lowbit_errors(model_files, kind, tmp_path):
    path, x = model_files[kind]
    assert not isinstance(outcome(path, x), BaseException)
    file_kind, meta, arrays = load_model_file(path)
    counts = {"ran": 0, "named error": 0}
    for i, (what, m, a) in enumerate(mutants(meta, arrays, np.random.default_rng(7), 150)):
        target = tmp_path / f"m{i}.lbt"
        try:
            save_model_file(target, file_kind, m, a)
        except (TypeError, ValueError, LowbitError):
            continue  # not even writable as a model file
        got = outcome(target, x)
        if isinstance(got, LowbitError):
            counts["named error"] += 1
            continue
        assert not isinstance(got, BaseException), f"mutant {what}: {type(got).__name__}: {got}"
        counts["ran"] += 1
    assert counts["named error"] > 50, counts  # the mutations do reach the validation
