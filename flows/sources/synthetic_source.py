"""Seeded synthetic daily prices as a source, for the demo, the tests and the benchmark.

Prices are generated year by year from a fixed origin, each year seeded on its own and starting
from the previous year's last close, so a given ticker, seed and day always have the same price
whatever range or as-of date is asked for (backfills and re-ingests agree).
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterator

import pandas as pd

from flows.sources import DATE, FIELDS, LINE
from forecasting.synthetic import synthetic_prices
from forecasting.weeks import CLOSE

ORIGIN = dt.date(2015, 1, 1)
DEFAULT_START = dt.date(2018, 1, 1)
# BTC-USD-like level on the origin date, so the demo's numbers look familiar.
START_PRICE = 300.0


class SyntheticSource:
    """`synthetic[:SEED]`: a geometric random walk with volatility regimes, per ticker and seed."""

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed
        self.label = f"synthetic:seed={seed}"

    def _year_seed(self, ticker: str, year: int) -> int:
        # Stable across processes (unlike hash()), different per ticker, seed and year.
        return zlib.crc32(f"{ticker}|{self.seed}|{year}".encode())

    def read(self, *, ticker: str, start: dt.date | None, end: dt.date) -> Iterator[pd.DataFrame]:
        start = max(start or DEFAULT_START, ORIGIN)
        price = START_PRICE
        for year in range(ORIGIN.year, end.year + 1):
            first, last = dt.date(year, 1, 1), dt.date(year, 12, 31)
            frame = synthetic_prices(
                first, last, seed=self._year_seed(ticker, year), start_price=price
            )
            price = float(frame[CLOSE].iloc[-1])
            if last < start:
                continue
            frame = frame[
                (frame[DATE] >= pd.Timestamp(start)) & (frame[DATE] <= pd.Timestamp(end))
            ].reset_index(drop=True)
            frame[LINE] = None
            if len(frame):
                yield frame[[LINE, *FIELDS]]

    def locate(self, line: int | None, day: str) -> str:
        return f"{self.label} day {day}"

    def notes(self) -> list[str]:
        return []
