"""CLI commands for the stored forecasts: `forecast` (the latest forecast with its 80/95 %
intervals, who made it and when) and `accuracy` (the live forecasts against what happened: MAPE
and RMSE of the forecasts and of naive over the same days, per week and overall, the realised
coverage of both intervals, and optionally a plot)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from flows.cli.common import DEFAULT_TICKER, open_engine, parse_day, print_json
from pricecast.errors import DataError

if TYPE_CHECKING:
    from storage.runs import Forecast

LEVELS = (0.80, 0.95)


def _made_by(row: Forecast) -> str:
    if row.is_baseline:
        return "naive baseline"
    return f"{row.model_name} v{row.model_version}" if row.model_version else row.model_name


def _band_text(band: tuple[float, float] | None) -> str:
    return f"{band[0]:>12,.2f} .. {band[1]:<12,.2f}" if band else f"{'-':>12}    {'':<12}"


def forecast_payload(rows: Sequence[Forecast]) -> dict[str, Any]:
    """`pricecast forecast --json`: one night's forecast days with their intervals."""
    first = rows[0]
    return {
        "ticker": first.ticker,
        "as_of": first.as_of.isoformat(),
        "week_start": min(r.target_date for r in rows).isoformat(),
        "model_name": first.model_name,
        "model_version": first.model_version,
        "is_baseline": first.is_baseline,
        "made_at": first.created_at.isoformat() if first.created_at else None,
        "days": [
            {
                "date": r.target_date.isoformat(),
                "close": r.predicted_close,
                "lower_80": r.lower_80,
                "upper_80": r.upper_80,
                "lower_95": r.lower_95,
                "upper_95": r.upper_95,
                "actual_close": r.actual_close,
            }
            for r in rows
        ],
    }


def forecast_lines(rows: Sequence[Forecast]) -> list[str]:
    first = rows[0]
    made_at = f"{first.created_at:%Y-%m-%d %H:%M} UTC" if first.created_at else "unknown time"
    lines = [
        f"{first.ticker} forecast made as of {first.as_of} by {_made_by(first)} (stored {made_at})",
        f"{'date':<15} {'close':>12}   {'80 % interval':^28}   {'95 % interval':^28}",
    ]
    for r in rows:
        lines.append(
            f"{r.target_date:%a %Y-%m-%d} {r.predicted_close:>12,.2f}   "
            f"{_band_text(r.band(0.80))}   {_band_text(r.band(0.95))}"
        )
    if all(r.band(0.80) is None for r in rows):
        lines.append("no prediction intervals: this forecast was stored without them")
    return [line.rstrip() for line in lines]


def forecast_command(
    ticker: str = typer.Option(DEFAULT_TICKER, "--ticker", "-t", help="Ticker to show."),
    as_of: str | None = typer.Option(
        None,
        "--as-of",
        help="The latest forecast made on or before this day (YYYY-MM-DD; default: the latest).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object."),
) -> None:
    """Show the latest stored forecast: next week's closes with 80 % and 95 % intervals, the
    model version that made it and when."""
    from storage.db import session_scope
    from storage.runs import latest_forecast

    day = parse_day(as_of, "--as-of")
    with open_engine() as engine, session_scope(engine) as session:
        rows = latest_forecast(session, ticker=ticker, as_of=day)
        if not rows:
            when = f" made on or before {day}" if day else ""
            raise DataError(
                f"no forecast stored for {ticker}{when}; a night stores one when a week completes: "
                f"pricecast nightly --ticker {ticker} --as-of <a Sunday>"
            )
        if as_json:
            print_json(forecast_payload(rows))
            return
        lines = forecast_lines(rows)
    typer.echo("\n".join(lines))


# --- accuracy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredDay:
    """One forecast day with its actual close and naive's forecast of it (the last close known
    when the forecast was made)."""

    as_of: dt.date
    date: dt.date
    actual: float
    predicted: float
    naive: float
    bands: dict[float, tuple[float, float] | None]
    made_by: str


