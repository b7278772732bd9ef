"""Blobs say what they hold: an upload's own JPEG (metadata removed) or a PNG.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every blob written before this revision is a PNG (the store kept nothing else).
    op.add_column("blobs", sa.Column("media_type", sa.String(32), nullable=False,
                                     server_default="image/png"))


def downgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("media_type")
