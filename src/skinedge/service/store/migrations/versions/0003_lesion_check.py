"""Cases keep what the model card's lesion check said: a lesion image or not, and its score.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Cases stored before the check existed were all answered as lesions.
    op.add_column("cases", sa.Column("lesion", sa.Boolean, nullable=False,
                                     server_default=sa.true()))
    op.add_column("cases", sa.Column("ood_score", sa.Float, nullable=True))


def downgrade() -> None:
    refused = op.get_bind().execute(
        sa.text("SELECT count(*) FROM cases WHERE NOT lesion")).scalar()
    if refused:
        raise RuntimeError(f"{refused} cases were refused as not lesion images, which revision "
                           "0002 cannot record (it would show them as diagnosed); erase them, "
                           "or stay at this revision")
    # Plain DROP COLUMNs (SQLite >= 3.35), as in 0002: a batch rebuild would drop the table.
    op.execute("ALTER TABLE cases DROP COLUMN ood_score")
    op.execute("ALTER TABLE cases DROP COLUMN lesion")
