"""CLI for the universe of tickers: `universe add|list|enable|disable|remove|import`, `deploy`
the universe night on a Prefect work pool, and start a `worker` for that pool.

`nightly --all` and `backfill --all` live with their single-ticker commands, which hand over to
`nightly_all` and `backfill_all` here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from pathlib import Path

import typer

from flows.cli.common import print_json

universe_app = typer.Typer(
    name="universe",
    help=(
        "The tickers `pricecast nightly --all` runs every night, each with its price source. "
        "Kept in the database (PRICECAST_DATABASE_URL), so every worker sees the same universe."
    ),
    no_args_is_help=True,
)

SOURCE_HELP = (
    "Where the ticker's prices come from, as for `ingest`: csv:PATH (made absolute; every "
    "worker that may run the ticker must see the file there), http, http:URL, synthetic[:SEED]."
)
POOL_HELP = "Prefect work pool (default: PRICECAST_WORKER_POOL, pricecast)."


def _echo_notes(notes: list[str]) -> None:
    for note in notes:
        typer.echo(f"note: {note}", err=True)


@universe_app.command("add")
def add_command(
    ticker: str = typer.Argument(..., help="Ticker symbol, e.g. BTC-USD."),
    source: str = typer.Option(..., "--source", "-s", help=SOURCE_HELP),
) -> None:
    """Add a ticker to the universe (enabled). A ticker already there is an error."""
    from flows.universe.members import add_member

    added = add_member(ticker, source)
    row = added.tickers[0]
    typer.echo(f"added {row.ticker} ({row.source})")
    _echo_notes(added.notes)


@universe_app.command("import")
def import_command(
    file: Path = typer.Argument(..., help="CSV file with columns ticker,source (header first)."),
) -> None:
    """Add many tickers from a CSV file, all or none.

    Every line is checked first (ticker, source spec, duplicates in the file or in the
    universe); one problem and nothing is added, each problem named with its line.
    """
    from flows.universe.members import import_members

    added = import_members(file)
    typer.echo(f"added {len(added.tickers)} ticker(s) from {file}")
    _echo_notes(added.notes)


@universe_app.command("list")
def list_command(
    enabled_only: bool = typer.Option(False, "--enabled", help="Only the enabled tickers."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List the universe: ticker, source, enabled, when it was added and last changed."""
    from flows.universe.members import list_members

    rows = list_members(enabled_only=enabled_only)
    if as_json:
        print_json(
            [
                {
                    "ticker": r.ticker,
                    "source": r.source,
                    "enabled": r.enabled,
                    "added_at": r.added_at.isoformat(),
                    "updated_at": r.updated_at.isoformat(),
                }
                for r in rows
            ]
        )
        return
    if not rows:
        typer.echo("the universe is empty: pricecast universe add TICKER --source SPEC")
        return
    width = max(len(r.ticker) for r in rows)
    for r in rows:
        state = "enabled " if r.enabled else "disabled"
        typer.echo(f"{r.ticker:<{width}}  {state}  {r.source}")
    enabled = sum(r.enabled for r in rows)
    typer.echo(f"{len(rows)} ticker(s), {enabled} enabled")


@universe_app.command("enable")
def enable_command(ticker: str = typer.Argument(..., help="Ticker to run again.")) -> None:
    """Run this ticker's nights again (from the next universe night)."""
    from flows.universe.members import set_member_enabled

    row = set_member_enabled(ticker, True)
    typer.echo(f"{row.ticker} enabled")


@universe_app.command("disable")
def disable_command(ticker: str = typer.Argument(..., help="Ticker to pause.")) -> None:
    """Stop running this ticker's nights; it stays listed with its source and history."""
    from flows.universe.members import set_member_enabled

    row = set_member_enabled(ticker, False)
    typer.echo(f"{row.ticker} disabled")


@universe_app.command("remove")
def remove_command(ticker: str = typer.Argument(..., help="Ticker to take out.")) -> None:
    """Take a ticker out of the universe; its prices, nights and models are kept."""
    from flows.universe.members import remove_member

    remove_member(ticker)
    typer.echo(f"{ticker.strip()} removed from the universe (its history is kept)")


def deploy_command(
    cron: str = typer.Option("0 2 * * *", "--cron", help="When the universe night runs."),
    timezone: str = typer.Option("UTC", "--timezone", help="Timezone of the cron schedule."),
    pool: str | None = typer.Option(None, "--pool", help=POOL_HELP),
    pool_limit: int | None = typer.Option(
        None,
        "--pool-limit",
        min=1,
        help="Runs the pool executes at once, over all workers: each trains in a process of "
        "its own (~1 GB), so this bounds the trainings at once (default: no pool limit).",
    ),
) -> None:
    """Register the universe night on a Prefect work pool (PREFECT_API_URL).

    Creates the process work pool if missing, the deployment nightly-universe/<pool> with its
    cron schedule and nightly-batch/<pool> that it fans out to. Start workers for the pool with
    `pricecast worker` on any machine with the project and the three URLs.
    """
    from flows.universe.deploy import deploy
    from pricecast.settings import get_settings

    report = deploy(
        pool=pool or get_settings().worker_pool, cron=cron, timezone=timezone,
        pool_limit=pool_limit,
    )  # fmt: skip
    limit = "no limit" if report.pool_limit is None else f"at most {report.pool_limit} runs"
    action = "created" if report.pool_created else "found"
    typer.echo(f"work pool {report.pool} ({action}, process type, {limit})")
    for name in report.deployments:
        typer.echo(f"deployment {name}")
    for note in report.notes:
        typer.echo(note)


