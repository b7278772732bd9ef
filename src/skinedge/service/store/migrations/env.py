"""Alembic environment: run by :func:`skinedge.service.store.db.migrate` with an open
connection (``config.attributes["connection"]``); there is no alembic.ini to keep in step."""

from alembic import context

from skinedge.service.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
