"""Nightly runs, the promotions audit and forecasts, on SQLite and real PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest

from storage.db import ensure_schema, make_engine, session_scope
from storage.runs import (
    add_forecast_score,
    add_promotion,
    alias_moves,
    begin_run,
    complete_unscored_forecasts,
    done_dates,
    fail_run,
    finish_run,
    forecasts_for,
    get_run,
    last_trained_run,
    promotion_history,
    record_actuals,
    record_training,
    scored_forecasts,
    store_forecast,
)

D = dt.date


@pytest.fixture
def engine(database_url: str):
    engine = make_engine(database_url)
    ensure_schema(engine)
    yield engine
    engine.dispose()


def _week(monday: dt.date, value: float) -> dict[dt.date, float]:
    return {monday + dt.timedelta(days=i): value + i for i in range(7)}


def test_a_night_is_begun_trained_and_finished_once(engine) -> None:
    with session_scope(engine) as s:
        begin_run(
            s, ticker="X", as_of=D(2024, 1, 7), last_complete_week=D(2024, 1, 1), flow_run_id="f1"
        )
    with session_scope(engine) as s:
        assert last_trained_run(s, ticker="X", as_of=D(2024, 1, 7)) is None
        record_training(
            s,
            ticker="X",
            as_of=D(2024, 1, 7),
            training_cutoff=D(2023, 8, 28),
            decision="promote",
            promoted_version=1,
            champion_version=1,
            mlflow_run_id="m1",
        )
    with session_scope(engine) as s:
        fail_run(s, ticker="X", as_of=D(2024, 1, 7), error="boom")
    with session_scope(engine) as s:
        run = get_run(s, ticker="X", as_of=D(2024, 1, 7))
        assert run is not None and (run.status, run.trained, run.error) == ("failed", True, "boom")
        # A rerun reopens the same row and keeps what the first attempt committed.
        again = begin_run(
            s, ticker="X", as_of=D(2024, 1, 7), last_complete_week=D(2024, 1, 1), flow_run_id="f2"
        )
        assert (again.id, again.attempts, again.trained, again.status) == (
            run.id,
            2,
            True,
            "running",
        )
    with session_scope(engine) as s:
        finish_run(
            s, ticker="X", as_of=D(2024, 1, 7), champion_version=1, timings={"total_seconds": 1.5}
        )
    with session_scope(engine) as s:
        run = get_run(s, ticker="X", as_of=D(2024, 1, 7))
        assert run is not None
        assert (run.status, run.timings, run.flow_run_id, run.error) == (
            "done",
            {"total_seconds": 1.5},
            "f2",
            None,
        )
        assert done_dates(s, ticker="X") == {D(2024, 1, 7)}
        assert done_dates(s, ticker="X", start=D(2024, 1, 8)) == set()
        assert done_dates(s, ticker="Y") == set()
        # As of: a night before the trained one does not see it.
        assert last_trained_run(s, ticker="X", as_of=D(2024, 1, 6)) is None
        trained = last_trained_run(s, ticker="X", as_of=D(2024, 1, 9))
        assert trained is not None and trained.last_complete_week == D(2024, 1, 1)


def test_promotions_are_an_ordered_audit_trail(engine) -> None:
    with session_scope(engine) as s:
        add_promotion(
            s,
            ticker="X",
            as_of=D(2024, 1, 7),
            action="promote",
            model_name="m",
            model_version=1,
            previous_version=None,
            reason="first",
            actor="nightly",
            candidate="fresh",
            numbers={"fresh": {"mape": 3.0}},
            run_ids={"parent": "r"},
        )
        add_promotion(
            s,
            ticker="X",
            as_of=D(2024, 1, 14),
            action="keep",
            model_name="m",
            model_version=1,
            previous_version=1,
            reason="not better",
            actor="nightly",
        )
        add_promotion(
            s,
            ticker="X",
            as_of=None,
            action="rollback",
            model_name="m",
            model_version=None,
            previous_version=1,
            reason="bad",
            actor="alice",
        )
        with pytest.raises(ValueError, match="unknown promotion action"):
            add_promotion(
                s,
                ticker="X",
                as_of=None,
                action="demote",
                model_name="m",
                model_version=None,
                previous_version=None,
                reason="",
                actor="a",
            )
    with session_scope(engine) as s:
        history = promotion_history(s, ticker="X")
        assert [p.action for p in history] == ["rollback", "keep", "promote"]
        assert history[-1].numbers == {"fresh": {"mape": 3.0}}
        assert [p.action for p in alias_moves(s, ticker="X")] == ["promote", "rollback"]


def test_forecasts_are_stored_once_and_scored_as_of(engine) -> None:
    week = _week(D(2024, 1, 8), 100.0)
    with session_scope(engine) as s:
        n = store_forecast(
            s,
            ticker="X",
            as_of=D(2024, 1, 7),
            closes=week,
            model_name="m",
            model_version=2,
            is_baseline=False,
        )
        assert n == 7
    with session_scope(engine) as s:
        # A rerun with other values inserts nothing and changes nothing.
        again = {d: 1.0 for d in week}
        assert (
            store_forecast(
                s,
                ticker="X",
                as_of=D(2024, 1, 7),
                closes=again,
                model_name="m",
                model_version=3,
                is_baseline=False,
            )
            == 0
        )
    with session_scope(engine) as s:
        rows = forecasts_for(s, ticker="X", as_of=D(2024, 1, 7))
        assert [r.predicted_close for r in rows] == [100.0 + i for i in range(7)]
        assert {r.model_version for r in rows} == {2}
        assert forecasts_for(s, ticker="X", as_of=D(2024, 1, 6)) == []
    actual = {d: v + 10.0 for d, v in week.items()}
    with session_scope(engine) as s:
        # As of Wednesday only Mon..Wed are known, even though later actuals are passed in.
        assert record_actuals(s, ticker="X", as_of=D(2024, 1, 10), actuals=actual) == 3
        assert complete_unscored_forecasts(s, ticker="X") == {}
        assert len(scored_forecasts(s, ticker="X", as_of=D(2024, 1, 10))) == 3
    with session_scope(engine) as s:
        assert record_actuals(s, ticker="X", as_of=D(2024, 1, 14), actuals=actual) == 4
        pending = complete_unscored_forecasts(s, ticker="X")
        assert list(pending) == [D(2024, 1, 7)]
        assert [f.error for f in pending[D(2024, 1, 7)]] == [-10.0] * 7
        score = add_forecast_score(
            s,
            ticker="X",
            as_of=D(2024, 1, 7),
            forecasts=pending[D(2024, 1, 7)],
            rmse=10.0,
            mape=9.0,
        )
        assert (score.first_target_date, score.last_target_date) == (D(2024, 1, 8), D(2024, 1, 14))
        assert (score.n_days, score.rmse, score.model_version) == (7, 10.0, 2)
    with session_scope(engine) as s:
        assert complete_unscored_forecasts(s, ticker="X") == {}


def test_forecasts_keep_their_intervals_and_the_latest_is_found(engine) -> None:
    from storage.runs import forecasts_since, latest_forecast

    monday = D(2024, 1, 8)
    closes = _week(monday, 100.0)
    bands = {
        day: {"lower_80": c - 5, "upper_80": c + 5, "lower_95": c - 9, "upper_95": c + 9}
        for day, c in closes.items()
    }
    with session_scope(engine) as s:
        assert latest_forecast(s, ticker="X") == []
        store_forecast(
            s,
            ticker="X",
            as_of=D(2024, 1, 7),
            closes=closes,
            model_name="m",
            model_version=2,
            is_baseline=False,
            bands=bands,
        )
        store_forecast(
            s,
            ticker="X",
            as_of=D(2024, 1, 14),
            closes=_week(D(2024, 1, 15), 200.0),
            model_name="naive",
            model_version=None,
            is_baseline=True,
        )
        promotion = add_promotion(
            s,
            ticker="X",
            as_of=D(2024, 1, 7),
            action="keep",
            model_name="m",
            model_version=None,
            previous_version=None,
            reason="noise",
            actor="t",
            p_value=0.42,
        )
        assert promotion.p_value == 0.42
    with session_scope(engine) as s:
        first = forecasts_for(s, ticker="X", as_of=D(2024, 1, 7))
        assert first[0].band(0.80) == (95.0, 105.0) and first[0].band(0.95) == (91.0, 109.0)
        assert first[6].lower_80 == 101.0 and first[6].upper_95 == 115.0
        latest = latest_forecast(s, ticker="X")
        assert {r.as_of for r in latest} == {D(2024, 1, 14)} and len(latest) == 7
        assert latest[0].band(0.80) is None  # naive was stored without bands
        as_of = latest_forecast(s, ticker="X", as_of=D(2024, 1, 13))
        assert {r.as_of for r in as_of} == {D(2024, 1, 7)}
        assert len(forecasts_since(s, ticker="X")) == 14
        assert len(forecasts_since(s, ticker="X", since=D(2024, 1, 15))) == 7


def test_the_schema_takes_an_external_move_and_refuses_an_unknown_action(engine) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    with session_scope(engine) as s:
        add_promotion(
            s,
            ticker="EXT",
            as_of=D(2024, 1, 7),
            action="external-move",
            model_name="m",
            model_version=3,
            previous_version=1,
            reason="moved in the MLflow UI",
            actor="mlflow registry (noticed by nightly)",
        )
    with session_scope(engine) as s:
        assert [p.action for p in alias_moves(s, ticker="EXT")] == ["external-move"]
    # The CHECK constraint (migration 0006) still refuses what is not an action.
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        s.execute(
            text(
                "INSERT INTO promotions (ticker, action, model_name, reason, actor, created_at) "
                "VALUES ('EXT', 'demote', 'm', '', 'a', CURRENT_TIMESTAMP)"
            )
        )
