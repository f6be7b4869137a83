"""Atomic file writing (no torch import: the deployment runtime uses it too)."""

from __future__ import annotations

import glob
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Union


def atomic_write(path: Union[str, Path], write_fn: Callable) -> None:
    """Call ``write_fn(file_object)`` on a temp file next to ``path``, fsync, then rename over ``path``.

    A process killed at any point leaves either the old file or the new one, never a partial file. The file
    gets the permissions of any newly created file (0666 less the umask), not mkstemp's private 0600.
    Stale temp files of the same target left by a killed writer (older than an hour) are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: temp files of a target younger than this may belong to a writer still running; older ones are a kill's leftovers
STALE_AFTER_S = 3600.0


def remove_stale_temp_files(path: Union[str, Path], older_than_s: float = STALE_AFTER_S) -> List[Path]:
    """Delete ``.NAME.*.tmp`` files beside ``path`` (what :func:`atomic_write` leaves when killed) whose last
    change is more than ``older_than_s`` seconds ago; returns the removed paths."""
    path = Path(path)
    removed = []
    now = time.time()
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for p in candidates:
        try:
            st = p.lstat()
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime > older_than_s:
                p.unlink()
                removed.append(p)
        except OSError:
            pass
    return removed
