"""Price repository on SQLite and real PostgreSQL: upserts, revisions, rejects, as-of reads."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from pricecast.errors import DataError
from storage import prices
from storage.db import ensure_schema, make_engine, session_scope
from storage.prices import (
    PriceRow,
    Rejection,
    UpsertCounts,
    list_tickers,
    price_coverage,
    read_closes,
    read_prices,
    read_rejected,
    read_revisions,
    record_rejected,
    upsert_prices,
)

DAY0 = dt.date(2024, 1, 1)


def _rows(n: int, *, start: dt.date = DAY0, close0: float = 100.0) -> list[PriceRow]:
    return [
        PriceRow(
            start + dt.timedelta(days=i),
            close0 + i,
            close0 + i + 2.5,
            close0 + i - 1.25,
            close0 + i + 0.5,
            None if i % 3 == 0 else 1e6 + i,
            1e11 + i,
        )
        for i in range(n)
    ]


@pytest.fixture
def engine(database_url: str):
    engine = make_engine(database_url)
    ensure_schema(engine)
    yield engine
    engine.dispose()


def _upsert(engine, rows, *, ticker="BTC-USD", source="test") -> UpsertCounts:
    with session_scope(engine) as session:
        return upsert_prices(session, ticker=ticker, rows=rows, source=source)


def test_first_load_then_identical_reload_changes_nothing(engine) -> None:
    rows = _rows(20)
    assert _upsert(engine, list(reversed(rows))) == UpsertCounts(20, 0, 0)
    with session_scope(engine) as session:
        before = read_prices(session, ticker="BTC-USD")
    assert _upsert(engine, rows, source="other") == UpsertCounts(0, 0, 20)
    with session_scope(engine) as session:
        assert read_prices(session, ticker="BTC-USD") == before == rows
        assert read_revisions(session, ticker="BTC-USD") == []


def test_changed_values_update_and_keep_old_values_in_revisions(engine) -> None:
    rows = _rows(10)
    _upsert(engine, rows, source="v1")
    changed = list(rows)
    changed[2] = rows[2]._replace(close=999.0)
    changed[3] = rows[3]._replace(volume=5.0)  # NULL -> value is a change too
    changed[4] = rows[4]._replace(market_cap=None)  # value -> NULL as well
    extra = _rows(2, start=DAY0 + dt.timedelta(days=10), close0=300.0)
    counts = _upsert(engine, changed[::-1] + extra, source="v2")
    assert counts == UpsertCounts(inserted=2, updated=3, unchanged=7)
    with session_scope(engine) as session:
        stored = {row.date: row for row in read_prices(session, ticker="BTC-USD")}
        revisions = read_revisions(session, ticker="BTC-USD")
    assert stored[rows[2].date].close == 999.0
    assert stored[rows[3].date].volume == 5.0
    assert stored[rows[4].date].market_cap is None
    assert len(stored) == 12
    assert [(r.date, r.close, r.volume, r.market_cap) for r in revisions] == [
        (rows[2].date, rows[2].close, rows[2].volume, rows[2].market_cap),
        (rows[3].date, rows[3].close, None, rows[3].market_cap),
        (rows[4].date, rows[4].close, rows[4].volume, rows[4].market_cap),
    ]
    assert {r.source for r in revisions} == {"v1"}
    assert {r.revised_by_source for r in revisions} == {"v2"}
    # Applying the same change again is now a no-op.
    assert _upsert(engine, changed, source="v2") == UpsertCounts(0, 0, 10)


def test_several_loads_in_one_transaction(engine) -> None:
    rows = _rows(6)
    with session_scope(engine) as session:
        assert upsert_prices(session, ticker="A", rows=rows, source="s") == UpsertCounts(6, 0, 0)
        assert upsert_prices(session, ticker="A", rows=rows, source="s") == UpsertCounts(0, 0, 6)
        changed = [rows[0]._replace(close=1.0), *_rows(2, start=DAY0 - dt.timedelta(2))]
        assert upsert_prices(session, ticker="A", rows=changed, source="s") == UpsertCounts(2, 1, 0)
        assert upsert_prices(session, ticker="B", rows=rows, source="s") == UpsertCounts(6, 0, 0)
    with session_scope(engine) as session:
        assert len(read_prices(session, ticker="A")) == 8
        assert upsert_prices(session, ticker="A", rows=rows[1:], source="s") == UpsertCounts(
            0, 0, 5
        )


def test_floats_are_stored_bit_for_bit(engine) -> None:
    awkward = [0.1 + 0.2, 1 / 3, 123456.789e-7, 5e-324 * 1e300, math.pi * 1e12]
    rows = [
        PriceRow(DAY0 + dt.timedelta(days=i), v, v * 2, v / 2, v, v, v)
        for i, v in enumerate(awkward)
    ]
    _upsert(engine, rows)
    with session_scope(engine) as session:
        assert read_prices(session, ticker="BTC-USD") == rows
    assert _upsert(engine, rows) == UpsertCounts(0, 0, len(rows))


@pytest.mark.parametrize("first_load", [True, False])
def test_same_date_twice_is_refused_and_nothing_is_written(engine, first_load) -> None:
    if not first_load:
        _upsert(engine, _rows(3))
    dup = [*_rows(5), _rows(5)[1]._replace(close=1.0)]
    with pytest.raises(DataError, match="twice"):
        _upsert(engine, dup)
    with session_scope(engine) as session:
        assert len(read_prices(session, ticker="BTC-USD")) == (0 if first_load else 3)


@pytest.mark.parametrize("bad_close", [float("nan"), 0.0, -1.0])
def test_a_close_that_is_not_positive_is_refused(engine, bad_close) -> None:
    rows = _rows(3)
    rows[1] = rows[1]._replace(close=bad_close)
    with pytest.raises(DataError, match="positive"):
        _upsert(engine, rows)


def test_rows_stream_in_batches(engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prices, "BATCH_ROWS", 7)
    rows = _rows(40)
    assert _upsert(engine, iter(rows)) == UpsertCounts(40, 0, 0)
    more = [r._replace(close=r.close + 1) for r in rows[:20]] + _rows(
        5, start=DAY0 - dt.timedelta(5)
    )
    assert _upsert(engine, (r for r in more)) == UpsertCounts(5, 20, 0)


def test_read_closes_sees_only_rows_up_to_as_of_for_its_ticker(engine) -> None:
    _upsert(engine, _rows(10))
    _upsert(engine, _rows(10, close0=5.0), ticker="ETH-USD")
    with session_scope(engine) as session:
        closes = read_closes(session, ticker="BTC-USD", as_of=DAY0 + dt.timedelta(days=3))
        assert closes == [(DAY0 + dt.timedelta(days=i), 100.5 + i) for i in range(4)]
        assert read_closes(session, ticker="BTC-USD", as_of=DAY0 - dt.timedelta(days=1)) == []
        assert list_tickers(session) == ["BTC-USD", "ETH-USD"]
        coverage = price_coverage(session, ticker="BTC-USD")
        assert (coverage.first, coverage.last, coverage.count) == (
            DAY0,
            DAY0 + dt.timedelta(days=9),
            10,
        )
        assert price_coverage(session, ticker="BTC-USD", as_of=DAY0).count == 1
        assert price_coverage(session, ticker="NOPE") is None


def test_rejected_rows_are_recorded(engine) -> None:
    with session_scope(engine) as session:
        count = record_rejected(
            session,
            ticker="BTC-USD",
            source="csv:prices.csv",
            rejections=[Rejection(3, "2024-01-02,,,", "close is missing"), Rejection(9, "x", "y")],
        )
    assert count == 2
    with session_scope(engine) as session:
        stored = read_rejected(session, ticker="BTC-USD")
    assert [(r.line_number, r.raw, r.reason, r.source) for r in stored] == [
        (3, "2024-01-02,,,", "close is missing", "csv:prices.csv"),
        (9, "x", "y", "csv:prices.csv"),
    ]


def test_rejected_rows_are_stored_once_per_source_line_and_content(engine) -> None:
    rejections = [
        Rejection(3, "2024-01-02,,,", "close is missing"),
        Rejection(None, '["candle"]', "no line"),
        Rejection(3, "2024-01-02,,,", "the same row twice in one batch"),
    ]
    with session_scope(engine) as session:
        assert record_rejected(session, ticker="BTC-USD", source="a", rejections=rejections) == 2
    with session_scope(engine) as session:
        assert record_rejected(session, ticker="BTC-USD", source="a", rejections=rejections) == 0
        assert record_rejected(session, ticker="BTC-USD", source="b", rejections=rejections) == 2
        assert record_rejected(session, ticker="ETH-USD", source="a", rejections=rejections) == 2
        changed = [
            Rejection(4, "2024-01-02,,,", "another line"),
            Rejection(3, "2024-01-02,1,,", ""),
        ]
        assert record_rejected(session, ticker="BTC-USD", source="a", rejections=changed) == 2
    with session_scope(engine) as session:
        stored = read_rejected(session, ticker="BTC-USD")
    assert [(r.source, r.line_number, r.reason) for r in stored] == [
        ("a", 3, "close is missing"),
        ("a", None, "no line"),
        ("b", 3, "close is missing"),
        ("b", None, "no line"),
        ("a", 4, "another line"),
        ("a", 3, ""),
    ]


def test_the_rejection_key_matches_the_migrations_frozen_copy() -> None:
    import importlib

    migration = importlib.import_module(
        "storage.migrations.versions.0003_rejected_once_and_lock_tokens"
    )
    for line, raw in ((3, "2024-01-02,,,"), (None, "x"), (0, "")):
        assert prices.rejection_key(line, raw) == migration._content_key(line, raw)
    assert prices.rejection_key(None, "3\nx") != prices.rejection_key(3, "x")


def test_close_before_finds_the_nearest_stored_day_within_the_window(engine) -> None:
    _upsert(engine, _rows(3))  # 2024-01-01 .. 2024-01-03, closes 100.5, 101.5, 102.5
    with session_scope(engine) as session:
        assert prices.close_before(
            session, ticker="BTC-USD", day=dt.date(2024, 1, 5), within_days=7
        ) == (dt.date(2024, 1, 3), 102.5)
        assert (
            prices.close_before(session, ticker="BTC-USD", day=dt.date(2024, 1, 11), within_days=7)
            is None
        )
        assert prices.close_before(session, ticker="BTC-USD", day=DAY0, within_days=7) is None
