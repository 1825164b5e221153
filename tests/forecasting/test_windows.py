"""Sliding windows with exact values from np.arange closes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecasting.weeks import group_iso_weeks
from forecasting.windows import make_windows, trainable_target_weeks
from pricecast.errors import DataError
from tests.forecasting.conftest import MONDAY, arange_daily, arange_weeks

WEEK = pd.Timedelta(weeks=1)
FIRST = pd.Timestamp(MONDAY)


def test_trainable_targets_need_a_full_window_before_them():
    weeks = arange_weeks(6)
    targets = trainable_target_weeks(weeks, window_weeks=2)
    assert list(targets) == [FIRST + WEEK * k for k in range(2, 6)]


def test_trainable_targets_bounds_are_exclusive():
    weeks = arange_weeks(6)
    targets = trainable_target_weeks(
        weeks, window_weeks=2, after=FIRST + 2 * WEEK, before=FIRST + 5 * WEEK
    )
    assert list(targets) == [FIRST + 3 * WEEK, FIRST + 4 * WEEK]


def test_a_missing_day_removes_its_week_and_every_window_through_it():
    daily = arange_daily(8)
    daily = daily[daily["date"] != pd.Timestamp(FIRST + 3 * WEEK + pd.Timedelta(days=2))]
    weeks = group_iso_weeks(daily)
    targets = trainable_target_weeks(weeks, window_weeks=2)
    # Week 3 is incomplete: it is no target, and targets 4 and 5 would need it in their window.
    assert list(targets) == [FIRST + 2 * WEEK, FIRST + 6 * WEEK, FIRST + 7 * WEEK]
    with pytest.raises(DataError, match="2024-01-22 is missing or incomplete"):
        make_windows(weeks, [FIRST + 4 * WEEK], window_weeks=2)


@pytest.mark.parametrize("seed", range(6))
def test_trainable_targets_are_the_weeks_whose_whole_window_is_complete(seed: int) -> None:
    """Against the definition, on histories with missing days and whole missing weeks."""
    rng = np.random.default_rng(seed)
    daily = arange_daily(60)
    gone_days = rng.choice(len(daily), size=int(rng.integers(0, 8)), replace=False)
    daily = daily.drop(index=daily.index[gone_days])
    gone_weeks = {FIRST + WEEK * int(k) for k in rng.choice(60, size=3, replace=False)}
    daily = daily[
        ~(daily["date"] - pd.to_timedelta(daily["date"].dt.weekday, unit="D")).isin(gone_weeks)
    ]
    weeks = group_iso_weeks(daily)
    complete = set(weeks.index[weeks["complete"]])
    for window in (1, 3, 8):
        expected = [
            week
            for week in sorted(complete)
            if all(week - WEEK * k in complete for k in range(1, window + 1))
        ]
        assert list(trainable_target_weeks(weeks, window_weeks=window)) == expected


def test_windows_relative_to_the_last_close_before_the_target():
    weeks = arange_weeks(4)
    w = make_windows(weeks, [FIRST + 2 * WEEK, FIRST + 3 * WEEK], window_weeks=2, with_targets=True)
    assert w.inputs.shape == (2, 2, 7)
    assert w.targets is not None and w.targets.shape == (2, 7)
    np.testing.assert_array_equal(w.base_closes, [14.0, 21.0])
    np.testing.assert_array_equal(w.closes[0], np.arange(1.0, 15.0).reshape(2, 7))
    np.testing.assert_allclose(w.inputs[0], np.arange(1.0, 15.0).reshape(2, 7) / 14.0 - 1.0)
    np.testing.assert_allclose(w.targets[0], np.arange(15.0, 22.0) / 14.0 - 1.0)
    np.testing.assert_allclose(w.targets[1], np.arange(22.0, 29.0) / 21.0 - 1.0)


def test_week_first_normalisation_is_the_books_point_relative_form():
    weeks = arange_weeks(3)
    w = make_windows(
        weeks, [FIRST + 2 * WEEK], window_weeks=2, normalisation="week_first", with_targets=True
    )
    np.testing.assert_allclose(w.inputs[0, 0], np.arange(1.0, 8.0) / 1.0 - 1.0)
    np.testing.assert_allclose(w.inputs[0, 1], np.arange(8.0, 15.0) / 8.0 - 1.0)
    # The target still uses only the last known close, never the target week's own first close.
    np.testing.assert_allclose(w.targets[0], np.arange(15.0, 22.0) / 14.0 - 1.0)


def test_next_week_needs_no_target_row_but_training_does():
    weeks = arange_weeks(3)
    next_week = FIRST + 3 * WEEK
    w = make_windows(weeks, [next_week], window_weeks=2)
    assert w.targets is None and w.base_closes[0] == 21.0
    with pytest.raises(DataError, match="target week of 2024-01-22"):
        make_windows(weeks, [next_week], window_weeks=2, with_targets=True)


def test_unknown_normalisation_is_rejected():
    with pytest.raises(ValueError, match="normalisation"):
        make_windows(arange_weeks(3), [FIRST + 2 * WEEK], window_weeks=2, normalisation="zscore")
