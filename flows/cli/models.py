"""CLI commands for models: `pricecast backtest` over the prices stored in the database."""

from __future__ import annotations

import json
from typing import Any

import typer

DEFAULT_STRATEGIES = "fresh,retrain,naive"


def parse_strategies(value: str) -> list[str]:
    """'fresh, retrain,naive' -> ['fresh', 'retrain', 'naive'] (checked by check_strategies)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def format_report(ticker: str, report: dict[str, Any], details: dict[str, Any]) -> list[str]:
    """The table `pricecast backtest` prints, one line per candidate, then how each trained."""
    weeks = report["held_out_weeks"]
    lines = [
        f"{ticker} backtest as of {report['as_of']}: {len(weeks)} held-out weeks "
        f"{weeks[0]} .. {weeks[-1]} (candidates trained on target weeks before {weeks[0]})",
        f"{'candidate':<10} {'RMSE ($)':>12} {'MAPE (%)':>9} {'train (s)':>10}",
    ]
    for c in report["candidates"]:
        lines.append(
            f"{c['name']:<10} {c['rmse']:>12.2f} {c['mape']:>9.2f} {c['train_seconds']:>10.1f}"
        )
    for name, described in details.items():
        for step in described.get("steps", []):
            if step["step"] == "bootstrap":
                lines.append(
                    f"{name}: old model trained fresh on targets up to {step['training_cutoff']} "
                    f"({step['n_windows']} windows, {step['seconds']:.1f} s)"
                )
            else:
                lines.append(
                    f"{name}: retrained on {step['n_new_windows']} new windows after "
                    f"{step['from_training_cutoff']} at learning rate {step['learning_rate']:g} "
                    f"({step['seconds']:.1f} s)"
                )
    return lines


def backtest_command(
    ticker: str = typer.Option("BTC-USD", "--ticker", "-t", help="Ticker whose prices to use."),
    as_of: str | None = typer.Option(
        None, "--as-of", help="See only prices up to this day (YYYY-MM-DD; default: today UTC)."
    ),
    holdout_weeks: int | None = typer.Option(
        None,
        "--holdout-weeks",
        min=1,
        help="Held-out span: the last H complete weeks (default PRICECAST_HOLDOUT_WEEKS, 19).",
    ),
    strategies: str = typer.Option(
        DEFAULT_STRATEGIES,
        "--strategies",
        help="Comma-separated candidates: fresh, retrain, naive, drift.",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (default PRICECAST_SEED)."),
    epochs: int | None = typer.Option(
        None, "--epochs", min=1, help="Training epochs of the LSTMs (default: the model's own)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON object: as_of, held_out_weeks, candidates."
    ),
) -> None:
    """Score candidates honestly on the last H complete weeks up to --as-of.

    Each candidate trains only on weeks before the held-out span, then predicts every held-out
    week from the weeks before it; predictions turn back into dollars with the last close known
    before the week. `retrain` first trains an old model fresh on data up to 10 weeks before the
    span, then fine-tunes it on the newer windows.
    """
    import pandas as pd

    from flows.cli.data import parse_day, stored_closes
    from flows.ingest.load import today_utc
    from forecasting.candidates import build_candidates, check_strategies
    from forecasting.weeks import CLOSE, DATE, group_iso_weeks
    from pricecast.settings import get_settings

    settings = get_settings()
    chosen = parse_strategies(strategies)
    check_strategies(chosen)
    day = parse_day(as_of, "--as-of") or today_utc()
    closes = stored_closes(ticker, day)
    weeks = group_iso_weeks(pd.DataFrame(closes, columns=[DATE, CLOSE]), as_of=day)

    from forecasting.backtest import backtest

    candidates = build_candidates(
        chosen,
        seed=settings.seed if seed is None else seed,
        epochs=epochs,
        window_weeks=settings.window_weeks,
        ticker=ticker,
    )
    result = backtest(
        weeks,
        as_of=pd.Timestamp(day),
        candidates=candidates,
        holdout_weeks=holdout_weeks or settings.holdout_weeks,
        window_weeks=settings.window_weeks,
    )
    report = {"ticker": ticker, **result.to_dict()}
    details = {c.name: c.description for c in result.candidates}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for line in format_report(ticker, report, details):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    """Add `backtest` to the `pricecast` app."""
    app.command("backtest")(backtest_command)
