"""The night's pure decisions: whether to train, which week is due for a forecast, which model
forecasts, whether a candidate is promoted, where a rollback goes. No I/O; the flow supplies facts.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from forecasting.calendar import SUNDAY
from pricecast.errors import ConfigError

if TYPE_CHECKING:
    from flows.tracking.promotion import AppliedDecision
    from flows.tracking.tracker import ChampionRef


@dataclass(frozen=True)
class TrainingPlan:
    train: bool
    reason: str


def decide_training(
    *,
    force: bool,
    latest_complete: dt.date | None,
    has_champion: bool,
    last_trained_week: dt.date | None,
    last_trained_had_champion: bool,
    available_windows: int,
    needed_windows: int,
) -> TrainingPlan:
    """Train when a week has completed since the last night that trained, or the champion is
    gone, or forced; never without enough history. A rerun of a night that trained (same latest
    complete week) does not train again."""
    if available_windows < needed_windows:
        return TrainingPlan(
            False,
            f"not enough history: {available_windows} complete week(s) with a full window "
            f"before them, {needed_windows} needed (held-out weeks + training windows)",
        )
    if force:
        return TrainingPlan(True, "forced (--force)")
    if last_trained_week is None:
        return TrainingPlan(True, "no night has trained yet")
    if latest_complete is not None and latest_complete > last_trained_week:
        return TrainingPlan(
            True, f"the week of {latest_complete} completed since the last training"
        )
    if not has_champion and last_trained_had_champion:
        return TrainingPlan(True, "the champion alias is gone; training a new one")
    return TrainingPlan(
        False,
        f"no week has completed since the last training (week of {last_trained_week})",
    )


def may_train(*, has_strategies: bool, force: bool, dates: Iterable[dt.date]) -> bool:
    """Whether training is likely on these nights (before the facts `decide_training` needs are
    read): there are strategies to train and training is forced or a week completes (a Sunday).
    Used to start the training process early, never to decide."""
    return has_strategies and (force or any(d.weekday() == SUNDAY for d in dates))


def forecast_week_due(latest_complete: dt.date | None, as_of: dt.date) -> dt.date | None:
    """The Monday to forecast when a week has just completed (as_of is its Sunday), else None."""
    if latest_complete is None or latest_complete + dt.timedelta(days=6) != as_of:
        return None
    return as_of + dt.timedelta(days=1)


def pick_forecaster(
    *,
    applied: AppliedDecision | None,
    champion: ChampionRef | None,
) -> tuple[str, int | None, bool]:
    """(model name in the training result, version, is_baseline) that forecasts tonight: the
    champion after the gate, or naive (flagged) when there is none."""
    if applied is not None and applied.promoted_version is not None:
        return applied.decision.candidate or "", applied.promoted_version, False
    if champion is not None:
        return "champion", champion.version, False
    return "naive", None, True


@dataclass(frozen=True)
class Score:
    """A model's score on the night's held-out weeks (MAPE in percent, RMSE in dollars), and its
    MAPE per held-out week (the paired losses of the significance test; () if unknown)."""

    name: str
    mape: float
    rmse: float
    weekly_mape: tuple[float, ...] = ()


@dataclass(frozen=True)
class Decision:
    """What the gate decided: promote `candidate` or keep the champion, why, with the numbers."""

    action: Literal["promote", "keep"]
    candidate: str | None
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)
    #: The best candidate's Diebold-Mariano p-value: the larger of vs naive and vs the champion
    #: (its weakest win); None when no paired test was possible.
    p_value: float | None = None

    @property
    def promote(self) -> bool:
        return self.action == "promote"


def paired_p_value(candidate: Score, other: Score) -> float | None:
    """One-sided Diebold-Mariano (HLN) p-value of "the candidate's weekly MAPE is lower than
    `other`'s" on their paired held-out weeks; None without two paired, finite weeks."""
    from forecasting.significance import diebold_mariano

    first, second = candidate.weekly_mape, other.weekly_mape
    if len(first) < 2 or len(first) != len(second):
        return None
    if not all(math.isfinite(x) for x in (*first, *second)):
        return None
    return diebold_mariano(first, second).p_value


def _p_values(candidate: Score, naive: Score, champion: Score | None) -> dict[str, float | None]:
    values = {"p_vs_naive": paired_p_value(candidate, naive)}
    if champion is not None:
        values["p_vs_champion"] = paired_p_value(candidate, champion)
    return values


