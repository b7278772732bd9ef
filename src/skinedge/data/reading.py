"""Read a dataset folder into validated records: the door of the data layer."""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from skinedge.data.classes import (
    VOCABULARIES,
    ClassVocabulary,
    get_vocabulary,
    infer_vocabulary,
)
from skinedge.data.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    ImageError,
    load_rgb_oriented,
)
from skinedge.data.layouts import detect_layout, read_layout
from skinedge.data.paths import OUTSIDE_ROOT_HINT, normalize_image_path
from skinedge.data.records import (
    DataProblem,
    DataValidationError,
    Record,
    write_problem_report,
)
from skinedge.errors import DataError


@dataclass
class Dataset:
    """A validated, labelled dataset folder.

    Attributes:
        root: Folder the image paths are relative to.
        layout: Layout name it was read with.
        vocabulary: Class vocabulary; every record's label is one of its codes.
        records: Usable rows.
        skipped: Rows left out with ``skip_bad`` (empty otherwise).
        exif_rotated: Images (paths as in ``records``) stored sideways or flipped whose EXIF
            orientation was applied when read; empty when images were not checked.
    """

    root: Path
    layout: str
    vocabulary: ClassVocabulary
    records: list[Record]
    skipped: list[DataProblem] = field(default_factory=list)
    exif_rotated: list[str] = field(default_factory=list)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(r.label for r in self.records)
        return {c: counts.get(c, 0) for c in self.vocabulary.codes}


def read_dataset(
    root: Path | str,
    *,
    layout: str | None = None,
    classes: str | None = None,
    check_images: bool = True,
    skip_bad: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    progress: Callable[[int, int], None] | None = None,
    allow_outside_root: bool = False,
    problems_report: Path | str | None = None,
    label_hint: str = "fix the row",
    hint: str = "",
    outside_root_hint: str = OUTSIDE_ROOT_HINT,
) -> Dataset:
    """Read, validate and label a dataset folder.

    Every row is checked: the file exists and decodes as 8-bit RGB (see
    :func:`skinedge.data.images.load_rgb`), its label is in the vocabulary, and no image is
    listed twice. Problems are collected across the whole folder before anything is raised.

    Args:
        root: Dataset folder.
        layout: Layout name (see ``skinedge.data.layouts.LAYOUTS``); detected when None.
        classes: Vocabulary name (``isic2018``, ``isic2019``, ``melanoma``); inferred when None.
        check_images: Decode every image (slow for 25k images, but catches truncated files
            before a long training run does).
        skip_bad: Leave offending rows out (listed in ``Dataset.skipped``) instead of raising.
        max_pixels: Decompression-bomb guard, see :func:`load_rgb`.
        min_side: Shortest image side accepted, in pixels, see :func:`load_rgb`.
        progress: Called as ``progress(done, total)`` while images are checked.
        allow_outside_root: Take image paths and symlinks that lead outside ``root`` (the user
            trusts the folder); by default each is an ``outside-root`` problem, never opened.
        problems_report: Where to write every problem as CSV when this raises; None writes it
            to the system temp folder (named after the dataset folder), so it is never lost.
            When the folder reads without raising, a report left there by an earlier failed
            run no longer applies and is removed.
        label_hint: What an ``unknown-label`` row should do, worded for the caller's command
            (the split command adds its ``--classes``).
        hint: Last line of the error (what to do), worded for the caller's command; the
            default suggests fixing the rows or ``--skip-bad``.
        outside_root_hint: A further line when rows lead outside the folder: how the
            caller's command opts in (default: rerun with ``--allow-outside-root``).

    Raises:
        DataValidationError: some rows are bad and ``skip_bad`` is False; a few are listed,
            many are summarised per kind, and the report it names lists every one.
    """
    root = Path(root)
    layout_name = layout or detect_layout(root)
    records, problems = read_layout(root, layout_name, allow_outside_root=allow_outside_root)
    vocab = get_vocabulary(classes) if classes else _infer(records)

    good: list[Record] = []
    for r in records:
        code = vocab.normalize(r.label)
        if code is None:
            problems.append(DataProblem(
                r.source, "unknown-label",
                f"label {r.label!r} is not one of {list(vocab.codes)} ({vocab.name}); "
                f"{label_hint}"))
        else:
            good.append(Record(normalize_image_path(r.image), r.group, code, r.source))

    seen = Counter(r.image for r in good)
    dupes = {img for img, n in seen.items() if n > 1}
    for r in good:
        if r.image in dupes:
            problems.append(DataProblem(
                r.source, "duplicate-id", f"image {r.image} is listed more than once; keep one row"))
    good = [r for r in good if r.image not in dupes]

    rotated: list[str] = []
    if check_images:
        image_problems, rotated = _check_images(root, good, max_pixels, min_side, progress)
        problems += image_problems
        bad_sources = {p.source for p in problems}
        good = [r for r in good if r.source not in bad_sources]
        kept = {r.image for r in good}
        rotated = [image for image in rotated if image in kept]

    if problems and not skip_bad:
        report = _write_report(problems, root, problems_report)
        raise DataValidationError(problems, hint=hint, report=report,
                                  kind_hints={"outside-root": outside_root_hint})
    if not good:
        raise DataError(f"{root}: no usable images found")
    if problems_report is not None:
        Path(problems_report).unlink(missing_ok=True)
    return Dataset(root, layout_name, vocab, good, problems, rotated)


