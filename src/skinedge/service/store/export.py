"""Export the store's reviewed cases as a ``labels.csv`` dataset folder that ``skinedge data
split`` reads (layout ``labels-csv``), for retraining on the clinic's own feedback.

The folder::

    OUT/images/<case id>.jpg     the stored image, decrypted: the upload's own JPEG with its
                                 metadata removed, or a PNG (<case id>.png) of the upright pixels
    OUT/labels.csv               image,lesion_id,patient_id,dx,status,reviewed_at,reviewer,
                                 model_label,prediction
    OUT/README.txt               what the folder is, where it came from, whose licence
    OUT/.skinedge-export.json    marker: this folder is an export (a later one may replace it)

``dx`` is the clinician's label: the model's answer for a verified case, the review's label for
a corrected one. Groups for a split: the labels-csv reader groups a row by ``lesion_id``, else
by ``patient_id``. The store knows no lesions, only images (one encrypted file per owner per
identical image), so ``lesion_id`` is the stored image's id, and is left empty on rows that
have a patient reference: those are grouped by ``patient_id``, a keyed pseudonym (HMAC with the
store's newest key), so one patient's images never straddle train and test. Byte-identical
images (one image uploaded twice) are kept in one split by ``make_manifest`` whatever their
group. The patient reference, body site and note never leave the store in clear.

Atomic and resumable: the export is written into ``.OUT.partial`` beside ``OUT`` and renamed
into place when complete. An interrupted export leaves that folder; the next run keeps the
images already there with their stored size and writes the rest. ``OUT`` may be a new or empty
folder or a previous export holding only what an export writes (it is replaced whole);
anything else is refused, so an export never deletes files it did not write.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from skinedge.errors import ConfigError
from skinedge.service.store.db import SYSTEM, Store
from skinedge.service.store.schema import Blob, Case, User
from skinedge.utils.io import atomic_write_bytes, atomic_write_text, fsync_path, writing

COLUMNS = ("image", "lesion_id", "patient_id", "dx", "status", "reviewed_at", "reviewer",
           "model_label", "prediction")
MARKER = ".skinedge-export.json"
MARKER_SCHEMA = "skinedge.feedback-export/1"
#: What an export writes; a previous export holding anything else is not replaced.
_OWN_ENTRIES = frozenset({"images", "labels.csv", "README.txt", MARKER})


@dataclass
class ExportSummary:
    """What :func:`export_reviewed` wrote.

    Attributes:
        folder: The export folder.
        per_class: Cases written per ``dx`` class code.
        skipped_unreviewed: Unreviewed cases left out (with ``include_unreviewed``, only the
            pictures the lesion check refused: they carry no label).
        reused: Images kept from an interrupted export instead of being written again.
        replaced: Whether a previous export in ``folder`` was replaced.
        models: ``(model label, architecture, card sha256) -> classes`` of the cases written.
    """

    folder: Path
    per_class: dict[str, int]
    skipped_unreviewed: int
    reused: int = 0
    replaced: bool = False
    models: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)

    @property
    def written(self) -> int:
        return sum(self.per_class.values())


@dataclass(frozen=True)
class _Row:
    case_id: str
    blob_id: str
    size: int
    suffix: str  # .jpg (the upload's own JPEG, metadata removed) or .png
    lesion_id: str
    patient_id: str
    dx: str
    status: str
    reviewed_at: str
    reviewer: str
    model_label: str
    prediction: str
    model: tuple[str, str, str]
    classes: tuple[str, ...]

    @property
    def file_name(self) -> str:
        return f"{self.case_id}{self.suffix}"

    def csv_row(self) -> list[str]:
        return [f"images/{self.file_name}", self.lesion_id, self.patient_id, self.dx,
                self.status, self.reviewed_at, self.reviewer, self.model_label, self.prediction]


def export_reviewed(store: Store, out: Path | str, *, include_unreviewed: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> ExportSummary:
    """Write the store's reviewed cases to ``out`` as a labels-csv dataset folder.

    Args:
        store: The feedback store (its key decrypts the images and patient references).
        out: Folder to write: new, empty, or a previous export (replaced whole).
        include_unreviewed: Also write unreviewed cases, labelled with the model's answer
            (``status`` says so; training on them teaches the model its own mistakes).
        progress: Called as ``progress(done, total)`` while images are written.

    Returns:
        What was written, per class.

    Raises:
        ConfigError: ``out`` is a file, or a folder holding files an export did not write;
            another export into ``out`` is running; no case to export.
        WriteError: the disk is full or the folder not writable.
    """
    out = Path(out).resolve()  # "." or "feedback/" name a folder with a parent to rename in
    replacing = _check_target(out)
    rows, skipped = _read_cases(store, include_unreviewed)
    partial = out.parent / f".{out.name}.partial"
    with writing(partial):
        partial.mkdir(parents=True, exist_ok=True)
    with _locked(partial, out):
        reused = _write_images(store, rows, partial / "images", progress)
        summary = ExportSummary(
            out, dict(sorted(Counter(r.dx for r in rows).items())), skipped, reused, replacing,
            {r.model: list(r.classes) for r in rows})
        exported_at = datetime.now(UTC)
        atomic_write_text(partial / "labels.csv", _labels_csv(rows))
        atomic_write_text(partial / "README.txt", _readme(store, summary, exported_at))
        atomic_write_text(partial / MARKER, json.dumps({
            "schema": MARKER_SCHEMA, "exported_at": _iso(exported_at), "cases": len(rows),
            "per_class": summary.per_class, "include_unreviewed": include_unreviewed}, indent=1))
        _move_into_place(partial, out, replacing=_check_target(out))
    return summary


# --------------------------------------------------------------------------- the target


def _check_target(out: Path) -> bool:
    """Whether ``out`` holds a previous export (to replace); False when new or empty.

    Raises:
        ConfigError: ``out`` is a file, or a folder that is not (only) an export.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise ConfigError(f"{out} is a file; give the export a folder that does not exist yet")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return False
    if MARKER not in entries:
        raise ConfigError(f"{out} is not empty and is not a previous `skinedge feedback export` "
                          f"(no {MARKER}); choose a new folder, the export never overwrites "
                          "other files")
    foreign = [name for name in entries if name not in _OWN_ENTRIES]
    foreign += [f"images/{p.name}" for p in (out / "images").iterdir()
                if p.suffix not in (".png", ".jpg")] if (out / "images").is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise ConfigError(f"{out} is a previous export but also holds files it did not write "
                          f"({shown}); move them elsewhere, or export into a new folder "
                          "(replacing the export would delete them)")
    return True


