"""CLI commands around the nightly flow: `nightly`, `champion`, `promote`, `rollback`."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import sys
from typing import Any

import typer

from flows.cli.data import parse_day

DEFAULT_TICKER = "BTC-USD"


def _prefect_defaults() -> None:
    # Prefect's ephemeral API server gets 20 s to start; a busy 2-core machine needs more.
    # A value the user exported wins (Prefect reads the variable itself).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


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
        "retrain,fresh", "--strategies", help="Candidates to train, comma-separated."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run tonight's job for one ticker.

    Ingest, rebuild ISO weeks, train retrain + fresh if a week has completed, score them with the
    champion and naive on the same held-out weeks, promote only what is better, forecast next
    week and score past forecasts. Each run is a Prefect flow run with an MLflow parent run.
    """
    night = parse_day(as_of, "--as-of")
    _prefect_defaults()
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
            strategies=[s.strip() for s in strategies.split(",") if s.strip()],
        )
    if as_json:
        _print_json(result)
        return
    for line in nightly_lines(result):
        typer.echo(line)


def nightly_lines(result: dict[str, Any]) -> list[str]:
    """The human summary of a night."""
    lines = [
        f"nightly {result['ticker']} as of {result['as_of']}: "
        f"{'trained' if result['trained'] else 'no training'} ({result.get('train_reason', '')})"
    ]
    if result.get("candidates"):
        lines.append(f"{'model':<10} {'role':<10} {'MAPE %':>8} {'RMSE $':>11} {'train s':>8}")
        for c in result["candidates"]:
            lines.append(
                f"{c['name']:<10} {c['role']:<10} {c['mape']:>8.3f} {c['rmse']:>11.2f} "
                f"{c['train_seconds']:>8.1f}"
            )
    if result.get("decision"):
        lines.append(f"decision: {result['decision']['action']} — {result['decision']['reason']}")
    champion = result.get("champion_version")
    lines.append(f"champion: version {champion}" if champion is not None else "champion: none")
    forecast = result.get("forecast")
    if forecast:
        who = (
            "naive (no champion yet)"
            if forecast["is_baseline"]
            else (f"{forecast['model_name']} v{forecast['model_version']}")
        )
        closes = ", ".join(f"{d['date'][5:]} {d['close']:.2f}" for d in forecast["closes"])
        lines.append(f"forecast for the week of {forecast['week_start']} by {who}: {closes}")
    realised = result.get("realised") or {}
    if realised.get("days"):
        lines.append(
            f"realised accuracy so far: MAPE {realised['mape']:.3f} % over {realised['days']} "
            "forecast day(s)"
        )
    timings = result.get("timings") or {}
    lines.append(
        f"took {timings.get('total_seconds', 0):.1f} s "
        f"(training {timings.get('train_seconds', 0):.1f} s)"
    )
    return lines


def _stores() -> tuple[Any, Any]:
    from flows.tracking.tracker import Tracker
    from pricecast.settings import get_settings
    from storage.db import ensure_schema, make_engine

    settings = get_settings()
    engine = make_engine(settings.resolved_database_url)
    ensure_schema(engine)
    tracker = Tracker(settings.resolved_mlflow_uri, artifact_root=settings.mlflow_artifact_root)
    return engine, tracker


def champion_status(ticker: str) -> dict[str, Any]:
    """The champion of `ticker`, its scores, and the alias history (newest first)."""
    from flows.tracking.tracker import model_name
    from storage.db import session_scope
    from storage.runs import promotion_history

    engine, tracker = _stores()
    try:
        champion = tracker.champion(ticker)
        with session_scope(engine) as session:
            history = [
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
    finally:
        engine.dispose()
    return {
        "ticker": ticker,
        "model_name": model_name(ticker),
        "champion": None
        if champion is None
        else {
            "version": champion.version,
            "model_uri": f"models:/{champion.name}@champion",
            "run_id": champion.run_id,
            "scores": {
                k: champion.tags.get(k)
                for k in ("as_of", "candidate", "mape", "rmse", "naive_mape", "champion_mape")
            },
            "training_cutoff": champion.metadata.get("training_cutoff"),
            "strategy": champion.metadata.get("strategy"),
        },
        "history": history,
    }


def champion_command(
    ticker: str = typer.Option(DEFAULT_TICKER, "--ticker", "-t"),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Show the champion (registry alias `champion`), its scores and the alias history."""
    status = champion_status(ticker)
    if as_json:
        _print_json(status)
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

    engine, tracker = _stores()
    try:
        row = promote_manually(
            tracker=tracker,
            engine=engine,
            ticker=ticker,
            version=version,
            reason=reason,
            actor=_actor(),
        )
    finally:
        engine.dispose()
    typer.echo(
        f"{ticker}: champion is now version {row.model_version} (was {row.previous_version})"
    )


def rollback_command(
    ticker: str = typer.Option(DEFAULT_TICKER, "--ticker", "-t"),
    reason: str = typer.Option("manual rollback", "--reason", help="Why (kept in the audit)."),
) -> None:
    """Point the `champion` alias back at the previous champion (audited in `promotions`)."""
    from flows.tracking.promotion import rollback

    engine, tracker = _stores()
    try:
        row = rollback(tracker=tracker, engine=engine, ticker=ticker, reason=reason, actor=_actor())
    finally:
        engine.dispose()
    typer.echo(f"{ticker}: rolled back to version {row.model_version} (was {row.previous_version})")


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `pricecast` app."""
    app.command("nightly")(nightly_command)
    app.command("champion")(champion_command)
    app.command("promote")(promote_command)
    app.command("rollback")(rollback_command)
