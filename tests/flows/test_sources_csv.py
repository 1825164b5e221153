"""CSV source: the file shapes people have, read by header name, streamed, with line numbers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from flows.ingest.checks import RowChecker
from flows.ingest.load import IngestSummary
from flows.ingest.sources import csv_source
from flows.ingest.sources.csv_source import CsvSource, map_header, normalise_header
from pricecast.errors import SourceError
from storage.prices import PriceRow

TODAY = dt.date(2024, 6, 1)


def _write(tmp_path: Path, name: str, text: str, *, bom: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def _check(source: CsvSource, **limits) -> tuple[list[PriceRow], list, IngestSummary]:
    summary = IngestSummary(ticker="BTC-USD", source=source.label)
    checker = RowChecker(
        source,
        start=limits.get("start"),
        end=limits.get("end"),
        as_of=limits.get("as_of"),
        today=TODAY,
        summary=summary,
    )
    rows, problems = [], []
    for frame in source.read(ticker="BTC-USD", start=None, end=TODAY):
        ok, bad = checker.check(frame)
        rows += ok
        problems += bad
    return sorted(rows), problems, summary


def test_coinmarketcap_book_export_with_iso_week_and_empty_volumes(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "bitcoin_historical_prices.csv",
        "date,iso_week,open,high,low,close,volume,market_capitalization\n"
        "2013-04-28,2013-17,135.3,135.98,132.1,134.21,,1500520000.0\n"
        "2013-04-29,2013-17,134.44,147.49,134.0,144.54,,1491160000.0\n"
        "2017-11-07,2017-45,7023.1,7253.32,7023.1,7144.38,2326340000.0,117056000000.0\n",
    )
    source = CsvSource(path)
    rows, problems, _ = _check(source)
    assert problems == []
    assert rows == [
        PriceRow(dt.date(2013, 4, 28), 135.3, 135.98, 132.1, 134.21, None, 1500520000.0),
        PriceRow(dt.date(2013, 4, 29), 134.44, 147.49, 134.0, 144.54, None, 1491160000.0),
        PriceRow(dt.date(2017, 11, 7), 7023.1, 7253.32, 7023.1, 7144.38, 2326340000.0, 1.17056e11),
    ]
    assert source.notes() == ["ignored columns: iso_week"]


def test_yahoo_download_with_null_rows_crlf_and_no_trailing_newline(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "BTC-USD.csv",
        "Date,Open,High,Low,Close,Adj Close,Volume\r\n"
        "2020-04-16,100,110,90,105,999,5000\r\n"
        "2020-04-17,null,null,null,null,null,null\r\n"
        "2020-04-18,105,112,101,111,999,6000",
    )
    rows, problems, summary = _check(CsvSource(path))
    assert problems == []
    # Close, not Adj Close; the null row is "no data that day", not a row and not an error.
    assert [(r.date.isoformat(), r.close, r.volume) for r in rows] == [
        ("2020-04-16", 105.0, 5000.0),
        ("2020-04-18", 111.0, 6000.0),
    ]
    assert summary.no_data == 1
    assert summary.no_data_days == [dt.date(2020, 4, 17)]
    assert summary.rows_read == 3


def test_kaggle_coin_file_with_exponents_and_times(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "coin_Bitcoin.csv",
        "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap\n"
        "1,Bitcoin,BTC,2013-04-29 23:59:59,147.488,134.0,134.444,144.54,0.0,1.6039E+09\n"
        "2,Bitcoin,BTC,2021-02-26 23:59:59,51290.14,44311.7,49660.33,46806.53,8.61E+10,8.72E+11\n",
    )
    source = CsvSource(path)
    rows, problems, _ = _check(source)
    assert problems == []
    assert rows[0] == PriceRow(dt.date(2013, 4, 29), 134.444, 147.488, 134.0, 144.54, 0.0, 1.6039e9)
    assert rows[1].date == dt.date(2021, 2, 26)
    assert (rows[1].volume, rows[1].market_cap) == (8.61e10, 8.72e11)
    assert source.notes() == ["ignored columns: SNo, Name, Symbol"]


def test_exchange_export_lowercase_empty_market_cap_bom_and_any_order(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "exchange.csv",
        "timestamp,open,high,low,close,volume,market_cap\n"
        "2024-01-03,3,4,2,3.5,10,\n"
        "2024-01-01,1,2,0.5,1.5,10,\n"
        '2024-01-02,2,3,1,2.5,1,"1,234.5"\n',
        bom=True,
    )
    rows, problems, _ = _check(CsvSource(path))
    assert problems == []
    assert [r.date.day for r in rows] == [1, 2, 3]
    assert [r.market_cap for r in rows] == [None, 1234.5, None]


def test_semicolon_files_and_unix_epoch_dates(tmp_path: Path) -> None:
    path = _write(tmp_path, "semi.csv", "unix;close\n1704067200;42000.5\n1704153600000;43000\n")
    rows, problems, _ = _check(CsvSource(path))
    assert problems == []
    assert [(r.date, r.close) for r in rows] == [
        (dt.date(2024, 1, 1), 42000.5),
        (dt.date(2024, 1, 2), 43000.0),
    ]


def test_problems_carry_the_physical_line_number(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "gaps.csv",
        "\n"  # line 1 blank: the header is line 2
        "Date,Close\n"
        "2024-01-01,1\n"
        "\n"  # a blank line is not a row
        "01/02/2024,2\n"  # line 5
        "2024-01-03\n"  # line 6: too few fields
        '2024-01-04,"7\n8"\n'  # lines 7-8: a quoted newline
        "2024-01-05,abc\n",  # line 9
    )
    _, problems, summary = _check(CsvSource(path))
    assert [(p.line, p.reason) for p in problems] == [
        (5, "date '01/02/2024' is not a date (expected YYYY-MM-DD)"),
        (6, "has 1 fields, the header has 2"),
        (7, "close '7\\n8' is not a number"),
        (9, "close 'abc' is not a number"),
    ]
    assert problems[0].where == f"{path} line 5"
    assert problems[0].raw == "01/02/2024,2"
    assert summary.rows_read == 5


def test_chunks_stream_and_duplicates_are_found_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_source, "CHUNK_ROWS", 3)
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(10)]
    body = "".join(f"{d},{i + 1}\n" for i, d in enumerate(days))
    body += f"{days[0]},1\n"  # identical repeat: loaded once
    body += f"{days[1]},99\n"  # conflicting repeat: a problem naming the first line
    path = _write(tmp_path, "long.csv", "date,close\n" + body)
    frames = list(CsvSource(path).read(ticker="X", start=None, end=TODAY))
    assert [len(f) for f in frames] == [3, 3, 3, 3]
    rows, problems, summary = _check(CsvSource(path))
    assert len(rows) == 10 and summary.duplicates == 1
    assert [(p.line, p.reason) for p in problems] == [
        (13, "date 2024-01-02 appears twice with different values (first on line 3, which is kept)")
    ]


@pytest.mark.parametrize(
    "header, missing",
    [("Date,Open,High,Low,Adj Something", "close"), ("when,close", "date")],
)
def test_a_header_without_date_or_close_is_refused_on_line_1(
    tmp_path: Path, header: str, missing: str
) -> None:
    path = _write(tmp_path, "bad.csv", header + "\n1,2\n")
    with pytest.raises(SourceError, match=f"bad.csv line 1: no {missing} column"):
        list(CsvSource(path).read(ticker="X", start=None, end=TODAY))


def test_unreadable_files_are_source_errors(tmp_path: Path) -> None:
    cases = {
        tmp_path / "missing.csv": "file not found",
        tmp_path: "is a folder",
        _write(tmp_path, "empty.csv", "\n\n"): "empty file",
    }
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(b"date,close\n2024-01-01,1\n" + "caf\xe9\n".encode("latin-1"))
    cases[latin] = "not UTF-8"
    for path, message in cases.items():
        with pytest.raises(SourceError, match=message):
            list(CsvSource(path).read(ticker="X", start=None, end=TODAY))


def test_header_names_are_normalised_and_mapped_by_alias() -> None:
    assert normalise_header("\ufeffMarket_Capitalization ") == "market capitalization"
    assert normalise_header("Close**") == "close"
    assert normalise_header("Volume (USD)") == "volume usd"
    mapping, ignored = map_header(["Symbol", "CLOSE", "Adj Close", "Date", "Vol."], "f.csv")
    assert mapping == {"date": 3, "close": 1, "volume": 4}
    assert ignored == ["Symbol", "Adj Close"]
