"""Validate one price source and upsert it into the database, in one transaction, with a summary.

By default a source with any invalid row is refused whole (every problem named, nothing written);
with `skip_invalid` the valid rows load and the invalid ones go to `rejected_rows`.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from flows.ingest.sources import DATE, ERROR, LINE, RAW, VALUE_FIELDS, PriceSource, parse_source
from pricecast.errors import DataError
from storage.db import ensure_schema, make_engine, session_scope
from storage.prices import PriceRow, Rejection, missing_dates, record_rejected, stage_prices

MAX_LISTED_PROBLEMS = 50
_HASH_MASK = (1 << 64) - 1
_ORDINAL_1970 = dt.date(1970, 1, 1).toordinal()
_BLANKS = frozenset({"", "null", "nan", "none", "n/a", "na", "-"})
_ISO_DAY = r"^\s*(\d{4}-\d{2}-\d{2})(?:[ T].*)?\s*$"
_EPOCH_DAY = dt.date(1970, 1, 1)


@dataclass
class IngestSummary:
    """What an ingest did. Every row read is counted in exactly one of: inserted, updated,
    unchanged, rejected (invalid), no_data (a dated row with no values), duplicates (the same
    day again with identical values), outside_range (before --start / after --end or --as-of)."""

    ticker: str
    source: str
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    no_data: int = 0
    duplicates: int = 0
    outside_range: int = 0
    first_date: dt.date | None = None
    last_date: dt.date | None = None
    missing_days: list[dt.date] = field(default_factory=list)
    no_data_days: list[dt.date] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("first_date", "last_date"):
            out[key] = out[key].isoformat() if out[key] else None
        for key in ("missing_days", "no_data_days"):
            out[key] = [d.isoformat() for d in out[key]]
        return out

    def lines(self) -> list[str]:
        """Human summary for the CLI."""
        span = f"{self.first_date} .. {self.last_date}" if self.first_date else "no rows in range"
        out = [
            f"{self.ticker} from {self.source}: {self.rows_read} rows read, "
            f"{self.inserted} inserted, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.rejected} rejected",
            f"date range: {span}",
            f"missing days in that range: {len(self.missing_days)}"
            + (f" ({_first_days(self.missing_days)})" if self.missing_days else ""),
        ]
        if self.no_data:
            out.append(
                f"days the source marks as having no data (null rows, not stored): "
                f"{self.no_data} ({_first_days(self.no_data_days)})"
            )
        if self.duplicates:
            out.append(f"identical repeated days loaded once: {self.duplicates}")
        if self.outside_range:
            out.append(f"rows outside --start/--end/--as-of, not loaded: {self.outside_range}")
        out.extend(self.notes)
        return out


def _first_days(days: list[dt.date], shown: int = 5) -> str:
    text = ", ".join(d.isoformat() for d in days[:shown])
    return text + (f", ... {len(days) - shown} more" if len(days) > shown else "")


@dataclass(frozen=True)
class Problem:
    where: str
    line: int | None
    raw: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def today_utc() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def parse_dates(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Raw date cells -> (datetime64[D] days, NaT where unparseable or blank; blank mask).

    Accepted: ISO dates with an optional time ("2021-02-26", "2021-02-26 23:59:59",
    "2021-02-26T00:00:00Z"; the calendar day as written), "Apr 28, 2013", and Unix epoch seconds
    or milliseconds. Slash dates like 01/02/2021 are refused: day and month are ambiguous.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        if getattr(values.dt, "tz", None) is not None:
            values = values.dt.tz_localize(None)
        days = values.to_numpy().astype("datetime64[D]")
        return days, np.isnat(days)
    text = values.astype("string").str.strip()
    blank = (text.isna() | (text == "")).fillna(True).to_numpy(dtype=bool)
    iso = text.str.extract(_ISO_DAY, expand=False)
    parsed = pd.to_datetime(iso, format="%Y-%m-%d", errors="coerce")
    rest = parsed.isna() & ~blank
    if rest.any():
        parsed[rest] = pd.to_datetime(text[rest], format="%b %d, %Y", errors="coerce")
        digits = rest & parsed.isna() & text.str.fullmatch(r"\d{10}|\d{13}").fillna(False)
        if digits.any():
            numbers = text[digits].astype("int64")
            seconds = np.where(numbers > 10**11, numbers // 1000, numbers)
            parsed[digits] = pd.to_datetime(seconds, unit="s")
    return parsed.to_numpy().astype("datetime64[D]"), blank


def parse_numbers(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw value cells -> (float64 with NaN for blank, blank mask, unparseable mask).

    Blank: empty, null, NaN, N/A, -. Numbers may use exponents (8.61E+11) and thousands
    separators (1,234.5).
    """
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.to_numpy(dtype="float64")
        blank = np.isnan(numbers)
        return numbers, blank, np.zeros(len(numbers), dtype=bool)
    text = values.astype("string").str.strip()
    blank = (text.isna() | text.str.lower().isin(_BLANKS)).fillna(True).astype(bool)
    grouped = text.str.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?").fillna(False).astype(bool)
    if grouped.any():
        text = text.where(~grouped, text.str.replace(",", "", regex=False))
    numbers = pd.to_numeric(text.where(~blank), errors="coerce").to_numpy(dtype="float64")
    blank_mask = blank.to_numpy(dtype=bool)
    return numbers, blank_mask, np.isnan(numbers) & ~blank_mask


