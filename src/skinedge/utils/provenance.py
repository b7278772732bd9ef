"""``command.json``: which command produced an output folder, and when."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import sys
from pathlib import Path

from skinedge.errors import ConfigError
from skinedge.utils.io import atomic_write_text, package_versions


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def created_time() -> str:
    """Now (UTC, seconds), or ``$SOURCE_DATE_EPOCH`` when set: the reproducible-builds
    convention, so two runs of one pipeline write byte-identical cards and artifacts."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return dt.datetime.fromtimestamp(int(epoch), dt.UTC).isoformat(timespec="seconds")
        except (ValueError, OverflowError) as exc:
            raise ConfigError(f"SOURCE_DATE_EPOCH={epoch!r}: not a Unix time in seconds; "
                              "unset it or give an integer") from exc
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def command_line() -> str:
    """The ``skinedge`` command line this process was started with, as typed."""
    return shlex.join(["skinedge", *sys.argv[1:]])


def record_command(out_dir: Path, *, command: str | None = None, **fields) -> dict:
    """Write ``out_dir/command.json``: the command (default: this process's ``skinedge``
    command line, for the CLI), package versions, extra fields."""
    record = {"command": command or command_line(), "versions": package_versions(), **fields}
    atomic_write_text(Path(out_dir) / "command.json", json.dumps(record, indent=2))
    return record