def _errors(days: Sequence[ScoredDay]) -> dict[str, Any]:
    """MAPE (%) and RMSE ($) of the forecasts and of naive over `days`, and interval coverage."""
    import numpy as np

    from forecasting.intervals import coverage
    from forecasting.metrics import mape, rmse

    actual = np.array([d.actual for d in days])
    predicted = np.array([d.predicted for d in days])
    naive = np.array([d.naive for d in days])
    result: dict[str, Any] = {
        "days": len(days),
        "mape": mape(actual, predicted),
        "rmse": rmse(actual, predicted),
        "naive_mape": mape(actual, naive),
        "naive_rmse": rmse(actual, naive),
    }
    for level in LEVELS:
        banded = [(d.actual, band) for d in days if (band := d.bands.get(level)) is not None]
        key = f"coverage_{round(level * 100)}"
        result[key] = (
            coverage([a for a, _ in banded], [b[0] for _, b in banded], [b[1] for _, b in banded])
            if banded
            else None
        )
        result[f"{key}_days"] = len(banded)
    return result


def score_days(
    rows: Sequence[Forecast], closes: Sequence[tuple[dt.date, float]]
) -> list[ScoredDay]:
    """The forecast days that have an actual close, each with naive's forecast: the last stored
    close before the forecast's first target day (what naive predicts for every day of a week)."""
    import bisect

    dates = [d for d, _ in closes]
    first_target: dict[dt.date, dt.date] = {}
    for r in rows:
        first_target[r.as_of] = min(first_target.get(r.as_of, r.target_date), r.target_date)
    days = []
    for r in rows:
        if r.actual_close is None:
            continue
        before = bisect.bisect_left(dates, first_target[r.as_of]) - 1
        if before < 0:
            continue  # no close before the week: naive has nothing to say
        days.append(
            ScoredDay(
                as_of=r.as_of,
                date=r.target_date,
                actual=float(r.actual_close),
                predicted=float(r.predicted_close),
                naive=float(closes[before][1]),
                bands={level: r.band(level) for level in LEVELS},
                made_by=_made_by(r),
            )
        )
    return days


def accuracy_report(days: Sequence[ScoredDay]) -> dict[str, Any]:
    """Per forecast week (by the night that made it) and overall."""
    nights: dict[dt.date, list[ScoredDay]] = {}
    for day in days:
        nights.setdefault(day.as_of, []).append(day)
    weeks = [
        {
            "as_of": night.isoformat(),
            "week_start": min(d.date for d in group).isoformat(),
            "made_by": group[0].made_by,
            **_errors(group),
        }
        for night, group in sorted(nights.items())
    ]
    return {"weeks": weeks, "overall": _errors(days)}


def _pct(value: float | None) -> str:
    return f"{100 * value:5.1f} %" if value is not None else "    -  "


def accuracy_lines(ticker: str, report: dict[str, Any]) -> list[str]:
    overall = report["overall"]
    header = (
        f"{'week':<11} {'made by':<24} {'days':>4} {'MAPE %':>7} {'naive %':>7} "
        f"{'RMSE $':>10} {'naive $':>10} {'80 % cov':>8} {'95 % cov':>8}"
    )

    def row(label: str, made_by: str, s: dict[str, Any]) -> str:
        return (
            f"{label:<11} {made_by:<24} {s['days']:>4} {s['mape']:>7.3f} {s['naive_mape']:>7.3f} "
            f"{s['rmse']:>10,.2f} {s['naive_rmse']:>10,.2f} {_pct(s['coverage_80']):>8} "
            f"{_pct(s['coverage_95']):>8}"
        )

    lines = [f"{ticker}: live forecasts against the closes that happened", header]
    lines += [row(w["week_start"], w["made_by"], w) for w in report["weeks"]]
    lines.append(row("overall", f"{len(report['weeks'])} week(s)", overall))
    verdict = "beat" if overall["mape"] < overall["naive_mape"] else "did not beat"
    lines.append(
        f"the forecasts {verdict} naive over these {overall['days']} day(s): MAPE "
        f"{overall['mape']:.3f} % vs {overall['naive_mape']:.3f} %"
    )
    if overall["coverage_80"] is not None:
        lines.append(
            f"intervals: the 80 % band held {_pct(overall['coverage_80']).strip()} and the 95 % "
            f"band {_pct(overall['coverage_95']).strip()} of {overall['coverage_80_days']} day(s)"
        )
    return lines


