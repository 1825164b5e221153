"""The `tickers` table and its repository, on SQLite and real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from pricecast.errors import DataError
from storage.db import current_revision, ensure_schema, make_engine, session_scope, upgrade
from storage.models import import_all_models
from storage.runs import add_promotion, begin_run, fail_run, finish_run
from storage.universe import (
    Ticker,
    add_ticker,
    add_tickers,
    check_ticker,
    gate_decisions,
    get_ticker,
    list_tickers,
    nights_as_of,
    nights_between,
    remove_ticker,
    set_enabled,
)


@pytest.fixture
def engine(database_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    ensure_schema(engine)
    yield engine
    engine.dispose()


def test_migration_0004_creates_the_table_the_model_describes(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    assert (current_revision(engine) or "") >= "0004"
    columns = [c["name"] for c in inspect(engine).get_columns("tickers")]
    assert columns == ["ticker", "source", "enabled", "added_at", "updated_at"]
    assert inspect(engine).get_pk_constraint("tickers")["constrained_columns"] == ["ticker"]
    metadata = import_all_models()
    assert "tickers" in metadata.tables  # storage.universe is loaded (imported above)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if "tickers" in repr(d)] == []
    engine.dispose()


def test_add_list_disable_enable_remove(engine) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        add_ticker(session, ticker=" ETH-USD ", source="http")
        add_ticker(session, ticker="BTC-USD", source="synthetic:7")
    with session_scope(engine) as session:
        rows = list_tickers(session)
        assert [(r.ticker, r.source, r.enabled) for r in rows] == [
            ("BTC-USD", "synthetic:7", True),
            ("ETH-USD", "http", True),
        ]
        added = rows[0].added_at
        assert rows[0].updated_at == added
    with session_scope(engine) as session:
        set_enabled(session, ticker="BTC-USD", enabled=False)
    with session_scope(engine) as session:
        assert [r.ticker for r in list_tickers(session, enabled_only=True)] == ["ETH-USD"]
        row = get_ticker(session, ticker="BTC-USD")
        assert row is not None and not row.enabled
        assert row.updated_at > added.replace(tzinfo=row.updated_at.tzinfo)
    with session_scope(engine) as session:
        set_enabled(session, ticker="BTC-USD", enabled=True)
        remove_ticker(session, ticker="ETH-USD")
    with session_scope(engine) as session:
        assert [(r.ticker, r.enabled) for r in list_tickers(session)] == [("BTC-USD", True)]


def test_duplicates_and_unknown_tickers_are_clear_errors(engine) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        add_ticker(session, ticker="BTC-USD", source="http")
    with (
        pytest.raises(DataError, match="already in the universe: BTC-USD"),
        session_scope(engine) as session,
    ):
        add_ticker(session, ticker="BTC-USD", source="synthetic")
    with (
        pytest.raises(DataError, match="given more than once: SOL-USD"),
        session_scope(engine) as session,
    ):
        add_tickers(session, [("SOL-USD", "http"), ("ADA-USD", "http"), ("SOL-USD", "http")])
    for action in (
        lambda s: set_enabled(s, ticker="DOGE", enabled=False),
        lambda s: remove_ticker(s, ticker="DOGE"),
    ):
        unknown = r"unknown ticker 'DOGE'.*\(BTC-USD\).*universe add"
        with pytest.raises(DataError, match=unknown), session_scope(engine) as session:
            action(session)


def test_add_many_is_all_or_nothing(engine) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        add_ticker(session, ticker="BTC-USD", source="http")
    with (
        pytest.raises(DataError, match="already in the universe: BTC-USD"),
        session_scope(engine) as session,
    ):
        add_tickers(session, [("ETH-USD", "http"), ("BTC-USD", "http")])
    with session_scope(engine) as session:
        assert [r.ticker for r in list_tickers(session)] == ["BTC-USD"]


@pytest.mark.parametrize(
    ("ticker", "message"),
    [
        ("", "empty ticker"),
        ("BTC USD", "characters"),
        ("X" * 33, "longer than 32"),
        ("-X", "characters"),
    ],
)
def test_bad_tickers_are_refused(ticker: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        check_ticker(ticker)


def test_good_tickers_pass() -> None:
    assert [check_ticker(t) for t in ("BTC-USD", "BRK.B", "^GSPC", "EURUSD=X")] == [
        "BTC-USD",
        "BRK.B",
        "^GSPC",
        "EURUSD=X",
    ]


def test_nights_and_gate_decisions_of_the_universe(engine) -> None:  # type: ignore[no-untyped-def]
    night, earlier = dt.date(2024, 3, 10), dt.date(2024, 3, 3)
    with session_scope(engine) as session:
        for ticker in ("A", "B"):
            begin_run(
                session, ticker=ticker, as_of=night, last_complete_week=None, flow_run_id=None
            )
        begin_run(session, ticker="A", as_of=earlier, last_complete_week=None, flow_run_id=None)
        finish_run(session, ticker="A", as_of=night, champion_version=2, timings={"x": 1.0})
        fail_run(session, ticker="B", as_of=night, error="SourceError: gone")
        decisions: list[tuple[Literal["keep", "promote"], int]] = [("keep", 1), ("promote", 2)]
        for action, version in decisions:  # the later decision wins
            add_promotion(
                session, ticker="A", as_of=night, action=action, model_name="pricecast-A",
                model_version=version, previous_version=1, reason="r", actor="nightly",
                candidate="fresh", numbers={"naive": {"mape": 7.5}},
            )  # fmt: skip
        add_promotion(
            session, ticker="A", as_of=None, action="rollback", model_name="pricecast-A",
            model_version=1, previous_version=2, reason="r", actor="me",
        )  # fmt: skip
    with session_scope(engine) as session:
        nights = nights_as_of(session, as_of=night, tickers=["A", "B", "C"])
        assert {t: (r.status, r.error) for t, r in nights.items()} == {
            "A": ("done", None),
            "B": ("failed", "SourceError: gone"),
        }
        between = nights_between(session, tickers=["A"], start=earlier, end=night)
        assert [r.as_of for r in between] == [earlier, night]
        gates = gate_decisions(session, as_of=night, tickers=["A", "B"])
        assert list(gates) == ["A"]
        assert (gates["A"].action, gates["A"].model_version) == ("promote", 2)
        assert nights_as_of(session, as_of=night, tickers=[]) == {}


def test_the_model_is_on_the_shared_base() -> None:
    assert Ticker.metadata is import_all_models()
