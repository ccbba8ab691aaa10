"""Alembic environment: the connection is handed in by ``nscmonitor.store.schema`` so the
same code migrates SQLite and PostgreSQL, with no alembic.ini to keep in step."""

from alembic import context

from nscmonitor.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes["connection"]
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
