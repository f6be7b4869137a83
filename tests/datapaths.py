"""Where the tests find the real datasets: ``$LOWBIT_DATA`` first (as the README says), else the shared
folder beside the repository (``../shared/data``)."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BESIDE_REPO = REPO.parent / "shared" / "data"


def real_data_dir() -> Path:
    env = os.environ.get("LOWBIT_DATA", "").strip()
    return Path(env).expanduser() if env else BESIDE_REPO


SHARED_DATA = real_data_dir()
WHERE = (f"$LOWBIT_DATA={SHARED_DATA}" if os.environ.get("LOWBIT_DATA", "").strip()
         else f"{SHARED_DATA} (set LOWBIT_DATA to the data directory)")
