"""The `nightly-universe` flow (one night over every enabled ticker) and `backfill-universe` (the
universe replayed over a date range): read the universe, skip what is done, run the rest in this
process or fan it out to the work pool, then report every ticker from the database.

The parent ends Failed when any ticker failed, after its markdown artifact is written.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from prefect import flow
from sqlalchemy import Engine

from flows.universe.batch import Lane, lane_runner, parallel_nights, run_lanes
from flows.universe.fanout import (
    ENGINE_COMMAND,
    BatchRun,
    api_url,
    batch_deployment,
    current_work_pool,
    deployment_exists,
    pool_status,
    submit_batches,
    wait_for_batches,
)
from flows.universe.members import enabled_members
from flows.universe.plan import WHERE, Member, NightParams, pending_members, plan_fanout
from flows.universe.report import (
    TickerBackfill,
    TickerOutcome,
    UniverseBackfill,
    UniverseResult,
    markdown,
)
from pricecast.errors import ConfigError, PricecastError
from pricecast.settings import Settings, get_settings
from storage.runs import NightlyRun

ARTIFACT_KEY = "nightly-universe"


class UniverseFailed(PricecastError):
    """Some tickers failed; `result` has every ticker's outcome (the artifact is written)."""

    def __init__(self, message: str, result: UniverseResult | UniverseBackfill) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class Execution:
    """Where the pending tickers ran and how each place ended."""

    where: str
    lanes: list[Lane] = field(default_factory=list)
    batches: list[BatchRun] = field(default_factory=list)

    def lane(self, ticker: str) -> Lane | None:
        return next((lane for lane in self.lanes if lane.ticker == ticker), None)

    def batch_of(self, ticker: str) -> BatchRun | None:
        return next((b for b in self.batches if any(m.ticker == ticker for m in b.members)), None)


def resolve_where(where: str, pool: str) -> str:
    """`local` or `pool`. auto: the pool when a Prefect server is configured and `pricecast
    deploy` registered the batch deployment there, else this process."""
    if where not in WHERE:
        raise ConfigError(f"where={where!r} is not one of {', '.join(WHERE)}")
    if where == "local":
        return "local"
    server = api_url()
    if server is None:
        if where == "pool":
            raise ConfigError(
                "running on a work pool needs a Prefect server: export "
                "PREFECT_API_URL=http://127.0.0.1:4200/api (see `make up`)"
            )
        return "local"
    if deployment_exists(batch_deployment(pool)):
        return "pool"
    if where == "pool":
        raise ConfigError(
            f"no deployment {batch_deployment(pool)} on {server}: register it with "
            f"`pricecast deploy --pool {pool}`"
        )
    print(f"{batch_deployment(pool)} is not deployed on {server}: running in this process")
    return "local"


def execute(
    pending: Sequence[Member],
    dates: Sequence[dt.date],
    params: NightParams,
    *,
    where: str,
    pool: str,
    settings: Settings,
    idempotency_prefix: str | None,
) -> Execution:
    """Run the pending members' nights here or on the pool (see `plan_fanout`)."""
    if not pending:
        return Execution("nowhere (nothing to do)")
    if resolve_where(where, pool) == "local":
        lanes = run_lanes(pending, dates, params, parallel=parallel_nights(settings))
        return Execution("this process", lanes=lanes)
    status = pool_status(pool)
    if status.is_paused:
        print(f"work pool {pool!r} is paused: its batch runs wait until it is resumed")
    if status.online_workers == 0:
        print(
            f"no worker is online in pool {pool!r}: the batch runs wait for one "
            f"(`pricecast worker --pool {pool}`)"
        )
    from flows.universe.plan import pool_capacity

    capacity = pool_capacity(
        online_workers=status.online_workers,
        runs_per_worker=settings.universe_runs_per_worker,
        pool_limit=status.concurrency_limit,
    )
    fan = plan_fanout(pending, capacity=capacity, parent_in_pool=current_work_pool() == pool)
    submitted = submit_batches(
        pool, fan.remote, dates, params, idempotency_prefix=idempotency_prefix
    )
    print(
        f"{len(pending)} ticker(s) on pool {pool!r} ({status.online_workers} worker(s) online): "
        f"{len(submitted)} batch run(s)" + (f", {len(fan.local)} in this run" if fan.local else "")
    )
    lanes = run_lanes(fan.local, dates, params, parallel=parallel_nights(settings))
    batches = wait_for_batches(
        submitted,
        pool=pool,
        timeout_seconds=settings.universe_wait_timeout_seconds,
        poll_seconds=settings.universe_poll_seconds,
    )
    where_text = f"pool {pool} ({len(submitted)} batch run(s)"
    where_text += " + the universe run itself)" if fan.local else ")"
    return Execution(where_text, lanes=lanes, batches=batches)


