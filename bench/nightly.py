"""Nightly benchmark: one nightly run on the book data as of 2017-11-05 with default settings, run
twice in one process (the second with warm stores, forced to train again), and where the time goes.

    .venv/bin/python bench/nightly.py [PATH_TO_CSV] [--as-of 2017-11-05] [--cold-worker]

State goes to a fresh temporary PRICECAST_HOME (SQLite database, MLflow SQLite store, Prefect's
ephemeral API). Target: overhead (1 - training seconds / flow seconds) <= 30 % on the warm run.
`--cold-worker` adds a third run whose training process starts from scratch (no reuse).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pricecast.settings import apply_environment_defaults  # noqa: E402  (import-light)

BOOK_CSV = Path("/work/shared/data/bitcoin_historical_prices.csv")

# Parts of the flow's own timings, in the order they happen.
STEPS = (
    ("lock_wait_seconds", "lock"),
    ("ingest_seconds", "ingest CSV"),
    ("read_seconds", "read closes + weeks"),
    ("plan_seconds", "plan (DB + MLflow lookups, parent run)"),
    ("child_seconds", "training process (wall)"),
    ("promote_seconds", "gate + registry + audit"),
    ("forecast_seconds", "forecast"),
    ("score_seconds", "score past forecasts"),
)
CHILD_STEPS = (
    ("child_import_seconds", "  child: imports (TF, MLflow) if started for this run"),
    ("child_backtest_seconds", "  child: backtest passes (train + predict)"),
    ("child_load_champion_wait_seconds", "  child: waiting for the champion (loads during fresh)"),
    ("child_logging_wait_seconds", "  child: waiting for MLflow logging (runs during training)"),
    ("child_total_seconds", "  child: whole job"),
)


def run_once(label: str, **params: Any) -> dict[str, Any]:
    from flows.night.flow import nightly

    started = time.perf_counter()
    result = nightly(**params)
    wall = time.perf_counter() - started
    timings = result.timings
    train = {c.name: c.train_seconds for c in result.candidates}
    trained = sum(train.values())
    return {
        "label": label,
        "wall_seconds": wall,
        "flow_seconds": timings["total_seconds"],
        "prefect_seconds": wall - timings["total_seconds"],
        "train_seconds": trained,
        "train_by_candidate": train,
        "overhead_share": 1.0 - trained / wall,
        "timings": timings,
        "decision": result.to_dict()["decision"],
        "scores": {c.name: round(c.mape, 3) for c in result.candidates},
    }


def report(run: dict[str, Any]) -> list[str]:
    t = run["timings"]
    lines = [
        f"== {run['label']}",
        f"flow run wall {run['wall_seconds']:.1f} s (flow body {run['flow_seconds']:.1f} s, "
        f"Prefect flow-run setup/teardown {run['prefect_seconds']:.1f} s)",
        "training: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in run["train_by_candidate"].items() if v)
        + f" -> {run['train_seconds']:.1f} s",
        f"overhead share 1 - train/total = {run['overhead_share'] * 100:.1f} %",
        f"MAPE %: {run['scores']}; decision: {run['decision']['action']}",
        f"training worker: RSS {t.get('child_worker_rss_mb', 0):.0f} MB after the job, "
        f"job {t.get('child_job_seconds', 0):.1f} s of {t.get('child_seconds', 0):.1f} s wall",
        "where the flow body goes:",
    ]
    for key, name in (*STEPS[:5], *CHILD_STEPS, *STEPS[5:]):
        if key in t:
            lines.append(f"  {name:<58} {t[key]:7.2f} s")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", type=Path, default=BOOK_CSV)
    parser.add_argument("--as-of", default="2017-11-05")
    parser.add_argument("--ticker", default="BTC-USD")
    parser.add_argument("--cold-worker", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.csv.is_file():
        parser.error(f"no CSV at {args.csv}")

    home = Path(tempfile.mkdtemp(prefix="pricecast-bench-nightly-"))
    os.environ["PRICECAST_HOME"] = str(home)
    for name in ("PRICECAST_DATABASE_URL", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        os.environ.pop(name, None)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    apply_environment_defaults()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    started = time.perf_counter()
    from flows.night.flow import nightly  # noqa: F401  (imports Prefect, SQLAlchemy, pandas)
    from flows.training.worker import shutdown_worker

    import_seconds = time.perf_counter() - started
    as_of = dt.date.fromisoformat(args.as_of)
    params = {"ticker": args.ticker, "as_of": as_of, "source": f"csv:{args.csv}"}
    runs = [run_once("cold: empty stores, new process", **params)]
    runs.append(
        run_once(
            "warm: same process, stores and training worker warm (--force)", force=True, **params
        )
    )
    if args.cold_worker:
        shutdown_worker()
        runs.append(
            run_once(
                "warm stores, training process started from scratch (--force)", force=True, **params
            )
        )
    shutdown_worker()
    flow_process = {
        "tensorflow_imported": "tensorflow" in sys.modules,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }

    if args.json:
        print(
            json.dumps(
                {"import_seconds": import_seconds, "flow_process": flow_process, "runs": runs},
                indent=2,
            )
        )
        return 0
    print(
        f"book data {args.csv.name}, {args.ticker} as of {as_of}, default settings; "
        f"state in {home}; imports before the first run: {import_seconds:.1f} s"
    )
    for run in runs:
        print()
        print("\n".join(report(run)))
    print(
        f"\nflow process: TensorFlow imported = {flow_process['tensorflow_imported']}, "
        f"peak RSS {flow_process['peak_rss_mb']:.0f} MB (training ran in the worker process)"
    )
    warm = runs[1]
    verdict = "meets" if warm["overhead_share"] <= 0.30 else "misses"
    print(f"\nwarm-run overhead {warm['overhead_share'] * 100:.1f} % {verdict} the 30 % target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