def _cells(values: np.ndarray) -> list[float | None]:
    """Floats as Python objects, None where missing."""
    if np.isnan(values).any():
        return [None if math.isnan(v) else v for v in values.tolist()]
    return values.tolist()


# PriceRow from a tuple without a Python-level call per row (namedtuple._make is one).
_new_price_row = functools.partial(tuple.__new__, PriceRow)


def _fingerprints(columns: list[np.ndarray]) -> np.ndarray:
    """A 64-bit fingerprint per row of float columns (NaN = missing), vectorised (FNV-style)."""
    mixed = np.full(len(columns[0]), 0xCBF29CE484222325, dtype=np.uint64)
    for column in columns:
        # +0.0 folds -0.0 into 0.0; one NaN bit pattern for "missing".
        canonical = np.where(np.isnan(column), np.nan, column + 0.0)
        mixed = (mixed ^ canonical.view(np.uint64)) * np.uint64(0x100000001B3)
        mixed ^= mixed >> np.uint64(29)
    return mixed


class RowChecker:
    """The row checks of one ingest, applied chunk by chunk; remembers days across chunks."""

    def __init__(
        self,
        source: PriceSource,
        *,
        start: dt.date | None,
        end: dt.date | None,
        as_of: dt.date | None,
        today: dt.date,
        summary: IngestSummary,
    ) -> None:
        self.source = source
        self.start = start
        self.end = end
        self.as_of = as_of
        self.today = today
        self.summary = summary
        # Spots the same day twice across the whole stream: day ordinal -> line << 64 | 64-bit
        # fingerprint of the values. Two small ints per distinct day (bounded by the calendar,
        # not by the size of the source); equal fingerprints count as identical values.
        self._seen: dict[int, int] = {}

    def check(self, frame: pd.DataFrame) -> tuple[list[PriceRow], list[Problem]]:
        """Valid, first-seen rows of a raw frame, and the problems of the others."""
        n = len(frame)
        self.summary.rows_read += n
        if n == 0:
            return [], []
        frame = frame.reset_index(drop=True)
        reasons: dict[int, str] = {}  # row -> first problem found

        def flag(mask: np.ndarray, reason: Any) -> None:
            for i in np.flatnonzero(mask).tolist():
                if i not in reasons:
                    reasons[i] = reason(i) if callable(reason) else reason

        def flagged() -> np.ndarray:
            mask = np.zeros(n, dtype=bool)
            mask[list(reasons)] = True
            return mask

        if ERROR in frame:
            errors = frame[ERROR].to_numpy(dtype=object)
            flag(pd.notna(errors), lambda i: str(errors[i]))
        raw_dates = frame[DATE]
        day, date_blank = parse_dates(raw_dates)
        flag(date_blank, "date is missing")
        flag(
            np.isnat(day),
            lambda i: f"date {str(raw_dates.iat[i]).strip()!r} is not a date (expected YYYY-MM-DD)",
        )
        values: dict[str, np.ndarray] = {}
        blanks: dict[str, np.ndarray] = {}
        for name in VALUE_FIELDS:
            cells = frame[name]
            values[name], blanks[name], bad = parse_numbers(cells)
            flag(
                bad,
                lambda i, name=name, cells=cells: (
                    f"{name} {str(cells.iat[i]).strip()!r} is not a number"
                ),
            )
        # A dated row with no values at all is the source saying "no data that day" (Yahoo's
        # null rows): counted and reported, neither stored nor an error.
        no_data = np.logical_and.reduce([blanks[name] for name in VALUE_FIELDS]) & ~flagged()
        # Rows outside the asked range are not loaded (counted); after today they are wrong.
        outside = np.zeros(n, dtype=bool)
        for bound, later in ((self.start, False), (self.end, True), (self.as_of, True)):
            if bound is not None:
                limit = np.datetime64(bound, "D")
                outside |= (day > limit) if later else (day < limit)
        outside &= ~no_data & ~flagged()
        active = ~no_data & ~outside
        if self.as_of is None:
            flag(
                active & (day > np.datetime64(self.today, "D")),
                lambda i: f"date {day[i]} is after today ({self.today})",
            )
        close, low, high = values["close"], values["low"], values["high"]
        flag(active & blanks["close"], "close is missing")
        with np.errstate(invalid="ignore"):
            for name in VALUE_FIELDS:
                column = values[name]
                flag(
                    active & ~np.isfinite(column) & ~blanks[name],
                    lambda i, c=column, name=name: f"{name} {c[i]:g} is not finite",
                )
            flag(active & (close <= 0), lambda i: f"close must be > 0, got {close[i]:g}")
            for name in ("open", "high", "low", "volume", "market_cap"):
                column = values[name]
                flag(
                    active & (column < 0),
                    lambda i, c=column, name=name: f"{name} must be >= 0, got {c[i]:g}",
                )
            flag(active & (high < low), lambda i: f"high {high[i]:g} is below low {low[i]:g}")
        invalid = flagged()
        return self._collect(frame, day, values, reasons, invalid, no_data, outside & ~invalid)

    def _collect(
        self,
        frame: pd.DataFrame,
        day: np.ndarray,
        values: dict[str, np.ndarray],
        reasons: dict[int, str],
        invalid: np.ndarray,
        no_data: np.ndarray,
        outside: np.ndarray,
    ) -> tuple[list[PriceRow], list[Problem]]:
        summary = self.summary
        has_lines = LINE in frame and bool(frame[LINE].notna().any())
        lines = frame[LINE].tolist() if has_lines else [None] * len(frame)
        summary.outside_range += int(outside.sum())
        if no_data.any():
            summary.no_data += int(no_data.sum())
            summary.no_data_days.extend(day[no_data].astype(object).tolist())
        problems = [self._problem(frame, i, lines[i], day, reasons[i]) for i in sorted(reasons)]
        valid = np.flatnonzero(~invalid & ~no_data & ~outside)
        if not len(valid):
            return [], problems
        days = day[valid].astype(object).tolist()
        columns = [_cells(values[name][valid]) for name in VALUE_FIELDS]
        ordinals = (day[valid].astype("int64") + _ORDINAL_1970).tolist()
        prints = _fingerprints([values[name][valid] for name in VALUE_FIELDS]).tolist()
        if has_lines:
            marks = [
                ((lines[i] or 0) << 64) | p for i, p in zip(valid.tolist(), prints, strict=True)
            ]
        else:
            marks = prints
        seen = self._seen
        rows: list[PriceRow]
        if len(set(ordinals)) == len(ordinals) and seen.keys().isdisjoint(ordinals):
            # The usual case, without a per-row Python loop: every day is new.
            seen.update(zip(ordinals, marks, strict=True))
            rows = list(map(_new_price_row, zip(days, *columns, strict=True)))
        else:
            rows = []
            for k, date in enumerate(days):
                known = seen.get(ordinals[k])
                if known is None:
                    seen[ordinals[k]] = marks[k]
                    rows.append(_new_price_row((date, *(column[k] for column in columns))))
                elif known & _HASH_MASK == prints[k]:
                    summary.duplicates += 1
                else:
                    first_line = known >> 64
                    first = f"line {first_line}" if first_line else "an earlier row"
                    position = int(valid[k])
                    problems.append(
                        self._problem(
                            frame,
                            position,
                            lines[position],
                            day,
                            f"date {date} appears twice with different values (first on "
                            f"{first}, which is kept)",
                        )
                    )
        if rows:
            first_day, last_day = min(days), max(days)
            if summary.first_date is None or first_day < summary.first_date:
                summary.first_date = first_day
            if summary.last_date is None or last_day > summary.last_date:
                summary.last_date = last_day
        return rows, problems

    def _problem(
        self, frame: pd.DataFrame, i: int, line: Any, day: np.ndarray, reason: str
    ) -> Problem:
        line_number = None if line is None or pd.isna(line) else int(line)
        day_text = str(day[i]) if not np.isnat(day[i]) else str(frame[DATE].iat[i])
        if RAW in frame and frame[RAW].iat[i] is not None:
            raw = str(frame[RAW].iat[i])
        else:
            cells = frame.iloc[i][[DATE, *VALUE_FIELDS]]
            raw = ",".join("" if pd.isna(v) else str(v) for v in cells)
        return Problem(self.source.locate(line_number, day_text), line_number, raw, reason)


