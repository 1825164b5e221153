"""ISO-week grouping, complete vs incomplete weeks, missing days, point-relative normalisation."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from forecasting.weeks import (
    COMPLETE,
    DAY_COLUMNS,
    ISO_WEEK,
    ISO_YEAR,
    N_DAYS,
    complete_weeks,
    from_point_relative,
    group_iso_weeks,
    iso_week_start,
    missing_days,
    point_relative,
    validate_daily,
)
from pricecast.errors import DataError


def _daily(start: str, closes: list[float | None]) -> pd.DataFrame:
    dates = pd.date_range(start, periods=len(closes), freq="D")
    frame = pd.DataFrame({"date": dates, "close": closes})
    return frame.dropna().reset_index(drop=True)


def test_weeks_run_monday_to_sunday_across_the_iso_year_boundary() -> None:
    # 2020-12-28 is the Monday of ISO week 2020-W53; 2021-01-04 starts 2021-W01.
    daily = _daily("2020-12-28", [float(i + 1) for i in range(14)])
    weeks = group_iso_weeks(daily)
    assert list(weeks.index) == [pd.Timestamp("2020-12-28"), pd.Timestamp("2021-01-04")]
    assert list(zip(weeks[ISO_YEAR], weeks[ISO_WEEK], strict=True)) == [(2020, 53), (2021, 1)]
    assert weeks[COMPLETE].tolist() == [True, True]
    assert weeks.loc["2021-01-04", list(DAY_COLUMNS)].tolist() == [8.0, 9, 10, 11, 12, 13, 14]


def test_a_missing_day_or_the_week_in_progress_is_incomplete() -> None:
    closes: list[float | None] = [float(i + 1) for i in range(17)]
    closes[9] = None  # Wednesday of the second week
    daily = _daily("2024-01-01", closes)  # a Monday; the third week has Mon..Wed only
    weeks = group_iso_weeks(daily)
    assert weeks[N_DAYS].tolist() == [7, 6, 3]
    assert weeks[COMPLETE].tolist() == [True, False, False]
    assert np.isnan(weeks.loc["2024-01-08", "close_wed"])
    assert list(complete_weeks(weeks).index) == [pd.Timestamp("2024-01-01")]
    assert missing_days(daily) == [dt.date(2024, 1, 10)]


def test_as_of_sees_only_rows_up_to_that_day() -> None:
    daily = _daily("2024-01-01", [float(i + 1) for i in range(21)])
    weeks = group_iso_weeks(daily, as_of=dt.date(2024, 1, 10))
    assert weeks[N_DAYS].tolist() == [7, 3]
    assert missing_days(daily, as_of=dt.date(2023, 12, 31)) == []
    empty = group_iso_weeks(daily, as_of=dt.date(2023, 12, 31))
    assert len(empty) == 0 and list(empty.columns)[-7:] == list(DAY_COLUMNS)


def test_input_order_does_not_matter() -> None:
    daily = _daily("2024-01-01", [float(i + 1) for i in range(14)])
    shuffled = daily.sample(frac=1.0, random_state=0)
    pd.testing.assert_frame_equal(group_iso_weeks(shuffled), group_iso_weeks(daily))


@pytest.mark.parametrize(
    "frame, message",
    [
        (pd.DataFrame({"date": ["2024-01-01"]}), "lack column"),
        (pd.DataFrame({"date": ["2024-01-01"], "close": [0.0]}), "must be > 0"),
        (pd.DataFrame({"date": ["2024-01-01"], "close": [None]}), "missing on 2024-01-01"),
        (pd.DataFrame({"date": ["2024-01-01"] * 2, "close": [1.0, 2.0]}), "appears twice"),
    ],
)
def test_validate_daily_refuses_bad_frames(frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(DataError, match=message):
        validate_daily(frame)


def test_iso_week_start() -> None:
    assert iso_week_start(dt.date(2024, 1, 7)) == pd.Timestamp("2024-01-01")  # Sunday
    assert iso_week_start(dt.date(2024, 1, 8)) == pd.Timestamp("2024-01-08")  # Monday


def test_point_relative_round_trip() -> None:
    week = np.array([[100.0, 110.0, 90.0], [200.0, 100.0, 300.0]])
    base = week[:, :1]
    relative = point_relative(week, base)
    np.testing.assert_allclose(relative, [[0.0, 0.1, -0.1], [0.0, -0.5, 0.5]])
    np.testing.assert_allclose(from_point_relative(relative, base), week)
    with pytest.raises(DataError, match="positive base"):
        point_relative(week, 0.0)
