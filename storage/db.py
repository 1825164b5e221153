"""Engine, sessions and schema migrations: how pricecast talks to SQLite or PostgreSQL.

Every database failure a user can fix (a malformed URL, a server that is down) leaves this module
as a `pricecast.errors` exception with the password masked and a hint on what to do.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.orm import Session

from pricecast.errors import ConfigError, ServiceUnavailable
from pricecast.urls import mask_secrets, mask_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
HINT = "Start it (make up) or check PRICECAST_DATABASE_URL"
# Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK_KEY = 730_119_990
_upgraded: set[str] = set()
_upgraded_lock = threading.Lock()


def _shown(url: str | URL) -> str:
    """`url` as it may appear in a message: the password masked."""
    return mask_url(url if isinstance(url, str) else url.render_as_string(hide_password=False))


def make_engine(url: str | URL) -> Engine:
    """An engine for `url` (SQLite file or PostgreSQL). Raises ConfigError on a bad URL.

    A SQLite file's folder is created; SQLite waits up to 30 s for a lock instead of failing.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            # Not echoed: a URL that does not parse may still hold a password.
            f"malformed database URL: {exc}. Use e.g. "
            "postgresql+psycopg2://user:password@host:5432/db or sqlite:///path/to/file.db "
            "in PRICECAST_DATABASE_URL"
        ) from None
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        engine = create_engine(parsed, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError) as exc:
        raise ConfigError(
            f"unsupported database driver in {_shown(parsed)}: {exc}. "
            "Use postgresql+psycopg2://... or sqlite:///... in PRICECAST_DATABASE_URL"
        ) from None
    except ArgumentError as exc:
        raise ConfigError(f"invalid database URL {_shown(parsed)}: {exc}") from None
    if engine.dialect.is_async:
        engine.dispose()
        raise ConfigError(
            f"async driver in {_shown(parsed)} is not supported; "
            "use postgresql+psycopg2://... in PRICECAST_DATABASE_URL"
        )
    return engine


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        # WAL lets the nightly flow read while an ingest writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def unavailable(engine_or_url: Engine | str | URL, exc: BaseException) -> ServiceUnavailable:
    """A ServiceUnavailable for a database that refused or could not take a connection."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else engine_or_url
    orig = getattr(exc, "orig", None) or exc
    reason = mask_secrets((str(orig).strip().splitlines() or [type(orig).__name__])[0])
    return ServiceUnavailable(f"database unreachable at {_shown(url)}: {reason}. {HINT}")


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit if the block succeeds, roll back (nothing kept) if it raises.

    The connection is opened up front so that a database that is down surfaces as
    ServiceUnavailable, not as an error from the middle of the block.
    """
    session = Session(engine, expire_on_commit=False)
    try:
        try:
            session.connection()
        except (OperationalError, InterfaceError) as exc:
            raise unavailable(engine, exc) from exc
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config():  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(engine_or_url: Engine | str | URL) -> None:
    """Apply every Alembic migration up to head, in one transaction (a no-op when current).

    On PostgreSQL an advisory lock makes concurrent upgrades wait for each other.
    """
    from alembic import command

    engine = engine_or_url if isinstance(engine_or_url, Engine) else make_engine(engine_or_url)
    config = _alembic_config()
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except (OperationalError, InterfaceError) as exc:
        if _is_connect_failure(exc):
            raise unavailable(engine, exc) from exc
        raise
    finally:
        if engine is not engine_or_url:
            engine.dispose()
    with _upgraded_lock:
        _upgraded.add(_key(engine))


def ensure_schema(engine: Engine) -> None:
    """Upgrade on first use in this process; later calls for the same database are free."""
    with _upgraded_lock:
        done = _key(engine) in _upgraded
    if not done:
        upgrade(engine)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, None if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except (OperationalError, InterfaceError) as exc:
        raise unavailable(engine, exc) from exc


def _key(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _is_connect_failure(exc: DBAPIError) -> bool:
    """True when the error happened while connecting (no statement was being run)."""
    return exc.statement is None or exc.connection_invalidated
