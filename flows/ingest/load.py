"""Load one price source: check every row, upsert the valid ones in one transaction, summarise.

By default a source with any invalid row is refused whole (the first problems named, nothing
written); with `skip_invalid` the valid rows load and the invalid ones go to `rejected_rows`,
streamed in batches, each stored once. Memory stays bounded by the rows kept, not those refused.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from flows.ingest.checks import MOVE_WINDOW_DAYS, Problem, RowChecker, StoredClose
from flows.ingest.sources import PriceSource, parse_source
from forecasting.calendar import today_utc
from pricecast.errors import DataError
from storage.db import ensure_schema, make_engine, session_scope
from storage.prices import (
    PriceStaging,
    Rejection,
    close_before,
    missing_dates,
    record_rejected,
    stage_prices,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MAX_LISTED_PROBLEMS", "IngestSummary", "Problem", "RowChecker", "ingest"]

MAX_LISTED_PROBLEMS = 50


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
    #: Things the user must see (a source with no rows); printed first, also in --json.
    warnings: list[str] = field(default_factory=list)
    #: Of `rejected`, rows an earlier run had already stored in rejected_rows (not stored again).
    rejected_already_recorded: int = 0

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
        out = [f"warning: {warning}" for warning in self.warnings]
        out += [
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
                f"{self.no_data} ({_first_days(self.no_data_days, total=self.no_data)})"
            )
        if self.rejected_already_recorded:
            out.append(
                f"rejected rows already in rejected_rows from an earlier run (not stored again): "
                f"{self.rejected_already_recorded}"
            )
        if self.duplicates:
            out.append(f"identical repeated days loaded once: {self.duplicates}")
        if self.outside_range:
            out.append(f"rows outside --start/--end/--as-of, not loaded: {self.outside_range}")
        out.extend(self.notes)
        return out


def _first_days(days: list[dt.date], shown: int = 5, *, total: int | None = None) -> str:
    total = len(days) if total is None else total
    text = ", ".join(d.isoformat() for d in days[:shown])
    return text + (f", ... {total - shown} more" if total > shown else "")


def _stored_close_before(
    session: Session, ticker: str, within_days: int, day: dt.date
) -> tuple[dt.date, float] | None:
    return close_before(session, ticker=ticker, day=day, within_days=within_days)


class _Refusals:
    """The problems of a source refused whole: all counted, the first MAX_LISTED_PROBLEMS kept."""

    def __init__(self) -> None:
        self.count = 0
        self.listed: list[Problem] = []

    def add(self, problems: list[Problem]) -> None:
        self.count += len(problems)
        room = MAX_LISTED_PROBLEMS - len(self.listed)
        if room > 0:
            self.listed.extend(problems[:room])

    def error(self, source: PriceSource) -> DataError:
        listed = [str(p) for p in self.listed]
        if self.count > len(self.listed):
            listed.append(f"... and {self.count - len(self.listed)} more")
        return DataError(
            f"refused {source.label}: {self.count} invalid row(s), nothing written "
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
    allow_large_moves: bool = False,
    max_daily_move: float | None = None,
    today: dt.date | None = None,
) -> IngestSummary:
    """Read `source` (a source, or `--source` text) for `ticker`, check every row, upsert the
    valid ones in one transaction.

    Rows dated after `as_of` are not loaded (counted as outside the range); without `as_of`,
    a row dated after today (UTC) is invalid. A close that moved more than `max_daily_move`
    (a fraction; default PRICECAST_MAX_DAILY_MOVE) from the day before is invalid unless
    `allow_large_moves`. Raises DataError naming the problems (nothing written) unless
    `skip_invalid`, SourceError if the source cannot be read. A source with no rows loads
    nothing and says so in `warnings`.
    """
    if isinstance(source, str):
        from pricecast.settings import get_settings

        source = parse_source(source, get_settings())
    max_daily_move = _move_bound(max_daily_move, allow_large_moves=allow_large_moves)
    ticker = ticker.strip()
    today = today or today_utc()
    _check_request(ticker, start=start, end=end, as_of=as_of, today=today)
    if engine is None and database_url is None:
        raise ValueError("ingest() needs database_url or engine")
    own_engine = engine is None
    engine = engine or make_engine(database_url)  # type: ignore[arg-type]
    read_until = min(d for d in (end, as_of, today) if d is not None)
    summary = IngestSummary(ticker=ticker, source=source.label)
    try:
        ensure_schema(engine)
        with session_scope(engine) as session:
            staging = stage_prices(session, ticker=ticker, source=source.label)
            # A first load has nothing stored to compare with.
            stored_close: StoredClose | None = None
            if not staging.first_load:
                stored_close = functools.partial(
                    _stored_close_before, session, ticker, MOVE_WINDOW_DAYS
                )
            checker = RowChecker(
                source,
                start=start,
                end=end,
                as_of=as_of,
                today=today,
                summary=summary,
                max_daily_move=max_daily_move,
                stored_close=stored_close,
            )
            frames = source.read(ticker=ticker, start=start, end=read_until)
            if skip_invalid:
                _stage_skipping_invalid(session, frames, checker, staging, summary)
            else:
                _stage_all_or_nothing(frames, checker, staging, summary)
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
        if summary.rows_read == 0:
            summary.warnings.append(
                f"{source.label} has no rows (a header only, or nothing in the asked range): "
                "nothing was loaded; check the source"
            )
        return summary
    finally:
        if own_engine:
            engine.dispose()


def _move_bound(max_daily_move: float | None, *, allow_large_moves: bool) -> float | None:
    """The day-over-day bound in force: None when large moves are allowed, else the given one
    or PRICECAST_MAX_DAILY_MOVE."""
    if allow_large_moves:
        return None
    if max_daily_move is None:
        from pricecast.settings import get_settings

        max_daily_move = get_settings().max_daily_move
    if max_daily_move is not None and not max_daily_move > 0:
        raise DataError(
            f"the daily move bound must be > 0 (got {max_daily_move:g}); "
            "set PRICECAST_MAX_DAILY_MOVE to e.g. 0.75, or pass --allow-large-moves"
        )
    return max_daily_move


def _check_request(
    ticker: str,
    *,
    start: dt.date | None,
    end: dt.date | None,
    as_of: dt.date | None,
    today: dt.date,
) -> None:
    if not ticker:
        raise DataError("ticker is empty; pass e.g. --ticker BTC-USD")
    if as_of is not None and as_of > today:
        raise DataError(f"--as-of {as_of} is in the future (today is {today} UTC)")
    if start is not None and end is not None and start > end:
        raise DataError(f"--start {start} is after --end {end}")


def _stage_skipping_invalid(
    session: Session,
    frames: Iterable[pd.DataFrame],
    checker: RowChecker,
    staging: PriceStaging,
    summary: IngestSummary,
) -> None:
    """--skip-invalid: stage the valid rows, record each refused one (once per content)."""
    for frame in frames:
        rows, found = checker.check(frame)
        staging.add(rows)
        if not found:
            continue
        summary.rejected += len(found)
        new = record_rejected(
            session,
            ticker=summary.ticker,
            source=summary.source,
            rejections=(Rejection(p.line, p.raw, p.reason) for p in found),
        )
        summary.rejected_already_recorded += len(found) - new


def _stage_all_or_nothing(
    frames: Iterable[pd.DataFrame],
    checker: RowChecker,
    staging: PriceStaging,
    summary: IngestSummary,
) -> None:
    """Stage every row, or raise DataError naming the refused ones (nothing is merged)."""
    refusals = _Refusals()
    for frame in frames:
        rows, found = checker.check(frame)
        refusals.add(found)
        if not refusals.count:  # once refused, nothing will be kept: stop writing
            staging.add(rows)
    if refusals.count:
        summary.rejected = refusals.count
        raise refusals.error(checker.source)
