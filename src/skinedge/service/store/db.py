"""The feedback store: cases, reviews, users and the audit log in one SQL database (SQLite by
default, PostgreSQL through ``SKINEDGE_DATABASE_URL``), images in encrypted files.

Every change is one transaction together with its audit row, so an acknowledged case or review
survives a killed server. SQLite runs in WAL mode with ``synchronous=FULL``, foreign keys on,
``secure_delete`` (erased rows are overwritten, not left in free pages), a WAL checkpoint after
each erasure, and ``BEGIN IMMEDIATE`` for writing transactions (every request on a case writes
at least its audit row, so they take the write lock up front instead of failing when they
upgrade to it); :meth:`Store.reading` sessions (token checks, readiness) take no lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from skinedge.errors import ConfigError, DataError, NotFoundError, SkinedgeError
from skinedge.service.store.blobs import BlobFiles, StoreDamagedError
from skinedge.service.store.crypto import (
    KeyRing,
    StoreKeyError,
    encode_key,
    new_key,
    write_key_file,
)
from skinedge.service.store.schema import AuditEvent, Blob, Case, User

log = logging.getLogger("skinedge.service.store")

ROLES = ("clinician", "admin")
STATUSES = ("unreviewed", "verified", "corrected")


class StoreBusyError(SkinedgeError):
    """The store is held by another process that must stop first (key rotation)."""

    http_status = 503


@dataclass(frozen=True)
class Actor:
    """Who asks, and from where: every read and write of patient data is audited with it."""

    id: int | None
    name: str
    role: str = "clinician"
    address: str | None = None


SYSTEM = Actor(None, "system", "admin")


@dataclass
class CaseView:
    """A case as the API shows it, its encrypted fields decrypted."""

    id: str
    created_at: datetime
    status: str
    classes: list[str]
    probabilities: list[float]
    prediction: str
    malignant: bool
    malignant_probability: float
    model_label: str
    model_architecture: str
    card_sha256: str
    latency_ms: float
    lesion: bool
    ood_score: float | None
    width: int
    height: int
    patient_ref: str | None
    body_site: str | None
    review_action: str | None
    review_label: str | None
    review_note: str | None
    reviewed_at: datetime | None
    reviewer: str | None
    image_id: str


@dataclass(frozen=True)
class Prediction:
    """What the model said about an uploaded image, to be stored with it."""

    classes: list[str]
    probabilities: list[float]
    prediction: str
    malignant: bool
    malignant_probability: float
    model_label: str
    model_architecture: str
    card_sha256: str
    latency_ms: float
    lesion: bool = True  # False: the card's lesion check refused it (no diagnosis)
    ood_score: float | None = None  # the check's score; None: the card has no check


def now() -> datetime:
    return datetime.now(UTC)


def _aware(when: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the store's SQLite settings (see the module docstring)."""
    if url.startswith("postgresql://"):  # psycopg 3 is the driver the serve extra installs
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", _sqlite_begin)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"database_url {_redact(url)!r}: {exc}") from exc
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions begin where SQLAlchemy says
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON",
                   "secure_delete=ON", "busy_timeout=30000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # Readers (token checks, readiness, listings of the audit log) take no lock up front;
    # everything else writes at least its audit row, so it takes the write lock at once.
    readonly = connection.get_execution_options().get("skinedge_readonly")
    connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _redact(url: str) -> str:
    """``url`` without its password."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, credentials = head.partition("//")
    return f"{scheme}//{credentials.split(':', 1)[0]}:***@{tail}"


def _refuse_new_key_for_a_used_store(url: str, key_file: Path) -> None:
    """A missing key file is made only for a store that holds nothing yet: for one with cases,
    a new key would leave every stored image unreadable (a mistyped key_file, a lost key)."""
    from sqlalchemy import inspect

    engine = make_engine(url)
    try:
        if "cases" not in inspect(engine).get_table_names():
            return
        with engine.connect() as connection:
            held = connection.execute(text("SELECT count(*) FROM blobs")).scalar()
    except OperationalError:
        return  # no database yet: Store.open says what is wrong with it
    finally:
        engine.dispose()
    if held:
        raise StoreKeyError(f"{key_file}: no key file, but the store holds {held} encrypted "
                            "file(s) written with a key; restore the key file from its backup "
                            "or give its path (key_file / SKINEDGE_STORE_KEY)")


def migrate(engine: Engine) -> None:
    """Bring the database to the newest schema (Alembic ``upgrade head``)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Store:
    """Cases, reviews, users and audit over one database and one encrypted file store.

    Args:
        url: SQLAlchemy URL (``sqlite:///…/skinedge.db``, ``postgresql://…``).
        data_dir: Folder of the encrypted files (``blobs/``) and the lock file.
        keys: The store's keys (:class:`KeyRing`).
        key_file: Where ``keys`` came from (re-read when a value needs a key added since).
    """

    def __init__(self, url: str, data_dir: Path | str, keys: KeyRing,
                 key_file: Path | None = None):
        self.url = url
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.keys = keys
        self.key_file = key_file
        self.files = BlobFiles(self.data_dir / "blobs")
        self.engine = make_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = sessionmaker(self.engine.execution_options(skinedge_readonly=True),
                                    expire_on_commit=False)
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, url: str, data_dir: Path | str, *, key_file: Path | None = None,
             store_key: str | None = None, create_key: bool = True) -> Store:
        """Open (and migrate) the store; the key comes from ``store_key`` or ``key_file``
        (default ``DATA_DIR/store.key``, made on first use)."""
        data_dir = Path(data_dir)
        if store_key:
            keys = KeyRing.parse(store_key, "SKINEDGE_STORE_KEY")
            key_file = None
        else:
            key_file = Path(key_file or data_dir / "store.key")
            if not key_file.exists():
                _refuse_new_key_for_a_used_store(url, key_file)
            keys = KeyRing.from_file(key_file, create=create_key)
        store = cls(url, data_dir, keys, key_file)
        try:
            migrate(store.engine)
        except OperationalError as exc:
            raise ConfigError(f"cannot open the database {_redact(url)}: {exc.orig}") from exc
        return store

    # Sessions, locks and audit.

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session that writes (and audits): committed at the end, rolled back on error."""
        with self._session.begin() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only session (on SQLite it takes no write lock)."""
        with self._reader() as session:
            yield session

    def hold_shared_lock(self) -> None:
        """Hold the data folder for as long as this process runs, so that ``rotate-key``
        (which needs it alone) refuses to run under a live server."""
        self._lock_fd = os.open(self.data_dir / "store.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    @contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        fd = os.open(self.data_dir / "store.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreBusyError(f"{self.data_dir}: a running `skinedge serve` uses this "
                                     f"store; stop it before {what}") from None
            yield
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.engine.dispose()

    @staticmethod
    def record(session: Session, actor: Actor, action: str, case_id: str | None = None,
               outcome: str = "ok", detail: str | None = None) -> None:
        session.add(AuditEvent(at=now(), actor_id=actor.id, actor=actor.name, action=action,
                               case_id=case_id, address=actor.address, outcome=outcome,
                               detail=detail))

    def audit(self, actor: Actor, action: str, case_id: str | None = None,
              outcome: str = "ok", detail: str | None = None) -> None:
        """Record an event outside any other change (a refused request, a listing)."""
        with self.transaction() as session:
            self.record(session, actor, action, case_id, outcome, detail)

    # Users.

    def add_user(self, name: str, role: str = "clinician") -> str:
        """Create ``name`` and return its API token (only its sha256 is stored)."""
        if role not in ROLES:
            raise ConfigError(f"role {role!r}: use one of {', '.join(ROLES)}")
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "")\
                .replace(".", "").isalnum():
            raise ConfigError(f"user name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
        token = "sk_" + secrets.token_urlsafe(32)
        try:
            with self.transaction() as session:
                session.add(User(name=name, role=role, token_sha256=token_hash(token),
                                 created_at=now()))
                self.record(session, SYSTEM, "user.add", detail=f"{name} ({role})")
        except IntegrityError:
            raise ConfigError(f"user {name!r} exists; `skinedge users rotate-token {name}` "
                              "gives them a new token and keeps their cases") from None
        return token

    def rotate_token(self, name: str) -> str:
        """A new token for ``name`` (the old one stops working at once); their cases stay
        theirs."""
        token = "sk_" + secrets.token_urlsafe(32)
        with self.transaction() as session:
            user = session.scalar(select(User).where(User.name == name,
                                                     User.revoked_at.is_(None)))
            if user is None:
                raise NotFoundError(f"no active user named {name!r}; `skinedge users list` "
                                    "shows them")
            user.token_sha256 = token_hash(token)
            self.record(session, SYSTEM, "user.rotate-token", detail=name)
        return token

    def revoke_user(self, name: str) -> None:
        with self.transaction() as session:
            user = session.scalar(select(User).where(User.name == name))
            if user is None:
                raise NotFoundError(f"no user named {name!r}; `skinedge users list` shows them")
            user.revoked_at = now()
            # A revoked name keeps its row (cases point at it) but gives its name back.
            user.name = f"{name}~revoked~{secrets.token_hex(4)}"[:64]
            user.token_sha256 = f"revoked:{secrets.token_hex(24)}"
            self.record(session, SYSTEM, "user.revoke", detail=name)

    def users(self) -> list[dict[str, Any]]:
        with self.reading() as session:
            return [{"name": u.name, "role": u.role, "created_at": _aware(u.created_at),
                     "revoked_at": _aware(u.revoked_at)}
                    for u in session.scalars(select(User).order_by(User.id))]

    def actor_for_token(self, token: str, address: str | None) -> Actor | None:
        """The active user holding ``token``; None for an unknown or revoked one."""
        with self.reading() as session:
            user = session.scalar(select(User).where(User.token_sha256 == token_hash(token)))
            if user is None or user.revoked_at is not None:
                return None
            return Actor(user.id, user.name, user.role, address)

    # Cases.

    def create_case(self, actor: Actor, image: bytes, width: int, height: int,
                    prediction: Prediction, *, patient_ref: str | None = None,
                    body_site: str | None = None, media_type: str = "image/png") -> CaseView:
        """Store an uploaded image (metadata stripped: ``media_type`` says whether it is a
        PNG or the upload's own JPEG) and the model's answer.

        The encrypted file is written (and synced) before the row that names it is committed:
        a kill in between leaves a file no row names, which :meth:`sweep_orphans` removes.
        """
        case_id = "c_" + secrets.token_hex(16)
        digest = self.keys.digest(image)
        reuse = True
        for _attempt in range(2):
            blob_id, written = self._image_blob(actor, digest, image, reuse=reuse)
            try:
                with self.transaction() as session:
                    if written:
                        session.add(Blob(id=blob_id, owner_id=actor.id, kind="image",
                                         digest=digest if reuse else _unique_digest(),
                                         size=len(image), media_type=media_type,
                                         created_at=now()))
                    case = Case(
                        id=case_id, owner_id=actor.id, created_at=now(), image_id=blob_id,
                        width=width, height=height, classes=prediction.classes,
                        probabilities=prediction.probabilities,
                        prediction=prediction.prediction, malignant=prediction.malignant,
                        malignant_probability=prediction.malignant_probability,
                        model_label=prediction.model_label,
                        model_architecture=prediction.model_architecture,
                        card_sha256=prediction.card_sha256, latency_ms=prediction.latency_ms,
                        lesion=prediction.lesion, ood_score=prediction.ood_score,
                        patient_ref_enc=self._seal(patient_ref, "patient_ref", case_id),
                        body_site_enc=self._seal(body_site, "body_site", case_id),
                        status="unreviewed")
                    session.add(case)
                    self.record(session, actor, "case.create", case_id)
                    session.flush()
                    return self.view(session, case)
            except IntegrityError:
                # The same image was stored meanwhile (unique digest), or the stored copy we
                # meant to share was erased meanwhile (foreign key): store this one on its own.
                if written:
                    self.files.delete(blob_id)
                if not reuse:  # already on its own: not a race, a real fault
                    raise
                reuse = False
            except BaseException:
                if written:
                    self.files.delete(blob_id)
                raise
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _image_blob(self, actor: Actor, digest: str, image: bytes,
                    reuse: bool = True) -> tuple[str, bool]:
        """The id of the owner's stored copy of this image (its file rewritten if lost), or
        of a new encrypted file; and whether a new blob row must be added."""
        if reuse:
            with self.reading() as session:
                existing = session.scalar(select(Blob.id).where(
                    Blob.owner_id == actor.id, Blob.kind == "image", Blob.digest == digest))
            if existing is not None:
                if not self.files.exists(existing):
                    log.warning("blob %s had lost its file; rewritten from a new upload",
                                existing)
                    self.files.write(existing, self.keys.encrypt(image, f"blob {existing}"))
                return existing, False
        blob_id = "b_" + secrets.token_hex(16)
        self.files.write(blob_id, self.keys.encrypt(image, f"blob {blob_id}"))
        return blob_id, True

    def _seal(self, value: str | None, column: str, case_id: str) -> bytes | None:
        return None if value is None else self.keys.encrypt(value.encode(),
                                                            f"cases.{column} {case_id}")

    def open_field(self, value: bytes | None, column: str, case_id: str) -> str | None:
        """An encrypted column of a case (``patient_ref``, ``body_site``, ``review_note``)."""
        return None if value is None else self.decrypt(value, f"cases.{column} {case_id}") \
            .decode()

    def decrypt(self, value: bytes, context: str) -> bytes:
        """``value`` decrypted; the key file is read again once when its key is not known
        (rotated by another process since this one started)."""
        try:
            return self.keys.decrypt(value, context)
        except StoreKeyError:
            if self.key_file is None or not self.key_file.exists():
                raise
            self.keys = KeyRing.from_file(self.key_file, create=False)
            return self.keys.decrypt(value, context)

    def read_blob(self, blob_id: str) -> bytes:
        """A stored file, decrypted."""
        return self.decrypt(self.files.read(blob_id), f"blob {blob_id}")

    @staticmethod
    def owned(session: Session, actor: Actor, case_id: str) -> Case:
        """The actor's case ``case_id``; someone else's answers exactly like a missing one."""
        case = session.get(Case, case_id)
        if case is None or case.owner_id != actor.id:
            raise NotFoundError(f"no case {case_id!r} among yours")
        return case

    @contextmanager
    def case_transaction(self, actor: Actor, action: str, case_id: str) -> Iterator[Session]:
        """:meth:`transaction` for an action on one case; a refusal (not the actor's case)
        is audited once the transaction has rolled back."""
        try:
            with self.transaction() as session:
                yield session
        except NotFoundError:
            self.audit(actor, action, case_id, outcome="not-found")
            raise

    def view(self, session: Session, case: Case) -> CaseView:
        """A case with its encrypted fields decrypted."""
        reviewer = session.get(User, case.reviewer_id).name if case.reviewer_id else None
        return CaseView(
            id=case.id, created_at=_aware(case.created_at), status=case.status,
            classes=list(case.classes), probabilities=list(case.probabilities),
            prediction=case.prediction, malignant=case.malignant,
            malignant_probability=case.malignant_probability, model_label=case.model_label,
            model_architecture=case.model_architecture, card_sha256=case.card_sha256,
            latency_ms=case.latency_ms, lesion=case.lesion, ood_score=case.ood_score,
            width=case.width, height=case.height,
            patient_ref=self.open_field(case.patient_ref_enc, "patient_ref", case.id),
            body_site=self.open_field(case.body_site_enc, "body_site", case.id),
            review_action=case.review_action, review_label=case.review_label,
            review_note=self.open_field(case.review_note_enc, "review_note", case.id),
            reviewed_at=_aware(case.reviewed_at), reviewer=reviewer, image_id=case.image_id)

    def get_case(self, actor: Actor, case_id: str) -> CaseView:
        with self.case_transaction(actor, "case.read", case_id) as session:
            case = self.owned(session, actor, case_id)
            self.record(session, actor, "case.read", case_id)
            return self.view(session, case)

    def case_image(self, actor: Actor, case_id: str) -> tuple[bytes, str]:
        """The stored image, decrypted, and its media type (``image/jpeg`` or ``image/png``)."""
        with self.case_transaction(actor, "case.image", case_id) as session:
            case = self.owned(session, actor, case_id)
            self.record(session, actor, "case.image", case_id)
            blob = session.get(Blob, case.image_id)
            blob_id, media_type = blob.id, blob.media_type
        return self.read_blob(blob_id), media_type

    def case_overlay(self, actor: Actor, case_id: str,
                     compute: Callable[[bytes, CaseView], bytes]) -> bytes:
        """The case's Grad-CAM overlay (PNG): stored, or ``compute(image, case)`` once
        and kept. Two requests at once may both compute; one overlay is kept."""
        with self.case_transaction(actor, "case.overlay", case_id) as session:
            case = self.owned(session, actor, case_id)
            self.record(session, actor, "case.overlay", case_id)
            overlay_id, image_id, view = case.overlay_id, case.image_id, self.view(session, case)
        if overlay_id is not None and self.files.exists(overlay_id):
            return self.read_blob(overlay_id)
        # None yet, or its file lost: (re)compute it; only the image is irreplaceable.
        overlay = compute(self.read_blob(image_id), view)
        blob_id = "b_" + secrets.token_hex(16)
        self.files.write(blob_id, self.keys.encrypt(overlay, f"blob {blob_id}"))
        kept = False
        try:
            with self.transaction() as session:
                session.add(Blob(id=blob_id, owner_id=actor.id, kind="overlay",
                                 digest=_unique_digest(), size=len(overlay), created_at=now()))
                session.flush()
                # Only where the overlay is still the one read above: a case erased or given an
                # overlay by another request meanwhile is left alone, and this blob is dropped
                # with the rollback.
                unchanged = Case.overlay_id.is_(None) if overlay_id is None \
                    else Case.overlay_id == overlay_id
                updated = session.execute(update(Case).where(Case.id == case_id, unchanged)
                                          .values(overlay_id=blob_id)).rowcount
                if updated != 1:
                    session.rollback()
                    return overlay
                if overlay_id is not None:  # the row of the lost file
                    session.delete(session.get(Blob, overlay_id))
                kept = True
        finally:
            if not kept:
                self.files.delete(blob_id)
        return overlay

    def list_cases(self, actor: Actor, *, page: int = 1, per_page: int = 20,
                   status: str | None = None, label: str | None = None,
                   malignant: bool | None = None) -> tuple[list[CaseView], int]:
        """The actor's cases, newest first, and how many match in all. Each case shown is
        audited (a listing shows patient references and notes)."""
        query = select(Case).where(Case.owner_id == actor.id)
        if status is not None:
            query = query.where(Case.status == status)
        if label is not None:
            query = query.where((Case.review_label == label)
                                | ((Case.review_label.is_(None)) & (Case.prediction == label)))
        if malignant is not None:
            query = query.where(Case.malignant.is_(malignant))
        with self.transaction() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery()))
            rows = session.scalars(query.order_by(Case.created_at.desc(), Case.id)
                                   .offset((page - 1) * per_page).limit(per_page)).all()
            for case in rows:
                self.record(session, actor, "case.list", case.id, detail=f"page {page}")
            return [self.view(session, case) for case in rows], int(total or 0)

    def review_case(self, actor: Actor, case_id: str, action: str, label: str | None = None,
                    note: str | None = None) -> CaseView:
        """Verify the model's answer, or correct it to ``label``; a later review replaces it."""
        with self.case_transaction(actor, f"case.{action}", case_id) as session:
            case = self.owned(session, actor, case_id)
            if action == "verify" and not case.lesion:
                raise DataError("the model gave no diagnosis for this case: its lesion check "
                                "found no dermoscopic lesion image. If it is a lesion, send "
                                "action 'correct' with its class; if not, erase the case")
            if action == "verify":
                if label is not None and label != case.prediction:
                    raise DataError(f"verify confirms the model's answer {case.prediction!r}; "
                                    f"to record {label!r}, send action 'correct'")
                label = case.prediction
            elif label not in case.classes:
                raise DataError(f"label {label!r} is not one of the model's classes: "
                                f"{', '.join(case.classes)}")
            case.status = "verified" if action == "verify" else "corrected"
            case.review_action, case.review_label = action, label
            case.review_note_enc = self._seal(note or None, "review_note", case_id)
            case.reviewed_at, case.reviewer_id = now(), actor.id
            self.record(session, actor, f"case.{action}", case_id)
            session.flush()
            return self.view(session, case)

    def erase_case(self, actor: Actor, case_id: str, *, action: str = "case.erase") -> None:
        """Erase a case (GDPR art. 17): its row, its image and overlay files (unless another
        of the owner's cases holds the same image) and its encrypted fields. The audit rows
        stay; they hold no patient data. ``SYSTEM`` may erase any case (retention, an
        administrator serving a request)."""
        with self.case_transaction(actor, action, case_id) as session:
            if actor.id is not None:
                case = self.owned(session, actor, case_id)
            else:
                case = session.get(Case, case_id)
                if case is None:
                    raise NotFoundError(f"no case {case_id!r}; `skinedge feedback` commands "
                                        "take the id a case shows (c_...)")
            blobs = [b for b in (case.image_id, case.overlay_id) if b is not None]
            # Lock the blob rows first: two erasures of cases sharing one image then count its
            # remaining users one after the other (PostgreSQL's default isolation would let
            # both count the other case and keep the image for ever).
            session.execute(select(Blob.id).where(Blob.id.in_(blobs)).with_for_update())
            session.delete(case)
            session.flush()
            gone = [b for b in blobs if session.scalar(
                select(func.count()).select_from(Case).where(
                    (Case.image_id == b) | (Case.overlay_id == b))) == 0]
            for blob_id in gone:
                session.delete(session.get(Blob, blob_id))
            self.record(session, actor, action, case_id)
        for blob_id in gone:
            self.files.delete(blob_id)
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Fold SQLite's write-ahead log into the database (whose freed pages secure_delete
        zeroes) so erased or re-encrypted values do not linger in the -wal file."""
        if self.engine.dialect.name != "sqlite":
            return
        # On the driver's connection itself: inside a transaction SQLite refuses a checkpoint.
        with self.engine.connect() as connection:
            busy = connection.connection.driver_connection.execute(
                "PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:  # other connections are reading: the next erasure or checkpoint folds it
            log.info("WAL checkpoint postponed: the database is busy")

    def audit_page(self, *, page: int = 1, per_page: int = 50) -> tuple[list[dict], int]:
        with self.reading() as session:
            total = session.scalar(select(func.count()).select_from(AuditEvent))
            rows = session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())
                                   .offset((page - 1) * per_page).limit(per_page)).all()
            return [{"id": r.id, "at": _aware(r.at), "actor": r.actor, "action": r.action,
                     "case_id": r.case_id, "address": r.address, "outcome": r.outcome,
                     "detail": r.detail} for r in rows], int(total or 0)

    # Maintenance: retention, orphans, keys, checks.

    def purge(self, older_than_days: int, *, at: datetime | None = None) -> int:
        """Erase every case created more than ``older_than_days`` ago; how many."""
        cutoff = (at or now()) - timedelta(days=older_than_days)
        with self.reading() as session:
            old = session.scalars(select(Case.id).where(Case.created_at < cutoff)).all()
        for case_id in old:
            self.erase_case(SYSTEM, case_id, action="case.purge")
        return len(old)

    def sweep_orphans(self, min_age_s: float = 3600) -> int:
        """Delete encrypted files no row names (left by a server killed between writing a
        file and committing its row, or between erasing a row and deleting its file)."""
        cutoff = now() - timedelta(seconds=min_age_s)
        used = select(Case.image_id).union(
            select(Case.overlay_id).where(Case.overlay_id.is_not(None)))
        with self.transaction() as session:  # rows no case names (none in normal operation)
            for blob in session.scalars(select(Blob).where(Blob.id.not_in(used),
                                                           Blob.created_at < cutoff)):
                session.delete(blob)
        with self.reading() as session:
            known = set(session.scalars(select(Blob.id)).all())
        return self.files.sweep(known, min_age_s)

    def rotate_keys(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Re-encrypt every stored value with a new key; how many values were rewritten.

        The new key is added to the key file first (old keys kept), so a kill at any point
        leaves every value readable; a second run finishes the work. The old keys leave the
        file only when nothing uses them.
        """
        if self.key_file is None:
            raise ConfigError("the store key comes from SKINEDGE_STORE_KEY: put a new key "
                              "first in that variable and run rotate-key with a key file, "
                              "or keep keys in a file (key_file)")
        with self.exclusive("rotating its key"):
            old = KeyRing.from_file(self.key_file, create=False)
            fresh = new_key()
            write_key_file(self.key_file, [fresh, *(encode_key(k) for k in old.keys)])
            self.keys = KeyRing.from_file(self.key_file, create=False)
            rewritten = 0
            with self.reading() as session:
                blob_ids = session.scalars(select(Blob.id)).all()
                case_ids = session.scalars(select(Case.id)).all()
            total = len(blob_ids) + len(case_ids)
            for n, blob_id in enumerate(blob_ids, 1):
                rewritten += self._rotate_blob(blob_id)
                if progress:
                    progress(n, total)
            for n, case_id in enumerate(case_ids, len(blob_ids) + 1):
                rewritten += self._rotate_case(case_id)
                if progress:
                    progress(n, total)
            write_key_file(self.key_file, [fresh])
            self.keys = KeyRing.from_file(self.key_file, create=False)
            with self.transaction() as session:
                self.record(session, SYSTEM, "store.rotate-key", detail=f"{rewritten} values")
        self._checkpoint()
        return rewritten

    def _rotate_blob(self, blob_id: str) -> int:
        """Re-encrypt one file with the newest key and rehash an image's dedup digest; an image
        whose new digest another blob already has (stored again after an interrupted
        rotation) is merged into that one."""
        if not self.files.exists(blob_id):
            return 0
        sealed = self.files.read(blob_id)
        plain = self.keys.decrypt(sealed, f"blob {blob_id}")
        merged = False
        with self.transaction() as session:
            blob = session.get(Blob, blob_id)
            if blob is not None and blob.kind == "image" and not blob.digest.startswith("u_"):
                digest = self.keys.digest(plain)
                twin = session.scalar(select(Blob.id).where(
                    Blob.owner_id == blob.owner_id, Blob.kind == "image",
                    Blob.digest == digest, Blob.id != blob_id))
                if twin is None:
                    blob.digest = digest
                else:
                    session.execute(update(Case).where(Case.image_id == blob_id)
                                    .values(image_id=twin))
                    session.delete(blob)
                    merged = True
        if merged:
            self.files.delete(blob_id)
            return 1
        if self.keys.is_current(sealed):
            return 0
        self.files.write(blob_id, self.keys.encrypt(plain, f"blob {blob_id}"))
        return 1

    def _rotate_case(self, case_id: str) -> int:
        count = 0
        with self.transaction() as session:
            case = session.get(Case, case_id)
            if case is None:
                return 0
            for column in ("patient_ref", "body_site", "review_note"):
                sealed = getattr(case, f"{column}_enc")
                if sealed is None or self.keys.is_current(sealed):
                    continue
                context = f"cases.{column} {case_id}"
                setattr(case, f"{column}_enc",
                        self.keys.encrypt(self.keys.decrypt(sealed, context), context))
                count += 1
        return count

    def check_files(self) -> list[str]:
        """``blob id: problem`` for every stored file that is missing or does not decrypt."""
        problems = []
        with self.reading() as session:
            blob_ids = session.scalars(select(Blob.id)).all()
        for blob_id in blob_ids:
            try:
                self.decrypt(self.files.read(blob_id), f"blob {blob_id}")
            except (StoreDamagedError, StoreKeyError) as exc:
                problems.append(f"{blob_id}: {exc}")
        return problems

    def integrity_check(self) -> str:
        """``ok``, or what SQLite's ``PRAGMA integrity_check`` found (other databases: ok)."""
        if self.engine.dialect.name != "sqlite":
            return "ok"
        with self.reading() as session:
            return "; ".join(row[0] for row in session.execute(text("PRAGMA integrity_check")))

    def ping(self) -> bool:
        try:
            with self.reading() as session:
                session.execute(text("SELECT 1"))
            return True
        except OperationalError:
            return False


def _unique_digest() -> str:
    """A digest no other blob has: for overlays, and for an image stored on its own."""
    return "u_" + secrets.token_hex(31)


def token_hash(token: str) -> str:
    """What the users table keeps of a token: a 256-bit random token needs no slow hash."""
    return hashlib.sha256(token.encode()).hexdigest()