def _attempts(engine: Engine, tickers: Sequence[str], start: dt.date, end: dt.date) -> dict:
    """(ticker, as_of) -> (status, attempts) of the nights in the range, before the run."""
    from storage.db import session_scope
    from storage.universe import nights_between

    with session_scope(engine) as session:
        rows = nights_between(session, tickers=tickers, start=start, end=end)
    return {(r.ticker, r.as_of): (r.status, r.attempts) for r in rows}


def _not_run_error(ticker: str, execution: Execution) -> str:
    """Why a pending ticker has no new attempt: its lane's error or its batch's end."""
    lane = execution.lane(ticker)
    if lane is not None and lane.error:
        return lane.error
    batch = execution.batch_of(ticker)
    if batch is not None and batch.state_type == "CRASHED":
        return f"the night did not run: {batch.describe_end()}; {CRASHED_BATCH_HINT}"
    if batch is not None:
        return f"the night did not run: {batch.describe_end()}; rerun the same --as-of"
    return "the night did not run; rerun the same --as-of"


#: What to do about a batch run whose process ended before this ticker's night began.
CRASHED_BATCH_HINT = (
    "the log of the worker that ran it says why (if it says `No module named prefect` or "
    f"`flows`, that worker's `python` is not the project's: workers run `{ENGINE_COMMAND}` with "
    "the first `python` on their PATH; start them with `pricecast worker`, or from the "
    "project's virtualenv); then rerun the same --as-of"
)


def night_outcomes(
    engine: Engine,
    members: Sequence[Member],
    pending: Sequence[Member],
    as_of: dt.date,
    before: dict,
    execution: Execution,
) -> list[TickerOutcome]:
    """Every member's outcome as of `as_of`, from `nightly_runs` and the gate's `promotions`
    row; a pending ticker whose night left no new attempt failed with its lane's or batch's
    message."""
    from storage.db import session_scope
    from storage.universe import gate_decisions, nights_as_of

    tickers = [m.ticker for m in members]
    with session_scope(engine) as session:
        nights = nights_as_of(session, as_of=as_of, tickers=tickers)
        gates = gate_decisions(session, as_of=as_of, tickers=tickers)
    ran = {m.ticker for m in pending}
    outcomes = []
    for member in members:
        ticker = member.ticker
        row = nights.get(ticker)
        if ticker not in ran:
            champion = row.champion_version if row is not None else None
            outcomes.append(TickerOutcome(ticker, "skipped", champion_version=champion))
            continue
        touched = row is not None and before.get((ticker, as_of)) != (row.status, row.attempts)
        if row is None or not touched or row.status == "running":
            error = (row.error if row is not None and touched else None) or _not_run_error(
                ticker, execution
            )
            outcomes.append(TickerOutcome(ticker, "failed", error=error))
            continue
        if row.status == "failed":
            outcomes.append(
                TickerOutcome(ticker, "failed", champion_version=row.champion_version,
                              error=row.error or _not_run_error(ticker, execution))
            )  # fmt: skip
            continue
        train_seconds = _train_seconds(row)
        trained = bool(row.trained) and train_seconds > 0
        gate = gates.get(ticker) if trained else None
        numbers = (gate.numbers or {}) if gate is not None else {}
        best, best_mape = _best_candidate(numbers)
        naive = numbers.get("naive") or {}
        outcomes.append(
            TickerOutcome(
                ticker,
                "done",
                trained=trained,
                promoted=gate.candidate if gate is not None and gate.action == "promote" else None,
                champion_version=row.champion_version,
                decision=gate.action if gate is not None else None,
                candidate=best,
                candidate_mape=best_mape,
                naive_mape=float(naive["mape"]) if "mape" in naive else None,
                train_seconds=train_seconds,
            )
        )
    return outcomes


