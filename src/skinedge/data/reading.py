"""Read a dataset folder into validated records: the door of the data layer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from skinedge.data.classes import (
    VOCABULARIES,
    ClassVocabulary,
    get_vocabulary,
    infer_vocabulary,
)
from skinedge.data.images import DEFAULT_MAX_PIXELS, ImageError, load_rgb
from skinedge.data.layouts import detect_layout, read_layout
from skinedge.data.records import DataProblem, DataValidationError, Record
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
    """

    root: Path
    layout: str
    vocabulary: ClassVocabulary
    records: list[Record]
    skipped: list[DataProblem] = field(default_factory=list)

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
    progress: Callable[[int, int], None] | None = None,
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
        progress: Called as ``progress(done, total)`` while images are checked.

    Raises:
        DataValidationError: some rows are bad and ``skip_bad`` is False; lists every one.
    """
    root = Path(root)
    layout_name = layout or detect_layout(root)
    records, problems = read_layout(root, layout_name)
    vocab = get_vocabulary(classes) if classes else _infer(records)

    good: list[Record] = []
    for r in records:
        code = vocab.normalize(r.label)
        if code is None:
            problems.append(DataProblem(
                r.source, "unknown-label",
                f"label {r.label!r} is not one of {list(vocab.codes)} ({vocab.name}); fix the "
                "row or choose another --classes"))
        else:
            good.append(Record(r.image, r.group, code, r.source))

    seen = Counter(r.image for r in good)
    dupes = {img for img, n in seen.items() if n > 1}
    for r in good:
        if r.image in dupes:
            problems.append(DataProblem(
                r.source, "duplicate-id", f"image {r.image} is listed more than once; keep one row"))
    good = [r for r in good if r.image not in dupes]

    if check_images:
        problems += _check_images(root, good, max_pixels, progress)
        bad_sources = {p.source for p in problems}
        good = [r for r in good if r.source not in bad_sources]

    if problems and not skip_bad:
        raise DataValidationError(problems)
    if not good:
        raise DataError(f"{root}: no usable images found")
    return Dataset(root, layout_name, vocab, good, problems)


def _infer(records: list[Record]) -> ClassVocabulary:
    """Vocabulary of the labels some vocabulary knows; the others become per-row problems.

    Inferring from every label would let one typo abort the whole folder with no row named
    (and defeat ``skip_bad``); only a folder where no label is known fails here.
    """
    labels = {r.label.strip().lower() for r in records}
    known = {label for label in labels
             if any(v.normalize(label) is not None for v in VOCABULARIES.values())}
    return infer_vocabulary(known or labels)


def _check_images(
    root: Path, records: list[Record], max_pixels: int,
    progress: Callable[[int, int], None] | None,
) -> list[DataProblem]:
    def check(record: Record) -> DataProblem | None:
        try:
            load_rgb(root / record.image, max_pixels=max_pixels)
        except ImageError as exc:
            return DataProblem(record.source, exc.kind, f"{record.image}: {exc.reason}")
        return None

    problems = []
    # Decoding releases the GIL, so a few threads overlap file I/O and JPEG decoding.
    with ThreadPoolExecutor(max_workers=4) as pool:
        for done, problem in enumerate(pool.map(check, records), start=1):
            if problem:
                problems.append(problem)
            if progress:
                progress(done, len(records))
    return problems
