"""The registry's writer lock: an exclusive ``fcntl`` lock on ``REGISTRY/.lock``.

Writers (register, promote, rollback) hold it for the whole change; readers never take it
(every change is a rename, so a reader sees before or after). The kernel drops the lock when
its holder dies, so a killed writer never leaves the registry locked. On a system without
``fcntl`` (Windows) writers are not serialised: run one writer at a time there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from skinedge.utils.io import writing

LOCK_FILE = ".lock"


@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Hold the registry's writer lock (waiting for another writer to finish).

    Raises:
        WriteError: the registry folder cannot be written (a read-only disk, no permission).
    """
    path = root / LOCK_FILE
    with writing(path):
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            fcntl = None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
