"""The unit every reader produces, and how bad rows are reported."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
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


#: Up to this many problems are listed row by row; more are summarised per kind.
LIST_ALL_UP_TO = 10
#: Rows shown for each kind when problems are summarised (the report lists every one).
SHOWN_PER_KIND = 3


class DataValidationError(DataError):
    """Raised when a dataset has bad rows.

    A few problems are listed one by one. Many (a folder whose 300 rows share one mistake) are
    summarised: one line per kind with its count and its first rows, and the full list is in
    ``report``, a CSV the message names. Without a report every row is listed, so nothing is
    ever lost.

    Args:
        problems: Every offending row or file.
        hint: What to do; the default suggests fixing the rows or ``--skip-bad``.
        report: CSV already written with :func:`write_problem_report`, or None.
        kind_hints: kind -> a further line of what to do, shown when a problem of that kind
            is present (``outside-root``: how the command opts in).
    """

    def __init__(self, problems: Sequence[DataProblem], *, hint: str = "",
                 report: Path | None = None, kind_hints: Mapping[str, str] | None = None):
        self.problems = list(problems)
        self.report = Path(report) if report is not None else None
        lines = [f"{len(self.problems)} problem(s) in the dataset:"]
        if len(self.problems) <= LIST_ALL_UP_TO or self.report is None:
            lines += [f"  {_row(p)}" for p in self.problems]
        else:
            lines += _summary(self.problems)
        if self.report is not None:
            lines.append(f"Every problem is listed in {self.report}")
        lines.append(
            hint
            or "Fix these rows or files, or rerun with --skip-bad to leave them out "
            "(a report of what was skipped is written next to the outputs)."
        )
        kinds = {p.kind for p in self.problems}
        lines += [line for kind, line in (kind_hints or {}).items() if kind in kinds]
        super().__init__("\n".join(lines))


def _row(problem: DataProblem) -> str:
    return f"{problem.source}: [{problem.kind}] {problem.message}"


def _summary(problems: list[DataProblem]) -> list[str]:
    """One line per kind (in order of first appearance) with its count and first rows."""
    by_kind: dict[str, list[DataProblem]] = {}
    for p in problems:
        by_kind.setdefault(p.kind, []).append(p)
    lines = []
    for kind, group in by_kind.items():
        shown = group[:SHOWN_PER_KIND]
        more = f", the first {len(shown)}:" if len(group) > len(shown) else ":"
        lines.append(f"  [{kind}] {len(group)} row(s){more}")
        lines += [f"    {_row(p)}" for p in shown]
        if len(group) > len(shown):
            lines.append(f"    ... and {len(group) - len(shown)} more [{kind}] row(s) in the report")
    return lines


def write_problem_report(problems: Iterable[DataProblem], path: Path) -> Path:
    """Write problems as CSV (source, kind, message) so nothing is dropped silently."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", "kind", "message"])
    for p in problems:
        writer.writerow([p.source, p.kind, p.message])
    return atomic_write_text(path, buffer.getvalue())
