"""CLI command for the nightly flow: `pricecast nightly` (one night for one ticker, or with
`--all` one night over the universe)."""

from __future__ import annotations

import contextlib
import sys

import typer

from flows.cli.common import DEFAULT_TICKER, parse_day, parse_strategies, print_json
from flows.night.report import summary_lines
from forecasting.strategies import TRAINED_STRATEGIES
from pricecast.errors import ConfigError


def nightly_command(
    ticker: str | None = typer.Option(
        None, "--ticker", "-t", help=f"Ticker to run for (default {DEFAULT_TICKER})."
    ),
    source: str | None = typer.Option(
        None,
        "--source",
        "-s",
        help="Where tonight's prices come from: csv:PATH, http[:URL] or synthetic[:SEED] "
        "(default synthetic); 'none' uses only what is already stored.",
    ),
    run_all: bool = typer.Option(
        False,
        "--all",
        help="Run every enabled ticker of the universe (`pricecast universe list`), each with "
        "its own source; tickers already done for this night are skipped. Exits 1 if any "
        "ticker failed.",
    ),
    where: str = typer.Option(
        "auto",
        "--where",
        help="With --all: auto (the work pool when `pricecast deploy` registered it on "
        "PREFECT_API_URL, else this process), local, or pool.",
    ),
    pool: str | None = typer.Option(
        None, "--pool", help="With --all: the work pool (default PRICECAST_WORKER_POOL, pricecast)."
    ),
    as_of: str | None = typer.Option(
        None, "--as-of", help="The night to run, YYYY-MM-DD (default: yesterday, UTC)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the candidates (same seed, same scores)."),
    force: bool = typer.Option(
        False, "--force", help="Train even if no week has completed since the last training."
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", help="Training epochs (default: the model's own default)."
    ),
    holdout_weeks: int | None = typer.Option(
        None, "--holdout-weeks", help="Held-out weeks every model is scored on (default 19)."
    ),
    strategies: str = typer.Option(
        ",".join(TRAINED_STRATEGIES), "--strategies", help="Candidates to train, comma-separated."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run tonight's job for one ticker, or with --all for every ticker of the universe.

    Ingest, rebuild ISO weeks, train retrain + fresh if a week has completed, score them with the
    champion and naive on the same held-out weeks, promote only what is better, forecast next
    week and score past forecasts. Each run is a Prefect flow run with an MLflow parent run.

    With --all, one nightly-universe flow run runs each ticker's night (its own flow run named
    after the ticker); one ticker failing does not stop the others. --json then prints
    {"as_of", "tickers": [{"ticker", "status", "trained", "promoted", "champion_version",
    "error"}], "failed", "timings": {"total_seconds", "train_seconds"}}.
    """
    night = parse_day(as_of, "--as-of")
    if run_all:
        if ticker is not None or source is not None:
            raise ConfigError(
                "--all runs every ticker of the universe with its own source: drop --ticker "
                "and --source (pricecast universe list shows them)"
            )
        from flows.cli.universe import nightly_all

        nightly_all(
            as_of=night,
            as_json=as_json,
            where=where,
            pool=pool,
            seed=seed,
            force=force,
            epochs=epochs,
            holdout_weeks=holdout_weeks,
            strategies=parse_strategies(strategies),
        )
        return
    ticker = ticker or DEFAULT_TICKER
    source = source or "synthetic"
    from flows.cli.logs import quiet_prefect_console
    from flows.night.flow import nightly
    from flows.prefect_api import prefect_api_lost
    from forecasting.calendar import yesterday_utc

    quiet_prefect_console()
    night = night or yesterday_utc()  # fixed here: the rerun a lost Prefect server names
    rerun = f"pricecast nightly --ticker {ticker} --source {source} --as-of {night}"
    # With --json, stdout carries only the JSON: MLflow prints run links to stdout when it
    # talks to a server, so everything else goes to stderr while the flow runs.
    with (
        contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext(),
        prefect_api_lost(
            f"the night of {ticker}",
            rerun,
            rerun_does="a night already trained does not train again",
        ),
    ):
        result = nightly(
            ticker=ticker,
            as_of=night,
            source=None if source.strip().lower() == "none" else source,
            seed=seed,
            force=force,
            epochs=epochs,
            holdout_weeks=holdout_weeks,
            strategies=parse_strategies(strategies),
        )
    if as_json:
        print_json(result.to_dict())
        return
    for line in summary_lines(result):
        typer.echo(line)
