"""download progress columns

Adds what resuming a download needs (the commit it began on) and per-file progress, and widens
the byte counters to 64 bits (model files pass 2 GiB; PostgreSQL's INTEGER stops there).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 17:01:23.057561
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("downloads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("commit_sha", sa.String(length=64), nullable=True))
        # A server default so rows written before this migration get a value.
        batch_op.add_column(
            sa.Column("files_done", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("files_total", sa.Integer(), nullable=True))
        batch_op.alter_column(
            "bytes_done", existing_type=sa.INTEGER(), type_=sa.BigInteger(), existing_nullable=False
        )
        batch_op.alter_column(
            "bytes_total", existing_type=sa.INTEGER(), type_=sa.BigInteger(), existing_nullable=True
        )


def downgrade() -> None:
    with op.batch_alter_table("downloads", schema=None) as batch_op:
        batch_op.alter_column(
            "bytes_total", existing_type=sa.BigInteger(), type_=sa.INTEGER(), existing_nullable=True
        )
        batch_op.alter_column(
            "bytes_done", existing_type=sa.BigInteger(), type_=sa.INTEGER(), existing_nullable=False
        )
        batch_op.drop_column("files_total")
        batch_op.drop_column("files_done")
        batch_op.drop_column("commit_sha")
