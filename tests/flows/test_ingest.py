"""Ingest: row checks, refusal of whole files, --skip-invalid, idempotent upserts, summaries."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from flows.ingest.checks import parse_dates
from flows.ingest.load import MAX_LISTED_PROBLEMS, ingest
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


# ---------------------------------------------------------------- issue 12: values that lie


def test_open_and_close_must_lie_within_the_days_low_and_high(
    tmp_path: Path, sqlite_url: str
) -> None:
    text = (
        "date,open,high,low,close\n"
        "2024-01-01,10,12,9,11\n"
        "2024-01-02,8.5,12,9,11\n"  # 3 open below low
        "2024-01-03,10,12,9,12.5\n"  # 4 close above high
        "2024-01-04,,12,9,8\n"  # 5 close below low (open absent: not compared)
        "2024-01-05,13,12,9,11\n"  # 6 open above high
        "2024-01-06,10,,,11\n"  # 7 no low/high: nothing to compare with
    )
    source = _csv(tmp_path, text)
    with pytest.raises(DataError) as info:
        _ingest(sqlite_url, source)
    assert str(info.value).splitlines()[1:] == [
        f"{source.path} line 3: open 8.5 is below the day's low 9",
        f"{source.path} line 4: close 12.5 is above the day's high 12",
        f"{source.path} line 5: close 8 is below the day's low 9",
        f"{source.path} line 6: open 13 is above the day's high 12",
    ]


CUT_DAY = (
    "date,close\n"
    "2016-01-21,380.12\n"
    "2016-01-22,387.49\n"
    "2016-01-23,38\n"  # line 4: the real close is 387.49, cut to 38
    "2016-01-24,391.5\n"
)


def test_a_day_over_day_move_beyond_the_bound_is_refused_by_line(
    tmp_path: Path, sqlite_url: str
) -> None:
    source = _csv(tmp_path, CUT_DAY)
    with pytest.raises(DataError) as info:
        _ingest(sqlite_url, source)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"refused {source.label}: 1 invalid row(s)")
    # The next day is compared with the last accepted close (2016-01-22), so only line 4 is named.
    assert lines[1] == (
        f"{source.path} line 4: close 38 is 90.2% below the close of 2016-01-22 (387.49), beyond "
        "the 75% a day allowed (probably a bad value; if it is real, pass --allow-large-moves "
        "or raise PRICECAST_MAX_DAILY_MOVE)"
    )
    assert _stored(sqlite_url)[0] == []
    summary = _ingest(sqlite_url, source, skip_invalid=True)
    assert (summary.inserted, summary.rejected) == (3, 1)
    rows, _, rejected = _stored(sqlite_url)
    assert [r.close for r in rows] == [380.12, 387.49, 391.5]
    assert [(r.line_number, r.raw) for r in rejected] == [(4, "2016-01-23,38")]


def test_large_moves_can_be_allowed_or_bounded_elsewhere(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _csv(tmp_path, CUT_DAY)
    assert _ingest(sqlite_url, source, allow_large_moves=True).inserted == 4
    with pytest.raises(DataError, match="line 4: close 38 is 90.2% below .* beyond the 50%"):
        _ingest(sqlite_url, _csv(tmp_path, CUT_DAY, "again.csv"), max_daily_move=0.5)
    from pricecast.settings import get_settings

    # The bound is on |close / previous close - 1|: the rebound from 38 is +930%.
    monkeypatch.setenv("PRICECAST_MAX_DAILY_MOVE", "10")
    get_settings.cache_clear()
    assert _ingest(sqlite_url, _csv(tmp_path, CUT_DAY, "third.csv")).unchanged == 4
    with pytest.raises(DataError, match="daily move bound must be > 0"):
        _ingest(sqlite_url, source, max_daily_move=0.0)


def test_moves_in_a_file_listed_newest_first_and_a_bad_first_day(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Newest first, in chunks of two: the older chunk is compared with the newer one's first day.
    monkeypatch.setattr(csv_source, "CHUNK_ROWS", 2)
    newest_first = (
        "date,close\n2016-01-24,391.5\n2016-01-23,390\n2016-01-22,38\n2016-01-21,380.12\n"
    )
    source = _csv(tmp_path, newest_first)
    with pytest.raises(DataError) as info:
        _ingest(sqlite_url, source)
    assert str(info.value).splitlines()[1:] == [
        f"{source.path} line 4: close 38 is 90.3% below the close of 2016-01-23 (390), beyond "
        "the 75% a day allowed (probably a bad value; if it is real, pass --allow-large-moves "
        "or raise PRICECAST_MAX_DAILY_MOVE)"
    ]
    # With nothing before it, a first day that disagrees with the next two (read in the same
    # chunk) is the odd one out.
    monkeypatch.setattr(csv_source, "CHUNK_ROWS", 20_000)
    first_bad = "date,close\n2016-01-20,3.8\n2016-01-21,380.12\n2016-01-22,387.49\n"
    source = _csv(tmp_path, first_bad, "first.csv")
    with pytest.raises(DataError) as info:
        _ingest(sqlite_url, source)
    assert str(info.value).splitlines()[1:] == [
        f"{source.path} line 2: close 3.8 is 99.0% below the close of 2016-01-21 (380.12), "
        "beyond the 75% a day allowed (probably a bad value; if it is real, pass "
        "--allow-large-moves or raise PRICECAST_MAX_DAILY_MOVE)"
    ]


def test_moves_across_chunks_and_against_the_stored_day_before(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_source, "CHUNK_ROWS", 2)
    _ingest(database_url, _csv(tmp_path, CUT_DAY.replace("2016-01-23,38\n", "2016-01-23,388\n")))
    later = "date,close\n2016-01-25,39.2\n2016-01-26,392\n"
    source = _csv(tmp_path, later, "later.csv")
    with pytest.raises(DataError) as info:
        _ingest(database_url, source)
    assert (
        str(info.value)
        .splitlines()[1]
        .startswith(
            f"{source.path} line 2: close 39.2 is 90.0% below the stored close of 2016-01-24 "
            "(391.5)"
        )
    )
    # A genuine 40% day (the book's file moves up to +43% in a day) loads.
    fine = "date,close\n2016-01-25,548.1\n2016-01-26,392\n2016-01-27,395\n"
    assert _ingest(database_url, _csv(tmp_path, fine, "fine.csv")).inserted == 3


def test_a_cut_last_line_without_a_line_break_is_named(tmp_path: Path, sqlite_url: str) -> None:
    cut = CUT_DAY.replace("2016-01-23,38\n2016-01-24,391.5\n", "2016-01-23,38")
    source = _csv(tmp_path, cut)
    with pytest.raises(DataError) as info:
        _ingest(sqlite_url, source, allow_large_moves=True)
    assert str(info.value).splitlines()[1] == (
        f"{source.path} line 4: the last line has no line break and its last field '38' is "
        "shorter than on the 2 lines before it (6+ characters): the file looks cut off; get it "
        "again (if the line is complete, end the file with a line break)"
    )
    # A cut market cap is caught the same way; a complete last line without a break loads.
    caps = "date,close,market_cap\n2016-01-21,380.1,5.7e9\n2016-01-22,387.4,5.8e9\n2016-01-23,388,5"
    with pytest.raises(DataError, match="line 4: the last line has no line break"):
        _ingest(sqlite_url, _csv(tmp_path, caps, "caps.csv"))
    # A complete last line without a break loads, even a shorter one (388 after 387.4).
    whole = caps.removesuffix("5") + "5.9e9"
    assert _ingest(sqlite_url, _csv(tmp_path, whole, "whole.csv")).inserted == 3
    fewer = "date,open,close\n2016-01-21,380,380.1\n2016-01-22,380.1,387.4\n2016-01-23,387."
    with pytest.raises(DataError) as info:
        _ingest(sqlite_url, _csv(tmp_path, fewer, "fewer.csv"))
    assert (
        str(info.value)
        .splitlines()[1]
        .endswith(
            "line 4: has 2 fields, the header has 3; the last line has no line break and "
            "fewer fields than the header: the file looks cut off; get it again (if the line is "
            "complete, end the file with a line break)"
        )
    )


def test_rejected_rows_are_stored_once_per_source_line_and_content(
    tmp_path: Path, database_url: str
) -> None:
    first = _ingest(database_url, _csv(tmp_path, BAD), skip_invalid=True)
    again = _ingest(database_url, _csv(tmp_path, BAD), skip_invalid=True)
    assert (first.rejected, first.rejected_already_recorded) == (9, 0)
    assert (again.rejected, again.rejected_already_recorded) == (9, 9)
    assert "rejected rows already in rejected_rows from an earlier run" in "\n".join(again.lines())
    assert len(_stored(database_url)[2]) == 9
    # The same line with other content, or the same content from another file, is new.
    edited = BAD.replace("2024-01-02,1,3,0.5,,100", "2024-01-02,1,3,0.5,,101")
    assert _ingest(database_url, _csv(tmp_path, edited), skip_invalid=True).rejected == 9
    _ingest(database_url, _csv(tmp_path, BAD, "copy.csv"), skip_invalid=True)
    assert len(_stored(database_url)[2]) == 9 + 1 + 9


def test_a_header_only_file_warns(tmp_path: Path, sqlite_url: str) -> None:
    source = _csv(tmp_path, "date,open,high,low,close\n")
    summary = _ingest(sqlite_url, source)
    assert (summary.rows_read, summary.inserted) == (0, 0)
    assert summary.warnings == [
        f"{source.label} has no rows (a header only, or nothing in the asked range): nothing "
        "was loaded; check the source"
    ]
    assert summary.lines()[0] == f"warning: {summary.warnings[0]}"
    assert summary.to_dict()["warnings"] == summary.warnings
    assert _ingest(sqlite_url, _csv(tmp_path, GOOD, "good.csv")).warnings == []


def test_a_refusal_lists_the_first_problems_and_counts_the_rest(
    tmp_path: Path, sqlite_url: str
) -> None:
    text = "date,close\n" + "".join(f"2024-01-01,bad{i}\n" for i in range(120))
    source = _csv(tmp_path, text)
    with pytest.raises(DataError) as info:
        _ingest(sqlite_url, source)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"refused {source.label}: 120 invalid row(s)")
    assert len(lines) == 1 + MAX_LISTED_PROBLEMS + 1
    assert lines[1] == f"{source.path} line 2: close 'bad0' is not a number"
    assert lines[-1] == f"... and {120 - MAX_LISTED_PROBLEMS} more"


def _mostly_bad_csv(path: Path, rows: int) -> CsvSource:
    with path.open("w") as out:
        out.write("date,open,high,low,close,volume\n")
        day = dt.date(2000, 1, 1)
        for i in range(rows):
            close = "11" if i < 500 else f"bad{i}"
            out.write(f"{day + dt.timedelta(days=i % 500)},10,12,9,{close},100\n")
    return CsvSource(path)


@pytest.mark.slow
@pytest.mark.parametrize("skip_invalid", [False, True])
def test_memory_is_bounded_by_what_is_kept_not_by_the_refused_rows(
    tmp_path: Path, skip_invalid: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Peak Python allocations for 4x the refused rows stay within 1.5x (they grew linearly:
    every refused row was held until the end)."""
    import tracemalloc

    monkeypatch.setattr(csv_source, "CHUNK_ROWS", 2_500)
    peaks = []
    for rows in (10_000, 40_000):
        source = _mostly_bad_csv(tmp_path / f"bad{rows}.csv", rows)
        url = f"sqlite:///{tmp_path / f'bad{rows}.db'}"
        tracemalloc.start()
        try:
            if skip_invalid:
                assert _ingest(url, source, skip_invalid=True).rejected == rows - 500
            else:
                with pytest.raises(DataError, match=f"{rows - 500} invalid row"):
                    _ingest(url, source)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0], [f"{p / 2**20:.1f} MB" for p in peaks]
