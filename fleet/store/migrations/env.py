"""Alembic's environment for the fleet store: always run by fleet.store.migrate on a connection it opened (inside
its transaction, under its lock), never from an alembic.ini."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