@contextlib.contextmanager
def _locked(partial: Path, out: Path):
    """Hold ``partial`` alone (two exports into one folder would mix their files)."""
    fd = os.open(partial, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another export into {out} is running; wait for it to "
                              "finish") from None
        yield
    finally:
        os.close(fd)


def _move_into_place(partial: Path, out: Path, *, replacing: bool) -> None:
    """Rename the finished ``partial`` to ``out``; a previous export there is moved aside
    first and deleted after (between the two renames, ``out`` is missing for a moment and the
    previous export lies beside it as ``.OUT.replaced-*``)."""
    with writing(out):
        if replacing:
            old = out.parent / f".{out.name}.replaced-{secrets.token_hex(4)}"
            os.rename(out, old)
            try:
                os.rename(partial, out)
            except BaseException:
                os.rename(old, out)  # the previous export stays where it was
                raise
            shutil.rmtree(old)
        else:
            os.replace(partial, out)  # over a missing or empty folder
    fsync_path(out.parent)


# --------------------------------------------------------------------------- the store


def _read_cases(store: Store, include_unreviewed: bool) -> tuple[list[_Row], int]:
    """The rows to export and how many unreviewed cases are left out; the audit row is
    written in the same transaction, before any decrypted byte leaves the store (an export
    that fails halfway has still taken images out)."""
    with store.transaction() as session:
        found = session.execute(
            select(Case, Blob.size, Blob.media_type).join(Blob, Blob.id == Case.image_id)
            .order_by(Case.created_at, Case.id)).all()
        reviewers = {u.id: u.name for u in session.scalars(select(User))}
        rows, skipped = [], 0
        for case, size, media_type in found:
            # an unreviewed refused picture has no label at all, not even the model's
            if case.status == "unreviewed" and not (include_unreviewed and case.lesion):
                skipped += 1
                continue
            rows.append(_row(store, case, size, media_type, reviewers))
        if not rows:
            raise ConfigError("no reviewed case in the store to export: verify or correct "
                              f"cases first ({skipped} unreviewed)")
        counts = Counter(r.dx for r in rows)
        detail = (f"{len(rows)} cases ({', '.join(f'{c} {n}' for c, n in sorted(counts.items()))})"
                  f"; {skipped} unreviewed left out")
        Store.record(session, SYSTEM, "feedback.export", detail=detail[:200])
    return rows, skipped


