"""Fixtures and paths shared by the test modules (the one place for them).

Module-level names (``REPO``, ``SHARED_DATA``) are importable: ``from conftest import REPO``.
"""
import functools
import os
from pathlib import Path

import pytest

from datapaths import REPO, SHARED_DATA, WHERE  # noqa: F401  ($LOWBIT_DATA first, then ../shared/data)


def _package_root() -> Path:
    """The folder holding the ``lowbit`` these tests import: ``src/`` of the checkout (editable install or
    PYTHONPATH) or site-packages (``pip install .``, as CI does): a child process must see the same build."""
    import lowbit

    return Path(lowbit.__file__).resolve().parents[1]


PACKAGE_ROOT = _package_root()


def subprocess_env(**extra) -> dict:
    """The environment for a child ``python -m lowbit ...``: this one, with the source tree first on
    PYTHONPATH, and ``extra`` set."""
    path = os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_without_torch(code: str, timeout: int = 120):
    """Run ``code`` in a fresh interpreter (source tree on the path) and check that it never imported torch:
    the deployment half's promise. Returns the finished process (stdout captured)."""
    import subprocess
    import sys

    check = "\nimport sys as _s\nassert 'torch' not in _s.modules, 'torch was imported'\n"
    r = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True, timeout=timeout,
                       env=subprocess_env())
    assert r.returncode == 0, r.stderr
    return r


def _kernel_paths() -> list:
    try:
        from lowbit.kernels import available_paths
    except ImportError:  # the C extension is not built: the parametrized tests have no cases
        return []
    return list(available_paths())


def pytest_generate_tests(metafunc):
    if "kernel_path" in metafunc.fixturenames:
        metafunc.parametrize("kernel_path", _kernel_paths(), indirect=True)


@pytest.fixture()
def kernel_path(request):
    """Every kernel path this CPU runs (one test case each), forced the way a user does
    (``lowbit.kernels.set_kernel_path``) and restored afterwards."""
    import lowbit.kernels as K

    previous = K.set_kernel_path(request.param)
    yield request.param
    K.set_kernel_path(previous)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets: ``$LOWBIT_DATA`` if set, else the folder beside the repository (../shared/data)."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real data (an mnist/ folder) not found at {WHERE}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    """Tests never reach the network: point the default data directory somewhere empty."""
    monkeypatch.setenv("LOWBIT_NO_DOWNLOAD", "1")
    yield


@pytest.fixture
def one_torch_thread():
    """Small ops: one torch thread is faster, and the machine is shared. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@functools.lru_cache(maxsize=None)
def tiny_phrase_lm(cell: str = "lstm", bits: int = 32):
    """``(model in eval mode, stream)``: a 2-layer language model (40 tokens, embedding 24, hidden 32; cell
    ``lstm``, ``gru`` or ``rnn``; k-bit weights and activations) trained for 100 Adam steps on a stream of 12
    repeated phrases (seconds). The last 1500 ids of ``stream`` are held out. Cached per (cell, bits)."""
    import numpy as np
    import torch

    from lowbit.data.text import batchify
    from lowbit.models.lm import RNNLanguageModel

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    phrases = [rng.integers(0, 40, rng.integers(3, 7)) for _ in range(12)]
    stream = np.concatenate([phrases[i] for i in rng.integers(0, 12, 1500)]).astype(np.int64)
    model = RNNLanguageModel(40, cell=cell, emb_size=24, hidden_size=32, num_layers=2, weight_bits=bits,
                             act_bits=bits)
    data = torch.from_numpy(batchify(stream[:-1500], 16))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps = 0
    while steps < 100:
        hidden = None
        for i in range(0, data.size(0) - 21, 20):
            x, y = data[i:i + 20], data[i + 1:i + 21]
            if hidden is not None:
                hidden = model.detach_hidden(hidden)
            out, hidden = model(x, hidden)
            loss = model.loss(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if steps >= 100:
                break
    return model.eval(), stream


def float_lm_perplexity(model, ids, batch_size: int = 4, bptt: int = 20) -> float:
    """The PyTorch model's perplexity on a token stream, evaluated as the training loop does."""
    import math

    import torch

    from lowbit.data.text import batchify
    from lowbit.train.tasks.lm import evaluate_lm

    loss, _ = evaluate_lm(model, torch.from_numpy(batchify(ids, batch_size)), bptt, "cpu")
    return math.exp(loss)


def check_integer_lm(model, stream, exported, path, rel_tol: float):
    """The checks of an integer language model ``exported`` (and written to ``path``) from ``model`` =
    :func:`tiny_phrase_lm`: the file loads (through :func:`lowbit.runtime.load`) to the same class and sizes,
    its perplexity on the held-out ids is within ``rel_tol`` of the float model's, the file, the returned
    object and the NumPy reference give the same integers, and the state carries over (two halves of a
    sequence = the whole). Returns (integer perplexity, float perplexity, the state after 7 steps)."""
    import numpy as np

    from lowbit.runtime import load

    test = stream[-1500:]
    loaded = load(path)
    assert type(loaded) is type(exported)
    assert loaded.num_layers == 2 and loaded.vocab_size == 40 and loaded.hidden_size == 32
    ppl_f = float_lm_perplexity(model, test)
    ppl_i = loaded.perplexity(test, batch_size=4, bptt=20)["perplexity"]
    assert ppl_f < 10  # the model learned something (40 tokens)
    assert abs(ppl_i / ppl_f - 1) < rel_tol, (ppl_i, ppl_f)
    ids = test[:60].reshape(15, 4)
    reference = load(path, backend="numpy")
    a, _ = loaded.log_probs(ids)
    b, _ = exported.log_probs(ids)
    c, _ = reference.log_probs(ids)
    assert np.array_equal(a, b) and np.allclose(a, c, rtol=0, atol=1e-5)
    ya, state = loaded.run_ids(ids)
    yc, state_c = reference.run_ids(ids)
    assert np.array_equal(ya, yc)
    assert all(np.array_equal(p, q) for sa, sc in zip(state, state_c) for p, q in zip(sa, sc))
    y1, st = loaded.run_ids(ids[:7])
    y2, _ = loaded.run_ids(ids[7:], st)
    assert np.array_equal(np.concatenate([y1, y2]), ya)
    return ppl_i, ppl_f, st


@pytest.fixture()
def run_in_threads():
    """run(work, n): work(i) on n Python threads at once; the first exception any of them raised is raised here."""
    import threading

    def run(work, n=4):
        errors = []

        def guarded(i):
            try:
                work(i)
            except Exception as e:  # reported by the calling thread
                errors.append(e)

        threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    return run
