"""The main job (`make run`): the whole pipeline end to end on the embedded default.

SQLite + a local MLflow store under PRICECAST_HOME, Prefect's ephemeral API, synthetic prices
(or a CSV): a short weekly backfill, then tonight's nightly; prints the champion, next week's
forecast and the commands that open the MLflow and Prefect UIs on what just ran.
"""

from __future__ import annotations

import datetime as dt
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pricecast.errors import DataError
from pricecast.urls import mask_url

if TYPE_CHECKING:
    from flows.night.result import NightResult

#: Chosen so the demo finishes in a few minutes on 2 cores: every night trains (it is a Sunday),
#: each training costs ~20 s of imports + ~20 s of MLflow logging + the epochs themselves.
DEMO_BACKFILL_WEEKS = 2
DEMO_EPOCHS = 20


@dataclass(frozen=True)
class DemoPlan:
    """Backfill nights (Sundays, oldest first) and tonight: the latest Sunday with a close."""

    backfill_start: dt.date
    backfill_end: dt.date
    tonight: dt.date
    weeks: int


def plan_demo(last_day: dt.date, *, weeks: int = DEMO_BACKFILL_WEEKS) -> DemoPlan:
    """Nights that each complete a week: tonight is the last Sunday up to `last_day` (a forecast
    is made when a week completes), the backfill the `weeks` Sundays before it."""
    if weeks < 0:
        raise DataError(f"--weeks {weeks}: give 0 or more weeks of backfill")
    tonight = last_day - dt.timedelta(days=(last_day.isoweekday() % 7))
    return DemoPlan(
        backfill_start=tonight - dt.timedelta(weeks=weeks),
        backfill_end=tonight - dt.timedelta(weeks=1),
        tonight=tonight,
        weeks=weeks,
    )


def ui_commands(*, mlflow_uri: str, prefect_api_url: str | None) -> list[str]:
    """How to look at what just ran, in the MLflow UI and the Prefect UI (passwords masked)."""
    bin_dir = Path(sys.executable).parent
    lines = []
    if mlflow_uri.startswith(("http://", "https://")):
        lines.append(f"MLflow UI:  open {mask_url(mlflow_uri)}")
    else:
        command = shlex.join(
            [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", mask_url(mlflow_uri),
             "--host", "127.0.0.1", "--port", "5000"]
        )  # fmt: skip
        lines.append(f"MLflow UI:  {command}   -> http://127.0.0.1:5000")
    if prefect_api_url:
        lines.append(f"Prefect UI: open {mask_url(prefect_api_url).removesuffix('/api')}/runs")
    else:
        # The ephemeral API kept its runs in Prefect's own database (PREFECT_HOME/prefect.db),
        # which a local server started the same way serves.
        command = shlex.join(
            [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", "4200"]
        )
        lines.append(f"Prefect UI: {command}   -> http://127.0.0.1:4200/runs")
    return lines


def run_demo(
    *,
    ticker: str = "BTC-USD",
    source: str = "synthetic",
    weeks: int = DEMO_BACKFILL_WEEKS,
    epochs: int = DEMO_EPOCHS,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> NightResult:
    """Ingest, backfill `weeks` Sundays, run tonight, print what a user wants to see."""
    from flows.ingest.load import ingest
    from flows.schedule.backfill import run_backfill
    from forecasting.calendar import yesterday_utc
    from pricecast.settings import get_settings

    settings = get_settings()
    began = time.perf_counter()
    echo(f"pricecast demo: {ticker} from {source}; state in {settings.resolved_home}")
    echo(
        f"  database {settings.redacted_database_url}, "
        f"MLflow {mask_url(settings.resolved_mlflow_uri)}"
    )
    yesterday = yesterday_utc()
    loaded = ingest(
        ticker=ticker, source=source, database_url=settings.resolved_database_url, as_of=yesterday
    )
    if loaded.last_date is None:
        raise DataError(f"{source} has no prices for {ticker} up to {yesterday}")
    plan = plan_demo(loaded.last_date, weeks=weeks)
    echo(
        f"1. prices: {loaded.first_date} .. {loaded.last_date} "
        f"({loaded.inserted} new, {loaded.updated + loaded.unchanged} already stored)"
    )
    if weeks > 0:
        echo(
            f"2. backfill: {weeks} Sunday night(s) {plan.backfill_start} .. "
            f"{plan.backfill_end}, {epochs} epochs (each night is a Prefect flow run)"
        )
        backfill = run_backfill(
            ticker=ticker, source=source, start=plan.backfill_start,
            end=plan.backfill_end, every="week", seed=seed, epochs=epochs,
        )  # fmt: skip
        echo(
            f"   {len(backfill.replayed)} replayed ({backfill.trained_nights} trained), "
            f"{backfill.skipped_done} already done, {backfill.seconds:.0f} s"
        )
    echo(f"3. tonight: nightly as of {plan.tonight} (the latest complete week)")
    from flows.night.flow import nightly
    from flows.night.report import scoreboard_lines

    tonight = nightly(ticker=ticker, as_of=plan.tonight, source=source, epochs=epochs, seed=seed)
    for line in scoreboard_lines(tonight):
        echo(line)
    echo("")
    from flows.prefect_api import prefect_api_url

    for line in ui_commands(
        mlflow_uri=settings.resolved_mlflow_uri, prefect_api_url=prefect_api_url()
    ):
        echo(line)
    echo(f"done in {time.perf_counter() - began:.0f} s")
    return tonight
