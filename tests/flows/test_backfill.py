"""A real daily backfill on Postgres + a temporary MLflow store + Prefect's test harness: it trains
only when a week completes, stops at the first failing night, resumes there, skips done nights,
never looks ahead, and leaves one Prefect flow run and one MLflow parent run per night.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from flows.ingest.load import ingest
from flows.schedule.backfill import BackfillStopped, run_backfill
from flows.tracking.tracker import experiment_name
from pricecast.settings import get_settings
from storage.db import make_engine, session_scope
from storage.runs import NightlyRun
from tests.flows.nightly_data import SMALL, trend_prices, write_csv

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("prefect_harness")]

TICKER = "BF-T"
START = dt.date(2020, 9, 5)  # a Saturday: the first night trains (nothing has trained yet)
END = dt.date(2020, 9, 13)  # the second Sunday after it
SUNDAYS = [dt.date(2020, 9, 6), dt.date(2020, 9, 13)]
BAD_DAY = dt.date(2020, 9, 8)  # a Tuesday between the Sundays


@pytest.fixture
def tiny_postgres_settings(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PRICECAST_DATABASE_URL", pg_url)
    monkeypatch.setenv("PRICECAST_EPOCHS", "1")
    monkeypatch.setenv("PRICECAST_HOLDOUT_WEEKS", str(SMALL["holdout_weeks"]))
    monkeypatch.setenv("PRICECAST_WINDOW_WEEKS", str(SMALL["window_weeks"]))
    get_settings.cache_clear()
    return pg_url


def test_daily_backfill_trains_weekly_stops_resumes_and_skips(
    tiny_postgres_settings: str, tmp_path: Path
) -> None:
    url = tiny_postgres_settings
    prices = trend_prices()
    csv = write_csv(tmp_path / "prices.csv", prices)
    # Every price up to October is stored before the backfill: no night may see past its date.
    ingest(ticker=TICKER, source=f"csv:{csv}", database_url=url)
    # A bad close on BAD_DAY: the nights before it load fine (rows after as_of are not read).
    broken = prices.copy()
    broken.loc[broken["date"] == BAD_DAY.isoformat(), "close"] = -5.0
    write_csv(csv, broken)
    source = f"csv:{csv}"

    with pytest.raises(BackfillStopped) as stopped:
        run_backfill(ticker=TICKER, source=source, start=START, end=END, show_progress=False)
    message = str(stopped.value)
    assert f"backfill stopped at {BAD_DAY}" in message and "3 night(s)" in message
    assert "close must be > 0" in message and f"resumes at {BAD_DAY}" in message

    write_csv(csv, prices)  # the user fixes the file and reruns the same command
    resumed = run_backfill(ticker=TICKER, source=source, start=START, end=END, show_progress=False)
    assert resumed.nights == 9 and resumed.skipped_done == 3
    assert [n.as_of for n in resumed.replayed] == [BAD_DAY + dt.timedelta(days=i) for i in range(6)]

    again = run_backfill(ticker=TICKER, source=source, start=START, end=END, show_progress=False)
    assert (again.skipped_done, again.replayed, again.trained_nights) == (9, [], 0)
    assert json.loads(json.dumps(again.to_json()))["skipped_done"] == 9

    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            runs = session.scalars(
                select(NightlyRun).where(NightlyRun.ticker == TICKER).order_by(NightlyRun.as_of)
            ).all()
            nights = [(r.as_of, r.status, r.trained, r.last_complete_week) for r in runs]
    finally:
        engine.dispose()
    assert [n[0] for n in nights] == [START + dt.timedelta(days=i) for i in range(9)]
    assert all(status == "done" for _, status, _, _ in nights)
    # Training: the first night, then only the Sundays that complete a week.
    assert [as_of for as_of, _, trained, _ in nights if trained] == [START, *SUNDAYS]
    # No look-ahead: each night's latest complete week ended on or before its own date.
    for as_of, _, _, week in nights:
        assert week + dt.timedelta(days=6) <= as_of < week + dt.timedelta(days=13)

    _assert_flow_runs_carry_as_of(expected=[START + dt.timedelta(days=i) for i in range(9)])
    _assert_mlflow_parent_runs_carry_as_of(expected=[n[0] for n in nights])


def _assert_flow_runs_carry_as_of(expected: list[dt.date]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["backfill"])),
            sort=FlowRunSort.START_TIME_ASC,  # the sync client sends null otherwise (HTTP 422)
            limit=200,
        )
    mine = [r for r in runs if r.parameters.get("ticker") == TICKER]
    completed = sorted(
        str(r.parameters["as_of"]) for r in mine if r.state and r.state.is_completed()
    )
    assert completed == [d.isoformat() for d in expected]
    failed = [str(r.parameters["as_of"]) for r in mine if r.state and r.state.is_failed()]
    assert failed == [BAD_DAY.isoformat()]


def _assert_mlflow_parent_runs_carry_as_of(expected: list[dt.date]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=get_settings().resolved_mlflow_uri)
    experiment = client.get_experiment_by_name(experiment_name(TICKER))
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        max_results=500,
    )
    parents = {r.data.tags.get("as_of") for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert {d.isoformat() for d in expected} <= parents
