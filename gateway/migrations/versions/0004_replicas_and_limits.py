"""replicas and limits

For gateways sharing one database (issue 12): running_instances say which machine and which
gateway process recorded them (a replica must not reap another's servers); usage rows get the
gateway's own id (record_id, unique) so a batch written twice is not counted twice; keys and
users get optional limits (rpm, tpm, a token budget per day or month), counted in rate_windows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 17:37:46.052067
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

LIMITED = ("api_keys", "users")


def upgrade() -> None:
    op.create_table(
        "rate_windows",
        sa.Column("subject", sa.String(length=40), nullable=False),
        sa.Column("window", sa.String(length=24), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subject", "window"),
    )
    with op.batch_alter_table("rate_windows", schema=None) as batch_op:
        batch_op.create_index("ix_rate_windows_updated_at", ["updated_at"], unique=False)
    for table in LIMITED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("rpm", sa.Integer(), nullable=True))
            batch_op.add_column(sa.Column("tpm", sa.BigInteger(), nullable=True))
            batch_op.add_column(sa.Column("token_budget", sa.BigInteger(), nullable=True))
            batch_op.add_column(sa.Column("budget_period", sa.String(length=8), nullable=True))
    with op.batch_alter_table("running_instances", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("host", sa.String(length=255), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("gateway_create_time", sa.Float(), server_default="0", nullable=False)
        )
        batch_op.create_index("ix_running_instances_host", ["host"], unique=False)
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.add_column(sa.Column("record_id", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_usage_record_id", ["record_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_record_id")
        batch_op.drop_column("record_id")
    with op.batch_alter_table("running_instances", schema=None) as batch_op:
        batch_op.drop_index("ix_running_instances_host")
        batch_op.drop_column("gateway_create_time")
        batch_op.drop_column("host")
    for table in LIMITED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("budget_period")
            batch_op.drop_column("token_budget")
            batch_op.drop_column("tpm")
            batch_op.drop_column("rpm")
    with op.batch_alter_table("rate_windows", schema=None) as batch_op:
        batch_op.drop_index("ix_rate_windows_updated_at")
    op.drop_table("rate_windows")
