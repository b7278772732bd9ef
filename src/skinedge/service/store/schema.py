"""The feedback store's tables (SQLAlchemy 2). Alembic migrations in ``migrations/`` create
them; a change here needs a new migration (``tests/service/test_store.py`` compares the two).

Patient data lives in ``cases`` (encrypted columns end in ``_enc``) and in the encrypted files
that ``blobs`` rows name. ``audit`` holds who did what to which case, never patient data, and
refuses updates and deletes (a trigger in the migration).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy import true as sql_true
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # clinician | admin
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Blob(Base):
    """One encrypted file of the image store (``DATA_DIR/blobs/ab/<id>``): an uploaded image
    (metadata stripped) or a Grad-CAM overlay. An image uploaded twice by one clinician is
    stored once (same keyed ``digest``)."""

    __tablename__ = "blobs"
    __table_args__ = (UniqueConstraint("owner_id", "kind", "digest"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))  # image | overlay
    digest: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    media_type: Mapped[str] = mapped_column(String(32), server_default="image/png")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Case(Base):
    __tablename__ = "cases"
    __table_args__ = (Index("ix_cases_owner_created", "owner_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    image_id: Mapped[str] = mapped_column(ForeignKey("blobs.id"))
    overlay_id: Mapped[str | None] = mapped_column(ForeignKey("blobs.id"), nullable=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list] = mapped_column(JSON)  # class codes, in the model's order
    probabilities: Mapped[list] = mapped_column(JSON)  # one per class, same order
    prediction: Mapped[str] = mapped_column(String(32))
    malignant: Mapped[bool] = mapped_column(Boolean)
    malignant_probability: Mapped[float] = mapped_column(Float)
    model_label: Mapped[str] = mapped_column(String(64))
    model_architecture: Mapped[str] = mapped_column(String(128))
    card_sha256: Mapped[str] = mapped_column(String(64))
    latency_ms: Mapped[float] = mapped_column(Float)
    # The model card's lesion check: False: not a dermoscopic lesion image (no diagnosis);
    # its score, None where the card has no check.
    lesion: Mapped[bool] = mapped_column(Boolean, server_default=sql_true())
    ood_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    patient_ref_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    body_site_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="unreviewed")
    review_action: Mapped[str | None] = mapped_column(String(16), nullable=True)
    review_label: Mapped[str | None] = mapped_column(String(32), nullable=True)
    review_note_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)


class AuditEvent(Base):
    """Append-only: who (user id and name), when, what (``case.create``, ``case.read``,
    ``case.erase``, ...), which case, from which address, and the outcome."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    case_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcome: Mapped[str] = mapped_column(String(32), default="ok")
    detail: Mapped[str | None] = mapped_column(String(200), nullable=True)
