"""Backfill benchmark: a weekly backfill over 2017 on the book data, through `run_backfill`.

    .venv/bin/python bench/backfill.py /work/shared/data/bitcoin_historical_prices.csv \
        [--start 2017-01-01 --end 2017-11-05 --every week] [--epochs N] [--database postgres]

Prints per night: seconds, trained or not, training seconds, the backfill process's peak RSS
so far and the training worker's RSS; then total time, time per trained night (and whether it
grows with the nights done), and the backfill process's peak memory after the first night and
after the last (target: growth <= 20 %). Runs in a scratch PRICECAST_HOME and PREFECT_HOME, and
on Postgres in a scratch database it drops at the end (or SQLite with --database sqlite).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pricecast.settings import apply_environment_defaults  # noqa: E402  (import-light)

DEFAULT_CSV = "/work/shared/data/bitcoin_historical_prices.csv"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs (seconds per night done)."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def scratch_postgres() -> tuple[str, Any]:
    """A new database on the local Postgres; returns its URL and a function that drops it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from pricecast.settings import Settings

    admin_url = Settings().pg_admin_url
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"pc_bench_backfill_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    return url, drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", default=DEFAULT_CSV)
    parser.add_argument("--ticker", default="BTC-USD")
    parser.add_argument("--start", default="2017-01-01")
    parser.add_argument("--end", default="2017-11-05")
    parser.add_argument("--every", default="week", choices=("day", "week"))
    parser.add_argument("--epochs", type=int, default=None, help="default: the model's own")
    parser.add_argument("--database", default="postgres", choices=("postgres", "sqlite"))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="pricecast-bench-backfill-"))
    # The benchmark's own state, set before pricecast or Prefect read their settings.
    os.environ["PRICECAST_HOME"] = str(scratch / "home")
    os.environ["PREFECT_HOME"] = str(scratch / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    apply_environment_defaults()
    drop = None
    if args.database == "postgres":
        url, drop = scratch_postgres()
        os.environ["PRICECAST_DATABASE_URL"] = url

    from flows.schedule.backfill import NightOutcome, run_backfill

    rows: list[dict[str, Any]] = []
    began = time.perf_counter()

    def on_night(night: NightOutcome) -> None:
        rows.append(
            {
                "as_of": night.as_of.isoformat(),
                "trained": night.trained,
                "seconds": round(night.seconds, 2),
                "train_seconds": night.timings.get("train_seconds", 0.0),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "rss_mb": round(current_rss_mb(), 1),
                "worker_rss_mb": night.timings.get("child_worker_rss_mb"),
            }
        )
        row = rows[-1]
        print(
            f"{len(rows):>3} {row['as_of']} {'trained' if row['trained'] else 'skipped'} "
            f"{row['seconds']:7.1f} s (train {row['train_seconds'] or 0:6.1f} s)  "
            f"backfill peak {row['peak_rss_mb']:7.1f} MB now {row['rss_mb']:7.1f} MB  "
            f"worker {row['worker_rss_mb'] or 0:7.1f} MB",
            flush=True,
        )

    try:
        summary = run_backfill(
            ticker=args.ticker,
            source=f"csv:{args.csv}",
            start=dt.date.fromisoformat(args.start),
            end=dt.date.fromisoformat(args.end),
            every=args.every,
            epochs=args.epochs,
            show_progress=False,
            on_night=on_night,
        )
    finally:
        if drop is not None:
            drop()
    total = time.perf_counter() - began
    trained = [r for r in rows if r["trained"]]
    # The first night also boots the ephemeral Prefect API and the training worker's imports.
    steady = trained[1:] or trained
    night_seconds = [r["seconds"] for r in steady]
    half = len(steady) // 2
    first_peak, last_peak = rows[0]["peak_rss_mb"], rows[-1]["peak_rss_mb"]
    figures = {
        "nights": summary.nights,
        "trained_nights": summary.trained_nights,
        "epochs": args.epochs or "model default",
        "database": args.database,
        "total_seconds": round(total, 1),
        "first_night_seconds": rows[0]["seconds"],
        "seconds_per_trained_night_median": round(statistics.median(night_seconds), 2),
        "seconds_per_trained_night_mean": round(statistics.fmean(night_seconds), 2),
        "train_seconds_per_trained_night_median": round(
            statistics.median(r["train_seconds"] for r in steady), 2
        ),
        "seconds_per_night_first_half_median": round(
            statistics.median(night_seconds[:half] or night_seconds), 2
        ),
        "seconds_per_night_second_half_median": round(
            statistics.median(night_seconds[half:] or night_seconds), 2
        ),
        "seconds_per_night_slope": round(
            slope([float(i) for i in range(len(night_seconds))], night_seconds), 3
        ),
        "backfill_peak_rss_mb_after_first_night": first_peak,
        "backfill_peak_rss_mb_after_last_night": last_peak,
        "backfill_peak_rss_growth_pct": round(100 * (last_peak / first_peak - 1), 1),
        "worker_rss_mb_first": next((r["worker_rss_mb"] for r in trained), None),
        "worker_rss_mb_max": max((r["worker_rss_mb"] or 0 for r in trained), default=None),
        "tensorflow_in_backfill_process": "tensorflow" in sys.modules,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "nights": rows}, indent=2))


if __name__ == "__main__":
    main()
