"""Clinicians' corrections as training data: read a feedback folder, drop what the base model's
data already holds, hold part out for the promotion gate, and extend the base manifest.

A feedback folder is what ``skinedge feedback export`` writes (layout ``labels-csv``):
``labels.csv`` with ``image, lesion_id, patient_id, dx, status, ...`` and the images beside it.
A plain ``labels.csv`` folder without a ``status`` column counts every row as a clinician's
label. Nothing is dropped silently: every row left out is in :attr:`FeedbackSplit.refused`
(unreviewed cases, missing or unreadable images, a row listed twice) or in
:attr:`FeedbackSplit.duplicates` (bytes identical to an image of any split of the base
manifest, which would otherwise leak a test image into training), and both are written to the
run's ``feedback.json``. A label the model does not know is an error naming its rows: the
clinician's answer cannot be trained on, and skipping it would hide a vocabulary mismatch.

Groups for the held-out split: ``patient_id``, else ``lesion_id``, else the image; groups
whose files share bytes are joined, so one image cannot sit on both sides.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from skinedge.data import (
    DataProblem,
    DataValidationError,
    Manifest,
    ManifestRow,
    Record,
    read_dataset,
)
from skinedge.data.splits import split_groups
from skinedge.errors import DataError, NotFoundError
from skinedge.utils.io import sha256_file

#: Review statuses whose ``dx`` is a clinician's label (``skinedge feedback export``).
REVIEWED = ("verified", "corrected")
#: The status of every row of a labels.csv without a ``status`` column.
LABELLED = "labelled"
#: Prefix of feedback groups in the extended manifest (they never merge with the base's).
GROUP_PREFIX = "feedback:"


@dataclass(frozen=True)
class FeedbackCase:
    """One usable row of the feedback folder.

    Attributes:
        image: Path relative to the feedback folder, as written in labels.csv (normalised).
        group: Patient pseudonym, else lesion id, else the image (joined over identical files).
        label: Class code of the model's vocabulary.
        status: ``verified``, ``corrected``, or ``labelled`` (no status column).
        source: ``labels.csv:N``.
        sha256: Content hash of the image file.
    """

    image: str
    group: str
    label: str
    status: str
    source: str
    sha256: str


@dataclass
class FeedbackSplit:
    """The feedback folder, sorted: what trains, what judges, what was left out and why."""

    folder: Path
    train: list[FeedbackCase]
    holdout: list[FeedbackCase]
    refused: list[DataProblem] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    exif_oriented: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        def counts(cases: list[FeedbackCase]) -> dict[str, int]:
            out: dict[str, int] = {}
            for case in cases:
                out[case.label] = out.get(case.label, 0) + 1
            return dict(sorted(out.items()))

        return {
            "folder": str(self.folder),
            "counts": {"train": counts(self.train), "holdout": counts(self.holdout),
                       "refused": len(self.refused), "duplicates": len(self.duplicates)},
            "train": [asdict(c) for c in self.train],
            "holdout": [asdict(c) for c in self.holdout],
            "refused": [asdict(p) for p in self.refused],
            "duplicates": self.duplicates,
            "exif_oriented": self.exif_oriented,
        }


def check_feedback_folder(folder: Path) -> Path:
    """Refuse a feedback folder without ``labels.csv``, before anything else runs.

    Raises:
        NotFoundError: the folder does not exist.
        DataError: it holds no ``labels.csv``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"--feedback {folder}: no such folder; give the folder "
                            "`skinedge feedback export` wrote, the service's data folder, or "
                            "its database URL")
    if not (folder / "labels.csv").is_file():
        raise DataError(f"--feedback {folder} holds no labels.csv: give the folder `skinedge "
                        "feedback export` wrote (images/ and labels.csv with image, dx, status), "
                        "or the service's data folder to export it from")
    return folder