def _train_seconds(row: NightlyRun) -> float:
    """The night's training seconds (0 when it did not train), from its recorded timings."""
    return float((row.timings or {}).get("train_seconds", 0.0) or 0.0)


def _best_candidate(numbers: dict) -> tuple[str | None, float | None]:
    candidates = numbers.get("candidates") or {}
    scored = [(name, float(v["mape"])) for name, v in candidates.items() if "mape" in v]
    if not scored:
        return None, None
    return min(scored, key=lambda pair: pair[1])


def _artifact(text: str, description: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=text, key=ARTIFACT_KEY, description=description)


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


@flow(
    name="nightly-universe",
    log_prints=True,
    task_runner=lane_runner(),
)
def nightly_universe(
    as_of: dt.date | None = None,
    tickers: list[str] | None = None,
    where: str = "auto",
    pool: str | None = None,
    holdout_weeks: int | None = None,
    strategies: list[str] | None = None,
    epochs: int | None = None,
    seed: int = 0,
    force: bool = False,
    window_weeks: int | None = None,
) -> UniverseResult:
    """One night as of `as_of` (default: yesterday, UTC) for every enabled ticker of the universe
    (or only `tickers`), each the existing `nightly` as a run named after the ticker.

    Tickers whose night is already done are skipped (all run again with `force`). `where`:
    `local` runs them in this process, `pool` on the work pool `pool` (batch runs linked to this
    one), `auto` the pool when it is deployed. Ends Failed if any ticker failed, after writing
    the artifact (one row per ticker).
    """
    from forecasting.calendar import yesterday_utc
    from storage.db import ensure_schema, make_engine

    started = time.perf_counter()
    settings = get_settings()
    night = as_of or yesterday_utc()
    pool_name = pool or settings.worker_pool
    params = NightParams(holdout_weeks, strategies, epochs, seed, force, window_weeks)
    engine = make_engine(settings.resolved_database_url)
    try:
        ensure_schema(engine)
        members = enabled_members(engine, tickers)
        before = _attempts(engine, [m.ticker for m in members], night, night)
        done = {t for (t, _), (status, _) in before.items() if status == "done"}
        pending = pending_members(members, done, force=force)
        print(
            f"universe night as of {night}: {len(members)} ticker(s), {len(pending)} to run, "
            f"{len(members) - len(pending)} already done"
        )
        execution = execute(
            pending,
            [night],
            params,
            where=where,
            pool=pool_name,
            settings=settings,
            idempotency_prefix=_flow_run_id(),
        )
        outcomes = night_outcomes(engine, members, pending, night, before, execution)
    finally:
        engine.dispose()
    result = UniverseResult(
        as_of=night,
        tickers=tuple(outcomes),
        total_seconds=time.perf_counter() - started,
        where=execution.where,
        flow_run_id=_flow_run_id(),
    )
    _artifact(markdown(result), f"Universe night as of {night}: {result.failed} failed")
    if result.failed:
        failed = [t for t in result.tickers if t.status == "failed"]
        raise UniverseFailed(
            f"{len(failed)} of {len(result.tickers)} ticker(s) failed as of {night}: "
            + "; ".join(f"{t.ticker} ({t.error})" for t in failed),
            result,
        )
    return result


