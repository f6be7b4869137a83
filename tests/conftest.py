import os
from pathlib import Path

import pytest

from datapaths import REPO, SHARED_DATA, WHERE  # noqa: F401  ($LOWBIT_DATA first, then ../shared/data)


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
