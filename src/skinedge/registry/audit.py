"""``REGISTRY/audit.jsonl``: one JSON object per line, appended and fsync'd, never rewritten.

A change writes two lines: ``"phase": "started"`` before it touches anything and ``"done"``
(or ``"failed"``) after, both with the same ``op`` id, so a writer killed in between leaves a
started line without its end: the pointer file, replaced atomically, says which way it went.
A refused request writes one ``"refused"`` line with the reason. A line torn by a kill in
the middle of an append is reported by :func:`read_audit` (as an entry with ``"unreadable"``),
never a crash; the next append starts on a new line, so only the torn line is lost.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from skinedge.utils.io import writing

AUDIT_FILE = "audit.jsonl"


def now() -> str:
    """The current UTC time, ISO 8601 to the millisecond."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def append_audit(root: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Append ``entry`` (with ``at`` added) as one line and fsync it; call under the writer
    lock. A torn last line (a writer killed mid-append) is ended first.

    Raises:
        WriteError: the audit file cannot be written (a full disk, no permission).
    """
    path = root / AUDIT_FILE
    entry = {"at": now(), **entry}
    line = json.dumps(entry, sort_keys=False, default=str) + "\n"
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and not _ends_with_newline(path, size):
                line = "\n" + line
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
    return entry


def _ends_with_newline(path: Path, size: int) -> bool:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) == b"\n"


def read_audit(root: Path) -> list[dict[str, Any]]:
    """Every entry, oldest first; a line that is not a JSON object (torn by a kill
    mid-append) comes back as ``{"line": N, "unreadable": reason, "text": its start}``."""
    path = root / AUDIT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    entries = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
            if not isinstance(entry, dict):
                raise ValueError("not a JSON object")
        except (UnicodeDecodeError, ValueError) as exc:
            entries.append({"line": number, "unreadable": f"{path}:{number}: {exc}",
                            "text": raw[:120].decode("utf-8", "replace")})
            continue
        entries.append(entry)
    return entries
