"""CLI commands for models: `backtest` on stored prices, and the champion alias: `champion`,
`promote`, `rollback` (each alias move audited in `promotions`)."""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING, Any, TypedDict

import typer

from flows.cli.common import (
    DEFAULT_TICKER,
    open_stores,
    parse_day,
    parse_strategies,
    print_json,
    stored_closes,
)
from forecasting.strategies import BACKTEST_STRATEGIES

if TYPE_CHECKING:
    from forecasting.backtest import BacktestResult

#: The scores a champion's registry version carries as tags (`pricecast champion` shows them).
CHAMPION_SCORES = ("as_of", "candidate", "mape", "rmse", "naive_mape", "champion_mape")


def format_report(ticker: str, result: BacktestResult) -> list[str]:
    """The table `pricecast backtest` prints, one line per candidate, then how each trained."""
    weeks = [week.date().isoformat() for week in result.held_out_weeks]
    lines = [
        f"{ticker} backtest as of {result.as_of.date().isoformat()}: {len(weeks)} held-out weeks "
        f"{weeks[0]} .. {weeks[-1]} (candidates trained on target weeks before {weeks[0]})",
        f"{'candidate':<10} {'RMSE ($)':>12} {'MAPE (%)':>9} {'train (s)':>10}",
    ]
    for c in result.candidates:
        lines.append(f"{c.name:<10} {c.rmse:>12.2f} {c.mape:>9.2f} {c.train_seconds:>10.1f}")
    for c in result.candidates:
        lines += [f"{c.name}: {_training_step(step)}" for step in c.description.get("steps", [])]
    return lines


def _training_step(step: dict[str, Any]) -> str:
    """One step of a `retrain` candidate: the bootstrap of its old model, or a fine-tune."""
    if step["step"] == "bootstrap":
        return (
            f"old model trained fresh on targets up to {step['training_cutoff']} "
            f"({step['n_windows']} windows, {step['seconds']:.1f} s)"
        )
    return (
        f"retrained on {step['n_new_windows']} new windows after "
        f"{step['from_training_cutoff']} at learning rate {step['learning_rate']:g} "
        f"({step['seconds']:.1f} s)"
    )


def backtest_command(
    ticker: str = typer.Option(
        DEFAULT_TICKER, "--ticker", "-t", help="Ticker whose prices to use."
    ),
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
        ",".join(BACKTEST_STRATEGIES),
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

    from forecasting.calendar import today_utc
    from forecasting.candidates import build_candidates
    from forecasting.strategies import check_strategies
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
    if as_json:
        print_json({"ticker": ticker, **result.to_dict()})
        return
    for line in format_report(ticker, result):
        typer.echo(line)


class AliasMoveRow(TypedDict):
    """One row of the `promotions` audit as `pricecast champion --json` shows it."""

    at: str
    as_of: str | None
    action: str
    version: int | None
    previous_version: int | None
    candidate: str | None
    actor: str
    reason: str


class ChampionInfo(TypedDict):
    version: int
    model_uri: str
    run_id: str | None
    scores: dict[str, str | None]
    training_cutoff: str | None
    strategy: str | None
    #: The version's page in the MLflow UI (None on a local store).
    link: str | None


class ChampionStatus(TypedDict):
    """`pricecast champion --json`."""

    ticker: str
    model_name: str
    champion: ChampionInfo | None
    history: list[AliasMoveRow]


def champion_status(ticker: str) -> ChampionStatus:
    """The champion of `ticker`, its scores, and the alias history (newest first)."""
    from flows.tracking.tracker import model_name
    from storage.db import session_scope
    from storage.runs import promotion_history

    with open_stores() as (engine, tracker):
        champion = tracker.champion(ticker)
        with session_scope(engine) as session:
            history: list[AliasMoveRow] = [
                {
                    "at": p.created_at.isoformat(),
                    "as_of": p.as_of.isoformat() if p.as_of else None,
                    "action": p.action,
                    "version": p.model_version,
                    "previous_version": p.previous_version,
                    "candidate": p.candidate,
                    "actor": p.actor,
                    "reason": p.reason,
                }
                for p in promotion_history(session, ticker=ticker)
            ]
    info: ChampionInfo | None = None
    if champion is not None:
        info = {
            "version": champion.version,
            "model_uri": f"models:/{champion.name}@champion",
            "run_id": champion.run_id,
            "scores": {k: champion.tags.get(k) for k in CHAMPION_SCORES},
            "training_cutoff": champion.metadata.get("training_cutoff"),
            "strategy": champion.metadata.get("strategy"),
            "link": tracker.version_link(ticker, champion.version),
        }
    return {
        "ticker": ticker,
        "model_name": model_name(ticker),
        "champion": info,
        "history": history,
    }


def champion_command(
    ticker: str = typer.Option(DEFAULT_TICKER, "--ticker", "-t"),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Show the champion (registry alias `champion`), its scores and the alias history."""
    status = champion_status(ticker)
    if as_json:
        print_json(status)
        return
    champion = status["champion"]
    if champion is None:
        typer.echo(f"{status['model_name']}: no champion yet (naive serves the forecasts)")
    else:
        scores = champion["scores"]
        typer.echo(
            f"{status['model_name']} champion: version {champion['version']} "
            f"({champion['strategy']}, trained up to {champion['training_cutoff']}); "
            f"MAPE {scores.get('mape')} % vs naive {scores.get('naive_mape')} % "
            f"on the night of {scores.get('as_of')}"
        )
        if champion["link"]:
            typer.echo(f"  MLflow: {champion['link']}")
    if status["history"]:
        typer.echo("history (newest first):")
    for row in status["history"]:
        night = f" night {row['as_of']}" if row["as_of"] else ""
        typer.echo(
            f"  {row['at'][:19]} {row['action']:<14} {_v(row['version'])} (was "
            f"{_v(row['previous_version'])}){night} by {row['actor']}: {row['reason']}"
        )


def _v(version: int | None) -> str:
    return "none" if version is None else f"v{version}"


def promote_command(
    ticker: str = typer.Option(DEFAULT_TICKER, "--ticker", "-t"),
    version: int = typer.Option(..., "--version", help="Model version to make champion."),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the audit trail)."),
) -> None:
    """Point the `champion` alias at a version by hand (audited in `promotions`)."""
    from flows.tracking.promotion import promote_manually

    with open_stores() as (engine, tracker):
        row = promote_manually(
            tracker=tracker,
            engine=engine,
            ticker=ticker,
            version=version,
            reason=reason,
            actor=_actor(),
        )
    typer.echo(
        f"{ticker}: champion is now version {row.model_version} (was {row.previous_version})"
    )


def rollback_command(
    ticker: str = typer.Option(DEFAULT_TICKER, "--ticker", "-t"),
    reason: str = typer.Option("manual rollback", "--reason", help="Why (kept in the audit)."),
) -> None:
    """Point the `champion` alias back at the previous champion (audited in `promotions`)."""
    from flows.tracking.promotion import rollback

    with open_stores() as (engine, tracker):
        row = rollback(tracker=tracker, engine=engine, ticker=ticker, reason=reason, actor=_actor())
    typer.echo(f"{ticker}: rolled back to version {row.model_version} (was {row.previous_version})")


def _actor() -> str:
    """Who moved the alias, for the audit: the OS user, or `cli` when there is none."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"