def plot_accuracy(
    path: Path,
    ticker: str,
    rows: Sequence[Forecast],
    closes: Sequence[tuple[dt.date, float]],
) -> None:
    """Forecasts (one line per forecast week), their 80/95 % bands, and the actual closes."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global figures, no GUI backend

    first = min(r.target_date for r in rows) - dt.timedelta(days=7)
    last = max(r.target_date for r in rows)
    fig = Figure(figsize=(10, 4.5))
    ax = fig.subplots()
    nights: dict[dt.date, list[Forecast]] = {}
    for r in rows:
        nights.setdefault(r.as_of, []).append(r)
    for index, group in enumerate(nights.values()):
        group = sorted(group, key=lambda r: r.target_date)
        dates = np.array([r.target_date for r in group], dtype="datetime64[D]")
        for level, alpha in ((0.95, 0.12), (0.80, 0.25)):
            bands = [r.band(level) for r in group]
            if all(b is not None for b in bands):
                ax.fill_between(
                    dates,
                    [b[0] for b in bands if b is not None],
                    [b[1] for b in bands if b is not None],
                    color="tab:blue",
                    alpha=alpha,
                    linewidth=0,
                    label=f"{level:.0%} interval" if index == 0 else None,
                )
        ax.plot(
            dates,
            [r.predicted_close for r in group],
            color="tab:blue",
            linewidth=1.2,
            label="forecast" if index == 0 else None,
        )
    shown = [(d, c) for d, c in closes if first <= d <= last]
    if shown:
        ax.plot(
            np.array([d for d, _ in shown], dtype="datetime64[D]"),
            [c for _, c in shown],
            color="black",
            linewidth=1.0,
            label="actual",
        )
    ax.set_title(f"{ticker}: live forecasts, intervals and actual closes")
    ax.set_ylabel("close (USD)")
    ax.legend(loc="best")
    fig.autofmt_xdate()
    fig.savefig(path, dpi=90, bbox_inches="tight")


def accuracy_command(
    ticker: str = typer.Option(DEFAULT_TICKER, "--ticker", "-t", help="Ticker to score."),
    since: str | None = typer.Option(
        None, "--since", help="Only forecast days from this day on (YYYY-MM-DD)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object: weeks, overall."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Also draw forecasts, bands and actuals into this PNG file."
    ),
) -> None:
    """Score the stored forecasts against what happened: MAPE and RMSE of the forecasts and of
    naive over the same days, per week and overall, and the realised 80 % / 95 % coverage."""
    from storage.db import session_scope
    from storage.prices import read_closes
    from storage.runs import forecasts_since

    start = parse_day(since, "--since")
    if plot is not None and plot.suffix.lower() != ".png":
        raise DataError(f"--plot {plot}: the plot is a PNG file; give a name ending in .png")
    with open_engine() as engine, session_scope(engine) as session:
        rows = forecasts_since(session, ticker=ticker, since=start)
        if not rows:
            when = f" for days from {start} on" if start else ""
            raise DataError(
                f"no forecast stored for {ticker}{when}; nights store one when a week "
                f"completes (pricecast nightly --ticker {ticker})"
            )
        last = max(r.target_date for r in rows)
        closes = read_closes(session, ticker=ticker, as_of=last)
        days = score_days(rows, closes)
        if not days:
            raise DataError(
                f"no forecast of {ticker} has an actual close yet (the first targets "
                f"{min(r.target_date for r in rows)}); a night records actuals once those "
                "days have closed"
            )
        report = {"ticker": ticker, "since": start.isoformat() if start else None}
        report.update(accuracy_report(days))
        if plot is not None:
            if not plot.parent.is_dir():
                raise DataError(f"--plot {plot}: the folder {plot.parent} does not exist")
            plot_accuracy(plot, ticker, rows, closes)
            report["plot"] = str(plot)
    if as_json:
        print_json(_finite(report))
        return
    lines = accuracy_lines(ticker, report)
    if plot is not None:
        lines.append(f"plot: {plot}")
    typer.echo("\n".join(lines))


def _finite(value: Any) -> Any:
    """NaN/inf become None so --json is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
