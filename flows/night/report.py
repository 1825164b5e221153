"""The night told to people, from one `NightResult`: the CLI's summary, the demo's scoreboard and
the Prefect markdown artifact. Every text form of a night lives here."""

from __future__ import annotations

import datetime as dt

from flows.night.result import NightResult, RealisedAccuracy
from flows.tracking.tracker import model_name, run_url, version_url


def _pct(value: float | None) -> str:
    return f"{value:6.2f} %" if value is not None else "     - "


def _usd(value: float | None) -> str:
    return f"${value:,.2f}" if value is not None else "-"


def _band(low: float | None, high: float | None) -> str:
    return f"{low:,.2f}..{high:,.2f}" if low is not None and high is not None else "-"


def coverage_text(realised: RealisedAccuracy) -> str:
    """'80 % band held 85.7 %, 95 % band 100.0 % of 14 day(s)' ('' when no day had bands)."""
    if not realised.interval_days or realised.coverage_80 is None:
        return ""
    c95 = f"{100 * realised.coverage_95:.1f} %" if realised.coverage_95 is not None else "-"
    return (
        f"80 % band held {100 * realised.coverage_80:.1f} %, 95 % band {c95} "
        f"of {realised.interval_days} day(s)"
    )


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
    lines += [f"note: {note}" for note in result.notes]
    if result.decision:
        lines.append(f"decision: {result.decision.action} — {result.decision.reason}")
    champion = result.champion_version
    lines.append(f"champion: version {champion}" if champion is not None else "champion: none")
    forecast = result.forecast
    if forecast:
        who = "naive (no champion yet)" if forecast.is_baseline else forecast.made_by
        closes = ", ".join(f"{d.date:%m-%d} {d.close:.2f}" for d in forecast.days)
        lines.append(f"forecast for the week of {forecast.week_start} by {who}: {closes}")
        if any(d.lower_80 is not None for d in forecast.days):
            lines += [
                f"  {d.date:%m-%d} 80 % {_band(d.lower_80, d.upper_80)}  "
                f"95 % {_band(d.lower_95, d.upper_95)}"
                for d in forecast.days
            ]
    realised = result.realised
    if realised.days and realised.mape is not None:
        coverage = coverage_text(realised)
        lines.append(
            f"realised accuracy so far: MAPE {realised.mape:.3f} % over {realised.days} "
            "forecast day(s)" + (f"; {coverage}" if coverage else "")
        )
    # The runs table (every night's scores and decisions) where there is an MLflow UI.
    lines.append(f"MLflow: {result.mlflow.runs_table or result.mlflow.parent_run}")
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
        lines += [
            f"  {d.date:%a %Y-%m-%d}  {_usd(d.close)}"
            + (f"  (80 %: {_band(d.lower_80, d.upper_80)})" if d.lower_80 is not None else "")
            for d in forecast.days
        ]
    return lines


def _run_ref(result: NightResult, name: str, run_id: str | None) -> str:
    """A candidate's MLflow run: a link when there is an MLflow UI, its id otherwise."""
    if not run_id:
        return ""
    ui = result.mlflow.ui
    return f"[{name} run]({run_url(ui, result.mlflow.experiment_id, run_id)})" if ui else run_id


def _version_ref(result: NightResult, version: int) -> str:
    name = f"{model_name(result.ticker)} version {version}"
    ui = result.mlflow.ui
    return f"[{name}]({version_url(ui, result.ticker, version)})" if ui else name


def markdown(result: NightResult) -> str:
    """The run's Prefect artifact: scores, decision, champion, MLflow runs, realised accuracy."""
    lines = [f"# Nightly {result.ticker} as of {result.as_of}", ""]
    lines += [f"- **note**: {note}" for note in result.notes]
    lines.append(f"- trained: **{result.trained}** ({result.train_reason})")
    if result.decision:
        lines.append(f"- decision: **{result.decision.action}** — {result.decision.reason}")
    champion = result.champion_version
    lines.append(
        f"- champion: {_version_ref(result, champion)}"
        if champion is not None
        else "- champion: none (naive serves)"
    )
    if result.candidates:
        lines += [
            "",
            "| model | role | MAPE % | RMSE $ | train s | MLflow run | version |",
            "|---|---|---:|---:|---:|---|---|",
        ]
        lines += [
            f"| {c.name} | {c.role} | {c.mape:.3f} | {c.rmse:.2f} | "
            f"{c.train_seconds:.1f} | {_run_ref(result, c.name, c.mlflow_run_id)} | "
            f"{_version_ref(result, c.version) if c.version is not None else ''} |"
            for c in result.candidates
        ]
        weeks = result.held_out_weeks
        if weeks:
            lines.append(f"\nHeld-out weeks: {weeks[0]} .. {weeks[-1]} ({len(weeks)})")
    forecast = result.forecast
    if forecast:
        flag = " (baseline)" if forecast.is_baseline else ""
        lines += ["", f"## Forecast by {forecast.model_name} v{forecast.model_version}{flag}"]
        lines += [
            "",
            "| date | close | 80 % interval | 95 % interval |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {d.date} | {d.close:.2f} | {_band(d.lower_80, d.upper_80)} | "
            f"{_band(d.lower_95, d.upper_95)} |"
            for d in forecast.days
        ]
    realised = result.realised
    if realised.days and realised.mape is not None and realised.rmse is not None:
        lines += [
            "",
            f"Realised accuracy of past forecasts: {realised.days} day(s), "
            f"MAPE {realised.mape:.3f} %, RMSE {realised.rmse:.2f} $ "
            f"({realised.weeks_scored_tonight} week(s) scored tonight)",
        ]
        coverage = coverage_text(realised)
        if coverage:
            lines.append(f"Realised interval coverage: {coverage}")
    refs = result.mlflow
    if refs.ui is not None:
        links = [f"[the night's run]({refs.parent_run})"]
        if refs.runs_table:
            links.append(f"[every night's runs, scores and decisions]({refs.runs_table})")
        name = model_name(result.ticker)
        links.append(f"[registered model {name}]({refs.ui}/#/models/{name})")
        lines += ["", "MLflow: " + " · ".join(links)]
    else:
        lines += ["", f"MLflow: {refs.parent_run}"]
    lines += [
        "",
        f"Timings: total {result.timings.get('total_seconds', 0):.1f} s, "
        f"training {result.timings.get('train_seconds', 0):.1f} s",
    ]
    return "\n".join(lines) + "\n"
