"""The week calendar of a night: which day is final, which ISO week last completed, which week is
due for a forecast. Pure date arithmetic over the weekly frame of `forecasting.weeks`."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from forecasting.weeks import COMPLETE, DAYS_PER_WEEK

SUNDAY = 6  # date.weekday() of the day that completes an ISO week
_WEEK_SPAN = pd.Timedelta(days=DAYS_PER_WEEK - 1)


def today_utc(now: dt.datetime | None = None) -> dt.date:
    """Today's date in UTC (the latest day a price may carry)."""
    return (now or dt.datetime.now(dt.UTC)).date()


def yesterday_utc(now: dt.datetime | None = None) -> dt.date:
    """The default as-of: the last day whose close is final."""
    return today_utc(now) - dt.timedelta(days=1)


def weeks_ended_by(weeks: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
    """The rows of `weeks` (indexed by Monday) whose Sunday is on or before `as_of`."""
    return weeks[(weeks.index + _WEEK_SPAN) <= pd.Timestamp(as_of)]


def last_complete_week(weeks: pd.DataFrame, as_of: dt.date) -> dt.date | None:
    """Monday of the latest complete ISO week that had ended by `as_of`."""
    ended = weeks_ended_by(weeks, as_of)
    complete = ended[ended[COMPLETE]]
    return None if complete.empty else complete.index[-1].date()


def training_windows_available(weeks: pd.DataFrame, as_of: dt.date, *, window_weeks: int) -> int:
    """Complete weeks (up to as_of) with a full window of complete weeks before them."""
    from forecasting.windows import trainable_target_weeks

    return len(trainable_target_weeks(weeks_ended_by(weeks, as_of), window_weeks=window_weeks))
