"""CLI command for the nightly flow: `pricecast nightly` (one night for one ticker)."""

from __future__ import annotations

import contextlib
import sys

import typer

from flows.cli.common import DEFAULT_TICKER, parse_day, parse_strategies, print_json
from flows.night.report import summary_lines
from forecasting.candidates import TRAINED_STRATEGIES


def nightly_command(
    ticker: str = typer.Option(DEFAULT_TICKER, "--ticker", "-t", help="Ticker to run for."),
    source: str = typer.Option(
        "synthetic",
        "--source",
        "-s",
        help="Where tonight's prices come from: csv:PATH, http[:URL] or synthetic[:SEED]; "
        "'none' uses only what is already stored.",
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
    """Run tonight's job for one ticker.

    Ingest, rebuild ISO weeks, train retrain + fresh if a week has completed, score them with the
    champion and naive on the same held-out weeks, promote only what is better, forecast next
    week and score past forecasts. Each run is a Prefect flow run with an MLflow parent run.
    """
    night = parse_day(as_of, "--as-of")
    from flows.night.flow import nightly

    # With --json, stdout carries only the JSON: MLflow prints run links to stdout when it
    # talks to a server, so everything else goes to stderr while the flow runs.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
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
