"""Forecast errors: RMSE in dollars and MAPE in percent, over all days or per week."""

from __future__ import annotations

import numpy as np


def _checked(actual: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(actual, dtype="float64")
    p = np.asarray(predicted, dtype="float64")
    if a.shape != p.shape:
        raise ValueError(f"actual has shape {a.shape} but predicted has shape {p.shape}")
    if a.size == 0:
        raise ValueError("cannot score an empty forecast")
    if not (np.isfinite(a).all() and np.isfinite(p).all()):
        raise ValueError("actual and predicted must be finite (no NaN or inf)")
    return a, p


def rmse(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Root mean squared error, in the unit of the prices: sqrt(mean((a - p)^2)).

    Raises ValueError on different shapes, empty or non-finite input.
    """
    a, p = _checked(actual, predicted)
    return float(np.sqrt(np.mean((a - p) ** 2)))


def mape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Mean absolute percentage error, in percent: 100 * mean(|a - p| / |a|).

    Raises ValueError on different shapes, empty or non-finite input, or a zero actual.
    """
    a, p = _checked(actual, predicted)
    if np.any(a == 0):
        raise ValueError("MAPE is undefined when an actual value is zero")
    return float(100.0 * np.mean(np.abs(a - p) / np.abs(a)))


def weekly_rmse(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """RMSE of each row (one row = one week's 7 days): shape (n,)."""
    a, p = _checked(actual, predicted)
    if a.ndim != 2:
        raise ValueError(f"weekly scores need (weeks, days) arrays, got shape {a.shape}")
    return np.array([rmse(a[i], p[i]) for i in range(len(a))])


def weekly_mape(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """MAPE of each row (one row = one week's 7 days), in percent: shape (n,)."""
    a, p = _checked(actual, predicted)
    if a.ndim != 2:
        raise ValueError(f"weekly scores need (weeks, days) arrays, got shape {a.shape}")
    return np.array([mape(a[i], p[i]) for i in range(len(a))])
