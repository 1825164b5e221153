"""Ingest: row checks, refusal of whole files, --skip-invalid, idempotent upserts, summaries."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from flows.ingest.load import ingest, parse_dates
from flows.ingest.sources import csv_source
from flows.ingest.sources.csv_source import CsvSource
from flows.ingest.sources.synthetic_source import SyntheticSource
from pricecast.errors import DataError
from storage.db import make_engine, session_scope
from storage.prices import price_coverage, read_prices, read_rejected, read_revisions

TODAY = dt.date(2024, 6, 1)
GOOD = "date,open,high,low,close,volume\n" + "".join(
    f"2024-01-{d:02d},{d},{d + 2},{d - 0.5},{d + 1},{d * 100}\n" for d in range(1, 11)
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ingest.db'}"


def _csv(tmp_path: Path, text: str, name: str = "prices.csv") -> CsvSource:
    path = tmp_path / name
    path.write_text(text)
    return CsvSource(path)


def _ingest(url: str, source, **kwargs):
    return ingest(database_url=url, ticker="BTC-USD", source=source, today=TODAY, **kwargs)


def _stored(url: str, ticker: str = "BTC-USD"):
    engine = make_engine(url)
    with session_scope(engine) as session:
        rows = read_prices(session, ticker=ticker)
        revisions = read_revisions(session, ticker=ticker)
        rejected = read_rejected(session, ticker=ticker)
    engine.dispose()
    return rows, revisions, rejected


def test_load_reload_and_change(tmp_path: Path, database_url: str) -> None:
    first = _ingest(database_url, _csv(tmp_path, GOOD))
    assert (first.rows_read, first.inserted, first.updated, first.unchanged) == (10, 10, 0, 0)
    assert (first.first_date, first.last_date) == (dt.date(2024, 1, 1), dt.date(2024, 1, 10))
    again = _ingest(database_url, _csv(tmp_path, GOOD))
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 10)
    changed = GOOD.replace("2024-01-05,5,7,4.5,6,500", "2024-01-05,5,7,4.5,6.5,500")
    changed += "2024-01-12,12,14,11.5,13,1200\n"
    third = _ingest(database_url, _csv(tmp_path, changed, "v2.csv"))
    assert (third.inserted, third.updated, third.unchanged) == (1, 1, 9)
    assert third.missing_days == [dt.date(2024, 1, 11)]
    rows, revisions, _ = _stored(database_url)
    assert len(rows) == 11 and rows[4].close == 6.5
    assert [(r.date, r.close, r.source) for r in revisions] == [
        (dt.date(2024, 1, 5), 6.0, f"csv:{tmp_path / 'prices.csv'}")
    ]


BAD = (
    "date,open,high,low,close,volume\n"
    "2024-01-01,1,3,0.5,2,100\n"  # 2 ok
    "2024-01-02,1,3,0.5,,100\n"  # 3 close missing
    "2024-01-03,1,3,0.5,0,100\n"  # 4 close not > 0
    "2024-01-04,1,3,0.5,2,-5\n"  # 5 negative volume
    "2024-01-05,1,0.4,0.5,2,100\n"  # 6 high < low
    "2024-13-01,1,3,0.5,2,100\n"  # 7 no such date
    "2024-06-02,1,3,0.5,2,100\n"  # 8 after today
    "2024-01-01,1,3,0.5,2.5,100\n"  # 9 same day, other values
    "2024-01-08,-1,3,0.5,2,100\n"  # 10 negative open
    "2024-01-09,1,3,0.5,inf,100\n"  # 11 not finite
)
BAD_REASONS = [
    (3, "close is missing"),
    (4, "close must be > 0, got 0"),
    (5, "volume must be >= 0, got -5"),
    (6, "high 0.4 is below low 0.5"),
    (7, "date '2024-13-01' is not a date (expected YYYY-MM-DD)"),
    (8, "date 2024-06-02 is after today (2024-06-01)"),
    (10, "open must be >= 0, got -1"),
    (11, "close inf is not finite"),
    (9, "date 2024-01-01 appears twice with different values (first on line 2, which is kept)"),
]


def test_any_invalid_row_refuses_the_whole_file(tmp_path: Path, database_url: str) -> None:
    _ingest(database_url, SyntheticSource(), start=dt.date(2023, 12, 1), end=dt.date(2023, 12, 5))
    source = _csv(tmp_path, BAD)
    with pytest.raises(DataError) as info:
        _ingest(database_url, source)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"refused {source.label}: 9 invalid row(s), nothing written")
    assert "--skip-invalid" in lines[0]
    assert lines[1:] == [f"{source.path} line {n}: {reason}" for n, reason in BAD_REASONS]
    rows, _, rejected = _stored(database_url)
    assert [r.date.day for r in rows] == [1, 2, 3, 4, 5] and rejected == []


def test_skip_invalid_loads_the_valid_rows_and_records_the_others(
    tmp_path: Path, sqlite_url: str
) -> None:
    summary = _ingest(sqlite_url, _csv(tmp_path, BAD), skip_invalid=True)
    assert (summary.rows_read, summary.inserted, summary.rejected) == (10, 1, 9)
    rows, _, rejected = _stored(sqlite_url)
    assert [(r.date, r.close) for r in rows] == [(dt.date(2024, 1, 1), 2.0)]
    assert [(r.line_number, r.reason) for r in rejected] == BAD_REASONS
    assert rejected[0].raw == "2024-01-02,1,3,0.5,,100"
    assert {r.source for r in rejected} == {f"csv:{tmp_path / 'prices.csv'}"}


def test_a_problem_in_a_late_chunk_leaves_nothing_written(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_source, "CHUNK_ROWS", 2)
    with pytest.raises(DataError, match="line 12: close 'x' is not a number"):
        _ingest(sqlite_url, _csv(tmp_path, GOOD + "2024-01-11,1,2,1,x,1\n"))
    assert _stored(sqlite_url)[0] == []


def test_as_of_start_and_end_cut_rows_and_count_them(tmp_path: Path, sqlite_url: str) -> None:
    summary = _ingest(
        sqlite_url,
        _csv(tmp_path, GOOD + "2024-06-02,1,2,1,1.5,1\n"),
        start=dt.date(2024, 1, 2),
        as_of=dt.date(2024, 1, 8),
    )
    assert (summary.inserted, summary.outside_range, summary.rows_read) == (7, 4, 11)
    assert (summary.first_date, summary.last_date) == (dt.date(2024, 1, 2), dt.date(2024, 1, 8))
    summary = _ingest(sqlite_url, _csv(tmp_path, GOOD), end=dt.date(2024, 1, 9))
    assert (summary.inserted, summary.unchanged, summary.outside_range) == (2, 7, 1)
    assert "rows outside --start/--end/--as-of, not loaded: 1" in summary.lines()


def test_null_rows_identical_repeats_and_missing_days_are_reported(
    tmp_path: Path, sqlite_url: str
) -> None:
    text = (
        "Date,Open,High,Low,Close,Adj Close,Volume\n"
        "2024-01-01,1,2,1,1.5,1.5,10\n"
        "2024-01-02,null,null,null,null,null,null\n"
        "2024-01-04,1,2,1,1.5,1.5,10\n"
        "2024-01-01,1,2,1,1.5,1.5,10"
    )
    summary = _ingest(sqlite_url, _csv(tmp_path, text))
    assert (summary.rows_read, summary.inserted, summary.no_data, summary.duplicates) == (
        4,
        2,
        1,
        1,
    )
    assert summary.no_data_days == [dt.date(2024, 1, 2)]
    assert summary.missing_days == [dt.date(2024, 1, 2), dt.date(2024, 1, 3)]
    text_lines = summary.lines()
    assert "missing days in that range: 2 (2024-01-02, 2024-01-03)" in text_lines
    assert summary.to_dict()["missing_days"] == ["2024-01-02", "2024-01-03"]


def test_bad_arguments_are_data_errors(tmp_path: Path, sqlite_url: str) -> None:
    source = _csv(tmp_path, GOOD)
    with pytest.raises(DataError, match="--as-of 2024-06-02 is in the future"):
        _ingest(sqlite_url, source, as_of=dt.date(2024, 6, 2))
    with pytest.raises(DataError, match="--start 2024-02-01 is after --end 2024-01-01"):
        _ingest(sqlite_url, source, start=dt.date(2024, 2, 1), end=dt.date(2024, 1, 1))


def test_synthetic_source_by_name_up_to_as_of(sqlite_url: str) -> None:
    summary = ingest(
        database_url=sqlite_url,
        ticker="ETH-USD",
        source="synthetic:2",
        start=dt.date(2022, 1, 1),
        as_of=dt.date(2022, 12, 31),
    )
    assert summary.inserted == 365 and summary.source == "synthetic:seed=2"
    engine = make_engine(sqlite_url)
    with session_scope(engine) as session:
        coverage = price_coverage(session, ticker="ETH-USD")
    engine.dispose()
    assert (coverage.first, coverage.last, coverage.count) == (
        dt.date(2022, 1, 1),
        dt.date(2022, 12, 31),
        365,
    )


def test_date_formats() -> None:
    import pandas as pd

    raw = pd.Series(
        [
            "2021-02-26",
            "2021-02-26 23:59:59",
            "2021-02-26T00:00:00Z",
            "Feb 26, 2021",
            "1614297600",
            "1614297600000",
            "02/26/2021",
            "",
            None,
        ]
    )
    days, blank = parse_dates(raw)
    assert [None if np.isnat(d) else str(d) for d in days] == ["2021-02-26"] * 6 + [None] * 3
    assert blank.tolist() == [False] * 7 + [True, True]
