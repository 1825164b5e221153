"""Seeded synthetic daily prices as a source, for the demo, the tests and the benchmark.

Prices are generated from a fixed origin date, so a given ticker, seed and day always have the
same price whatever range or as-of date is asked for (backfills and re-ingests agree).
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterator

import pandas as pd

from flows.sources import DATE, FIELDS, LINE
from forecasting.synthetic import synthetic_prices

ORIGIN = dt.date(2015, 1, 1)
DEFAULT_START = dt.date(2018, 1, 1)
# BTC-USD-like level on the origin date, so the demo's numbers look familiar.
START_PRICE = 300.0


class SyntheticSource:
    """`synthetic[:SEED]`: a geometric random walk with volatility regimes, per ticker and seed."""

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed
        self.label = f"synthetic:seed={seed}"

    def _ticker_seed(self, ticker: str) -> int:
        # Stable across processes (unlike hash()), different per ticker.
        return self.seed * 1_000_003 + zlib.crc32(ticker.encode())

    def read(self, *, ticker: str, start: dt.date | None, end: dt.date) -> Iterator[pd.DataFrame]:
        start = start or DEFAULT_START
        if end < ORIGIN or end < start:
            return
        frame = synthetic_prices(
            ORIGIN, end, seed=self._ticker_seed(ticker), start_price=START_PRICE
        )
        frame = frame[frame[DATE] >= pd.Timestamp(max(start, ORIGIN))].reset_index(drop=True)
        frame[LINE] = None
        yield frame[[LINE, *FIELDS]]

    def locate(self, line: int | None, day: str) -> str:
        return f"{self.label} day {day}"

    def notes(self) -> list[str]:
        return []
