"""Alembic environment: runs pricecast's migrations on the connection `storage.db.upgrade` passes.

For the alembic command line (developers): `alembic -c storage/alembic.ini -x url=URL upgrade head`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from storage.models import import_all_models

# Other storage modules (runs, backfill) put their tables on the same Base: load them all.
target_metadata = import_all_models()
config = context.config


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("alembic: pass the database with -x url=postgresql+psycopg2://...")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("alembic: offline (--sql) mode is not supported; run against a database")
run_migrations_online()
