"""Engine, sessions and migrations on SQLite and real PostgreSQL."""

from __future__ import annotations

import socket

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from pricecast.errors import ConfigError, ServiceUnavailable
from storage.db import (
    MIGRATIONS_DIR,
    current_revision,
    ensure_schema,
    make_engine,
    session_scope,
    upgrade,
)
from storage.models import RejectedRow, import_all_models


def test_upgrade_creates_the_contract_tables_and_is_idempotent(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    upgrade(database_url)  # a second run (and by URL) is a no-op
    tables = set(inspect(engine).get_table_names())
    assert {"daily_prices", "price_revisions", "rejected_rows", "alembic_version"} <= tables
    columns = [c["name"] for c in inspect(engine).get_columns("daily_prices")]
    assert columns[:10] == [
        "ticker",
        "date",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "market_cap",
        "source",
        "ingested_at",
    ]
    assert inspect(engine).get_pk_constraint("daily_prices")["constrained_columns"] == [
        "ticker",
        "date",
    ]
    newest = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert newest is not None and current_revision(engine) == newest
    engine.dispose()


def test_migrations_match_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), import_all_models())
    assert diff == []
    engine.dispose()


def _rejected(ticker: str) -> RejectedRow:
    return RejectedRow(
        ticker=ticker, source="test", line_number=2, raw="x", reason="bad", content_key=ticker
    )


def test_session_scope_commits_on_success_and_rolls_back_on_error(database_url: str) -> None:
    engine = make_engine(database_url)
    ensure_schema(engine)
    with session_scope(engine) as session:
        session.add(_rejected("KEPT"))
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        session.add(_rejected("LOST"))
        session.flush()
        raise RuntimeError("boom")
    with session_scope(engine) as session:
        tickers = session.scalars(select(RejectedRow.ticker)).all()
    assert tickers == ["KEPT"]
    engine.dispose()


def test_close_must_be_positive_in_the_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    with pytest.raises(Exception, match="(?i)check|constraint"), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO daily_prices (ticker, date, close, source, ingested_at) "
                "VALUES ('X', '2024-01-01', 0, 's', '2024-01-02 00:00:00+00')"
            )
        )
    engine.dispose()


def test_sqlite_file_folder_is_created(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'deep' / 'er' / 'p.db'}"
    upgrade(url)
    assert (tmp_path / "deep" / "er" / "p.db").exists()


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("not a url at all", "malformed database URL"),
        ("nosuchdb://host/db", "unsupported database driver"),
        ("postgresql+asyncpg://u:pw@localhost/db", "async driver"),
    ],
)
def test_bad_urls_are_config_errors(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        make_engine(url)
    assert "pw" not in str(info.value).replace("psycopg2", "")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_down_is_service_unavailable_with_password_masked() -> None:
    url = f"postgresql+psycopg2://alice:s3cret@127.0.0.1:{_closed_port()}/prices"
    engine = make_engine(url)
    for action in (lambda: upgrade(engine), lambda: session_scope(engine).__enter__()):
        with pytest.raises(ServiceUnavailable) as info:
            action()
        message = str(info.value)
        assert "s3cret" not in message
        assert "alice:***@127.0.0.1" in message
        assert "PRICECAST_DATABASE_URL" in message
