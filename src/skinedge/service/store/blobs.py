"""The image store: one encrypted file per blob, ``ROOT/<2 hex>/<blob id>``, written atomically
and synced before the database row that names it is committed."""

from __future__ import annotations

import time
from pathlib import Path

from skinedge.errors import SkinedgeError
from skinedge.utils.io import atomic_write_bytes, fsync_path


class StoreDamagedError(SkinedgeError):
    """A file the database names is gone: the server's data, not the client's request."""

    http_status = 503


class BlobFiles:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, blob_id: str) -> Path:
        if not blob_id.startswith("b_") or not blob_id[2:].isalnum():
            raise ValueError(f"not a blob id: {blob_id!r}")
        return self.root / blob_id[2:4] / blob_id

    def exists(self, blob_id: str) -> bool:
        return self.path(blob_id).is_file()

    def write(self, blob_id: str, data: bytes) -> None:
        atomic_write_bytes(self.path(blob_id), data)

    def read(self, blob_id: str) -> bytes:
        try:
            return self.path(blob_id).read_bytes()
        except FileNotFoundError:
            raise StoreDamagedError(f"the stored file {blob_id} is missing from {self.root}; "
                                    "restore the folder from its backup") from None

    def delete(self, blob_id: str) -> None:
        path = self.path(blob_id)
        path.unlink(missing_ok=True)
        if path.parent.exists():
            fsync_path(path.parent)

    def ids(self) -> list[str]:
        return [p.name for p in self.root.glob("*/b_*") if p.is_file()]

    def sweep(self, known: set[str], min_age_s: float) -> int:
        """Delete files whose id is not in ``known`` and older than ``min_age_s``; how many."""
        removed = 0
        cutoff = time.time() - min_age_s
        for blob_id in self.ids():
            path = self.path(blob_id)
            if blob_id not in known and path.stat().st_mtime < cutoff:
                self.delete(blob_id)
                removed += 1
        return removed
