"""Price sources: CSV files, an HTTP daily-candles API, and seeded synthetic prices.

A source streams *raw frames*: pandas frames with the columns below, values still as the source
gave them (text or numbers). `flows.ingest.checks` validates them; sources only read and map.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from forecasting.weeks import CLOSE, DATE
from pricecast.errors import SourceError

if TYPE_CHECKING:
    from pricecast.settings import Settings

# Raw-frame columns: DATE and the VALUE_FIELDS, plus optionally LINE (line number in the file,
# header = 1), RAW (the row's text) and ERROR (a structural problem the source found, such as a
# wrong field count, else None).
LINE, RAW, ERROR = "line", "raw", "error"
VALUE_FIELDS: tuple[str, ...] = ("open", "high", "low", CLOSE, "volume", "market_cap")
FIELDS: tuple[str, ...] = (DATE, *VALUE_FIELDS)


class PriceSource(Protocol):
    """Something that streams raw daily rows for a ticker."""

    #: What daily_prices.source records, e.g. "csv:data/btc.csv" or "synthetic:seed=0".
    label: str

    def read(self, *, ticker: str, start: dt.date | None, end: dt.date) -> Iterator[pd.DataFrame]:
        """Raw frames (see module doc) for days in [start, end]; a source may return more days
        (a file has what it has), the caller filters."""
        ...

    def locate(self, line: int | None, day: str) -> str:
        """Where a row is, for messages: "btc.csv line 12", "GET https://... candle 2024-01-03"."""
        ...

    def notes(self) -> list[str]:
        """Things the last read wants the user to know (ignored columns, skipped candles)."""
        ...


SOURCE_FORMATS = "csv:PATH, http[:BASE_URL] or synthetic[:SEED]"


def parse_source(spec: str, settings: Settings) -> PriceSource:
    """`--source` text -> a source. Raises SourceError for an unknown or incomplete spec."""
    kind, sep, argument = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "csv":
        from flows.ingest.sources.csv_source import CsvSource

        if not argument.strip():
            raise SourceError(f"--source {spec!r}: give the file, e.g. csv:data/btc.csv")
        return CsvSource(argument.strip())
    if kind in ("http", "https") and not argument.startswith("//"):
        from flows.ingest.sources.http_source import HttpSource

        return HttpSource.from_settings(settings, base_url=argument.strip() or None)
    if kind in ("http", "https"):  # a full URL: http://host:port
        from flows.ingest.sources.http_source import HttpSource

        return HttpSource.from_settings(settings, base_url=spec.strip())
    if kind == "synthetic":
        from flows.ingest.sources.synthetic_source import SyntheticSource

        seed = settings.seed
        if argument.strip():
            try:
                seed = int(argument.strip().removeprefix("seed="))
            except ValueError:
                raise SourceError(
                    f"--source {spec!r}: the synthetic seed must be an integer, e.g. synthetic:7"
                ) from None
        return SyntheticSource(seed=seed)
    raise SourceError(f"unknown source {spec!r}: use {SOURCE_FORMATS}")
