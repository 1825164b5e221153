"""The nightly flow on the real parts: Postgres (or SQLite), a temporary MLflow store, Prefect's
test harness, and real (tiny) trainings in the child process."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select

from flows.ingest.load import ingest
from flows.night.flow import nightly
from flows.tracking.tracker import METADATA_FILE, Tracker, data_fingerprint, model_name
from pricecast.errors import LockTimeout, ServiceUnavailable
from pricecast.settings import get_settings
from storage.db import make_engine, session_scope
from storage.prices import read_closes
from storage.runs import (
    Forecast,
    ForecastScore,
    NightlyRun,
    Promotion,
    forecasts_for,
    get_run,
)
from tests.flows.nightly_data import (
    LEARNING_EPOCHS,
    NIGHT_1,
    NIGHT_2,
    SMALL,
    trend_prices,
    write_csv,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def on_postgres(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PRICECAST_DATABASE_URL", pg_url)
    get_settings.cache_clear()
    return pg_url


def _count(url: str, model: type, **where: object) -> int:
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            query = select(func.count()).select_from(model)
            for column, value in where.items():
                query = query.where(getattr(model, column) == value)
            return int(session.scalar(query) or 0)
    finally:
        engine.dispose()


def _mlflow():  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=get_settings().resolved_mlflow_uri)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _artifact_markdown(flow_run_id: str) -> list[str]:
    """Markdown artifacts the flow run left, read back through the Prefect API."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
            task_run_filter=None,
            sort=ArtifactSort.CREATED_DESC,
            limit=10,
            offset=0,
        )
    return [str(a.data) for a in found if a.type == "markdown"]