def count_labels(
    root: Path | str, *, layout: str | None = None, allow_outside_root: bool = False,
) -> Counter[str]:
    """Rows per raw label (stripped, lower case), from the labels file alone: no image is
    decoded. For a caller that must know a folder's classes before reading it in full."""
    root = Path(root)
    records, _ = read_layout(root, layout or detect_layout(root),
                             allow_outside_root=allow_outside_root)
    return Counter(r.label.strip().lower() for r in records)


def vocabulary_of(labels: Iterable[str]) -> ClassVocabulary:
    """The vocabulary of the labels some vocabulary knows (labels no vocabulary knows are
    typos, for per-row problems).

    Raises:
        DataError: no vocabulary knows any of the labels.
    """
    labels = {label.strip().lower() for label in labels}
    known = {label for label in labels
             if any(v.normalize(label) is not None for v in VOCABULARIES.values())}
    return infer_vocabulary(known or labels)


def default_problems_report(root: Path | str) -> Path:
    """Where :func:`read_dataset` writes the problems of ``root`` when the caller names no
    file: the system temp folder, named after the folder (plus a hash of its full path, so two
    folders called ``data`` do not overwrite each other's report)."""
    real = Path(root).resolve()
    digest = hashlib.sha256(str(real).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"skinedge-{real.name or 'dataset'}-{digest}.problems.csv"


def _write_report(problems: list[DataProblem], root: Path, path: Path | str | None) -> Path | None:
    """Write the problems CSV; None when it cannot be written (the error then lists every row)."""
    try:
        return write_problem_report(problems, Path(path) if path else default_problems_report(root))
    except OSError:
        return None


def _infer(records: list[Record]) -> ClassVocabulary:
    """Vocabulary of the labels some vocabulary knows; the others become per-row problems.

    Inferring from every label would let one typo abort the whole folder with no row named
    (and defeat ``skip_bad``); only a folder where no label is known fails here.
    """
    return vocabulary_of(r.label for r in records)


def _check_images(
    root: Path, records: list[Record], max_pixels: int, min_side: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[DataProblem], list[str]]:
    """Decode every image: (problems, images whose EXIF orientation was applied)."""
    def check(record: Record) -> DataProblem | bool:
        try:
            _, orientation = load_rgb_oriented(root / record.image, max_pixels=max_pixels,
                                               min_side=min_side)
        except ImageError as exc:
            return DataProblem(record.source, exc.kind, f"{record.image}: {exc.reason}")
        return orientation != 1

    problems, rotated = [], []
    # Decoding releases the GIL, so a few threads overlap file I/O and JPEG decoding.
    with ThreadPoolExecutor(max_workers=4) as pool:
        for done, (record, outcome) in enumerate(zip(records, pool.map(check, records)),
                                                 start=1):
            if isinstance(outcome, DataProblem):
                problems.append(outcome)
            elif outcome:
                rotated.append(record.image)
            if progress:
                progress(done, len(records))
    return problems, rotated
