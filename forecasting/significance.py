"""Is a win skill or noise? The Diebold–Mariano test on paired per-week losses, with the
Harvey–Leybourne–Newbold small-sample correction (pure numpy and math)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class DieboldMarianoResult:
    """One-sided test of H1: the first model's expected loss is lower than the second's.

    `statistic` is the HLN-corrected DM statistic (negative when the first model did better),
    `p_value` = P(T_{n-1} <= statistic), `mean_loss_difference` = mean(first - second).
    """

    statistic: float
    p_value: float
    mean_loss_difference: float
    n: int
    horizon: int = 1

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def student_t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with an integer number of degrees of freedom, exactly.

    With theta = atan(|t| / sqrt(df)) and A = P(|T| <= |t|) (Abramowitz & Stegun 26.7.3-4):
      df odd:  A = 2/pi * (theta + sin(theta) * sum_{j=0}^{(df-3)/2} a_j cos^(2j+1)(theta)),
               a_0 = 1, a_j = a_{j-1} * 2j / (2j + 1)     (A = 2 theta / pi when df = 1);
      df even: A = sin(theta) * sum_{j=0}^{(df-2)/2} b_j cos^(2j)(theta),
               b_0 = 1, b_j = b_{j-1} * (2j - 1) / (2j);
    then P(T <= t) = 1/2 + sign(t) * A / 2.
    """
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    if math.isnan(t):
        raise ValueError("the t statistic is NaN")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    sin, cos = math.sin(theta), math.cos(theta)
    cos2 = cos * cos
    if df % 2:
        term = total = cos
        for k in range(3, df - 1, 2):
            term *= (k - 1) / k * cos2
            total += term
        inside = 2.0 / math.pi * (theta + (sin * total if df > 1 else 0.0))
    else:
        term = total = 1.0
        for k in range(2, df - 1, 2):
            term *= (k - 1) / k * cos2
            total += term
        inside = sin * total
    return 0.5 + math.copysign(0.5, t) * min(inside, 1.0)


def _loss_series(values: np.ndarray | Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype="float64")
    if array.ndim != 1:
        raise ValueError(f"{what} must be one loss per held-out week (1-D), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} must be finite (no NaN or inf)")
    return array


def diebold_mariano(
    first_losses: np.ndarray | Sequence[float],
    second_losses: np.ndarray | Sequence[float],
    *,
    horizon: int = 1,
) -> DieboldMarianoResult:
    """Diebold–Mariano with the Harvey–Leybourne–Newbold correction, one-sided.

    d_t = first_t - second_t (t = 1..n), d_bar = mean(d),
    gamma_k = (1/n) * sum_{t=k+1}^{n} (d_t - d_bar)(d_{t-k} - d_bar),
    V = gamma_0 + 2 * sum_{k=1}^{h-1} gamma_k       (falls back to gamma_0 if V <= 0),
    DM = d_bar / sqrt(V / n),
    DM* = DM * sqrt((n + 1 - 2h + h(h - 1)/n) / n),
    p = P(T_{n-1} <= DM*)                           (H1: the first model's loss is lower).

    Weekly forecasts do not overlap, so h = 1. When d has zero variance (identical losses) no
    noise can be estimated: the result is statistic 0 and p = 1, so nothing passes on it.
    Raises ValueError on different lengths, fewer than 2 weeks, NaN/inf, or h too large for n.
    """
    first = _loss_series(first_losses, "first_losses")
    second = _loss_series(second_losses, "second_losses")
    if first.shape != second.shape:
        raise ValueError(
            f"paired losses need the same weeks: {len(first)} first vs {len(second)} second"
        )
    n = len(first)
    if n < 2:
        raise ValueError(f"the Diebold–Mariano test needs at least 2 paired weeks, got {n}")
    correction = (n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n
    if horizon < 1 or correction <= 0:
        raise ValueError(
            f"horizon {horizon} does not fit {n} weeks: need h >= 1 and n + 1 - 2h + h(h-1)/n > 0"
        )
    d = first - second
    d_bar = float(np.mean(d))
    # Tested on d itself: a constant d leaves float dust in the centred series, not zeros.
    if np.all(d == d[0]):
        return DieboldMarianoResult(0.0, 1.0, d_bar, n, horizon)
    centred = d - d_bar
    gamma = [float(np.dot(centred[k:], centred[: n - k]) / n) for k in range(horizon)]
    variance = gamma[0] + 2.0 * sum(gamma[1:])
    if variance <= 0:
        variance = gamma[0]
    statistic = d_bar / math.sqrt(variance / n) * math.sqrt(correction)
    return DieboldMarianoResult(statistic, student_t_cdf(statistic, n - 1), d_bar, n, horizon)
