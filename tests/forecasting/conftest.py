"""Weekly frames built from exact daily data for the forecasting tests."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from forecasting.synthetic import synthetic_prices
from forecasting.weeks import group_iso_weeks

MONDAY = dt.date(2024, 1, 1)  # an ISO week starts here


def arange_daily(n_weeks: int, *, start: dt.date = MONDAY) -> pd.DataFrame:
    """Daily closes 1, 2, 3, ... from a Monday: week k holds 7k+1 .. 7k+7."""
    days = n_weeks * 7
    return pd.DataFrame(
        {"date": pd.date_range(start, periods=days, freq="D"), "close": np.arange(1.0, days + 1)}
    )


def arange_weeks(n_weeks: int) -> pd.DataFrame:
    return group_iso_weeks(arange_daily(n_weeks))


@pytest.fixture(scope="session")
def synthetic_daily() -> pd.DataFrame:
    """About two and a half years of seeded synthetic closes (Mon 2021-01-04 .. Sun 2023-06-25)."""
    return synthetic_prices(dt.date(2021, 1, 4), dt.date(2023, 6, 25), seed=7)[["date", "close"]]


@pytest.fixture(scope="session")
def synthetic_weeks(synthetic_daily: pd.DataFrame) -> pd.DataFrame:
    return group_iso_weeks(synthetic_daily)
