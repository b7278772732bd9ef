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
    jpegs = op.get_bind().execute(
        sa.text("SELECT count(*) FROM blobs WHERE media_type <> 'image/png'")).scalar()
    if jpegs:
        raise RuntimeError(f"{jpegs} stored images are JPEGs, which revision 0001 cannot tell "
                           "from PNGs; export them (skinedge feedback export) before downgrading")
    # A plain DROP COLUMN (SQLite >= 3.35): a batch rebuild would drop the table that cases
    # point at.
    op.execute("ALTER TABLE blobs DROP COLUMN media_type")
