"""Alembic environment of the catalogue, run by synthmed.catalogue.migrate (which passes the connection)."""

from __future__ import annotations

from alembic import context

from synthmed.catalogue.models import Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("run the catalogue migrations with synthmed db upgrade (synthmed.catalogue.migrate)")
# Batch mode: SQLite cannot ALTER most things, so Alembic copies the table instead (no-op on PostgreSQL).
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
