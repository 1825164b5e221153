"""Small price series for the nightly tests, written as CSV files the csv source reads."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

FIRST_DAY = dt.date(2020, 1, 6)  # a Monday
LAST_DAY = dt.date(2020, 10, 4)  # a Sunday, four weeks after the first test night
NIGHT_1 = dt.date(2020, 9, 6)  # Sundays: a week has just completed
NIGHT_2 = dt.date(2020, 9, 13)
#: Tiny settings so a night trains in seconds: 4-week windows, 3 held-out weeks.
SMALL = {"holdout_weeks": 3, "window_weeks": 4, "seed": 0}
#: Epochs at which the LSTMs clearly beat naive on `trend_prices` (MAPE ~3 % vs ~7.6 %).
LEARNING_EPOCHS = 20


def trend_prices(flat_from: dt.date | None = None) -> pd.DataFrame:
    """+1 %/day with a weekly wave: a pattern an LSTM learns and naive cannot follow.

    From `flat_from` on the price stays at the last close before it, so naive (the last close
    repeated) is exact there and no trained model can beat it.
    """
    days = pd.date_range(FIRST_DAY, LAST_DAY, freq="D")
    t = np.arange(len(days), dtype="float64")
    close = 100.0 * np.exp(0.01 * t) * (1.0 + 0.05 * np.sin(2.0 * np.pi * t / 7.0))
    if flat_from is not None:
        flat = days >= pd.Timestamp(flat_from)
        close[flat] = close[~flat][-1]
    return pd.DataFrame(
        {
            "date": days.strftime("%Y-%m-%d"),
            "open": close,
            "high": close * 1.01,
            "low": close * 0.99,
            "close": close,
            "volume": 1000.0,
        }
    )


def write_csv(path: Path, prices: pd.DataFrame) -> Path:
    prices.to_csv(path, index=False)
    return path
