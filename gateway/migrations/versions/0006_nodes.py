"""nodes

Model servers on other machines (issue 12, part 3): the `nodes` table (one row per machine
running `mlx-manager node`, updated by its heartbeats, shared by every replica) and
`server_profiles.nodes` (null = this machine, as before; a list of node names, or ["*"]).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 18:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_nodes_name", "nodes", ["name"], unique=True)
    with op.batch_alter_table("server_profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("nodes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("server_profiles", schema=None) as batch_op:
        batch_op.drop_column("nodes")
    op.drop_index("ix_nodes_name", table_name="nodes")
    op.drop_table("nodes")
