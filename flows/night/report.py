"""The night told to people, from one `NightResult`: the CLI's summary, the demo's scoreboard and
the Prefect markdown artifact. Every text form of a night lives here."""

from __future__ import annotations

import datetime as dt

from flows.night.result import NightResult
from flows.tracking.tracker import model_name


def _pct(value: float | None) -> str:
    return f"{value:6.2f} %" if value is not None else "     - "


def _usd(value: float | None) -> str:
    return f"${value:,.2f}" if value is not None else "-"


def summary_lines(result: NightResult) -> list[str]:
    """`pricecast nightly`: what ran, the scores, the decision, the champion, the forecast."""
    lines = [
        f"nightly {result.ticker} as of {result.as_of}: "
        f"{'trained' if result.trained else 'no training'} ({result.train_reason})"
    ]
    if result.candidates:
        lines.append(f"{'model':<10} {'role':<10} {'MAPE %':>8} {'RMSE $':>11} {'train s':>8}")
        lines += [
            f"{c.name:<10} {c.role:<10} {c.mape:>8.3f} {c.rmse:>11.2f} {c.train_seconds:>8.1f}"
            for c in result.candidates
        ]
    if result.decision:
        lines.append(f"decision: {result.decision.action} — {result.decision.reason}")
    champion = result.champion_version
    lines.append(f"champion: version {champion}" if champion is not None else "champion: none")
    forecast = result.forecast
    if forecast:
        who = "naive (no champion yet)" if forecast.is_baseline else forecast.made_by
        closes = ", ".join(f"{d.date:%m-%d} {d.close:.2f}" for d in forecast.days)
        lines.append(f"forecast for the week of {forecast.week_start} by {who}: {closes}")
    realised = result.realised
    if realised.days and realised.mape is not None:
        lines.append(
            f"realised accuracy so far: MAPE {realised.mape:.3f} % over {realised.days} "
            "forecast day(s)"
        )
    lines.append(
        f"took {result.timings.get('total_seconds', 0):.1f} s "
        f"(training {result.timings.get('train_seconds', 0):.1f} s)"
    )
    return lines


def scoreboard_lines(result: NightResult) -> list[str]:
    """`pricecast demo`: tonight's scoreboard, the decision, the champion, next week's forecast."""
    lines = [""]
    if result.trained:
        lines.append("Scores on the held-out weeks (lower is better):")
        lines += [
            f"  {c.name:<10} {c.role:<10} MAPE {_pct(c.mape)}  RMSE {_usd(c.rmse)}"
            for c in result.candidates
        ]
        if result.decision:
            lines.append(f"Decision: {result.decision.action} - {result.decision.reason}")
    else:
        lines.append(f"No training tonight: {result.train_reason}")
    version = result.champion_version
    lines.append(
        f"Champion: version {version} of the registered model"
        if version is not None
        else "Champion: none yet (no candidate beat the naive baseline); naive forecasts"
    )
    forecast = result.forecast
    if forecast:
        last_day = forecast.week_start + dt.timedelta(days=6)
        lines.append(
            f"Forecast for the next week, {forecast.week_start} .. {last_day} "
            f"(made as of {result.as_of} by {forecast.made_by}):"
        )
        lines += [f"  {d.date:%a %Y-%m-%d}  {_usd(d.close)}" for d in forecast.days]
    return lines


def markdown(result: NightResult) -> str:
    """The run's Prefect artifact: scores, decision, champion, MLflow runs, realised accuracy."""
    lines = [f"# Nightly {result.ticker} as of {result.as_of}", ""]
    lines.append(f"- trained: **{result.trained}** ({result.train_reason})")
    if result.decision:
        lines.append(f"- decision: **{result.decision.action}** — {result.decision.reason}")
    champion = result.champion_version
    lines.append(
        f"- champion: {model_name(result.ticker)} version {champion}"
        if champion is not None
        else "- champion: none (naive serves)"
    )
    if result.candidates:
        lines += [
            "",
            "| model | role | MAPE % | RMSE $ | train s | MLflow run |",
            "|---|---|---:|---:|---:|---|",
        ]
        lines += [
            f"| {c.name} | {c.role} | {c.mape:.3f} | {c.rmse:.2f} | "
            f"{c.train_seconds:.1f} | {c.mlflow_run_id or ''} |"
            for c in result.candidates
        ]
        weeks = result.held_out_weeks
        if weeks:
            lines.append(f"\nHeld-out weeks: {weeks[0]} .. {weeks[-1]} ({len(weeks)})")
    forecast = result.forecast
    if forecast:
        flag = " (baseline)" if forecast.is_baseline else ""
        lines += ["", f"## Forecast by {forecast.model_name} v{forecast.model_version}{flag}"]
        lines += ["", "| date | close |", "|---|---:|"]
        lines += [f"| {d.date} | {d.close:.2f} |" for d in forecast.days]
    realised = result.realised
    if realised.days and realised.mape is not None and realised.rmse is not None:
        lines += [
            "",
            f"Realised accuracy of past forecasts: {realised.days} day(s), "
            f"MAPE {realised.mape:.3f} %, RMSE {realised.rmse:.2f} $ "
            f"({realised.weeks_scored_tonight} week(s) scored tonight)",
        ]
    lines += ["", f"MLflow: {result.mlflow.parent_run}"]
    lines += [
        "",
        f"Timings: total {result.timings.get('total_seconds', 0):.1f} s, "
        f"training {result.timings.get('train_seconds', 0):.1f} s",
    ]
    return "\n".join(lines) + "\n"