@pytest.mark.postgres
def test_two_nights_in_a_row_then_a_rerun(on_postgres: str, tmp_path: Path) -> None:
    ticker = "TRND"
    csv = write_csv(tmp_path / "trend.csv", trend_prices())
    # Rows after both nights are already stored: each night must see only rows up to its as_of.
    ingest(ticker=ticker, source=f"csv:{csv}", database_url=on_postgres)
    params = {**SMALL, "epochs": LEARNING_EPOCHS, "source": f"csv:{csv}", "ticker": ticker}

    first = nightly(as_of=NIGHT_1, **params).to_dict()

    assert first["trained"] and first["train_reason"] == "no night has trained yet"
    scored = {c["name"]: c for c in first["candidates"]}
    assert set(scored) == {"retrain", "fresh", "naive"}
    assert first["promoted"] in {"retrain", "fresh"}
    assert scored[first["promoted"]]["mape"] < scored["naive"]["mape"]
    assert first["champion_version"] == first["promoted_version"] is not None
    assert first["held_out_weeks"] == ["2020-08-17", "2020-08-24", "2020-08-31"]
    forecast = first["forecast"]
    assert [d["date"] for d in forecast["closes"]] == [
        (NIGHT_1 + dt.timedelta(days=k)).isoformat() for k in range(1, 8)
    ]
    assert (forecast["model_version"], forecast["is_baseline"]) == (
        first["champion_version"],
        False,
    )
    for day in forecast["closes"]:  # bands from tonight's held-out residuals (issue 10)
        assert day["lower_95"] <= day["lower_80"] <= day["close"] <= day["upper_80"]
        assert day["upper_80"] <= day["upper_95"]
    # The actual closes of the forecast week are stored, but they come after as_of.
    assert first["realised"]["days"] == 0
    assert set(first["timings"]) >= {"total_seconds", "train_seconds", "child_seconds"}
    # The child's parts, each timed where it ran: the passes, each model's run (on the logging
    # thread), the chart (on the loader's) and the wait for them after the last pass.
    parts = {f"child_{k}_seconds" for k in ("backtest", "log_naive", "log_fresh", "log_chart")}
    assert parts | {"child_logging_wait_seconds"} <= set(first["timings"]), first["timings"]
    assert all(first["timings"][k] > 0 for k in parts)

    client = _mlflow()
    parent = client.get_run(first["mlflow"]["parent_run_id"])
    assert parent.data.tags["as_of"] == NIGHT_1.isoformat()
    assert parent.data.tags["ticker"] == ticker
    assert parent.data.tags["prefect.flow_run_id"] == first["flow_run_id"]
    assert parent.info.status == "FINISHED"
    # One picture of every model against the actuals, on the parent run.
    assert "forecasts_vs_actual.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    # Named with the night's date; tagged with the gate's outcome (a runs-table column).
    by_name = {run.info.run_name.removesuffix(f" {NIGHT_1}"): run for run in children}
    assert {run.info.run_name for run in children} == {
        f"{name} {NIGHT_1}" for name in ("retrain", "fresh", "naive")
    }
    assert by_name[first["promoted"]].data.tags["decision"] == "promoted"
    assert by_name["naive"].data.tags["decision"] == "baseline"
    engine = make_engine(on_postgres)
    with session_scope(engine) as session:
        fingerprint = data_fingerprint(read_closes(session, ticker=ticker, as_of=NIGHT_1))
    for name in ("retrain", "fresh"):
        run = by_name[name]
        assert run.data.metrics["mape"] == pytest.approx(scored[name]["mape"])
        assert {"rmse", "mape"} <= set(run.data.metrics)
        params_logged = run.data.params
        assert params_logged["data_fingerprint"] == fingerprint
        assert params_logged["window_weeks"] == "4"
        assert params_logged["epochs"] == str(LEARNING_EPOCHS)
        assert params_logged["seed"] == "0"
        assert params_logged["training_cutoff"] < "2020-08-17"  # before the held-out span
        assert "learning_rate" in params_logged
        weekly = client.get_metric_history(run.info.run_id, "weekly_mape")
        assert [m.step for m in weekly] == [0, 1, 2]
        # Each week's value is timestamped with the week's Monday (charts against dates).
        mondays = [dt.datetime.fromtimestamp(m.timestamp / 1000, dt.UTC).date() for m in weekly]
        assert mondays[-1] <= NIGHT_1 and [d.weekday() for d in mondays] == [0, 0, 0]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"predictions.csv", "forecast_vs_actual.png"} <= artifacts
        # The logged model (MLflow's Models tab) carries the run's params and its scores.
        (output,) = run.outputs.model_outputs
        logged_model = client.get_logged_model(output.model_id)
        assert logged_model.params["data_fingerprint"] == fingerprint
        model_metrics = {m.key: m.value for m in logged_model.metrics or []}
        assert model_metrics["mape"] == pytest.approx(run.data.metrics["mape"])
        assert model_metrics["rmse"] == pytest.approx(run.data.metrics["rmse"])
        assert model_metrics["weekly_mape"] == pytest.approx(weekly[0].value)  # step 0, as MLflow
    champion = client.get_model_version_by_alias(model_name(ticker), "champion")
    assert int(champion.version) == first["champion_version"]
    assert champion.tags["decision"] == "promoted"
    assert champion.tags["candidate"] == first["promoted"]
    assert float(champion.tags["mape"]) == pytest.approx(scored[first["promoted"]]["mape"])
    assert not [k for k in champion.tags if k.startswith("meta.")]  # one JSON artifact instead
    assert champion.tags["metadata"] == METADATA_FILE
    assert champion.tags["champion_mape"] == "none"  # version 1: there was no champion
    assert (champion.description or "").startswith(f"promoted as of {NIGHT_1}: MAPE ")
    assert champion.tags["p_vs_naive"] != ""  # the gate's paired test, on the version
    _the_champion_serves_the_nightly_forecast(ticker, on_postgres, forecast)
    versions = client.search_model_versions(f"name = '{model_name(ticker)}'")
    assert sorted(v.tags["decision"] for v in versions) == ["promoted", "rejected"]
    (report,) = _artifact_markdown(first["flow_run_id"])
    assert f"# Nightly {ticker} as of {NIGHT_1}" in report
    assert f"| {first['promoted']} | candidate |" in report

    second = nightly(as_of=NIGHT_2, **params).to_dict()

    assert second["trained"] and "week of 2020-09-07 completed" in second["train_reason"]
    roles = {c["name"]: c["role"] for c in second["candidates"]}
    assert roles == {
        "retrain": "candidate",
        "fresh": "candidate",
        "champion": "champion",
        "naive": "baseline",
    }
    assert second["held_out_weeks"] == ["2020-08-24", "2020-08-31", "2020-09-07"]
    assert second["realised"]["days"] == 7 and second["realised"]["weeks_scored_tonight"] == 1
    assert second["realised"]["interval_days"] == 7
    assert 0.0 <= second["realised"]["coverage_80"] <= second["realised"]["coverage_95"] <= 1.0
    assert "Diebold-Mariano p = " in second["decision"]["reason"]
    assert _count(on_postgres, Promotion, ticker=ticker) == 2
    assert _count(on_postgres, Forecast, ticker=ticker) == 14
    with session_scope(engine) as session:
        scores = session.scalars(select(ForecastScore)).all()
        assert [(s.as_of, s.n_days) for s in scores] == [(NIGHT_1, 7)]
        audit = session.scalars(select(Promotion).order_by(Promotion.id)).all()
        assert [a.as_of for a in audit] == [NIGHT_1, NIGHT_2]
        assert audit[0].action == "promote" and audit[0].previous_version is None
        assert audit[1].p_value == pytest.approx(second["decision"]["p_value"])
        assert set(audit[1].numbers["candidates"]["fresh"]) >= {"p_vs_naive", "p_vs_champion"}
        assert audit[1].numbers["naive"]["mape"] == pytest.approx(
            next(c["mape"] for c in second["candidates"] if c["name"] == "naive")
        )
    versions_after_two = len(client.search_model_versions(f"name = '{model_name(ticker)}'"))
    assert versions_after_two == 4

    again = nightly(as_of=NIGHT_2, **params).to_dict()

    assert not again["trained"] and "no week has completed" in again["train_reason"]
    assert again["decision"] is None and again["forecast"] is None
    assert again["champion_version"] == second["champion_version"]
    assert _count(on_postgres, Promotion, ticker=ticker) == 2
    assert _count(on_postgres, Forecast, ticker=ticker) == 14
    assert _count(on_postgres, ForecastScore, ticker=ticker) == 1
    assert len(client.search_model_versions(f"name = '{model_name(ticker)}'")) == 4
    with session_scope(engine) as session:
        run = get_run(session, ticker=ticker, as_of=NIGHT_2)
        assert run is not None and (run.status, run.attempts, run.trained) == ("done", 2, True)
        stored = {
            f.target_date: f.predicted_close
            for f in forecasts_for(session, ticker=ticker, as_of=NIGHT_2)
        }
        # As if the first attempt had failed after the gate but before the forecast was stored.
        session.execute(delete(Forecast).where(Forecast.as_of == NIGHT_2))

    repaired = nightly(as_of=NIGHT_2, **params).to_dict()

    # No training, but the champion (loaded in the child) forecasts the same closes again.
    assert not repaired["trained"]
    assert repaired["forecast"]["model_version"] == second["champion_version"]
    assert {
        dt.date.fromisoformat(d["date"]): d["close"] for d in repaired["forecast"]["closes"]
    } == pytest.approx(stored)
    # ... with the bands the champion was logged with (a servable pyfunc version).
    assert all(d["lower_80"] is not None for d in repaired["forecast"]["closes"])
    assert _count(on_postgres, Forecast, ticker=ticker) == 14
    assert _count(on_postgres, Promotion, ticker=ticker) == 2
    engine.dispose()


