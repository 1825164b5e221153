"""Several tickers' nights in one process: the `nightly-batch` flow a worker runs, and the same
lanes the universe runs in its own process.

Each ticker is a lane: its nights, oldest first, each the existing `nightly` as a subflow named
after the ticker. A bounded number of lanes run at once in threads; their trainings take turns in
one training process (the worker's resident one, `flows.training.resident`, or this process's
own: TensorFlow imported once per worker or batch, never per ticker), so one lane's ingest,
planning and promotion overlap another's training. MLflow's client is imported on a thread while
Prefect sets the first lanes up. A failing night stops its own lane only, and is recorded in
`nightly_runs` so the parent can report it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from sqlalchemy import Engine

from flows.night.policy import may_train
from flows.universe.plan import Member, NightParams
from flows.universe.report import one_line
from pricecast.errors import PricecastError
from pricecast.settings import Settings, get_settings

#: Threads a batch may use for lanes; `universe_parallel_nights` picks how many run at once.
MAX_PARALLEL_NIGHTS = 8


def lane_runner() -> TaskRunner[PrefectFuture[Any]]:
    """The task runner of a flow that runs lanes: threads, `run_lanes` bounds how many."""
    runner: ThreadPoolTaskRunner[Any] = ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_NIGHTS)
    return cast(TaskRunner[PrefectFuture[Any]], runner)


class NightsFailed(PricecastError):
    """Some tickers' nights failed (the others completed); each failure is in `nightly_runs`."""


@dataclass(frozen=True)
class Lane:
    """What one ticker's lane did: the nights it completed now, those already done, and the
    night it stopped at."""

    ticker: str
    ran: tuple[dt.date, ...] = ()
    skipped: tuple[dt.date, ...] = ()
    failed_at: dt.date | None = None
    error: str | None = None


def parallel_nights(settings: Settings) -> int:
    """Lanes at once in one process. SQLite (the embedded default) takes one writer at a time,
    so there it is one lane; on Postgres with an MLflow server, `universe_parallel_nights`."""
    uses_sqlite = any(
        url.startswith("sqlite")
        for url in (settings.resolved_database_url, settings.resolved_mlflow_uri)
    )
    wanted = max(1, min(settings.universe_parallel_nights, MAX_PARALLEL_NIGHTS))
    return 1 if uses_sqlite else wanted


def record_failure(engine: Engine, *, ticker: str, as_of: dt.date, error: str) -> None:
    """Make sure the failed night's row says so: a night that failed before it opened its row
    (a missing CSV, a source that does not answer) gets one, so every outcome is in the table."""
    from storage.db import session_scope
    from storage.runs import begin_run, fail_run, get_run

    with session_scope(engine) as session:
        row = get_run(session, ticker=ticker, as_of=as_of)
        if row is not None and row.status in ("done", "failed"):
            return  # the night recorded its own end
        if row is None:
            begin_run(
                session, ticker=ticker, as_of=as_of, last_complete_week=None, flow_run_id=None
            )
        fail_run(session, ticker=ticker, as_of=as_of, error=error)


def _done_dates(engine: Engine, ticker: str, dates: Sequence[dt.date]) -> set[dt.date]:
    from storage.db import session_scope
    from storage.runs import done_dates

    with session_scope(engine) as session:
        return done_dates(session, ticker=ticker, start=min(dates), end=max(dates))


