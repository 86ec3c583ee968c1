"""api key scopes

What a key may call: `inference` (/v1) and `admin` (/api). Keys made before this keep both, so
nothing that works today stops working; new keys default to inference only (the column's
default becomes that once existing rows have both).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 17:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "scopes",
                sa.JSON(),
                nullable=False,
                server_default=sa.text('\'["inference", "admin"]\''),
            )
        )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.alter_column(
            "scopes", existing_type=sa.JSON(), server_default=sa.text("'[\"inference\"]'")
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("scopes")