def _weakest(p_values: dict[str, float | None]) -> float | None:
    """The larger p-value (the win most likely to be noise); None if any test was impossible."""
    values = list(p_values.values())
    if not values or any(p is None for p in values):
        return None
    return max(p for p in values if p is not None)


def decide_promotion(
    candidates: Sequence[Score],
    *,
    champion: Score | None,
    naive: Score,
    margin: float = 0.0,
    champion_version: int | None = None,
    max_p_value: float | None = None,
) -> Decision:
    """Promote the best candidate whose MAPE beats naive's AND the champion's by more than
    `margin` points; with no champion it must beat naive only. Anything else keeps the champion.
    Ties never promote, and nothing worse than naive is ever promoted.

    Every candidate gets a one-sided Diebold-Mariano p-value against naive and the champion on
    the held-out weeks' MAPE (in `numbers`, and the best's in the reason). With `max_p_value`
    set, the best must also have both p-values <= it (a win that could be noise keeps the
    champion); unset, the p-values are only reported.
    """
    if margin < 0:
        raise ConfigError(f"promotion margin must be >= 0 MAPE points, got {margin}")
    if max_p_value is not None and not 0.0 < max_p_value <= 1.0:
        raise ConfigError(f"the promotion's max p-value must be in (0, 1], got {max_p_value}")
    numbers: dict[str, Any] = {
        "margin": margin,
        "max_p_value": max_p_value,
        "naive": {"mape": naive.mape, "rmse": naive.rmse},
        "champion": None
        if champion is None
        else {"mape": champion.mape, "rmse": champion.rmse, "version": champion_version},
        "candidates": {
            c.name: {"mape": c.mape, "rmse": c.rmse, **_p_values(c, naive, champion)}
            for c in candidates
        },
    }
    finite = [c for c in candidates if math.isfinite(c.mape)]
    if not finite:
        return Decision("keep", None, "no candidate was scored", numbers)
    best = min(finite, key=lambda c: c.mape)
    best_p = _p_values(best, naive, champion)
    p_value = _weakest(best_p)
    p_text = _p_text(best_p, len(best.weekly_mape))
    bars = [("naive", naive.mape)]
    if champion is not None:
        bars.append(
            (f"champion v{champion_version}" if champion_version else "champion", champion.mape)
        )
    missed = [(who, mape) for who, mape in bars if not best.mape < mape - margin]
    bar_text = " and ".join(f"{who} ({mape:.3f} %)" for who, mape in bars)
    kept = "the champion stays" if champion is not None else "no champion yet; naive serves"
    if not missed:
        beats = (
            f"{best.name} MAPE {best.mape:.3f} % beats {bar_text} by more than {margin:g} points"
        )
        if max_p_value is not None and (p_value is None or p_value > max_p_value):
            shown = "untestable" if p_value is None else f"p = {p_value:.3f}"
            return Decision(
                "keep",
                None,
                f"{beats}, but the win is not significant ({shown} > {max_p_value:g}, "
                f"PRICECAST_PROMOTION_MAX_PVALUE){p_text}; {kept}",
                numbers,
                p_value,
            )
        return Decision("promote", best.name, beats + p_text, numbers, p_value)
    missed_text = " and ".join(f"{who} ({mape:.3f} %)" for who, mape in missed)
    return Decision(
        "keep",
        None,
        f"best candidate {best.name} MAPE {best.mape:.3f} % does not beat {missed_text} "
        f"by more than {margin:g} points{p_text}; {kept}",
        numbers,
        p_value,
    )


def _p_text(p_values: dict[str, float | None], weeks: int) -> str:
    """' (Diebold-Mariano p = 0.031 vs naive, 0.210 vs champion; 19 weeks)' or ''."""
    shown = [
        f"{p:.3f} vs {key.removeprefix('p_vs_')}" for key, p in p_values.items() if p is not None
    ]
    if not shown:
        return ""
    return f" (Diebold-Mariano p = {', '.join(shown)}; {weeks} weeks)"


class AliasMove(Protocol):
    """A row of the `promotions` audit as `rollback_target` reads it."""

    @property
    def action(self) -> str: ...

    @property
    def model_version(self) -> int | None: ...


def rollback_target(moves: Sequence[AliasMove]) -> int | None:
    """The champion before the current one, replaying alias moves (oldest first) as a stack:
    a promotion pushes its version, a rollback pops one. None if there is nothing to go back to."""
    stack: list[int] = []
    for move in moves:
        if move.action in ("promote", "manual-promote") and move.model_version is not None:
            stack.append(move.model_version)
        elif move.action == "rollback" and stack:
            stack.pop()
    return stack[-2] if len(stack) >= 2 else None