def _the_champion_serves_the_nightly_forecast(
    ticker: str, database_url: str, forecast: dict
) -> None:
    """`models:/…@champion` is the servable pyfunc: the closes up to the night in, the same
    closes and bands as the night stored out (issue 10)."""
    import mlflow
    import pandas as pd

    engine = make_engine(database_url)
    with session_scope(engine) as session:
        closes = read_closes(session, ticker=ticker, as_of=NIGHT_1)
    engine.dispose()
    mlflow.set_tracking_uri(get_settings().resolved_mlflow_uri)
    served = mlflow.pyfunc.load_model(f"models:/{model_name(ticker)}@champion")
    answer = served.predict(pd.DataFrame(closes, columns=["date", "close"]))
    assert [d.date().isoformat() for d in answer["date"]] == [d["date"] for d in forecast["closes"]]
    for column in ("close", "lower_80", "upper_80", "lower_95", "upper_95"):
        assert answer[column].tolist() == pytest.approx(
            [d[column] for d in forecast["closes"]], rel=1e-5
        )


def test_when_naive_wins_nothing_is_promoted_and_naive_forecasts(tmp_path: Path) -> None:
    # On SQLite (the embedded default). Flat prices over the held-out weeks: naive is exact.
    csv = write_csv(tmp_path / "flat.csv", trend_prices(flat_from=dt.date(2020, 8, 16)))
    result = nightly(ticker="FLAT", as_of=NIGHT_1, source=f"csv:{csv}", epochs=3, **SMALL).to_dict()

    assert result["trained"]
    scored = {c["name"]: c for c in result["candidates"]}
    assert scored["naive"]["mape"] == pytest.approx(0.0, abs=1e-9)
    assert min(scored["retrain"]["mape"], scored["fresh"]["mape"]) > 0.0
    assert result["promoted"] is None and result["champion_version"] is None
    assert result["decision"]["action"] == "keep"
    assert "does not beat naive (0.000 %)" in result["decision"]["reason"]
    assert Tracker(get_settings().resolved_mlflow_uri).champion("FLAT") is None
    url = get_settings().resolved_database_url
    engine = make_engine(url)
    with session_scope(engine) as session:
        audit = session.scalars(select(Promotion)).all()
        assert [(a.action, a.model_version, a.candidate) for a in audit] == [("keep", None, None)]
        assert set(audit[0].numbers["candidates"]) == {"retrain", "fresh"}
        forecasts = session.scalars(select(Forecast)).all()
        assert len(forecasts) == 7
        assert {(f.model_name, f.model_version, f.is_baseline) for f in forecasts} == {
            ("naive", None, True)
        }
    engine.dispose()
    versions = _mlflow().search_model_versions(f"name = '{model_name('FLAT')}'")
    assert sorted(v.tags["decision"] for v in versions) == ["rejected", "rejected"]