@contextlib.contextmanager
def without_heartbeats() -> Iterator[None]:
    """Flow runs started in this block send no heartbeats of their own.

    For the ticker nights, which run inside a batch's (or the universe night's) process whose
    flow run keeps its heartbeats. Prefect's engine sends a flow run's heartbeats from a thread
    that sleeps in one-second steps, and joins that thread when the run ends: each night would
    end up to a second after its work (1.0 s measured for a subflow that returns at once, 14 ms
    without), a second its lane then spends neither training nor preparing the next night.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@task(name="ticker nights", task_run_name="{member.ticker}", cache_policy=NO_CACHE)
def ticker_nights(member: Member, dates: list[dt.date], params: NightParams) -> Lane:
    """One ticker's nights in date order, each a `nightly` subflow named after the ticker; the
    first failure is recorded and ends the lane (a rerun resumes there)."""
    from flows.night.flow import nightly
    from storage.db import make_engine

    settings = get_settings()
    engine = make_engine(settings.resolved_database_url)
    ran: list[dt.date] = []
    skipped: list[dt.date] = []
    name = member.ticker
    try:
        done = set() if params.force else _done_dates(engine, member.ticker, dates)
        for as_of in sorted(dates):
            if as_of in done:
                skipped.append(as_of)
                continue
            night = nightly.with_options(
                flow_run_name=name if len(dates) == 1 else f"{name} {as_of}"
            )
            try:
                with without_heartbeats():
                    night(
                        ticker=member.ticker,
                        as_of=as_of,
                        source=member.source,
                        **params.to_kwargs(),
                    )
            except Exception as exc:
                error = one_line(exc)
                print(f"{member.ticker} as of {as_of} failed: {error}")
                try:
                    record_failure(engine, ticker=member.ticker, as_of=as_of, error=error)
                except Exception as record_exc:  # the database itself may be what failed
                    print(f"{member.ticker}: could not record the failure: {one_line(record_exc)}")
                return Lane(member.ticker, tuple(ran), tuple(skipped), as_of, error)
            ran.append(as_of)
    except Exception as exc:  # reading the done nights failed: nothing of this lane ran
        return Lane(member.ticker, tuple(ran), tuple(skipped), min(dates), one_line(exc))
    finally:
        engine.dispose()
    return Lane(member.ticker, tuple(ran), tuple(skipped))


#: What every lane's first night imports when it first talks to MLflow (0.7-2 s here).
LANE_IMPORTS = ("mlflow",)


def prewarm_lane_imports() -> threading.Thread:
    """Import LANE_IMPORTS on a thread, so that they overlap with Prefect's set-up of the first
    lanes (their subflow runs, a second or two of API calls) instead of holding up the first
    nights' plans. A lane that needs a module first waits for this import of it to finish."""

    def load() -> None:
        for module in LANE_IMPORTS:
            with contextlib.suppress(Exception):  # the lane's own import will say what is wrong
                importlib.import_module(module)

    thread = threading.Thread(target=load, name="pricecast-lane-imports", daemon=True)
    thread.start()
    return thread


def run_lanes(
    members: Sequence[Member], dates: Sequence[dt.date], params: NightParams, *, parallel: int
) -> list[Lane]:
    """Every member's lane, at most `parallel` at once, inside the calling flow (whose task
    runner must have that many threads). Returned in the members' order."""
    if not members or not dates:
        return []
    prewarm_lane_imports()
    wanted = params.strategies is None or bool(params.strategies)  # None: the nightly's default
    if may_train(has_strategies=wanted, force=params.force, dates=dates):
        # TensorFlow's import overlaps with the first lanes' subflow set-up, ingest and plan.
        from flows.night.flow import prewarm_training

        prewarm_training(get_settings())
    queue = list(members)
    in_flight: list[PrefectFuture[Lane]] = []
    lanes: dict[str, Lane] = {}
    while queue or in_flight:
        while queue and len(in_flight) < max(1, parallel):
            in_flight.append(ticker_nights.submit(queue.pop(0), list(dates), params))
        finished = next(as_completed(in_flight))
        in_flight.remove(finished)
        lane = finished.result()
        lanes[lane.ticker] = lane
    return [lanes[m.ticker] for m in members]


def failure_message(lanes: Sequence[Lane]) -> str | None:
    """One line naming every failed lane, None if none failed."""
    failed = [lane for lane in lanes if lane.error]
    if not failed:
        return None
    listed = "; ".join(f"{lane.ticker} as of {lane.failed_at}: {lane.error}" for lane in failed)
    return f"{len(failed)} of {len(lanes)} ticker(s) failed: {listed}"


@flow(
    name="nightly-batch",
    log_prints=True,
    task_runner=lane_runner(),
)
def nightly_batch(
    members: list[dict[str, str]],
    dates: list[dt.date],
    holdout_weeks: int | None = None,
    strategies: list[str] | None = None,
    epochs: int | None = None,
    seed: int = 0,
    force: bool = False,
    window_weeks: int | None = None,
) -> list[dict[str, Any]]:
    """Run these tickers' nights in this process (see the module doc); the run ends Failed if
    any ticker failed, after all of them ran. `members`: [{"ticker": ..., "source": ...}]."""
    params = NightParams(holdout_weeks, strategies, epochs, seed, force, window_weeks)
    lanes = run_lanes(
        [Member.from_parameter(m) for m in members],
        dates,
        params,
        parallel=parallel_nights(get_settings()),
    )
    message = failure_message(lanes)
    if message:
        raise NightsFailed(message)
    return [
        {
            "ticker": lane.ticker,
            "ran": [d.isoformat() for d in lane.ran],
            "done_before": len(lane.skipped),
        }
        for lane in lanes
    ]
