"""Naive and drift baselines against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecasting.baselines import Drift, Naive, last_close_before
from forecasting.weeks import group_iso_weeks
from tests.forecasting.conftest import MONDAY, arange_daily, arange_weeks

WEEK = pd.Timedelta(weeks=1)
FIRST = pd.Timestamp(MONDAY)


def test_naive_repeats_the_last_close_before_each_target():
    weeks = arange_weeks(4)
    naive = Naive().fit(weeks, train_until=FIRST + 3 * WEEK)
    predicted = naive.predict(weeks, [FIRST + 2 * WEEK, FIRST + 4 * WEEK])
    np.testing.assert_array_equal(predicted, [[14.0] * 7, [28.0] * 7])


def test_naive_uses_the_last_known_close_when_the_previous_week_is_short():
    daily = arange_daily(3)
    daily = daily[daily["date"] < pd.Timestamp(FIRST + 2 * WEEK - pd.Timedelta(days=2))]
    assert last_close_before(group_iso_weeks(daily), FIRST + 2 * WEEK) == 12.0


def test_drift_extends_the_average_daily_log_move():
    # Week closes 1..7 and 8..14: c0 = 1, c = 14 over 13 days.
    weeks = arange_weeks(2)
    drift = Drift(lookback_weeks=2).fit(weeks, train_until=FIRST + 2 * WEEK)
    predicted = drift.predict(weeks, [FIRST + 2 * WEEK])
    expected = 14.0 * 14.0 ** (np.arange(1, 8) / 13.0)
    np.testing.assert_allclose(predicted[0], expected)


def test_drift_on_flat_prices_is_naive():
    daily = arange_daily(3).assign(close=5.0)
    weeks = group_iso_weeks(daily)
    predicted = (
        Drift(lookback_weeks=2).fit(weeks, train_until=FIRST).predict(weeks, [FIRST + 3 * WEEK])
    )
    np.testing.assert_allclose(predicted, [[5.0] * 7])


def test_drift_needs_a_positive_lookback():
    with pytest.raises(ValueError, match="lookback_weeks"):
        Drift(lookback_weeks=0)
