"""A stage of a multi-stage pipeline: a folder finished by its ``stage.json``.

Shared by ``skinedge retrain`` and ``skinedge pipeline``: a stage that finished is read back
from its ``stage.json`` (written last, atomically); one that was cut off starts again in a
clean folder, or, when it ``keep``s its folder, continues from what it left (training resumes
from its ``last/``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skinedge.errors import DataError
from skinedge.pipelines.reporting import Reporter
from skinedge.utils.io import atomic_write_text

STAGE_DONE = "stage.json"


def read_stage(folder: Path) -> dict[str, Any] | None:
    """The ``stage.json`` of a stage that finished in ``folder``, or None.

    Raises:
        DataError: the file exists but cannot be read (the message says how to rerun it).
    """
    marker = folder / STAGE_DONE
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{marker}: unreadable ({exc}); delete it to run the stage "
                        "again") from exc


def run_stage(folder: Path, step: Callable[[Path], dict[str, Any]], *, keep: bool,
              reporter: Reporter) -> dict[str, Any]:
    """A stage's ``stage.json`` when it finished before; else run it (in a clean folder unless
    ``keep``: training resumes from what it left) and write its ``stage.json``."""
    doc = read_stage(folder)
    if doc is not None:
        reporter.note(f"reusing {folder} (finished before)")
        return doc
    if folder.exists() and not keep:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = step(folder)
    atomic_write_text(folder / STAGE_DONE, json.dumps(doc, indent=1, default=str))
    return doc