def _refusal(source: PriceSource, problems: list[Problem]) -> DataError:
    listed = [str(p) for p in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        listed.append(f"... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    return DataError(
        f"refused {source.label}: {len(problems)} invalid row(s), nothing written "
        "(fix them, or pass --skip-invalid to load the valid rows and record the others in "
        "rejected_rows):\n" + "\n".join(listed)
    )


def ingest(
    *,
    ticker: str,
    source: PriceSource | str,
    database_url: str | None = None,
    engine: Engine | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    as_of: dt.date | None = None,
    skip_invalid: bool = False,
    today: dt.date | None = None,
) -> IngestSummary:
    """Read `source` (a source, or `--source` text) for `ticker`, check every row, upsert the
    valid ones in one transaction.

    Rows dated after `as_of` are not loaded (counted as outside the range); without `as_of`,
    a row dated after today (UTC) is invalid. Raises DataError listing every problem (nothing
    written) unless `skip_invalid`, SourceError if the source cannot be read.
    """
    if isinstance(source, str):
        from pricecast.settings import get_settings

        source = parse_source(source, get_settings())
    ticker = ticker.strip()
    if not ticker:
        raise DataError("ticker is empty; pass e.g. --ticker BTC-USD")
    today = today or today_utc()
    if as_of is not None and as_of > today:
        raise DataError(f"--as-of {as_of} is in the future (today is {today} UTC)")
    if start is not None and end is not None and start > end:
        raise DataError(f"--start {start} is after --end {end}")
    if engine is None and database_url is None:
        raise ValueError("ingest() needs database_url or engine")
    own_engine = engine is None
    engine = engine or make_engine(database_url)  # type: ignore[arg-type]
    read_until = min(d for d in (end, as_of, today) if d is not None)
    summary = IngestSummary(ticker=ticker, source=source.label)
    checker = RowChecker(source, start=start, end=end, as_of=as_of, today=today, summary=summary)
    try:
        ensure_schema(engine)
        with session_scope(engine) as session:
            staging = stage_prices(session, ticker=ticker, source=source.label)
            problems: list[Problem] = []
            for frame in source.read(ticker=ticker, start=start, end=read_until):
                rows, found = checker.check(frame)
                staging.add(rows)
                if found and skip_invalid:
                    summary.rejected += record_rejected(
                        session,
                        ticker=ticker,
                        source=source.label,
                        rejections=(Rejection(p.line, p.raw, p.reason) for p in found),
                    )
                elif found:
                    problems.extend(found)
            if problems:
                raise _refusal(source, problems)
            counts = staging.merge()
            summary.inserted, summary.updated, summary.unchanged = (
                counts.inserted,
                counts.updated,
                counts.unchanged,
            )
            first_day, last_day = summary.first_date, summary.last_date
            # Staged days are distinct and inside the span: if they fill it, nothing is missing.
            if first_day and last_day and staging.staged < (last_day - first_day).days + 1:
                summary.missing_days = missing_dates(
                    session, ticker=ticker, start=first_day, end=last_day
                )
        summary.notes.extend(source.notes())
        summary.no_data_days.sort()
        return summary
    finally:
        if own_engine:
            engine.dispose()
