"""downloads host

A download fills one machine's HF cache, while replicas share the table: each row says which
machine (`host`), so a gateway lists, resumes and cancels only its own. Rows made before this
have host '' and are treated as this machine's by every gateway (one gateway made them).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 18:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("downloads", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("host", sa.String(length=255), server_default="", nullable=False)
        )
        batch_op.create_index("ix_downloads_host", ["host"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("downloads", schema=None) as batch_op:
        batch_op.drop_index("ix_downloads_host")
        batch_op.drop_column("host")
