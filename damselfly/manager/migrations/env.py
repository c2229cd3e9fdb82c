"""Alembic's environment for the manager: run on the connection damselfly.manager.database.migrate
hands over (no alembic.ini, no URL of its own)."""

from alembic import context

from damselfly.manager.database import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
