"""Alembic environment: always runs on a connection handed over by `gateway.db`."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import gateway.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

target_metadata = SQLModel.metadata
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through gateway.db.migrate(), which supplies a connection")

context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
