"""The nightly flow's pure decisions: when to train, when to forecast, what the report says."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from flows.night.policy import decide_training, forecast_week_due, may_train
from flows.night.report import markdown, scoreboard_lines, summary_lines
from flows.night.result import (
    ForecastDay,
    MlflowRefs,
    ModelScore,
    NightDecision,
    NightForecast,
    NightResult,
    RealisedAccuracy,
)
from flows.night.tasks import realised_accuracy
from forecasting.calendar import last_complete_week, training_windows_available, yesterday_utc
from forecasting.weeks import group_iso_weeks

D = dt.date


def _weeks(start: str, end: str, *, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    days = pd.date_range(start, end)
    days = days[~days.isin(pd.to_datetime(list(drop)))]
    return group_iso_weeks(pd.DataFrame({"date": days, "close": np.arange(1.0, len(days) + 1)}))


def _plan(**overrides):  # type: ignore[no-untyped-def]
    values = dict(
        force=False,
        latest_complete=D(2024, 1, 8),
        has_champion=True,
        last_trained_week=D(2024, 1, 1),
        last_trained_had_champion=True,
        available_windows=40,
        needed_windows=31,
    )
    values.update(overrides)
    return decide_training(**values)


def test_training_happens_when_a_week_has_completed_since_the_last_training() -> None:
    plan = _plan()
    assert plan.train and "week of 2024-01-08 completed" in plan.reason
    assert _plan(last_trained_week=None).train


def test_a_rerun_or_a_mid_week_night_does_not_train() -> None:
    rerun = _plan(last_trained_week=D(2024, 1, 8))
    assert not rerun.train and "no week has completed" in rerun.reason
    # Naive won last time (no champion then, none now): same weeks, same outcome, no retraining.
    assert not _plan(
        last_trained_week=D(2024, 1, 8), has_champion=False, last_trained_had_champion=False
    ).train


def test_a_lost_champion_or_force_trains_but_never_without_history() -> None:
    assert _plan(last_trained_week=D(2024, 1, 8), has_champion=False).train
    assert _plan(last_trained_week=D(2024, 1, 8), force=True).reason == "forced (--force)"
    short = _plan(force=True, available_windows=30)
    assert not short.train and "not enough history: 30" in short.reason


def test_last_complete_week_and_the_forecast_week_as_of() -> None:
    weeks = _weeks("2024-01-01", "2024-01-24", drop=("2024-01-10",))
    # As of Sunday the 14th the week of the 8th has ended but misses a day.
    assert last_complete_week(weeks, D(2024, 1, 14)) == D(2024, 1, 1)
    assert last_complete_week(weeks, D(2024, 1, 6)) is None
    # Rows after as_of are ignored: the week of the 15th is complete only by the 21st.
    assert last_complete_week(weeks, D(2024, 1, 20)) == D(2024, 1, 1)
    assert last_complete_week(weeks, D(2024, 1, 21)) == D(2024, 1, 15)
    assert forecast_week_due(D(2024, 1, 15), D(2024, 1, 21)) == D(2024, 1, 22)
    assert forecast_week_due(D(2024, 1, 15), D(2024, 1, 22)) is None
    assert forecast_week_due(D(2024, 1, 1), D(2024, 1, 14)) is None  # the week of the 8th broke
    assert forecast_week_due(None, D(2024, 1, 14)) is None


def test_training_windows_count_only_weeks_ended_by_as_of() -> None:
    weeks = _weeks("2024-01-01", "2024-03-03")  # nine complete weeks
    assert training_windows_available(weeks, D(2024, 3, 3), window_weeks=4) == 5
    assert training_windows_available(weeks, D(2024, 3, 2), window_weeks=4) == 4


def test_realised_accuracy_over_forecast_days() -> None:
    scores = realised_accuracy([(100.0, 110.0), (200.0, 190.0)], weeks_scored=1)
    assert (scores.days, scores.weeks_scored_tonight) == (2, 1)
    assert scores.rmse == pytest.approx(10.0)
    assert scores.mape == pytest.approx(7.5)
    assert realised_accuracy([], 0) == RealisedAccuracy(days=0, rmse=None, mape=None)


def test_realised_coverage_on_a_hand_computed_case() -> None:
    # Four days with bands: the 80 % band holds days 1 and 2 (day 3 below, day 4 above); the
    # 95 % band holds days 1-3 (day 4 is above it too). A fifth day has no band at all.
    wide, narrow = (90.0, 110.0), (95.0, 105.0)
    days = [
        (100.0, 100.0, {0.80: narrow, 0.95: wide}),
        (104.0, 100.0, {0.80: narrow, 0.95: wide}),
        (91.0, 100.0, {0.80: narrow, 0.95: wide}),
        (111.0, 100.0, {0.80: narrow, 0.95: wide}),
        (100.0, 100.0, {0.80: None, 0.95: None}),
    ]
    scores = realised_accuracy(days, weeks_scored=0)
    assert scores.days == 5 and scores.interval_days == 4
    assert scores.coverage_80 == pytest.approx(2 / 4)
    assert scores.coverage_95 == pytest.approx(3 / 4)
    no_bands = realised_accuracy([(100.0, 101.0, {0.80: None, 0.95: None})], 0)
    assert (no_bands.coverage_80, no_bands.coverage_95, no_bands.interval_days) == (None, None, 0)


def test_yesterday_is_utc() -> None:
    late = dt.datetime(2024, 1, 2, 23, 30, tzinfo=dt.UTC)
    assert yesterday_utc(late) == D(2024, 1, 1)


def _night() -> NightResult:
    return NightResult(
        ticker="BTC-USD",
        as_of=D(2024, 1, 7),
        source="synthetic",
        flow_run_id="flow-1",
        trained=True,
        train_reason="no night has trained yet",
        latest_complete_week=D(2024, 1, 1),
        champion_version=3,
        mlflow=MlflowRefs("1", "xyz", "run xyz"),
        realised=RealisedAccuracy(
            days=7,
            rmse=10.0,
            mape=2.5,
            weeks_scored_tonight=1,
            coverage_80=6 / 7,
            coverage_95=1.0,
            interval_days=7,
        ),
        timings={"total_seconds": 30.0, "train_seconds": 20.0},
        candidates=(
            ModelScore("fresh", "candidate", 3.21, 812.5, 20.0, "abc", 3),
            ModelScore("naive", "baseline", 4.0, 900.0, 0.0, "def"),
        ),
        held_out_weeks=("2023-12-25", "2024-01-01"),
        decision=NightDecision("promote", "fresh", "fresh beats naive"),
        promoted_version=3,
        forecast=NightForecast(
            week_start=D(2024, 1, 8),
            model_name="pricecast-BTC-USD",
            model_version=3,
            is_baseline=False,
            rows_inserted=7,
            days=(ForecastDay(D(2024, 1, 8), 1.5, 1.4, 1.6, 1.3, 1.7),),
        ),
    )


def test_the_markdown_report_names_scores_decision_and_runs() -> None:
    report = markdown(_night())
    assert "# Nightly BTC-USD as of 2024-01-07" in report
    assert "**promote** — fresh beats naive" in report
    assert "| fresh | candidate | 3.210 | 812.50 | 20.0 | abc |" in report
    assert "version 3" in report and "MAPE 2.500 %" in report and "run xyz" in report
    assert "| 2024-01-08 | 1.50 | 1.40..1.60 | 1.30..1.70 |" in report
    assert "80 % band held 85.7 %, 95 % band 100.0 % of 7 day(s)" in report


def test_the_markdown_report_links_runs_and_versions_when_there_is_a_ui() -> None:
    ui = "http://127.0.0.1:5000"
    refs = MlflowRefs(
        "1", "xyz", f"{ui}/#/experiments/1/runs/xyz", ui=ui, runs_table=f"{ui}/#/table"
    )
    report = markdown(replace(_night(), mlflow=refs))
    assert f"| [fresh run]({ui}/#/experiments/1/runs/abc?workflowType=machine_learning) |" in report
    assert f"[pricecast-BTC-USD version 3]({ui}/#/models/pricecast-BTC-USD/versions/3)" in report
    assert f"[the night's run]({ui}/#/experiments/1/runs/xyz)" in report
    assert f"({ui}/#/table)" in report
    assert f"MLflow: {ui}/#/table" in summary_lines(replace(_night(), mlflow=refs))


def test_the_cli_and_demo_texts_come_from_the_same_result() -> None:
    night = _night()
    summary = "\n".join(summary_lines(night))
    assert "nightly BTC-USD as of 2024-01-07: trained (no night has trained yet)" in summary
    assert "decision: promote — fresh beats naive" in summary
    assert "forecast for the week of 2024-01-08 by pricecast-BTC-USD v3: 01-08 1.50" in summary
    board = "\n".join(scoreboard_lines(night))
    assert "fresh      candidate  MAPE   3.21 %  RMSE $812.50" in board
    assert "Forecast for the next week, 2024-01-08 .. 2024-01-14" in board


def test_the_json_form_keeps_the_nightly_keys() -> None:
    payload = _night().to_dict()
    assert set(payload) >= {
        "ticker", "as_of", "source", "flow_run_id", "trained", "train_reason", "candidates",
        "held_out_weeks", "decision", "promoted", "promoted_version", "champion_version",
        "forecast", "realised", "mlflow", "timings", "ingest", "latest_complete_week",
    }  # fmt: skip
    assert payload["promoted"] == "fresh" and payload["as_of"] == "2024-01-07"
    assert payload["forecast"]["closes"] == [  # type: ignore[index]
        {
            "date": "2024-01-08",
            "close": 1.5,
            "lower_80": 1.4,
            "upper_80": 1.6,
            "lower_95": 1.3,
            "upper_95": 1.7,
        }
    ]
    assert payload["realised"]["coverage_80"] == 6 / 7  # type: ignore[index]
    assert json.loads(json.dumps(payload)) == payload


def test_training_is_likely_when_a_week_completes_or_it_is_forced() -> None:
    """`may_train`: when a night (or a batch's nights) starts the training process early."""
    sunday, monday = dt.date(2021, 12, 26), dt.date(2021, 12, 27)
    assert may_train(has_strategies=True, force=False, dates=[sunday])
    assert may_train(has_strategies=True, force=False, dates=[monday, sunday])
    assert may_train(has_strategies=True, force=True, dates=[monday])
    assert not may_train(has_strategies=True, force=False, dates=[monday])
    assert not may_train(has_strategies=False, force=True, dates=[sunday])