@pytest.mark.postgres
def test_mlflow_failing_at_the_alias_move_leaves_the_champion_and_a_rerun_completes(
    on_postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticker = "FAIL"
    csv = write_csv(tmp_path / "trend.csv", trend_prices())
    params = {**SMALL, "epochs": LEARNING_EPOCHS, "source": f"csv:{csv}", "ticker": ticker}
    dead = f"http://127.0.0.1:{_free_port()}"
    set_champion = Tracker.set_champion

    def move_alias_on_a_dead_server(self: Tracker, name: str, version: int) -> None:
        # A real fault: the tracking server goes away between scoring and promotion.
        self.tracking_uri, self._client = dead, None
        set_champion(self, name, version)

    monkeypatch.setattr(Tracker, "set_champion", move_alias_on_a_dead_server)
    with pytest.raises(ServiceUnavailable, match="is not reachable"):
        nightly(as_of=NIGHT_1, **params)
    monkeypatch.setattr(Tracker, "set_champion", set_champion)

    assert Tracker(get_settings().resolved_mlflow_uri).champion(ticker) is None
    # The versions registered before the fault claim nothing; MLflow was gone, so their tag
    # could not become "failed" yet: the rerun closes them (issue 12: no orphaned state).
    orphans = _mlflow().search_model_versions(f"name = '{model_name(ticker)}'")
    assert sorted(v.tags["decision"] for v in orphans) == ["pending", "pending"]
    assert _count(on_postgres, Promotion, ticker=ticker) == 0
    assert _count(on_postgres, Forecast, ticker=ticker) == 0
    engine = make_engine(on_postgres)
    with session_scope(engine) as session:
        run = get_run(session, ticker=ticker, as_of=NIGHT_1)
        assert run is not None and (run.status, run.trained) == ("failed", False)
        assert "is not reachable" in (run.error or "")

    rerun = nightly(as_of=NIGHT_1, **params).to_dict()

    assert rerun["trained"] and rerun["promoted"] is not None
    champion = Tracker(get_settings().resolved_mlflow_uri).champion(ticker)
    assert champion is not None and champion.version == rerun["champion_version"]
    assert _count(on_postgres, Promotion, ticker=ticker) == 1
    assert _count(on_postgres, Forecast, ticker=ticker) == 7
    decisions = {
        int(v.version): v.tags["decision"]
        for v in _mlflow().search_model_versions(f"name = '{model_name(ticker)}'")
    }
    assert sorted(decisions.values()) == ["failed", "failed", "promoted", "rejected"]
    assert decisions[champion.version] == "promoted"
    with session_scope(engine) as session:
        run = get_run(session, ticker=ticker, as_of=NIGHT_1)
        assert run is not None and (run.status, run.trained, run.attempts) == ("done", True, 2)
    engine.dispose()


def test_an_unreachable_mlflow_fails_the_night_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    get_settings.cache_clear()
    csv = write_csv(tmp_path / "trend.csv", trend_prices())
    with pytest.raises(ServiceUnavailable) as failure:
        nightly(ticker="DOWN", as_of=NIGHT_1, source=f"csv:{csv}", epochs=1, **SMALL)
    message = str(failure.value)
    assert f"MLflow tracking server at {dead} is not reachable" in message
    assert "MLFLOW_TRACKING_URI" in message
    url = get_settings().resolved_database_url
    assert _count(url, NightlyRun, ticker="DOWN", status="failed") == 1
    assert _count(url, Promotion) == 0


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from storage.db import make_engine
    from storage.locks import ticker_lock

    with ticker_lock(make_engine(sys.argv[1]), name="nightly:LOCKED", timeout_seconds=5,
                     lock_dir=Path(sys.argv[2])):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


@pytest.mark.postgres
def test_a_second_run_for_the_same_ticker_waits_then_gives_up(
    on_postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRICECAST_LOCK_TIMEOUT_SECONDS", "1")
    get_settings.cache_clear()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, on_postgres, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockTimeout, match="nightly:LOCKED.*within 1 s"):
            nightly(ticker="LOCKED", as_of=NIGHT_1, source=None, **SMALL)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    # Nothing ran: the night was never begun.
    assert _count(on_postgres, NightlyRun, ticker="LOCKED") == 0
