"""Intervals benchmark: a weekly backfill over 2017 on the book data, then the live forecasts
scored: realised coverage of the 80 % and 95 % intervals, their mean width, the live MAPE of the
champion vs naive over the same days, the gate's Diebold-Mariano p-values; then the pyfunc's
predict time and the served endpoint's round trip (bench/intervals_predict.py).

    .venv/bin/python bench/intervals.py [/work/shared/data/bitcoin_historical_prices.csv] \
        [--start 2017-01-01 --end 2017-11-05] [--epochs N] [--database sqlite|postgres] \
        [--no-timing] [--json FILE]

Targets: 80 % intervals cover 72-88 % of days, 95 % intervals 90-98 %; predict < 50 ms warm.
Runs in a scratch PRICECAST_HOME and PREFECT_HOME, deleted when it succeeds (and a scratch
Postgres database it drops). `--margin M` replays the year with PRICECAST_PROMOTION_MARGIN=M
(how the default was chosen: compare the live MAPE and the promotions of two runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pricecast.settings import apply_environment_defaults  # noqa: E402  (import-light)

DEFAULT_CSV = "/work/shared/data/bitcoin_historical_prices.csv"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def live_figures(database_url: str, ticker: str, csv_end: dt.date) -> dict[str, Any]:
    """Score every stored forecast against the closes (actuals recorded up to the CSV's end)."""
    import numpy as np

    from flows.cli.forecasts import accuracy_report, score_days
    from storage.db import make_engine, session_scope
    from storage.prices import read_closes
    from storage.runs import Promotion, forecasts_since, record_actuals

    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            closes = read_closes(session, ticker=ticker, as_of=csv_end)
            # The backfill's last nights cannot record the closes after them: do it here.
            record_actuals(session, ticker=ticker, as_of=csv_end, actuals=dict(closes))
        with session_scope(engine) as session:
            rows = forecasts_since(session, ticker=ticker)
            days = score_days(rows, closes)
            by_champion = [d for d in days if d.made_by != "naive baseline"]
            widths = {
                level: [
                    (band[1] - band[0]) / r.predicted_close
                    for r in rows
                    if (band := r.band(level)) is not None
                ]
                for level in (0.80, 0.95)
            }
            promotions = [
                (p.as_of, p.action, p.candidate, p.p_value, p.numbers or {})
                for p in session.query(Promotion).order_by(Promotion.as_of)
                if p.as_of is not None
            ]
    finally:
        engine.dispose()
    report = accuracy_report(days)
    champion = accuracy_report(by_champion)["overall"] if by_champion else None
    gate = _gate_figures(promotions)
    return {
        "forecast_weeks": len(report["weeks"]),
        "scored_days": report["overall"]["days"],
        "weeks_by_champion": len({d.as_of for d in by_champion}),
        "coverage_80": report["overall"]["coverage_80"],
        "coverage_95": report["overall"]["coverage_95"],
        "interval_days": report["overall"]["coverage_80_days"],
        "mean_width_pct_80": float(100 * np.mean(widths[0.80])) if widths[0.80] else None,
        "mean_width_pct_95": float(100 * np.mean(widths[0.95])) if widths[0.95] else None,
        "live_mape_all": report["overall"]["mape"],
        "live_naive_mape_all": report["overall"]["naive_mape"],
        "live_mape_champion_weeks": champion["mape"] if champion else None,
        "live_naive_mape_champion_weeks": champion["naive_mape"] if champion else None,
        "live_rmse_champion_weeks": champion["rmse"] if champion else None,
        "live_naive_rmse_champion_weeks": champion["naive_rmse"] if champion else None,
        "weekly": report["weeks"],
        "gate": gate,
    }


def _gate_figures(promotions: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """Per gate decision: the best candidate's MAPE lead over the harder bar and its p-value."""
    decisions = []
    for as_of, action, _candidate, p_value, numbers in promotions:
        candidates = numbers.get("candidates") or {}
        if not candidates:
            continue
        best_name, best = min(candidates.items(), key=lambda kv: kv[1]["mape"])
        bars = [numbers["naive"]["mape"]]
        if numbers.get("champion"):
            bars.append(numbers["champion"]["mape"])
        decisions.append(
            {
                "as_of": as_of.isoformat(),
                "action": action,
                "best": best_name,
                "lead_points": min(bars) - best["mape"],
                "p_value": p_value,
            }
        )
    promoted = [d for d in decisions if d["action"] == "promote"]
    p_values = [d["p_value"] for d in promoted if d["p_value"] is not None]
    leads = [d["lead_points"] for d in promoted]
    return {
        "decisions": len(decisions),
        "promotions": len(promoted),
        "promotion_lead_points_median": statistics.median(leads) if leads else None,
        "promotion_lead_points_min": min(leads) if leads else None,
        "promotions_with_lead_under_0_1_points": sum(1 for x in leads if x < 0.1),
        "promotion_p_value_median": statistics.median(p_values) if p_values else None,
        "promotions_kept_at_p_0_05": sum(1 for p in p_values if p > 0.05),
        "promotions_kept_at_p_0_10": sum(1 for p in p_values if p > 0.10),
        "per_night": decisions,
    }


def _timing(no_serve: bool) -> str:
    command = [sys.executable, str(ROOT / "bench" / "intervals_predict.py"), "--requests", "100"]
    if no_serve:
        command.append("--no-serve")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else f"failed: {done.stderr[-1500:]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", default=DEFAULT_CSV)
    parser.add_argument("--ticker", default="BTC-USD")
    parser.add_argument("--start", default="2017-01-01", help="a Sunday: forecasts are weekly")
    parser.add_argument("--end", default="2017-11-05")
    parser.add_argument("--epochs", type=int, default=None, help="default: the model's own")
    parser.add_argument(
        "--margin", type=float, default=None, help="PRICECAST_PROMOTION_MARGIN for the backfill"
    )
    parser.add_argument("--database", default="sqlite", choices=("postgres", "sqlite"))
    parser.add_argument("--no-timing", action="store_true", help="skip the predict timings")
    parser.add_argument("--no-serve", action="store_true", help="time predict, not the server")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="pricecast-bench-intervals-"))
    os.environ["PRICECAST_HOME"] = str(scratch / "home")
    os.environ["PREFECT_HOME"] = str(scratch / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.pop("PRICECAST_PROMOTION_MAX_PVALUE", None)  # report only: count what it would do
    if args.margin is not None:
        os.environ["PRICECAST_PROMOTION_MARGIN"] = str(args.margin)
    apply_environment_defaults()
    drop = None
    if args.database == "postgres":
        from backfill import scratch_postgres

        url, drop = scratch_postgres()
        os.environ["PRICECAST_DATABASE_URL"] = url

    import pandas as pd

    from flows.schedule.backfill import NightOutcome, run_backfill
    from pricecast.settings import get_settings

    csv_end = pd.read_csv(args.csv, usecols=["date"])["date"].max()
    began = time.perf_counter()

    def on_night(night: NightOutcome) -> None:
        print(
            f"{night.as_of} {'trained' if night.trained else 'skipped'} {night.seconds:6.1f} s",
            flush=True,
        )

    try:
        summary = run_backfill(
            ticker=args.ticker,
            source=f"csv:{args.csv}",
            start=dt.date.fromisoformat(args.start),
            end=dt.date.fromisoformat(args.end),
            every="week",
            epochs=args.epochs,
            show_progress=False,
            on_night=on_night,
        )
        backfill_seconds = time.perf_counter() - began
        figures = live_figures(
            get_settings().resolved_database_url, args.ticker, dt.date.fromisoformat(csv_end)
        )
    except BaseException:
        print(f"stopped; the scratch state (logs, stores) is kept in {scratch}", file=sys.stderr)
        raise
    finally:
        if drop is not None:
            drop()
    shutil.rmtree(scratch, ignore_errors=True)
    figures = {
        "nights": summary.nights,
        "trained_nights": summary.trained_nights,
        "backfill_seconds": round(backfill_seconds, 1),
        "margin": get_settings().promotion_margin,
        **figures,
    }
    gate = figures["gate"]
    print(
        f"\n{figures['forecast_weeks']} forecast weeks, {figures['scored_days']} scored days "
        f"({figures['weeks_by_champion']} weeks by a champion, the rest by naive)\n"
        f"coverage: 80 % band {_pct(figures['coverage_80'])} (target 72-88 %), 95 % band "
        f"{_pct(figures['coverage_95'])} (target 90-98 %) over {figures['interval_days']} days\n"
        f"mean width: 80 % band {figures['mean_width_pct_80'] or 0:.1f} % of the close, 95 % band "
        f"{figures['mean_width_pct_95'] or 0:.1f} %\n"
        f"live MAPE on the champion's weeks: {figures['live_mape_champion_weeks'] or 0:.3f} % vs "
        f"naive {figures['live_naive_mape_champion_weeks'] or 0:.3f} %; all weeks "
        f"{figures['live_mape_all']:.3f} % vs {figures['live_naive_mape_all']:.3f} %\n"
        f"gate: {gate['promotions']} promotions in {gate['decisions']} decisions; lead median "
        f"{gate['promotion_lead_points_median']} points, min {gate['promotion_lead_points_min']}; "
        f"p-value median {gate['promotion_p_value_median']}; would be kept at p<=0.05: "
        f"{gate['promotions_kept_at_p_0_05']}, at p<=0.10: {gate['promotions_kept_at_p_0_10']}"
    )
    if not args.no_timing:
        timing = _timing(args.no_serve)
        figures["timing"] = timing
        print(timing)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
