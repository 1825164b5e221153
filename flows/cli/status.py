"""`pricecast status`: runs that look stuck, why, and (with --fix) closing them.

Two kinds of stuck run:
- a `nightly_runs` row still `running` whose process is gone: the ticker's lock is free (its
  holder would hold it for the whole night), so nothing will ever close the row;
- a Prefect flow run left in a Pending state (`Submitting`, `Pending`) for longer than a bound:
  a worker or `serve` that died, or a database restart, between submitting it and starting it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import typer

from flows.cli.common import open_engine, print_json

#: A run Pending this long is stuck (a healthy one starts within seconds of being submitted).
DEFAULT_PENDING_MINUTES = 30.0


@dataclass(frozen=True)
class StuckRun:
    """One stuck run, what it is, why it is stuck and what `--fix` does (or did) about it."""

    kind: str  # "nightly" (a nightly_runs row) or "prefect" (a flow run)
    what: str
    since: str
    why: str
    fix: str
    fixed: bool = False


def stuck_nightly_runs(*, fix: bool, today: dt.date) -> list[StuckRun]:
    """`running` rows whose ticker's lock is free: their process is gone."""
    from sqlalchemy import select

    from pricecast.errors import LockTimeout
    from pricecast.settings import get_settings
    from storage.db import session_scope
    from storage.locks import ticker_lock
    from storage.runs import NightlyRun, close_orphaned_runs

    settings = get_settings()
    found: list[StuckRun] = []
    with open_engine() as engine:
        with session_scope(engine) as session:
            running = [
                (r.ticker, r.as_of, r.started_at, r.flow_run_id)
                for r in session.scalars(select(NightlyRun).where(NightlyRun.status == "running"))
            ]
        for ticker in sorted({t for t, *_ in running}):
            rows = [r for r in running if r[0] == ticker]
            try:
                with ticker_lock(
                    engine,
                    name=f"nightly:{ticker}",
                    timeout_seconds=0.0,
                    lock_dir=settings.resolved_home / "locks",
                ) as lock:
                    # Free: no process runs a night of this ticker, so these rows are orphans.
                    closed = False
                    if fix:
                        with session_scope(engine) as session:
                            lock.fence(session)
                            close_orphaned_runs(session, ticker=ticker, closed_by=today)
                        closed = True
            except LockTimeout:
                continue  # a night of this ticker is running right now: not stuck
            for _, as_of, started, flow_run_id in rows:
                flow = f", flow run {flow_run_id}" if flow_run_id else ""
                found.append(
                    StuckRun(
                        kind="nightly",
                        what=f"nightly {ticker} as of {as_of}{flow}",
                        since=started.isoformat() if started else "?",
                        why="status running, but no process holds the ticker's lock: the "
                        "process that ran it ended (killed, crashed, machine restarted) before "
                        "closing the night",
                        fix=f"marked failed; rerun `pricecast nightly --ticker {ticker} "
                        f"--as-of {as_of}` to complete it",
                        fixed=closed,
                    )
                )
    return found


def stuck_prefect_runs(*, fix: bool, older_than: dt.timedelta) -> list[StuckRun]:
    """Flow runs Pending (e.g. `Submitting`) for longer than `older_than` on PREFECT_API_URL."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Crashed

    if not PREFECT_API_URL.value():
        return []  # the ephemeral API: nothing outlives the process that ran it
    now = dt.datetime.now(dt.UTC)
    found: list[StuckRun] = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING]))
            ),
            limit=200,
        )
        for run in runs:
            state = run.state
            since = state.timestamp if state is not None else run.created
            if since is None or now - since < older_than:
                continue
            name = state.name if state is not None else "Pending"
            fixed = False
            if fix:
                client.set_flow_run_state(
                    run.id,
                    Crashed(
                        message=f"pricecast status --fix: {name} since {since:%Y-%m-%d %H:%M} "
                        "UTC; no worker started it"
                    ),
                    force=True,
                )
                fixed = True
            found.append(
                StuckRun(
                    kind="prefect",
                    what=f"flow run {run.name} ({run.id})",
                    since=since.isoformat(),
                    why=f"{name} for {_age(now - since)}: the worker or `pricecast serve` that "
                    "took it stopped (or its database restarted) before the run started",
                    fix="marked Crashed; start it again (Prefect UI: Retry, or "
                    "`prefect deployment run`)",
                    fixed=fixed,
                )
            )
    return found


def _age(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def status_command(
    fix: bool = typer.Option(False, "--fix", help="Close what is stuck (mark failed/Crashed)."),
    pending_minutes: float = typer.Option(
        DEFAULT_PENDING_MINUTES,
        "--pending-minutes",
        help="A Prefect run Pending (Submitting) longer than this is stuck.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Runs that are stuck (a night `running` with no process, a Prefect run left Submitting),
    why, and with --fix: close them."""
    found = stuck_nightly_runs(fix=fix, today=dt.datetime.now(dt.UTC).date())
    found += stuck_prefect_runs(fix=fix, older_than=dt.timedelta(minutes=pending_minutes))
    if as_json:
        payload: dict[str, Any] = {"stuck": [asdict(s) for s in found], "fixed": fix}
        print_json(payload)
        return
    if not found:
        typer.echo("nothing stuck: no night is running without a process, no Prefect run waits")
        return
    for stuck in found:
        typer.echo(f"{stuck.what}: stuck since {stuck.since[:19]}")
        typer.echo(f"  why: {stuck.why}")
        typer.echo(f"  {'done' if stuck.fixed else 'fix (--fix)'}: {stuck.fix}")