def backfill_outcomes(
    engine: Engine,
    members: Sequence[Member],
    dates: Sequence[dt.date],
    before: dict,
    execution: Execution,
) -> list[TickerBackfill]:
    """Each member's replay from `nightly_runs`: nights completed now, already done before,
    and the first night that failed now (where its lane stopped)."""
    from storage.db import session_scope
    from storage.universe import nights_between

    wanted = set(dates)
    with session_scope(engine) as session:
        rows = nights_between(
            session, tickers=[m.ticker for m in members], start=min(dates), end=max(dates)
        )
    outcomes = []
    for member in members:
        mine = [r for r in rows if r.ticker == member.ticker and r.as_of in wanted]
        touched = [r for r in mine if before.get((r.ticker, r.as_of)) != (r.status, r.attempts)]
        replayed = [r for r in touched if r.status == "done"]
        skipped = sum(before.get((member.ticker, d), ("", 0))[0] == "done" for d in wanted)
        trained = [r for r in replayed if r.trained and _train_seconds(r) > 0]
        failed = [r for r in touched if r.status != "done"]
        done_after = {r.as_of for r in mine if r.status == "done"}
        unfinished = [d for d in sorted(wanted) if d not in done_after]
        lane = execution.lane(member.ticker)
        batch = execution.batch_of(member.ticker)
        failed_at, error = None, None
        if failed:
            failed_at = failed[0].as_of
            error = failed[0].error or _not_run_error(member.ticker, execution)
        elif unfinished and (
            (lane is not None and lane.error) or (batch is not None and not batch.completed)
        ):
            failed_at = lane.failed_at if lane is not None and lane.failed_at else unfinished[0]
            error = _not_run_error(member.ticker, execution)
        outcomes.append(
            TickerBackfill(
                member.ticker,
                "failed" if error else ("done" if replayed else "skipped"),
                replayed=len(replayed),
                trained_nights=len(trained),
                skipped_done=skipped,
                failed_at=failed_at,
                error=error,
                train_seconds=sum(_train_seconds(r) for r in replayed),
            )
        )
    return outcomes


@flow(
    name="backfill-universe",
    log_prints=True,
    task_runner=lane_runner(),
)
def backfill_universe_flow(
    dates: list[dt.date],
    every: str = "day",
    tickers: list[str] | None = None,
    where: str = "auto",
    pool: str | None = None,
    holdout_weeks: int | None = None,
    strategies: list[str] | None = None,
    epochs: int | None = None,
    seed: int = 0,
    force: bool = False,
    window_weeks: int | None = None,
) -> UniverseBackfill:
    """Replay the universe as of each of `dates`: each ticker's nights oldest first, each ticker
    stopping at its first failing night (the others go on), nights already done skipped. Ends
    Failed if any ticker stopped, after writing the artifact."""
    from storage.db import ensure_schema, make_engine

    started = time.perf_counter()
    settings = get_settings()
    ordered = sorted(set(dates))
    if not ordered:
        raise ConfigError("no nights to replay")
    pool_name = pool or settings.worker_pool
    params = NightParams(holdout_weeks, strategies, epochs, seed, force, window_weeks)
    engine = make_engine(settings.resolved_database_url)
    try:
        ensure_schema(engine)
        members = enabled_members(engine, tickers)
        before = _attempts(engine, [m.ticker for m in members], ordered[0], ordered[-1])
        done = {key for key, (status, _) in before.items() if status == "done"}
        pending = [m for m in members if force or any((m.ticker, d) not in done for d in ordered)]
        print(
            f"universe backfill {ordered[0]}..{ordered[-1]} ({len(ordered)} night(s)): "
            f"{len(members)} ticker(s), {len(pending)} with nights to replay"
        )
        execution = execute(
            pending,
            ordered,
            params,
            where=where,
            pool=pool_name,
            settings=settings,
            idempotency_prefix=_flow_run_id(),
        )
        outcomes = backfill_outcomes(engine, members, ordered, before, execution)
    finally:
        engine.dispose()
    result = UniverseBackfill(
        start=ordered[0],
        end=ordered[-1],
        every=every,
        nights=len(ordered),
        tickers=tuple(outcomes),
        total_seconds=time.perf_counter() - started,
        where=execution.where,
    )
    _artifact(_backfill_markdown(result), f"Universe backfill: {result.failed} stopped")
    if result.failed:
        failed = [t for t in result.tickers if t.status == "failed"]
        raise UniverseFailed(
            f"{len(failed)} of {len(result.tickers)} ticker(s) stopped: "
            + "; ".join(f"{t.ticker} at {t.failed_at} ({t.error})" for t in failed)
            + ". Fix the cause and rerun the same command: each resumes where it stopped",
            result,
        )
    return result


def _backfill_markdown(result: UniverseBackfill) -> str:
    from flows.universe.report import backfill_lines

    return "```\n" + "\n".join(backfill_lines(result)) + "\n```\n"
