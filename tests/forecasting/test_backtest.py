"""The backtest, with exact windows on a tiny fake model, and with real candidates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import pandas as pd
import pytest

from forecasting.backtest import backtest, held_out_span
from forecasting.base import Forecaster, NotFittedError
from forecasting.baselines import Naive
from forecasting.weeks import group_iso_weeks
from pricecast.errors import DataError
from tests.forecasting.conftest import MONDAY, arange_daily, arange_weeks

WEEK = pd.Timedelta(weeks=1)
FIRST = pd.Timestamp(MONDAY)


class LastWeekEcho(Forecaster):
    """Predicts the previous week's closes + 7 (exact on arange data); records every call."""

    name = "echo"

    def __init__(self) -> None:
        self.fit_calls: list[tuple[pd.Timestamp, pd.Timestamp]] = []
        self.predict_calls: list[list[pd.Timestamp]] = []

    @property
    def is_fitted(self) -> bool:
        return bool(self.fit_calls)

    def fit(self, weeks: pd.DataFrame, *, train_until: pd.Timestamp) -> Self:
        self.fit_calls.append((train_until, weeks.index.max()))
        return self

    def predict(self, weeks: pd.DataFrame, target_weeks: Sequence[pd.Timestamp]) -> np.ndarray:
        if not self.fit_calls:
            raise NotFittedError("echo")
        self.predict_calls.append(list(target_weeks))
        rows = [weeks.loc[t - WEEK].to_numpy()[-7:].astype(float) + 7.0 for t in target_weeks]
        return np.array(rows)

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.name}


def test_held_out_span_is_the_last_h_complete_weeks_with_a_full_window():
    weeks = arange_weeks(10)
    span = held_out_span(weeks, as_of=FIRST + 10 * WEEK, holdout_weeks=3, window_weeks=2)
    assert list(span) == [FIRST + 7 * WEEK, FIRST + 8 * WEEK, FIRST + 9 * WEEK]


def test_held_out_span_ignores_the_week_in_progress_and_later_rows():
    weeks = arange_weeks(12)
    as_of = FIRST + 9 * WEEK + pd.Timedelta(days=3)  # a Thursday: week 9 is not over
    span = held_out_span(weeks, as_of=as_of, holdout_weeks=2, window_weeks=2)
    assert list(span) == [FIRST + 7 * WEEK, FIRST + 8 * WEEK]


def test_backtest_trains_before_the_span_and_predicts_it_in_one_batch():
    weeks = arange_weeks(10)
    echo = LastWeekEcho()
    result = backtest(
        weeks, as_of=FIRST + 10 * WEEK, candidates=[echo, Naive()], holdout_weeks=3, window_weeks=2
    )
    held_out = [FIRST + 7 * WEEK, FIRST + 8 * WEEK, FIRST + 9 * WEEK]
    assert list(result.held_out_weeks) == held_out
    assert result.train_until == held_out[0]
    # fit saw nothing from the held-out span; predict was called once with every held-out week.
    assert echo.fit_calls == [(held_out[0], FIRST + 6 * WEEK)]
    assert echo.predict_calls == [held_out]
    np.testing.assert_array_equal(result.actuals[0], np.arange(50.0, 57.0))
    echo_result = result.candidate("echo")
    assert echo_result.rmse == 0.0 and echo_result.mape == 0.0
    np.testing.assert_array_equal(echo_result.weekly_mape, [0.0, 0.0, 0.0])
    naive = result.candidate("naive")
    np.testing.assert_array_equal(naive.predictions[:, 0], [49.0, 56.0, 63.0])
    errors = np.tile(np.arange(1.0, 8.0), 3)
    assert naive.rmse == pytest.approx(np.sqrt(np.mean(errors**2)))
    assert naive.mape == pytest.approx(100 * np.mean(errors / result.actuals.ravel()))
    assert result.to_dict() == {
        "as_of": "2024-03-11",
        "held_out_weeks": ["2024-02-19", "2024-02-26", "2024-03-04"],
        "candidates": [
            {"name": "echo", "rmse": 0.0, "mape": 0.0, "train_seconds": echo_result.train_seconds},
            {
                "name": "naive",
                "rmse": naive.rmse,
                "mape": naive.mape,
                "train_seconds": naive.train_seconds,
            },
        ],
    }


def test_a_prefitted_candidate_is_scored_without_refitting():
    weeks = arange_weeks(10)
    champion = LastWeekEcho().fit(weeks, train_until=FIRST + 3 * WEEK)
    result = backtest(
        weeks, as_of=FIRST + 10 * WEEK, candidates=[champion], holdout_weeks=3, window_weeks=2
    )
    assert len(champion.fit_calls) == 1
    assert result.candidates[0].refitted is False and result.candidates[0].train_seconds == 0.0


def test_later_rows_change_nothing():
    as_of = FIRST + 10 * WEEK - pd.Timedelta(days=1)
    short = group_iso_weeks(arange_daily(10))
    long = group_iso_weeks(arange_daily(14))
    a = backtest(short, as_of=as_of, candidates=[Naive()], holdout_weeks=3, window_weeks=2)
    b = backtest(long, as_of=as_of, candidates=[Naive()], holdout_weeks=3, window_weeks=2)
    assert a.to_dict() | {"candidates": None} == b.to_dict() | {"candidates": None}
    np.testing.assert_array_equal(a.candidates[0].predictions, b.candidates[0].predictions)


def test_too_little_history_is_a_data_error():
    with pytest.raises(DataError, match="held-out"):
        backtest(
            arange_weeks(5),
            as_of=FIRST + 5 * WEEK,
            candidates=[Naive()],
            holdout_weeks=3,
            window_weeks=2,
        )


def test_duplicate_candidate_names_are_rejected():
    with pytest.raises(DataError, match="unique"):
        backtest(
            arange_weeks(10),
            as_of=FIRST + 10 * WEEK,
            candidates=[Naive(), Naive()],
            holdout_weeks=3,
            window_weeks=2,
        )
