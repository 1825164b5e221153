"""Validate one price source and upsert it into the database, in one transaction, with a summary.

By default a source with any invalid row is refused whole (every problem named, nothing written);
with `skip_invalid` the valid rows load and the invalid ones go to `rejected_rows`.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from flows.sources import DATE, ERROR, LINE, RAW, VALUE_FIELDS, PriceSource, parse_source
from pricecast.errors import DataError
from storage.db import ensure_schema, make_engine, session_scope
from storage.prices import PriceRow, Rejection, read_dates, record_rejected, stage_prices

MAX_LISTED_PROBLEMS = 50
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


def parse_dates(values: pd.Series) -> pd.Series:
    """Raw date cells -> datetime64 at midnight (NaT where unparseable or empty).

    Accepted: ISO dates with an optional time ("2021-02-26", "2021-02-26 23:59:59",
    "2021-02-26T00:00:00Z"; the calendar day as written), "Apr 28, 2013", and Unix epoch seconds
    or milliseconds. Slash dates like 01/02/2021 are refused: day and month are ambiguous.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        if getattr(values.dt, "tz", None) is not None:
            values = values.dt.tz_localize(None)
        return values.dt.normalize().astype("datetime64[ns]")
    text = values.astype("string").str.strip()
    iso = text.str.extract(_ISO_DAY, expand=False)
    parsed = pd.to_datetime(iso, format="%Y-%m-%d", errors="coerce")
    rest = parsed.isna() & text.notna() & (text != "")
    if rest.any():
        named = pd.to_datetime(text[rest], format="%b %d, %Y", errors="coerce")
        parsed[rest] = named
        digits = rest & parsed.isna() & text.str.fullmatch(r"\d{10}|\d{13}").fillna(False)
        if digits.any():
            numbers = text[digits].astype("int64")
            seconds = np.where(numbers > 10**11, numbers // 1000, numbers)
            parsed[digits] = pd.to_datetime(seconds, unit="s").normalize()
    return parsed.astype("datetime64[ns]")


def parse_numbers(values: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Raw value cells -> (float64 with NaN for blank, blank mask, unparseable mask).

    Blank: empty, null, NaN, N/A, -. Numbers may use exponents (8.61E+11) and thousands
    separators (1,234.5).
    """
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.astype("float64")
        return numbers, numbers.isna(), pd.Series(False, index=values.index)
    text = values.astype("string").str.strip()
    blank = (text.isna() | text.str.lower().isin(_BLANKS)).fillna(True).astype(bool)
    grouped = text.str.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?").fillna(False).astype(bool)
    text = text.where(~grouped, text.str.replace(",", "", regex=False))
    numbers = pd.to_numeric(text.where(~blank), errors="coerce").astype("float64")
    return numbers, blank, numbers.isna() & ~blank


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
        # day -> (line, values): spots the same day twice across the whole stream.
        self._seen: dict[dt.date, tuple[int | None, tuple[float | None, ...]]] = {}

    def check(self, frame: pd.DataFrame) -> tuple[list[PriceRow], list[Problem]]:
        """Valid, first-seen rows of a raw frame, and the problems of the others."""
        n = len(frame)
        self.summary.rows_read += n
        if n == 0:
            return [], []
        frame = frame.reset_index(drop=True)
        reasons: list[str | None] = [None] * n

        def flag(mask: np.ndarray, reason: Any) -> None:
            for i in np.flatnonzero(mask):
                if reasons[i] is None:
                    reasons[i] = reason(i) if callable(reason) else reason

        if ERROR in frame:
            errors = frame[ERROR]
            flag(errors.notna().to_numpy(), lambda i: str(errors.iat[i]))
        raw_dates = frame[DATE]
        dates = parse_dates(raw_dates)
        date_blank = (
            (raw_dates.isna() | (raw_dates.astype("string").str.strip() == ""))
            .fillna(True)
            .to_numpy(dtype=bool)
        )
        flag(date_blank, "date is missing")
        flag(
            dates.isna().to_numpy(),
            lambda i: f"date {str(raw_dates.iat[i]).strip()!r} is not a date (expected YYYY-MM-DD)",
        )
        values: dict[str, pd.Series] = {}
        blanks: dict[str, np.ndarray] = {}
        for name in VALUE_FIELDS:
            numbers, blank, bad = parse_numbers(frame[name])
            values[name], blanks[name] = numbers, blank.to_numpy(dtype=bool)
            cells = frame[name]
            flag(
                bad.to_numpy(dtype=bool),
                lambda i, name=name, cells=cells: (
                    f"{name} {str(cells.iat[i]).strip()!r} is not a number"
                ),
            )
        # A dated row with no values at all is the source saying "no data that day" (Yahoo's
        # null rows): counted and reported, neither stored nor an error.
        no_data = np.logical_and.reduce([blanks[name] for name in VALUE_FIELDS])
        no_data &= np.array([r is None for r in reasons])
        # Rows outside the asked range are not loaded (counted); after today they are wrong.
        day = dates.to_numpy()
        outside = np.zeros(n, dtype=bool)
        if self.start is not None:
            outside |= day < np.datetime64(self.start)
        if self.end is not None:
            outside |= day > np.datetime64(self.end)
        if self.as_of is not None:
            outside |= day > np.datetime64(self.as_of)
        else:
            future = (day > np.datetime64(self.today)) & ~outside
            flag(future, lambda i: f"date {dates.iat[i].date()} is after today ({self.today})")
        dated = ~np.isnat(day)
        outside &= dated & ~no_data & np.array([r is None for r in reasons])
        flag(outside, "outside")  # placeholder so later checks skip these rows
        flag(no_data, "no data")
        close, low, high = values["close"], values["low"], values["high"]
        flag(blanks["close"], "close is missing")
        for name in VALUE_FIELDS:
            series = values[name]
            flag(
                ~np.isfinite(series.to_numpy()) & ~blanks[name],
                lambda i, s=series, name=name: f"{name} {s.iat[i]:g} is not finite",
            )
        flag((close <= 0).to_numpy(), lambda i: f"close must be > 0, got {close.iat[i]:g}")
        for name in ("open", "high", "low", "volume", "market_cap"):
            series = values[name]
            flag(
                (series < 0).to_numpy(),
                lambda i, s=series, name=name: f"{name} must be >= 0, got {s.iat[i]:g}",
            )
        flag(
            (high < low).to_numpy(),
            lambda i: f"high {high.iat[i]:g} is below low {low.iat[i]:g}",
        )
        return self._collect(frame, dates, values, reasons, no_data, outside)

    def _collect(
        self,
        frame: pd.DataFrame,
        dates: pd.Series,
        values: dict[str, pd.Series],
        reasons: list[str | None],
        no_data: np.ndarray,
        outside: np.ndarray,
    ) -> tuple[list[PriceRow], list[Problem]]:
        summary = self.summary
        lines = frame[LINE].tolist() if LINE in frame else [None] * len(frame)
        problems: list[Problem] = []
        summary.outside_range += int(outside.sum())
        if no_data.any():
            summary.no_data += int(no_data.sum())
            summary.no_data_days.extend(d.date() for d in dates[no_data])
        invalid = np.array([r is not None for r in reasons]) & ~no_data & ~outside
        for i in np.flatnonzero(invalid):
            problems.append(self._problem(frame, i, lines[i], dates, reasons[i] or ""))
        valid = np.flatnonzero(~invalid & ~no_data & ~outside)
        if not len(valid):
            return [], problems
        columns = [
            values[name].iloc[valid].astype(object).where(values[name].iloc[valid].notna(), None)
            for name in VALUE_FIELDS
        ]
        days = dates.iloc[valid].dt.date.tolist()
        rows: list[PriceRow] = []
        seen = self._seen
        for position, day, *cells in zip(
            valid.tolist(), days, *(c.tolist() for c in columns), strict=True
        ):
            known = seen.get(day)
            cells_tuple = tuple(cells)
            if known is None:
                seen[day] = (lines[position], cells_tuple)
                rows.append(PriceRow(day, *cells_tuple))
            elif known[1] == cells_tuple:
                summary.duplicates += 1
            else:
                first = f"line {known[0]}" if known[0] is not None else "an earlier row"
                problems.append(
                    self._problem(
                        frame,
                        position,
                        lines[position],
                        dates,
                        f"date {day} appears twice with different values (first on {first}, "
                        "which is kept)",
                    )
                )
        if rows:
            first_day, last_day = min(r.date for r in rows), max(r.date for r in rows)
            if summary.first_date is None or first_day < summary.first_date:
                summary.first_date = first_day
            if summary.last_date is None or last_day > summary.last_date:
                summary.last_date = last_day
        return rows, problems

    def _problem(
        self, frame: pd.DataFrame, i: int, line: Any, dates: pd.Series, reason: str
    ) -> Problem:
        line_number = (
            None if line is None or (isinstance(line, float) and math.isnan(line)) else int(line)
        )
        day = dates.iat[i]
        day_text = day.date().isoformat() if not pd.isna(day) else str(frame[DATE].iat[i])
        if RAW in frame and frame[RAW].iat[i] is not None:
            raw = str(frame[RAW].iat[i])
        else:
            raw = ",".join(
                "" if pd.isna(v) else str(v) for v in frame.iloc[i][[DATE, *VALUE_FIELDS]]
            )
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
            if summary.first_date and summary.last_date:
                stored = set(
                    read_dates(
                        session, ticker=ticker, start=summary.first_date, end=summary.last_date
                    )
                )
                span = (summary.last_date - summary.first_date).days + 1
                summary.missing_days = [
                    day
                    for day in (summary.first_date + dt.timedelta(days=k) for k in range(span))
                    if day not in stored
                ]
        summary.notes.extend(source.notes())
        summary.no_data_days.sort()
        return summary
    finally:
        if own_engine:
            engine.dispose()
