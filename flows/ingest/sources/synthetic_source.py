"""Seeded synthetic daily prices as a source, for the demo, the tests and the benchmark.

Prices come in ten-year blocks from a fixed origin, so a given ticker, seed and day always have
the same price whatever range or as-of date is asked for (backfills and re-ingests agree).
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterator

import numpy as np
import pandas as pd

from flows.ingest.sources import DATE
from forecasting.synthetic import synthetic_prices
from forecasting.weeks import CLOSE

ORIGIN = dt.date(2015, 1, 1)
DEFAULT_START = dt.date(2018, 1, 1)
CHUNK_ROWS = 50_000
# Prices come in ten-year blocks, each seeded on its own and starting from the previous block's
# last close: a day's price never depends on how far the caller asked to read.
BLOCK_YEARS = 10
# BTC-USD-like level on the origin date, so the demo's numbers look familiar.
START_PRICE = 300.0


class SyntheticSource:
    """`synthetic[:SEED]`: a geometric random walk with volatility regimes, per ticker and seed."""

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed
        self.label = f"synthetic:seed={seed}"

    def _block_seed(self, ticker: str, first_year: int) -> int:
        # Stable across processes (unlike hash()), different per ticker, seed and block.
        return zlib.crc32(f"{ticker}|{self.seed}|{first_year}".encode())

    def read(self, *, ticker: str, start: dt.date | None, end: dt.date) -> Iterator[pd.DataFrame]:
        start = max(start or DEFAULT_START, ORIGIN)
        price = START_PRICE
        for first_year in range(ORIGIN.year, end.year + 1, BLOCK_YEARS):
            block = synthetic_prices(
                dt.date(first_year, 1, 1),
                dt.date(first_year + BLOCK_YEARS - 1, 12, 31),
                seed=self._block_seed(ticker, first_year),
                start_price=price,
            )
            price = float(block[CLOSE].iloc[-1])
            if first_year + BLOCK_YEARS - 1 >= start.year:
                yield from self._chunks(block, start, end)

    @staticmethod
    def _chunks(block: pd.DataFrame, start: dt.date, end: dt.date) -> Iterator[pd.DataFrame]:
        dates = block[DATE].to_numpy()  # ascending
        first = int(dates.searchsorted(np.datetime64(start, "D")))
        stop = int(dates.searchsorted(np.datetime64(end, "D"), side="right"))
        for begin in range(first, stop, CHUNK_ROWS):
            yield block.iloc[begin : min(begin + CHUNK_ROWS, stop)]

    def locate(self, line: int | None, day: str) -> str:
        return f"{self.label} day {day}"

    def notes(self) -> list[str]:
        return []
