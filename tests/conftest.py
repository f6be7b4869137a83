"""Fixtures and paths shared by the test modules (the one place for them).

Module-level names (``REPO``, ``SHARED_DATA``) are importable: ``from conftest import REPO``.
"""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LOWBIT_DATA") or REPO.parent / "shared" / "data")


def subprocess_env(**extra) -> dict:
    """The environment for a child ``python -m lowbit ...``: this one, with the source tree importable."""
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), **extra}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets beside the repository (../shared/data, or $LOWBIT_DATA)."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    """Tests never reach the network: point the default data directory somewhere empty."""
    monkeypatch.setenv("LOWBIT_NO_DOWNLOAD", "1")
    yield


@pytest.fixture()
def one_torch_thread():
    """Small ops: one torch thread is faster, and the machine is shared (restored afterwards)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
