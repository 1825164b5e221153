"""Synthetic source and `--source` parsing."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from flows.ingest.sources import FIELDS, parse_source
from flows.ingest.sources.csv_source import CsvSource
from flows.ingest.sources.http_source import HttpSource
from flows.ingest.sources.synthetic_source import SyntheticSource
from pricecast.errors import SourceError
from pricecast.settings import Settings


def _frame(source: SyntheticSource, ticker: str, start, end) -> pd.DataFrame:
    return pd.concat(list(source.read(ticker=ticker, start=start, end=end)))


def test_a_day_has_the_same_price_whatever_range_is_asked() -> None:
    source = SyntheticSource(seed=3)
    long = _frame(source, "BTC-USD", dt.date(2019, 1, 1), dt.date(2026, 6, 30))
    short = _frame(source, "BTC-USD", dt.date(2024, 12, 17), dt.date(2025, 1, 15))
    assert list(short.columns) == list(FIELDS)
    assert len(short) == 30 and short["date"].iloc[0] == pd.Timestamp("2024-12-17")
    merged = short.merge(long, on="date", suffixes=("_s", "_l"))
    assert (merged["close_s"] == merged["close_l"]).all()
    assert (merged["volume_s"] == merged["volume_l"]).all()


def test_seed_and_ticker_change_the_prices() -> None:
    days = (dt.date(2020, 1, 1), dt.date(2020, 3, 1))
    base = _frame(SyntheticSource(seed=0), "BTC-USD", *days)["close"].to_numpy()
    assert (_frame(SyntheticSource(seed=0), "BTC-USD", *days)["close"].to_numpy() == base).all()
    assert (_frame(SyntheticSource(seed=1), "BTC-USD", *days)["close"].to_numpy() != base).any()
    assert (_frame(SyntheticSource(seed=0), "ETH-USD", *days)["close"].to_numpy() != base).any()


def test_nothing_before_the_origin_or_for_an_empty_range() -> None:
    source = SyntheticSource()
    assert list(source.read(ticker="X", start=None, end=dt.date(2010, 1, 1))) == []
    assert list(source.read(ticker="X", start=dt.date(2020, 2, 1), end=dt.date(2020, 1, 1))) == []


def test_parse_source() -> None:
    settings = Settings(http_base_url="https://example.test", seed=5)
    csv = parse_source("csv:data/btc.csv", settings)
    assert isinstance(csv, CsvSource) and csv.label == "csv:data/btc.csv"
    http = parse_source("http", settings)
    assert isinstance(http, HttpSource) and http.base_url == "https://example.test"
    assert parse_source("http:http://127.0.0.1:8000/", settings).base_url == "http://127.0.0.1:8000"
    assert parse_source("http://127.0.0.1:9000", settings).base_url == "http://127.0.0.1:9000"
    assert parse_source("synthetic", settings).label == "synthetic:seed=5"
    assert parse_source(" Synthetic:7 ", settings).label == "synthetic:seed=7"
    for spec, message in [
        ("ftp://x", "unknown source 'ftp://x': use csv:PATH, http"),
        ("btc.csv", "unknown source"),
        ("csv:", "give the file"),
        ("synthetic:x", "seed must be an integer"),
    ]:
        with pytest.raises(SourceError, match=message):
            parse_source(spec, settings)
