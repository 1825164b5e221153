"""CSV price files, mapped by header name (case-insensitive, with aliases), never by position.

Reads the shapes people have: the CoinMarketCap export of the book, Yahoo Finance downloads,
Kaggle `coin_*.csv`, exchange exports. UTF-8 with or without BOM; streamed in chunks.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from flows.ingest.sources import DATE, ERROR, FIELDS, LINE, RAW
from pricecast.errors import SourceError

CHUNK_ROWS = 20_000
# A cut last line is spotted by comparing its last field with this many lines before it.
NEIGHBOUR_LINES = 5

# Normalised header -> field. Earlier entries win when a file has several (Close beats Adj Close).
ALIASES: dict[str, tuple[str, ...]] = {
    DATE: ("date", "day", "datetime", "time", "timestamp", "time open", "open time", "unix"),
    "open": ("open", "opening price", "open price"),
    "high": ("high", "high price", "highest price"),
    "low": ("low", "low price", "lowest price"),
    "close": ("close", "close price", "closing price", "last", "price", "adj close"),
    "volume": ("volume", "vol", "volume usd", "volume usdt", "quote volume", "total volume"),
    "market_cap": (
        "market cap",
        "marketcap",
        "market capitalization",
        "market capitalisation",
        "mkt cap",
    ),
}


def normalise_header(name: str) -> str:
    """'Market_Capitalization' -> 'market capitalization'; 'Close**' -> 'close'."""
    name = name.strip().lstrip("\ufeff").lower()
    name = re.sub(r"[*()\[\]]", " ", name)
    name = re.sub(r"[_\-.]+", " ", name)
    return re.sub(r"\s+", " ", name).strip()


def map_header(header: list[str], where: str) -> tuple[dict[str, int], list[str]]:
    """Field -> column index, and the columns that map to nothing. SourceError if date or close
    is missing."""
    normalised = [normalise_header(h) for h in header]
    mapping: dict[str, int] = {}
    for field, aliases in ALIASES.items():
        for alias in aliases:
            if alias in normalised:
                mapping[field] = normalised.index(alias)
                break
    used = set(mapping.values())
    ignored = [h.strip() for i, h in enumerate(header) if i not in used and h.strip()]
    for required in (DATE, "close"):
        if required not in mapping:
            raise SourceError(
                f"{where} line 1: no {required} column in the header "
                f"({', '.join(h.strip() for h in header) or 'empty'}); "
                f"name one of: {', '.join(ALIASES[required])}"
            )
    return mapping, ignored


def _sniff_delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    return max(counts, key=lambda d: (counts[d], d == ","))


class CsvSource:
    """`csv:PATH`: one ticker's daily prices in a CSV file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.label = f"csv:{self.path}"[:500]
        self._notes: list[str] = []

    def locate(self, line: int | None, day: str) -> str:
        return f"{self.path} line {line}" if line is not None else f"{self.path} day {day}"

    def notes(self) -> list[str]:
        return list(self._notes)

    def _open(self) -> TextIO:
        if not self.path.exists():
            raise SourceError(f"{self.path}: file not found; check the path after csv:")
        if self.path.is_dir():
            raise SourceError(f"{self.path}: is a folder; give a CSV file after csv:")
        try:
            # utf-8-sig drops a BOM; newline="" lets csv handle \r\n and quoted newlines.
            return self.path.open(encoding="utf-8-sig", newline="")
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot open ({exc.strerror})") from None

    def read(self, *, ticker: str, start: dt.date | None, end: dt.date) -> Iterator[pd.DataFrame]:
        self._notes = []
        with self._open() as handle:
            try:
                yield from self._read(handle)
            except UnicodeDecodeError as exc:
                raise SourceError(
                    f"{self.path}: not UTF-8 text (byte {exc.start} of a chunk: {exc.reason}); "
                    "save the file as UTF-8"
                ) from None
            except csv.Error as exc:
                raise SourceError(f"{self.path}: unreadable CSV ({exc})") from None

    def _read(self, handle: TextIO) -> Iterator[pd.DataFrame]:
        consumed: list[str] = []

        def physical_lines() -> Iterator[str]:
            # Remember each physical line so a row keeps its raw text and first line number.
            for text in handle:
                consumed.append(text)
                yield text

        lines = physical_lines()
        first = next(lines, None)
        while first is not None and not first.strip():
            first = next(lines, None)
        if first is None:
            raise SourceError(f"{self.path}: empty file, expected a header line with date,close")
        header_line_number = len(consumed)
        delimiter = _sniff_delimiter(first)
        header = next(csv.reader([first], delimiter=delimiter))
        mapping, ignored = map_header(header, str(self.path))
        if ignored:
            self._notes.append(f"ignored columns: {', '.join(ignored)}")
        consumed.clear()
        line_number = header_line_number
        reader = csv.reader(lines, delimiter=delimiter)
        columns: dict[str, list[Any]] = {name: [] for name in (LINE, RAW, ERROR, *FIELDS)}
        width = len(header)
        # Lengths of the last field of the latest full rows, to spot a cut last line.
        recent_ends: deque[int] = deque(maxlen=NEIGHBOUR_LINES)
        ends_with_newline, last_fields = True, list[str]()
        for fields in reader:
            row_line = line_number + 1
            line_number += len(consumed)
            line_break = consumed[-1].endswith(("\n", "\r")) if consumed else True
            raw = "".join(consumed).rstrip("\r\n")
            consumed.clear()
            if not fields or not any(f.strip() for f in fields):
                continue  # a blank line holds no row
            if last_fields and len(last_fields) == width:
                recent_ends.append(len(last_fields[-1].strip()))
            ends_with_newline, last_fields = line_break, fields
            # Yield before adding, so the last row is still here when the file ends.
            if len(columns[LINE]) >= CHUNK_ROWS:
                yield _frame(columns)
                columns = {name: [] for name in columns}
            columns[LINE].append(row_line)
            columns[RAW].append(raw)
            if len(fields) != width:
                columns[ERROR].append(f"has {len(fields)} fields, the header has {width}")
                for name in FIELDS:
                    columns[name].append(None)
            else:
                columns[ERROR].append(None)
                for name in FIELDS:
                    index = mapping.get(name)
                    columns[name].append(fields[index] if index is not None else None)
        if columns[LINE]:
            if not ends_with_newline:
                _name_a_cut_last_line(columns, last_fields, width, list(recent_ends))
            yield _frame(columns)


def _name_a_cut_last_line(
    columns: dict[str, list[Any]], fields: list[str], width: int, recent_ends: list[int]
) -> None:
    """A last line with no line break and fewer fields than the header, or a last field shorter
    than on the lines before it, was probably cut (`2016-01-23,38` for 387.49): say so on it."""
    if len(fields) < width:
        why = "fewer fields than the header"
    elif recent_ends and len(fields[-1].strip()) < min(recent_ends):
        why = (
            f"its last field {fields[-1].strip()!r} is shorter than on the {len(recent_ends)} "
            f"lines before it ({min(recent_ends)}+ characters)"
        )
    else:
        return
    cut = (
        f"the last line has no line break and {why}: the file looks cut off; get it again "
        "(if the line is complete, end the file with a line break)"
    )
    error = columns[ERROR][-1]
    columns[ERROR][-1] = cut if error is None else f"{error}; {cut}"


def _frame(columns: dict[str, list[Any]]) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})
