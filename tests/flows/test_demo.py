"""The main job: which nights it runs, and one real run on a user's CSV (embedded SQLite, a local
MLflow store, Prefect's test harness) that prints the champion, next week and the UI commands.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from flows.demo import plan_demo, run_demo, ui_commands
from pricecast.errors import DataError
from pricecast.settings import get_settings
from storage.db import make_engine, session_scope
from storage.runs import NightlyRun, forecasts_for
from tests.flows.nightly_data import LAST_DAY, SMALL, trend_prices, write_csv

D = dt.date


@pytest.mark.parametrize(
    ("last_day", "tonight"),
    [
        (D(2024, 3, 10), D(2024, 3, 10)),  # a Sunday: its week is complete
        (D(2024, 3, 13), D(2024, 3, 10)),  # a Wednesday: back to the last complete week
        (D(2024, 3, 16), D(2024, 3, 10)),  # a Saturday
    ],
)
def test_tonight_is_the_last_sunday_and_backfill_the_sundays_before(last_day, tonight) -> None:
    plan = plan_demo(last_day, weeks=3)
    assert plan.tonight == tonight and tonight.isoweekday() == 7
    assert plan.backfill_start == tonight - dt.timedelta(weeks=3)
    assert plan.backfill_end == tonight - dt.timedelta(weeks=1)


def test_negative_weeks_is_a_data_error() -> None:
    with pytest.raises(DataError, match="--weeks -1"):
        plan_demo(D(2024, 3, 10), weeks=-1)


def test_ui_commands_for_local_stores_and_servers() -> None:
    local = ui_commands(mlflow_uri="sqlite:////tmp/x/mlflow.db", prefect_api_url=None)
    assert "mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db --host 127.0.0.1" in local[0]
    assert "prefect server start --host 127.0.0.1 --port 4200" in local[1]
    remote = ui_commands(
        mlflow_uri="http://127.0.0.1:5000", prefect_api_url="http://127.0.0.1:4200/api"
    )
    assert remote == [
        "MLflow UI:  open http://127.0.0.1:5000",
        "Prefect UI: open http://127.0.0.1:4200/runs",
    ]


@pytest.mark.usefixtures("prefect_harness")
def test_demo_on_a_csv_prints_champion_forecast_and_ui_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRICECAST_HOLDOUT_WEEKS", str(SMALL["holdout_weeks"]))
    monkeypatch.setenv("PRICECAST_WINDOW_WEEKS", str(SMALL["window_weeks"]))
    get_settings.cache_clear()
    csv = write_csv(tmp_path / "export.csv", trend_prices())
    printed: list[str] = []

    result = run_demo(source=f"csv:{csv}", weeks=1, epochs=1, echo=printed.append)

    out = "\n".join(printed)
    tonight = LAST_DAY  # the file ends on a Sunday
    assert result.as_of == tonight
    assert f"backfill: 1 Sunday night(s) {tonight - dt.timedelta(weeks=1)}" in out
    assert re.search(r"^Champion: (version \d+|none yet)", out, flags=re.MULTILINE), out
    next_week = [tonight + dt.timedelta(days=i) for i in range(1, 8)]
    for day in next_week:
        band = r"  \(80 %: [\d,]+\.\d\d\.\.[\d,]+\.\d\d\)"
        line = rf"^  {day:%a %Y-%m-%d}  \$[\d,]+\.\d\d({band})?$"
        assert re.search(line, out, flags=re.MULTILINE), out
    settings = get_settings()
    assert f"mlflow ui --backend-store-uri {settings.resolved_mlflow_uri}" in out
    assert "\nPrefect UI: " in out  # the harness API here; `prefect server start` on the default

    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(engine) as session:
            rows = session.scalars(select(NightlyRun).where(NightlyRun.ticker == "BTC-USD"))
            nights = sorted((r.as_of, r.status) for r in rows)
            stored = [
                f.target_date for f in forecasts_for(session, ticker="BTC-USD", as_of=tonight)
            ]
    finally:
        engine.dispose()
    assert nights == [(tonight - dt.timedelta(weeks=1), "done"), (tonight, "done")]
    assert stored == next_week
