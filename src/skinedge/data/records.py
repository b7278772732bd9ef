"""The unit every reader produces, and how bad rows are reported."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from skinedge.errors import DataError
from skinedge.utils.io import atomic_write_text


@dataclass(frozen=True)
class Record:
    """One labelled image.

    Attributes:
        image: Path of the image, relative to the dataset root (POSIX form).
        group: Lesion or patient id; images of one group never straddle two splits.
        label: Class code from the vocabulary (``"mel"``).
        source: Where the row came from (``labels.csv:17``), for error messages.
    """

    image: str
    group: str
    label: str
    source: str


@dataclass(frozen=True)
class DataProblem:
    """One offending row or file."""

    source: str  # "labels.csv:17" or an image path
    kind: str  # missing-file, unreadable-image, unknown-label, duplicate-id, ...
    message: str  # what is wrong and what to do


class DataValidationError(DataError):
    """Raised when a dataset has bad rows; lists every one of them."""

    def __init__(self, problems: Sequence[DataProblem], *, hint: str = ""):
        self.problems = list(problems)
        lines = [f"{len(self.problems)} problem(s) in the dataset:"]
        lines += [f"  {p.source}: [{p.kind}] {p.message}" for p in self.problems]
        lines.append(
            hint
            or "Fix these rows or files, or rerun with --skip-bad to leave them out "
            "(a report of what was skipped is written next to the outputs)."
        )
        super().__init__("\n".join(lines))


def write_problem_report(problems: Iterable[DataProblem], path: Path) -> Path:
    """Write problems as CSV (source, kind, message) so nothing is dropped silently."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", "kind", "message"])
    for p in problems:
        writer.writerow([p.source, p.kind, p.message])
    return atomic_write_text(path, buffer.getvalue())
