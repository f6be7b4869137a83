"""Fixtures and paths shared by the test modules (the one place for them).

Module-level names (``REPO``, ``SHARED_DATA``) are importable: ``from conftest import REPO``.
"""
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
