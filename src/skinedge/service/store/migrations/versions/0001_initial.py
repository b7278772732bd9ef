"""The first feedback store: users, blobs, cases, and the append-only audit log.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("revoked_at", _WHEN, nullable=True),
    )
    op.create_table(
        "blobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.UniqueConstraint("owner_id", "kind", "digest"),
    )
    op.create_table(
        "cases",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("image_id", sa.String(40), sa.ForeignKey("blobs.id"), nullable=False),
        sa.Column("overlay_id", sa.String(40), sa.ForeignKey("blobs.id"), nullable=True),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("classes", sa.JSON, nullable=False),
        sa.Column("probabilities", sa.JSON, nullable=False),
        sa.Column("prediction", sa.String(32), nullable=False),
        sa.Column("malignant", sa.Boolean, nullable=False),
        sa.Column("malignant_probability", sa.Float, nullable=False),
        sa.Column("model_label", sa.String(64), nullable=False),
        sa.Column("model_architecture", sa.String(128), nullable=False),
        sa.Column("card_sha256", sa.String(64), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("patient_ref_enc", sa.LargeBinary, nullable=True),
        sa.Column("body_site_enc", sa.LargeBinary, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("review_action", sa.String(16), nullable=True),
        sa.Column("review_label", sa.String(32), nullable=True),
        sa.Column("review_note_enc", sa.LargeBinary, nullable=True),
        sa.Column("reviewed_at", _WHEN, nullable=True),
        sa.Column("reviewer_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
    )
    op.create_index("ix_cases_owner_created", "cases", ["owner_id", "created_at"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", _WHEN, nullable=False),
        sa.Column("actor_id", sa.Integer, nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("case_id", sa.String(40), nullable=True),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("detail", sa.String(200), nullable=True),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_index("ix_audit_case_id", "audit", ["case_id"])
    _append_only("audit")


def _append_only(table: str) -> None:
    """Refuse UPDATE and DELETE on ``table`` in the database itself."""
    message = f"{table} is append-only"
    if op.get_context().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                       f"BEGIN SELECT RAISE(ABORT, '{message}'); END")
    elif op.get_context().dialect.name == "postgresql":
        op.execute(f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                   f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$")
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()")
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_no_truncate ON audit")
        op.execute("DROP TRIGGER IF EXISTS audit_append_only ON audit")
        op.execute("DROP FUNCTION IF EXISTS audit_append_only()")
    op.drop_table("audit")
    op.drop_table("cases")
    op.drop_table("blobs")
    op.drop_table("users")