def worker_command(
    pool: str | None = typer.Option(None, "--pool", help=POOL_HELP),
    limit: int | None = typer.Option(
        1,
        "--limit",
        min=1,
        help="Flow runs this worker executes at once; one trains in the worker's resident "
        "training process, each other one in a process of its own (~1 GB). Set "
        "PRICECAST_UNIVERSE_RUNS_PER_WORKER to the same number.",
    ),
    name: str | None = typer.Option(
        None, "--name", help="Worker name in the Prefect UI (default: pricecast-<host>-<pid>)."
    ),
) -> None:
    """Start a Prefect worker for the pool (runs until Ctrl-C).

    It takes universe nights and ticker batches from the pool the moment Prefect's event stream
    says one was scheduled there (and at every poll, PRICECAST_WORKER_QUERY_SECONDS), and runs
    each in a process of its own, with this environment: PRICECAST_DATABASE_URL,
    MLFLOW_TRACKING_URI and PREFECT_API_URL must point at the shared services (it warns when
    the MLflow server is slow on kept-alive connections: start it with --workers 1). See them
    under Work Pools in the UI. Their trainings go to one training process it starts beside it
    and keeps across runs (TensorFlow imported once; PRICECAST_TRAINING_RESIDENT=false: one per
    run). While it runs nothing it keeps the next run's process started, its imports done
    (PRICECAST_WORKER_READY_ENGINE=false: each run starts its own). A Prefect server outage does
    not end it: when Prefect's worker gives up, it waits for the API and
    starts the worker again under the same name. Ctrl-C or SIGTERM: it takes no new runs, lets
    the running ones end, then stops; a second one stops it at once.
    """
    from flows.universe.deploy import exec_worker
    from pricecast.settings import get_settings

    exec_worker(pool=pool or get_settings().worker_pool, limit=limit, name=name)


def check_where(where: str) -> None:
    """--where before any flow starts: auto, local or pool."""
    from flows.universe.plan import WHERE
    from pricecast.errors import ConfigError

    if where not in WHERE:
        raise ConfigError(f"--where must be one of {', '.join(WHERE)}, got {where!r}")


def nightly_all(
    *,
    as_of: dt.date | None,
    as_json: bool,
    where: str = "auto",
    pool: str | None = None,
    tickers: list[str] | None = None,
    seed: int = 0,
    force: bool = False,
    epochs: int | None = None,
    holdout_weeks: int | None = None,
    strategies: list[str] | None = None,
) -> None:
    """`pricecast nightly --all`: the universe night, its per-ticker lines (or JSON), and exit
    code 1 when a ticker failed."""
    from flows.cli.logs import quiet_prefect_console
    from flows.universe.report import summary_lines
    from flows.universe.run import run_universe

    quiet_prefect_console()

    check_where(where)
    # With --json, stdout carries only the JSON (MLflow prints run links when it talks to a
    # server, Prefect its flow run names).
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        result = run_universe(
            as_of=as_of,
            tickers=tickers,
            where=where,
            pool=pool,
            holdout_weeks=holdout_weeks,
            strategies=strategies,
            epochs=epochs,
            seed=seed,
            force=force,
        )
    if as_json:
        print_json(result.to_dict())
    else:
        for line in summary_lines(result):
            typer.echo(line)
    if result.failed:
        raise typer.Exit(1)


def backfill_all(
    *,
    start: dt.date,
    end: dt.date,
    every: str,
    as_json: bool,
    where: str = "auto",
    pool: str | None = None,
    seed: int | None = None,
    epochs: int | None = None,
) -> None:
    """`pricecast backfill --all`: the universe replayed over the range, per-ticker lines (or
    JSON), exit code 1 when a ticker stopped at a failing night."""
    from flows.cli.logs import quiet_prefect_console
    from flows.universe.report import backfill_lines
    from flows.universe.run import backfill_universe

    quiet_prefect_console()

    check_where(where)
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        result = backfill_universe(
            start=start, end=end, every=every, where=where, pool=pool, seed=seed, epochs=epochs
        )
    if as_json:
        print_json(result.to_dict())
    else:
        for line in backfill_lines(result):
            typer.echo(line)
    if result.failed:
        raise typer.Exit(1)