def _row(store: Store, case: Case, size: int, media_type: str,
         reviewers: dict[int, str]) -> _Row:
    reviewed = case.status != "unreviewed"
    patient_ref = store.open_field(case.patient_ref_enc, "patient_ref", case.id)
    # verified: the clinician confirmed the model's answer; corrected: the clinician's label.
    dx = case.review_label if case.status == "corrected" else case.prediction
    return _Row(
        case_id=case.id, blob_id=case.image_id, size=size,
        suffix=".jpg" if media_type == "image/jpeg" else ".png",
        lesion_id="" if patient_ref else case.image_id,
        patient_id=pseudonym(store, patient_ref) if patient_ref else case.image_id,
        dx=dx, status=case.status,
        reviewed_at=_iso(case.reviewed_at) if reviewed and case.reviewed_at else "",
        reviewer=reviewers.get(case.reviewer_id, "") if reviewed else "",
        model_label=case.model_label, prediction=case.prediction,
        model=(case.model_label, case.model_architecture, case.card_sha256),
        classes=tuple(case.classes))


def pseudonym(store: Store, patient_ref: str) -> str:
    """16 hex digits standing for ``patient_ref`` in an export: HMAC-SHA256 with a key derived
    from the store's newest key (:meth:`KeyRing.pseudonym`), so nobody without the key can test
    a guessed reference against it. After ``rotate-key`` the same patient gets another
    pseudonym."""
    return store.keys.pseudonym(patient_ref.strip())


def _write_images(store: Store, rows: list[_Row], folder: Path,
                  progress: Callable[[int, int], None] | None) -> int:
    """Write each case's image (keeping those an interrupted run wrote whole); how many were
    kept. Files of cases no longer exported (erased since) are deleted."""
    with writing(folder):
        folder.mkdir(exist_ok=True)
    wanted = {r.file_name for r in rows}
    for stale in folder.iterdir():
        if stale.name not in wanted:
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
    reused = 0
    for done, row in enumerate(rows, 1):
        path = folder / row.file_name
        if path.is_file() and path.stat().st_size == row.size:
            reused += 1  # written whole by an earlier run (each file is renamed into place)
        else:
            image = store.decrypt(store.files.read(row.blob_id), f"blob {row.blob_id}")
            atomic_write_bytes(path, image)
        if progress:
            progress(done, len(rows))
    return reused


# --------------------------------------------------------------------------- the files


def _labels_csv(rows: list[_Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(r.csv_row() for r in rows)
    return buffer.getvalue()


def _readme(store: Store, summary: ExportSummary, exported_at: datetime) -> str:
    counts = "\n".join(f"  {code}: {n}" for code, n in summary.per_class.items())
    models = "\n".join(f"  {label} {arch}, card sha256 {sha}: classes {', '.join(classes)}"
                       for (label, arch, sha), classes in summary.models.items())
    return f"""\
Clinician feedback exported from a skinedge service store
=========================================================

Exported from the store in {store.data_dir} at {_iso(exported_at)} by `skinedge feedback export`.
{summary.written} cases: images/<case id>.jpg or .png (the stored image: upright, metadata stripped)
and labels.csv (layout labels-csv: `skinedge data split {summary.folder.name} --out ...`).
Unreviewed cases left out: {summary.skipped_unreviewed}.

Cases per class (dx):
{counts}

Class vocabulary: the classes of the model card that answered each case:
{models}

labels.csv columns:
  image        images/<case id>.jpg or .png
  lesion_id    the stored image's id (one id per identical image of one clinician); empty
               when the case has a patient reference, so that the split groups by patient_id
  patient_id   a pseudonym of the clinic's patient reference (keyed HMAC with the store's
               key, 16 hex digits; it changes after `skinedge feedback rotate-key`, so do not
               mix exports made before and after a rotation); the image id when there is none
  dx           the clinician's label: the model's answer for a verified case, the corrected
               label for a corrected one (the model's answer for an unreviewed case, when
               exported with include_unreviewed: see status)
  status       verified | corrected | unreviewed
  reviewed_at  when the clinician reviewed it (UTC)
  reviewer     the reviewing clinician's user name
  model_label  the model artifact that answered (e.g. onnx-fp32)
  prediction   the model's top-1 class

No patient reference, body site or review note is in this folder. The images are patient
data: the clinic's consent, licence and data-protection rules decide who may use them and
for what; skinedge grants none. The model's answers were decision support, not diagnoses.
"""


def _iso(when: datetime) -> str:
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")
