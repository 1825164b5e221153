"""A seeded generator of realistic daily OHLCV prices, for the demo, the tests and benchmarks.

Closes follow a geometric random walk whose volatility switches between calm and wild regimes
and whose drift wanders slowly, so weekly windows carry some signal and look like a crypto asset.
Same seed and arguments -> the same frame, bit for bit.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from forecasting.weeks import CLOSE, DATE

OPEN, HIGH, LOW, VOLUME, MARKET_CAP = "open", "high", "low", "volume", "market_cap"


def synthetic_prices(
    start: dt.date,
    end: dt.date,
    *,
    seed: int = 0,
    start_price: float = 1_000.0,
    supply: float = 19_000_000.0,
) -> pd.DataFrame:
    """Daily prices from `start` to `end` inclusive, one row per calendar day.

    Columns: date (datetime64), open, high, low, close (all > 0, high >= max(open, close),
    low <= min(open, close)), volume and market_cap (>= 0).
    """
    if end < start:
        raise ValueError(f"synthetic prices: end {end} is before start {start}")
    dates = pd.date_range(start, end, freq="D")
    n = len(dates)
    rng = np.random.default_rng(seed)
    # Regime-switching volatility (calm 2 %/day, wild 5 %/day) with sticky regimes.
    wild = np.zeros(n, dtype=bool)
    for i in range(1, n):
        stay = 0.97 if wild[i - 1] else 0.99
        wild[i] = wild[i - 1] if rng.random() < stay else not wild[i - 1]
    sigma = np.where(wild, 0.05, 0.02)
    # Slowly wandering drift (an AR(1) around a small positive mean) gives trends to learn.
    drift = np.empty(n)
    drift[0] = 0.001
    shocks = rng.normal(0.0, 0.0004, n)
    for i in range(1, n):
        drift[i] = 0.001 + 0.98 * (drift[i - 1] - 0.001) + shocks[i]
    log_returns = drift - 0.5 * sigma**2 + sigma * rng.standard_normal(n)
    close = start_price * np.exp(np.cumsum(log_returns))
    open_ = np.concatenate([[start_price], close[:-1]]) * np.exp(rng.normal(0, 0.002, n))
    spread = np.abs(rng.normal(0, sigma * 0.6, n))
    high = np.maximum(open_, close) * (1 + spread)
    low = np.minimum(open_, close) / (1 + spread)
    volume = close * rng.lognormal(mean=10.0, sigma=0.5, size=n) * (1 + 2 * wild)
    return pd.DataFrame(
        {
            DATE: dates,
            OPEN: open_,
            HIGH: high,
            LOW: low,
            CLOSE: close,
            VOLUME: volume,
            MARKET_CAP: close * supply,
        }
    )
