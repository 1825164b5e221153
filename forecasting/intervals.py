"""Split-conformal prediction intervals per horizon day, calibrated on held-out weeks' residuals.

Scores are volatility-scaled (normalised conformal): a held-out week's |ln(actual/predicted)| is
divided by the trailing volatility of the daily closes before that week, and a forecast's band is
the quantile times the trailing volatility before the forecast week. Calm weeks then calibrate
narrow bands and a turbulent month widens the next band, where plain scores would let the last
few months' calm understate a rising volatility. Unscaled calibrations (`scale_days` None) still
load and work as before.

Pure numpy. A calibration is small and JSON-able: it is stored with the model and in MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from forecasting.weeks import DAYS_PER_WEEK

#: The interval levels every forecast carries (nominal coverage).
LEVELS: tuple[float, ...] = (0.80, 0.95)

#: Nonconformity score: s = |ln(actual / predicted)|; the band is predicted * exp(±q).
METHOD = "split_conformal_abs_log_ratio"
#: s = |ln(actual / predicted)| / v, v the trailing volatility; the band is predicted * exp(±q v).
SCALED_METHOD = "split_conformal_abs_log_ratio_over_trailing_volatility"
#: Days of daily log returns behind a trailing volatility (four weeks).
SCALE_DAYS = 28
#: A floor on the volatility, so a flat stretch of closes cannot make a band of width zero.
MIN_VOLATILITY = 1e-3

FORMAT_VERSION = 1

# (n + 1) * level is often an integer in exact arithmetic (20 * 0.95 = 19) but not in floats.
_RANK_TOLERANCE = 1e-9


def conformal_rank(n: int, level: float) -> tuple[int, bool]:
    """The order statistic (1-based rank k) that split conformal uses, and whether it saturated.

    k = ceil((n + 1) * level). With n calibration scores drawn exchangeably with the next one,
    the k-th smallest score q gives P(s_next <= q) >= level. When k > n the guarantee needs more
    scores than there are: the largest score is used (k = n) and `saturated` is True, so the
    band is narrower than `level` asks for (n >= ceil(level / (1 - level)) avoids it: 4 weeks for
    80 %, 19 for 95 %).
    """
    if n < 1:
        raise ValueError(f"conformal calibration needs at least one held-out week, got n={n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"an interval level must be in (0, 1), got {level}")
    k = math.ceil((n + 1) * level - _RANK_TOLERANCE)
    return (n, True) if k > n else (k, False)


def _weekly_array(values: np.ndarray | Sequence[Sequence[float]], what: str) -> np.ndarray:
    array = np.asarray(values, dtype="float64")
    if array.ndim != 2 or array.shape[1] != DAYS_PER_WEEK:
        raise ValueError(f"{what} must have shape (weeks, {DAYS_PER_WEEK}), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} must be finite (no NaN or inf)")
    if (array <= 0).any():
        raise ValueError(f"{what} must be positive prices (a log ratio needs them)")
    return array


def log_ratio_scores(
    actual: np.ndarray | Sequence[Sequence[float]],
    predicted: np.ndarray | Sequence[Sequence[float]],
) -> np.ndarray:
    """Nonconformity scores s[w, d] = |ln(actual[w, d] / predicted[w, d])|, shape (n_weeks, 7).

    A relative score makes one calibration serve any price level: a 3 % miss at $20,000 and at
    $60,000 count the same. Raises ValueError on a shape mismatch, no weeks, NaN/inf or a
    non-positive price.
    """
    a = _weekly_array(actual, "actual closes")
    p = _weekly_array(predicted, "predicted closes")
    if a.shape != p.shape:
        raise ValueError(f"actual has shape {a.shape} but predicted has shape {p.shape}")
    if len(a) == 0:
        raise ValueError("conformal calibration needs at least one held-out week, got none")
    return np.abs(np.log(a / p))


def trailing_volatility(closes: np.ndarray | Sequence[float], days: int = SCALE_DAYS) -> float:
    """Standard deviation of the daily log returns of the last `days` + 1 closes (oldest first),
    at least MIN_VOLATILITY. Raises ValueError with fewer than 8 closes or a non-positive one."""
    values = np.asarray(closes, dtype="float64")[-(days + 1) :]
    if values.ndim != 1 or len(values) < 8:
        raise ValueError(f"a trailing volatility needs at least 8 daily closes, got {len(values)}")
    if not np.isfinite(values).all() or (values <= 0).any():
        raise ValueError("a trailing volatility needs finite, positive closes")
    return max(float(np.std(np.diff(np.log(values)), ddof=1)), MIN_VOLATILITY)


@dataclass(frozen=True)
class IntervalCalibration:
    """Per level and per horizon day, the conformal quantile q of the log-ratio scores.

    For a point forecast p of day d: lower = p * exp(-q[level][d]), upper = p * exp(q[level][d]).
    The band is symmetric in log space, so it always contains p and scales with the price.
    `saturated[i]` is True when n_weeks was too small for `levels[i]` (the max score was used).
    """

    levels: tuple[float, ...]
    quantiles: tuple[tuple[float, ...], ...]
    n_weeks: int
    saturated: tuple[bool, ...]
    method: str = METHOD
    #: Days behind the trailing volatility the scores were divided by (None: unscaled scores).
    scale_days: int | None = None
    #: The held-out weeks' volatilities (what their in-sample bands are scaled by); () unscaled.
    scales: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.levels or len(self.quantiles) != len(self.levels):
            raise ValueError("an interval calibration needs one row of quantiles per level")
        if len(self.saturated) != len(self.levels):
            raise ValueError("an interval calibration needs one saturated flag per level")
        for level, row in zip(self.levels, self.quantiles, strict=True):
            if not 0.0 < level < 1.0:
                raise ValueError(f"an interval level must be in (0, 1), got {level}")
            if len(row) != DAYS_PER_WEEK or not all(math.isfinite(q) and q >= 0 for q in row):
                raise ValueError(
                    f"level {level}: expected {DAYS_PER_WEEK} finite quantiles >= 0, got {row}"
                )
        expected = METHOD if self.scale_days is None else SCALED_METHOD
        if self.method != expected:
            raise ValueError(f"unknown interval method {self.method!r}; expected {expected!r}")

    def scale_for(self, closes_before: np.ndarray | Sequence[float]) -> float:
        """The scale of a forecast's band: the trailing volatility of the daily closes before the
        forecast week (oldest first); 1.0 for an unscaled calibration."""
        if self.scale_days is None:
            return 1.0
        return trailing_volatility(closes_before, self.scale_days)

    def quantile(self, level: float) -> np.ndarray:
        """The seven log-ratio quantiles of `level` (one per horizon day)."""
        for known, row in zip(self.levels, self.quantiles, strict=True):
            if math.isclose(known, level):
                return np.asarray(row, dtype="float64")
        raise KeyError(f"no interval calibrated at level {level}; known levels: {self.levels}")

    def bounds(
        self,
        point: np.ndarray | Sequence[float],
        level: float,
        scale: float | np.ndarray | Sequence[float] = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) in dollars for a point forecast of shape (7,) or (n_weeks, 7).

        lower = point * exp(-q s), upper = point * exp(q s), q the level's quantile per day and
        s the scale (`scale_for`; one per week for (n_weeks, 7); 1 for an unscaled calibration).
        """
        p = np.asarray(point, dtype="float64")
        if p.shape[-1:] != (DAYS_PER_WEEK,) or p.ndim > 2:
            raise ValueError(f"a point forecast must have shape (7,) or (n, 7), got {p.shape}")
        if not np.isfinite(p).all() or (p <= 0).any():
            raise ValueError("a point forecast must be finite, positive prices")
        s = np.asarray(scale, dtype="float64")
        if s.ndim == 1:
            s = s.reshape(-1, 1)
        if not np.isfinite(s).all() or (s <= 0).any():
            raise ValueError("a band's scale must be finite and positive")
        q = self.quantile(level) * s
        return p * np.exp(-q), p * np.exp(q)

    def intervals(
        self, point: np.ndarray | Sequence[float], scale: float = 1.0
    ) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        """Every calibrated level's (lower, upper) for `point`, keyed by level."""
        return {level: self.bounds(point, level, scale) for level in self.levels}

    def mean_width_percent(self, level: float) -> float:
        """Mean band width in percent of the point forecast: 100 * mean(exp(q) - exp(-q))."""
        q = self.quantile(level)
        return float(100.0 * np.mean(np.exp(q) - np.exp(-q)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: {"format_version", "method", "n_weeks", "scale_days", "scales",
        "levels": {"0.8": {...}}}."""
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "n_weeks": self.n_weeks,
            "scale_days": self.scale_days,
            "scales": list(self.scales),
            "levels": {
                repr(level): {"quantiles": list(row), "saturated": flag}
                for level, row, flag in zip(
                    self.levels, self.quantiles, self.saturated, strict=True
                )
            },
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> IntervalCalibration:
        """Inverse of `to_dict`. Raises ValueError on anything it cannot read."""
        try:
            if int(values.get("format_version", FORMAT_VERSION)) != FORMAT_VERSION:
                raise ValueError(f"unsupported format_version {values['format_version']}")
            by_level = dict(values["levels"])
            levels = tuple(float(level) for level in by_level)
            return cls(
                levels=levels,
                quantiles=tuple(
                    tuple(float(q) for q in entry["quantiles"]) for entry in by_level.values()
                ),
                n_weeks=int(values["n_weeks"]),
                saturated=tuple(bool(entry["saturated"]) for entry in by_level.values()),
                method=str(values.get("method", METHOD)),
                scale_days=None if values.get("scale_days") is None else int(values["scale_days"]),
                scales=tuple(float(v) for v in values.get("scales") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"an interval calibration is unreadable ({exc}): {values}") from exc


def calibrate_intervals(
    actual: np.ndarray | Sequence[Sequence[float]],
    predicted: np.ndarray | Sequence[Sequence[float]],
    *,
    levels: Sequence[float] = LEVELS,
    scales: np.ndarray | Sequence[float] | None = None,
    scale_days: int = SCALE_DAYS,
) -> IntervalCalibration:
    """Split-conformal calibration from held-out weeks: actual and predicted, (n_weeks, 7) $.

    For each horizon day d and level, q = the k-th smallest of s[:, d] = |ln(actual/predicted)|
    (divided by the week's trailing volatility `scales[w]` when given, see `trailing_volatility`
    over `scale_days`) with k = ceil((n + 1) * level) (see `conformal_rank`). The model must not
    have trained on these weeks, or the band will be too narrow.
    """
    scores = log_ratio_scores(actual, predicted)
    n = len(scores)
    by_week: tuple[float, ...] = ()
    if scales is not None:
        by_week = tuple(float(v) for v in np.asarray(scales, dtype="float64").ravel())
        if len(by_week) != n or not all(math.isfinite(v) and v > 0 for v in by_week):
            raise ValueError(f"expected {n} finite, positive weekly scales, got {by_week}")
        scores = scores / np.asarray(by_week).reshape(-1, 1)
    ordered = np.sort(scores, axis=0)
    rows: list[tuple[float, ...]] = []
    flags: list[bool] = []
    for level in levels:
        k, saturated = conformal_rank(n, level)
        rows.append(tuple(float(q) for q in ordered[k - 1]))
        flags.append(saturated)
    return IntervalCalibration(
        levels=tuple(float(level) for level in levels),
        quantiles=tuple(rows),
        n_weeks=n,
        saturated=tuple(flags),
        method=METHOD if scales is None else SCALED_METHOD,
        scale_days=None if scales is None else scale_days,
        scales=by_week,
    )


def weekly_scales(
    daily_closes: Sequence[float] | np.ndarray,
    daily_dates: Sequence[Any],
    mondays: Sequence[Any],
    days: int = SCALE_DAYS,
) -> np.ndarray:
    """The trailing volatility before each Monday in `mondays`, from daily closes and their dates
    (oldest first; dates comparable with the Mondays)."""
    closes = np.asarray(daily_closes, dtype="float64")
    dates = np.asarray(daily_dates)
    out = []
    for monday in mondays:
        before = int(np.searchsorted(dates, np.asarray(monday, dtype=dates.dtype), side="left"))
        out.append(trailing_volatility(closes[:before], days))
    return np.asarray(out, dtype="float64")


def coverage(
    actual: np.ndarray | Sequence[float],
    lower: np.ndarray | Sequence[float],
    upper: np.ndarray | Sequence[float],
) -> float:
    """Realised coverage: the fraction of days with lower <= actual <= upper, in [0, 1].

    Any shape, as long as the three agree. Raises ValueError on a shape mismatch, no days,
    NaN/inf or a band with lower > upper.
    """
    a = np.asarray(actual, dtype="float64")
    lo = np.asarray(lower, dtype="float64")
    hi = np.asarray(upper, dtype="float64")
    if not a.shape == lo.shape == hi.shape:
        raise ValueError(
            f"actual {a.shape}, lower {lo.shape} and upper {hi.shape} must have the same shape"
        )
    if a.size == 0:
        raise ValueError("cannot score the coverage of no days")
    if not (np.isfinite(a).all() and np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ValueError("actual, lower and upper must be finite (no NaN or inf)")
    if (lo > hi).any():
        raise ValueError("an interval has lower > upper")
    return float(np.mean((lo <= a) & (a <= hi)))
