"""The promotion gate (pure) and the rollback stack."""

from __future__ import annotations

import datetime as dt

import pytest

from flows.night.policy import Score, decide_promotion, rollback_target
from pricecast.errors import ConfigError
from storage.runs import Promotion


def _s(name: str, mape: float, rmse: float = 1.0) -> Score:
    return Score(name, mape, rmse)


def test_the_best_candidate_beating_champion_and_naive_is_promoted() -> None:
    decision = decide_promotion(
        [_s("retrain", 4.0), _s("fresh", 3.0)],
        champion=_s("champion", 3.5),
        naive=_s("naive", 5.0),
        champion_version=7,
    )
    assert (decision.action, decision.candidate) == ("promote", "fresh")
    assert "fresh MAPE 3.000 % beats naive (5.000 %) and champion v7 (3.500 %)" in decision.reason
    assert decision.numbers["champion"] == {"mape": 3.5, "rmse": 1.0, "version": 7}
    assert decision.numbers["candidates"]["retrain"]["mape"] == 4.0


def test_a_candidate_worse_than_the_champion_is_not_promoted() -> None:
    decision = decide_promotion(
        [_s("fresh", 3.0)], champion=_s("champion", 2.9), naive=_s("naive", 5.0)
    )
    assert (decision.action, decision.candidate) == ("keep", None)
    assert "does not beat champion (2.900 %)" in decision.reason
    assert "the champion stays" in decision.reason


def test_nothing_worse_than_naive_is_promoted_even_without_champion() -> None:
    decision = decide_promotion(
        [_s("fresh", 6.0), _s("retrain", 5.5)], champion=None, naive=_s("naive", 5.0)
    )
    assert decision.action == "keep"
    assert "best candidate retrain MAPE 5.500 % does not beat naive (5.000 %)" in decision.reason
    assert "naive serves" in decision.reason
    # Beating the champion is not enough when naive is better still.
    worse_than_naive = decide_promotion(
        [_s("fresh", 4.5)], champion=_s("champion", 6.0), naive=_s("naive", 4.0)
    )
    assert worse_than_naive.action == "keep"


def test_no_champion_means_beating_naive_is_enough() -> None:
    decision = decide_promotion([_s("retrain", 4.9)], champion=None, naive=_s("naive", 5.0))
    assert (decision.action, decision.candidate) == ("promote", "retrain")


def test_the_margin_and_ties() -> None:
    tie = decide_promotion([_s("fresh", 5.0)], champion=None, naive=_s("naive", 5.0))
    assert tie.action == "keep"
    within_margin = decide_promotion(
        [_s("fresh", 4.6)], champion=None, naive=_s("naive", 5.0), margin=0.5
    )
    assert within_margin.action == "keep"
    beyond_margin = decide_promotion(
        [_s("fresh", 4.4)], champion=None, naive=_s("naive", 5.0), margin=0.5
    )
    assert beyond_margin.action == "promote"
    with pytest.raises(ConfigError, match="margin"):
        decide_promotion([_s("fresh", 1.0)], champion=None, naive=_s("naive", 5.0), margin=-1)


def test_unscored_candidates_keep_the_champion() -> None:
    decision = decide_promotion([_s("fresh", float("nan"))], champion=None, naive=_s("naive", 5.0))
    assert decision.action == "keep"
    assert decide_promotion([], champion=None, naive=_s("naive", 5.0)).action == "keep"


def _move(action: str, version: int | None) -> Promotion:
    return Promotion(
        ticker="X",
        as_of=dt.date(2024, 1, 7),
        action=action,
        model_name="m",
        model_version=version,
        previous_version=None,
        reason="",
        actor="t",
    )


def test_rollback_walks_back_the_alias_history_like_a_stack() -> None:
    moves = [_move("promote", 1), _move("promote", 3), _move("manual-promote", 4)]
    assert rollback_target(moves) == 3
    moves.append(_move("rollback", 3))
    assert rollback_target(moves) == 1  # a second rollback goes further back, not to 4
    moves.append(_move("rollback", 1))
    assert rollback_target(moves) is None
    assert rollback_target([]) is None
