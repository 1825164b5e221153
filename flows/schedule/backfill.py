"""Replay the nightly flow as of each past date, in date order: idempotent, resumable, honest.

Each replayed night is a Prefect flow run of `nightly` with its own `as_of`, so it sees only the
prices up to that date, trains only when a week has completed since the last night that trained,
and records itself in `nightly_runs` — which is how a rerun skips the nights already done.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from forecasting.calendar import yesterday_utc
from pricecast.errors import DataError, PricecastError

EVERY = ("day", "week")


class BackfillStopped(PricecastError):
    """A replayed night failed; the nights before it are kept and a rerun resumes at it."""


@dataclass(frozen=True)
class NightOutcome:
    as_of: dt.date
    trained: bool
    promoted: str | None
    champion_version: int | None
    seconds: float
    #: The night's own timings (`nightly --json`), e.g. train_seconds, child_worker_rss_mb.
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class BackfillSummary:
    ticker: str
    start: dt.date
    end: dt.date
    every: str
    nights: int
    skipped_done: int = 0
    replayed: list[NightOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def trained_nights(self) -> int:
        return sum(night.trained for night in self.replayed)

    def to_json(self) -> dict[str, Any]:
        return {
            "ticker": self.ticker,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "every": self.every,
            "nights": self.nights,
            "replayed_nights": len(self.replayed),
            "trained_nights": self.trained_nights,
            "skipped_done": self.skipped_done,
            "total_seconds": round(self.seconds, 2),
            "replayed": [
                {
                    "as_of": night.as_of.isoformat(),
                    "trained": night.trained,
                    "promoted": night.promoted,
                    "champion_version": night.champion_version,
                    "seconds": round(night.seconds, 2),
                    "train_seconds": night.timings.get("train_seconds"),
                }
                for night in self.replayed
            ],
        }


def backfill_dates(
    start: dt.date, end: dt.date, every: str = "day", *, today: dt.date | None = None
) -> list[dt.date]:
    """The nights to replay: every day (or every 7th day from `start`) up to `end`, inclusive.

    `end` may be at most yesterday: a night's closes are final only once the day is over.
    """
    if every not in EVERY:
        raise DataError(f"--every {every!r} is not one of {', '.join(EVERY)}")
    if end < start:
        raise DataError(f"--end {end} is before --start {start}; give the range oldest first")
    yesterday = yesterday_utc() if today is None else today - dt.timedelta(days=1)
    if end > yesterday:
        raise DataError(
            f"--end {end} is not over yet (latest final night: {yesterday}); the nightly run "
            "of a date needs its closing price"
        )
    step = dt.timedelta(days=1 if every == "day" else 7)
    dates, night = [], start
    while night <= end:
        dates.append(night)
        night += step
    return dates


def pending_dates(dates: Sequence[dt.date], done: set[dt.date]) -> list[dt.date]:
    """Dates not done yet, in order: a rerun after a failure or Ctrl-C resumes at the first."""
    return [night for night in dates if night not in done]


def nights_done(database_url: str, *, ticker: str, start: dt.date, end: dt.date) -> set[dt.date]:
    from storage.db import ensure_schema, make_engine, session_scope
    from storage.runs import done_dates

    engine = make_engine(database_url)
    try:
        ensure_schema(engine)
        with session_scope(engine) as session:
            return done_dates(session, ticker=ticker, start=start, end=end)
    finally:
        engine.dispose()


def replay_night(
    *, ticker: str, as_of: dt.date, source: str, seed: int | None, epochs: int | None
) -> NightOutcome:
    """One nightly flow run as of `as_of` (tagged `backfill` in the Prefect UI)."""
    from prefect import tags

    from flows.night.flow import nightly

    began = time.perf_counter()
    options: dict[str, Any] = {}
    if seed is not None:
        options["seed"] = seed
    if epochs is not None:
        options["epochs"] = epochs
    with tags("backfill"):
        result = nightly(ticker=ticker, as_of=as_of, source=source, **options)
    return NightOutcome(
        as_of=as_of,
        trained=result.trained,
        promoted=result.promoted,
        champion_version=result.champion_version,
        seconds=time.perf_counter() - began,
        timings=dict(result.timings),
    )


def run_backfill(
    *,
    ticker: str,
    source: str,
    start: dt.date,
    end: dt.date,
    every: str = "day",
    seed: int | None = None,
    epochs: int | None = None,
    database_url: str | None = None,
    show_progress: bool | None = None,
    on_night: Callable[[NightOutcome], None] | None = None,
) -> BackfillSummary:
    """Replay every pending night in [start, end]; stop at the first failure (BackfillStopped).

    `show_progress`: a progress bar with ETA on stderr; default: only when it is a terminal.
    `on_night` is called after each replayed night (benchmarks sample memory there).
    """
    from pricecast.settings import get_settings

    began = time.perf_counter()
    dates = backfill_dates(start, end, every)
    url = database_url or get_settings().resolved_database_url
    done = nights_done(url, ticker=ticker, start=start, end=end)
    todo = pending_dates(dates, done)
    summary = BackfillSummary(
        ticker=ticker,
        start=start,
        end=end,
        every=every,
        nights=len(dates),
        skipped_done=len(dates) - len(todo),
    )
    with _progress(len(todo), show_progress) as advance:
        for as_of in todo:
            advance(f"{ticker} as of {as_of}", None)
            try:
                outcome = replay_night(
                    ticker=ticker, as_of=as_of, source=source, seed=seed, epochs=epochs
                )
            except KeyboardInterrupt:
                print(
                    f"interrupted at {as_of}: {len(summary.replayed)} night(s) replayed this time "
                    "are kept; rerun the same command to continue from there",
                    file=sys.stderr,
                )
                raise
            except Exception as exc:
                summary.seconds = time.perf_counter() - began
                raise BackfillStopped(
                    f"backfill stopped at {as_of} ({len(summary.replayed)} night(s) replayed "
                    f"before it are kept): {_one_line(exc)}. Fix the cause and rerun the same "
                    f"command: it resumes at {as_of}"
                ) from exc
            summary.replayed.append(outcome)
            if on_night is not None:
                on_night(outcome)
            advance(f"{ticker} as of {as_of}", outcome)
    summary.seconds = time.perf_counter() - began
    return summary


def _one_line(exc: BaseException, limit: int = 800) -> str:
    """The failure's message on one line (the CLI prints one line per error)."""
    text = "; ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def _progress(
    total: int, show: bool | None
) -> Iterator[Callable[[str, NightOutcome | None], None]]:
    """A rich progress bar (with ETA) on stderr; a no-op callback when not on a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not (console.is_terminal if show is None else show) or total == 0:
        yield lambda description, outcome: None
        return
    columns = (
        TextColumn("[bold]backfill[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("trained {task.fields[trained]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("", total=total, trained=0)
        trained = 0

        def advance(description: str, outcome: NightOutcome | None) -> None:
            nonlocal trained
            if outcome is None:
                progress.update(task, description=description)
                return
            trained += outcome.trained
            progress.update(task, advance=1, trained=trained)

        yield advance
