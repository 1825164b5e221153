"""Daily closes -> ISO weeks (Monday..Sunday), and the book's point-relative normalisation.

This module is the weekly-frame contract: the column names below are the only ones the rest of
pricecast uses, and `validate_daily` checks the contract where daily data enters `forecasting/`.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from pricecast.errors import DataError

# Daily frame: one row per date.
DATE = "date"
CLOSE = "close"

# Weekly frame: one row per ISO week, indexed by WEEK_START (the Monday, a pd.Timestamp).
WEEK_START = "week_start"
ISO_YEAR = "iso_year"
ISO_WEEK = "iso_week"
N_DAYS = "n_days"
COMPLETE = "complete"
DAY_COLUMNS: tuple[str, ...] = (
    "close_mon",
    "close_tue",
    "close_wed",
    "close_thu",
    "close_fri",
    "close_sat",
    "close_sun",
)
DAYS_PER_WEEK = 7


def validate_daily(daily: pd.DataFrame) -> pd.DataFrame:
    """Check and normalise a daily frame: `date` (unique) and `close` (> 0), sorted by date.

    Returns a new frame with `date` as datetime64 (midnight) and `close` as float64.
    Raises DataError naming the first problem.
    """
    missing = [c for c in (DATE, CLOSE) if c not in daily.columns]
    if missing:
        raise DataError(f"daily prices lack column(s) {missing}; expected {DATE!r} and {CLOSE!r}")
    out = daily[[DATE, CLOSE]].copy()
    out[DATE] = pd.to_datetime(out[DATE]).dt.normalize()
    out[CLOSE] = out[CLOSE].astype("float64")
    if out[CLOSE].isna().any():
        bad = out.loc[out[CLOSE].isna(), DATE].iloc[0].date()
        raise DataError(f"daily prices: close is missing on {bad}")
    if (out[CLOSE] <= 0).any():
        bad = out.loc[out[CLOSE] <= 0, DATE].iloc[0].date()
        raise DataError(f"daily prices: close must be > 0, got {out[CLOSE].min()} on {bad}")
    dup = out[DATE].duplicated()
    if dup.any():
        raise DataError(f"daily prices: date {out.loc[dup, DATE].iloc[0].date()} appears twice")
    return out.sort_values(DATE).reset_index(drop=True)


def iso_week_start(day: dt.date | pd.Timestamp) -> pd.Timestamp:
    """The Monday of the ISO week that contains `day`."""
    ts = pd.Timestamp(day).normalize()
    return ts - pd.Timedelta(days=ts.weekday())


def group_iso_weeks(daily: pd.DataFrame, as_of: dt.date | None = None) -> pd.DataFrame:
    """Group daily closes into ISO weeks, seeing only rows with date <= `as_of`.

    Returns one row per ISO week that has at least one close, indexed by WEEK_START (Monday),
    with ISO_YEAR, ISO_WEEK, N_DAYS, COMPLETE (all seven closes known) and the seven DAY_COLUMNS
    (NaN where a day is missing). Weeks with no close at all do not appear.
    """
    frame = validate_daily(daily)
    if as_of is not None:
        frame = frame[frame[DATE] <= pd.Timestamp(as_of)]
    columns = [ISO_YEAR, ISO_WEEK, N_DAYS, COMPLETE, *DAY_COLUMNS]
    if frame.empty:
        empty = pd.DataFrame(columns=columns, index=pd.DatetimeIndex([], name=WEEK_START))
        return empty.astype(
            {N_DAYS: "int64", COMPLETE: "bool"} | dict.fromkeys(DAY_COLUMNS, "float64")
        )
    weekday = frame[DATE].dt.weekday.to_numpy()
    starts = frame[DATE] - pd.to_timedelta(weekday, unit="D")
    wide = (
        pd.DataFrame(
            {WEEK_START: starts.to_numpy(), "day": weekday, CLOSE: frame[CLOSE].to_numpy()}
        )
        .pivot(index=WEEK_START, columns="day", values=CLOSE)
        .reindex(columns=range(DAYS_PER_WEEK))
    )
    wide.columns = list(DAY_COLUMNS)
    iso = wide.index.isocalendar()
    n_days = wide.notna().sum(axis=1).astype("int64")
    weeks = pd.DataFrame(
        {
            ISO_YEAR: iso["year"].astype("int64").to_numpy(),
            ISO_WEEK: iso["week"].astype("int64").to_numpy(),
            N_DAYS: n_days.to_numpy(),
            COMPLETE: (n_days == DAYS_PER_WEEK).to_numpy(),
        },
        index=pd.DatetimeIndex(wide.index, name=WEEK_START),
    )
    return pd.concat([weeks, wide], axis=1)


def complete_weeks(weeks: pd.DataFrame) -> pd.DataFrame:
    """Only the weeks with all seven closes: the rows a model may use."""
    return weeks[weeks[COMPLETE]]


def missing_days(daily: pd.DataFrame, as_of: dt.date | None = None) -> list[dt.date]:
    """Calendar days between the first and last known close (up to `as_of`) with no close."""
    frame = validate_daily(daily)
    if as_of is not None:
        frame = frame[frame[DATE] <= pd.Timestamp(as_of)]
    if frame.empty:
        return []
    full = pd.date_range(frame[DATE].iloc[0], frame[DATE].iloc[-1], freq="D")
    return [ts.date() for ts in full.difference(pd.DatetimeIndex(frame[DATE]))]


def point_relative(values: np.ndarray, base: np.ndarray | float) -> np.ndarray:
    """The book's normalisation: r = x / x0 - 1, with x0 the base price (broadcast)."""
    base_arr = np.asarray(base, dtype="float64")
    if np.any(base_arr <= 0):
        raise DataError("point-relative normalisation needs a positive base price")
    return np.asarray(values, dtype="float64") / base_arr - 1.0


def from_point_relative(relative: np.ndarray, base: np.ndarray | float) -> np.ndarray:
    """Inverse of `point_relative`: x = x0 * (r + 1)."""
    return (np.asarray(relative, dtype="float64") + 1.0) * np.asarray(base, dtype="float64")
