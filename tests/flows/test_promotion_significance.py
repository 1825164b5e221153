"""The gate's paired test: Diebold-Mariano p-values of each candidate against the champion and
naive on the held-out weeks' MAPE, reported always and required with a max p-value (pure)."""

from __future__ import annotations

import pytest

from flows.night.policy import Score, decide_promotion, paired_p_value
from pricecast.errors import ConfigError
from pricecast.settings import Settings

# The hand-computed case of tests/forecasting/test_significance.py: DM* = -2.60177 on 5 weeks,
# one-sided p = P(T_4 <= -2.60177) = 0.029968 (scipy.stats.t.cdf).
FIRST = (1.0, 2.0, 1.5, 0.5, 1.0)
SECOND = (1.5, 2.0, 2.5, 1.0, 1.2)
P_HAND = 0.029968


def _s(name: str, weekly: tuple[float, ...]) -> Score:
    return Score(name, sum(weekly) / len(weekly), 1.0, weekly)


def test_the_p_value_is_the_hand_computed_one() -> None:
    assert paired_p_value(_s("fresh", FIRST), _s("naive", SECOND)) == pytest.approx(
        P_HAND, abs=2e-6
    )
    decision = decide_promotion([_s("fresh", FIRST)], champion=None, naive=_s("naive", SECOND))
    assert decision.action == "promote" and decision.p_value == pytest.approx(P_HAND, abs=2e-6)
    assert decision.numbers["candidates"]["fresh"]["p_vs_naive"] == decision.p_value
    assert "(Diebold-Mariano p = 0.030 vs naive; 5 weeks)" in decision.reason


def test_identical_losses_give_p_one_and_nothing_is_promoted_when_required() -> None:
    weekly = (3.0, 4.0, 2.5, 5.0)
    same = decide_promotion(
        [_s("fresh", weekly)], champion=_s("champion", weekly), naive=_s("naive", weekly)
    )
    assert same.action == "keep"
    assert same.numbers["candidates"]["fresh"] == {
        "mape": 3.625,
        "rmse": 1.0,
        "p_vs_naive": 1.0,
        "p_vs_champion": 1.0,
    }
    assert same.p_value == 1.0

    # A constant gap has no measurable noise either (p = 1): promoted on MAPE alone, kept when a
    # p-value is required.
    better = tuple(x - 0.5 for x in weekly)
    report_only = decide_promotion([_s("fresh", better)], champion=None, naive=_s("naive", weekly))
    assert report_only.action == "promote" and report_only.p_value == 1.0
    required = decide_promotion(
        [_s("fresh", better)], champion=None, naive=_s("naive", weekly), max_p_value=0.1
    )
    assert (required.action, required.candidate) == ("keep", None)
    assert "not significant (p = 1.000 > 0.1, PRICECAST_PROMOTION_MAX_PVALUE)" in required.reason
    assert required.numbers["max_p_value"] == 0.1


def test_the_weakest_win_decides_when_a_p_value_is_required() -> None:
    # Clearly better than naive (p = 0.03) but only noise-level better than the champion.
    champion = _s("champion", (1.0, 2.0, 1.5, 0.6, 1.0))
    decision = decide_promotion(
        [_s("fresh", FIRST)],
        champion=champion,
        naive=_s("naive", SECOND),
        champion_version=4,
        max_p_value=0.05,
    )
    p_champion = decision.numbers["candidates"]["fresh"]["p_vs_champion"]
    assert p_champion > 0.05 and decision.p_value == p_champion
    assert decision.action == "keep"
    loose = decide_promotion(
        [_s("fresh", FIRST)],
        champion=champion,
        naive=_s("naive", SECOND),
        champion_version=4,
        max_p_value=1.0,
    )
    assert loose.action == "promote"


def test_without_weekly_losses_the_test_is_untestable() -> None:
    plain = [Score("fresh", 3.0, 1.0)]
    reported = decide_promotion(plain, champion=None, naive=Score("naive", 5.0, 1.0))
    assert reported.action == "promote" and reported.p_value is None
    assert "Diebold-Mariano" not in reported.reason
    required = decide_promotion(
        plain, champion=None, naive=Score("naive", 5.0, 1.0), max_p_value=0.05
    )
    assert required.action == "keep" and "untestable" in required.reason


def test_the_max_p_value_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRICECAST_PROMOTION_MAX_PVALUE", raising=False)
    assert Settings().promotion_max_pvalue is None
    monkeypatch.setenv("PRICECAST_PROMOTION_MAX_PVALUE", "0.05")
    assert Settings().promotion_max_pvalue == 0.05
    with pytest.raises(ConfigError):
        decide_promotion([], champion=None, naive=Score("naive", 5.0, 1.0), max_p_value=0.0)