def read_feedback(folder: Path, base: Manifest, *, holdout_fraction: float, seed: int = 0,
                  problems_report: Path | None = None,
                  progress: Callable[[int, int], None] | None = None) -> FeedbackSplit:
    """Read, check, deduplicate and split a feedback folder against the base manifest.

    Args:
        folder: The feedback folder (labels.csv layout).
        base: The base version's manifest; its vocabulary is the model's, its hashes (every
            split) are what the feedback is deduplicated against.
        holdout_fraction: Share of the feedback's groups held out for the promotion gate
            (stratified by class where a class has groups enough).
        seed: Seed of the held-out draw.
        problems_report: Where every refused row is written as CSV (also when it raises).
        progress: ``progress(done, total)`` while images are decoded.

    Raises:
        DataError: labels.csv lacks a column, a label is not one of the model's classes (the
            rows are named), no usable row remains, or too few groups remain to hold some out
            and train on the rest.
    """
    folder = check_feedback_folder(folder).resolve()
    vocab = base.vocabulary
    statuses, groups = _read_columns(folder / "labels.csv")
    dataset = read_dataset(
        folder, layout="labels-csv", classes=vocab.name, skip_bad=True, progress=progress,
        problems_report=problems_report,
        label_hint="relabel the row with one of the model's classes, or remove it")
    unknown = [p for p in dataset.skipped if p.kind == "unknown-label"]
    if unknown:
        raise DataValidationError(
            unknown, hint=f"The model predicts {', '.join(vocab.codes)} ({vocab.name}): fix "
            f"these rows of {folder / 'labels.csv'}, or remove them, and run again.")
    refused = list(dataset.skipped)
    records: list[Record] = []
    for record in dataset.records:
        status = statuses.get(record.source, LABELLED)
        if status in (*REVIEWED, LABELLED):
            records.append(record)
        elif status == "unreviewed":
            refused.append(DataProblem(record.source, "unreviewed",
                                       f"{record.image}: no clinician reviewed it (its dx is "
                                       "the model's own answer); review it in the service"))
        else:
            refused.append(DataProblem(record.source, "bad-status",
                                       f"{record.image}: status {status!r} is not one of "
                                       f"{', '.join(REVIEWED)}"))
    hashes = _hash_images(folder, [r.image for r in records])
    in_base = {row.sha256: row for row in base.rows}
    kept, duplicates = [], []
    for r in records:
        twin = in_base.get(hashes[r.image])
        if twin is None:
            kept.append(r)
        else:
            duplicates.append({"source": r.source, "image": r.image, "sha256": hashes[r.image],
                               "base_image": twin.image, "base_split": twin.split})
    if not kept:
        raise DataError(f"{folder}: no feedback case left to train on ({len(refused)} refused, "
                        f"{len(duplicates)} already in the base version's data); see "
                        f"{problems_report or 'the refused rows above'}")
    merged = _join_groups_sharing_files(
        {r.image: GROUP_PREFIX + groups.get(r.source, r.image) for r in kept}, hashes)
    cases = [FeedbackCase(r.image, merged[r.image], r.label, statuses.get(r.source, LABELLED),
                          r.source, hashes[r.image]) for r in kept]
    train, holdout = _hold_out(cases, holdout_fraction, seed, folder)
    rotated = set(dataset.exif_rotated)
    return FeedbackSplit(folder, train, holdout, refused, duplicates,
                         sorted(c.image for c in cases if c.image in rotated))


def extend_manifest(base: Manifest, feedback: FeedbackSplit) -> Manifest:
    """The base manifest plus the feedback's training cases in ``train`` (val and test are the
    base's, untouched). Feedback images keep their place: rows name them by absolute path,
    and the manifest records ``allow_outside_root``."""
    folder = feedback.folder
    rows = [*base.rows, *(ManifestRow((folder / c.image).as_posix(), c.group, c.label, "train",
                                      c.sha256) for c in feedback.train)]
    train_images = {c.image for c in feedback.train}
    oriented = [*base.exif_oriented, *((folder / image).as_posix()
                                       for image in feedback.exif_oriented
                                       if image in train_images)]
    # A multi-source base keeps its sources; feedback rows belong to none of them.
    return Manifest(base.root, base.layout, base.classes, base.seed, base.ratios, rows,
                    allow_outside_root=True, exif_oriented=oriented, sources=base.sources)


def holdout_manifest(base: Manifest, feedback: FeedbackSplit) -> Manifest:
    """The held-out corrected cases as a manifest of one ``test`` split (root: the feedback
    folder), so both models are evaluated on them as on any split."""
    held = {c.image for c in feedback.holdout}
    rows = [ManifestRow(c.image, c.group, c.label, "test", c.sha256) for c in feedback.holdout]
    return Manifest(feedback.folder, "labels-csv", base.classes, base.seed, (0.0, 0.0, 1.0),
                    rows, exif_oriented=[i for i in feedback.exif_oriented if i in held])


def _read_columns(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``labels.csv:N`` -> review status (only when the column exists) and -> group
    (patient_id, else lesion_id, else the image), numbered as the labels-csv reader numbers
    its rows (the header is line 1)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = [(f"{path.name}:{i}", {k: (v or "").strip() for k, v in row.items() if k})
                    for i, row in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as UTF-8 CSV ({exc})") from exc
    statuses = ({source: row.get("status", "").lower() for source, row in rows}
                if "status" in header else {})
    groups = {source: row.get("patient_id") or row.get("lesion_id") or row.get("image", "")
              for source, row in rows}
    return statuses, groups


def _hash_images(folder: Path, images: list[str]) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(images, pool.map(lambda i: sha256_file(folder / i), images)))


def _join_groups_sharing_files(group_of: dict[str, str], hashes: dict[str, str]) -> dict[str, str]:
    """image -> group, where groups holding byte-identical files become one (the smallest
    name), so a file and its copy land on the same side of the held-out split."""
    parent = {g: g for g in group_of.values()}

    def find(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    first: dict[str, str] = {}
    for image, group in group_of.items():
        a, b = find(first.setdefault(hashes[image], group)), find(group)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {image: find(group) for image, group in group_of.items()}


def _hold_out(cases: list[FeedbackCase], fraction: float, seed: int,
              folder: Path) -> tuple[list[FeedbackCase], list[FeedbackCase]]:
    """(train-join, held-out): whole groups, stratified by their main class where it has
    groups enough (:func:`~skinedge.data.splits.split_groups` with ratios 1-f, 0, f)."""
    records = [Record(c.image, c.group, c.label, c.source) for c in cases]
    assignment = split_groups(records, (1.0 - fraction, 0.0, fraction), seed)
    train = [c for c in cases if assignment[c.group] == "train"]
    holdout = [c for c in cases if assignment[c.group] == "test"]
    if not train or not holdout:
        n_groups = len(set(assignment))
        raise DataError(
            f"{folder}: {len(cases)} usable case(s) in {n_groups} patient/lesion group(s) "
            f"leave {'nothing to train on' if not train else 'nothing to hold out'} with "
            f"--holdout-fraction {fraction:g}: collect more reviewed cases, or change "
            "--holdout-fraction")
    return train, holdout
