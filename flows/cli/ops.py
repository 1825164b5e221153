"""CLI for operations: `serve` the nightly schedule, `backfill` history, run the `demo`."""

from __future__ import annotations

import contextlib
import sys

import typer

from flows.cli.common import DEFAULT_TICKER, parse_required_day, print_json
from flows.schedule.serve import DEFAULT_CRON, DEFAULT_TIMEZONE
from pricecast.errors import ConfigError

TICKER_HELP = "Ticker symbol, e.g. BTC-USD."
SOURCE_HELP = "Price source: synthetic, http, or csv:PATH (a Yahoo/CoinMarketCap/exchange export)."


def serve_command(
    ticker: list[str] = typer.Option(
        ..., "--ticker", help=TICKER_HELP + " Repeat for several (one deployment each)."
    ),
    source: str = typer.Option(..., "--source", help=SOURCE_HELP),
    cron: str = typer.Option(DEFAULT_CRON, "--cron", help="When the nightly runs (cron syntax)."),
    timezone: str = typer.Option(
        DEFAULT_TIMEZONE, "--timezone", help="Timezone of the cron schedule."
    ),
    limit: int = typer.Option(
        1, "--limit", min=1, help="Nightly runs executed at once (each training needs ~1 GB)."
    ),
) -> None:
    """Serve the nightly deployment(s) on a cron schedule against PREFECT_API_URL.

    Each ticker appears in the Prefect UI as deployment nightly/nightly-<TICKER> with its
    schedule. Runs started from the UI or the API (e.g. with parameters {"as_of": "2017-11-12"})
    are picked up too. Stop with Ctrl-C or SIGTERM (the schedules are paused until you serve
    again). If the Prefect server goes away, serve says so and goes on until it is back.
    """
    from flows.schedule.serve import serve_nightly

    serve_nightly(ticker, source=source, cron=cron, timezone=timezone, limit=limit)


def backfill_command(
    ticker: str | None = typer.Option(
        None, "--ticker", help=TICKER_HELP + f" Default {DEFAULT_TICKER}."
    ),
    source: str | None = typer.Option(
        None, "--source", help=SOURCE_HELP + " Required unless --all."
    ),
    run_all: bool = typer.Option(
        False,
        "--all",
        help="Replay every enabled ticker of the universe, each with its own source; a ticker "
        "stops at its first failing night, the others go on. Exits 1 if any stopped.",
    ),
    where: str = typer.Option(
        "auto",
        "--where",
        help="With --all: auto (the work pool when deployed on PREFECT_API_URL, else this "
        "process), local, or pool.",
    ),
    pool: str | None = typer.Option(
        None, "--pool", help="With --all: the work pool (default PRICECAST_WORKER_POOL)."
    ),
    start: str = typer.Option(..., "--start", help="First night to replay (YYYY-MM-DD)."),
    end: str = typer.Option(..., "--end", help="Last night to replay (YYYY-MM-DD, inclusive)."),
    every: str = typer.Option("day", "--every", help="Replay every `day` or every `week`."),
    seed: int | None = typer.Option(None, "--seed", help="Training seed (default: settings)."),
    epochs: int | None = typer.Option(
        None, "--epochs", min=1, help="Training epochs (default: PRICECAST_EPOCHS)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Replay the nightly run as of each date from --start to --end, oldest first.

    Each night sees only prices up to its date, and trains only when a week has completed
    since the last night that trained (a daily backfill over a year trains ~52 times). Nights
    already done are skipped, so a rerun after a failure or Ctrl-C continues where it stopped;
    the first failing night stops the backfill with its reason.

    With --all, the same rules for every ticker of the universe, in one backfill-universe
    flow run (on the work pool when deployed).
    """
    if run_all:
        if ticker is not None or source is not None:
            raise ConfigError(
                "--all replays every ticker of the universe with its own source: drop --ticker "
                "and --source (pricecast universe list shows them)"
            )
        from flows.cli.universe import backfill_all

        backfill_all(
            start=parse_required_day(start, "--start"),
            end=parse_required_day(end, "--end"),
            every=every,
            as_json=as_json,
            where=where,
            pool=pool,
            seed=seed,
            epochs=epochs,
        )
        return
    if source is None:
        raise ConfigError(
            "backfill needs --source (synthetic, http or csv:PATH), or --all for the universe"
        )
    ticker = ticker or DEFAULT_TICKER
    from flows.cli.logs import quiet_prefect_console
    from flows.schedule.backfill import run_backfill

    quiet_prefect_console()

    # With --json, stdout carries only the JSON: libraries that print (MLflow writes run links
    # to stdout when it talks to a server) are sent to stderr.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        summary = run_backfill(
            ticker=ticker,
            source=source,
            start=parse_required_day(start, "--start"),
            end=parse_required_day(end, "--end"),
            every=every,
            seed=seed,
            epochs=epochs,
        )
    if as_json:
        print_json(summary.to_json())
        return
    typer.echo(
        f"backfill {ticker} {summary.start}..{summary.end} every {every}: "
        f"{summary.nights} night(s), {len(summary.replayed)} replayed "
        f"({summary.trained_nights} trained), {summary.skipped_done} already done, "
        f"{summary.seconds:.0f} s"
    )


def demo_command(
    ticker: str = typer.Option(DEFAULT_TICKER, "--ticker", help=TICKER_HELP),
    source: str = typer.Option("synthetic", "--source", help=SOURCE_HELP),
    weeks: int = typer.Option(2, "--weeks", min=0, help="Sunday nights to backfill first."),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Training epochs per candidate."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
) -> None:
    """Run the whole pipeline once, end to end, on the embedded default.

    Loads prices (synthetic, or your CSV with --source csv:PATH) into SQLite under
    PRICECAST_HOME, backfills the last --weeks Sunday nights, then runs tonight's nightly as of
    the latest complete week: trains retrain and fresh, scores them against the champion and
    naive, promotes only what is better, and forecasts next week. Prints the champion, the
    forecast, and the commands that open the MLflow and Prefect UIs on what just ran.
    """
    from flows.cli.logs import quiet_prefect_console
    from flows.demo import run_demo

    quiet_prefect_console()

    run_demo(ticker=ticker, source=source, weeks=weeks, epochs=epochs, seed=seed, echo=typer.echo)
