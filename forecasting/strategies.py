"""Strategy names and their check: the one home for what `--strategies` accepts.

Import-light on purpose (no numpy, pandas or TensorFlow): the CLI's argument parsing reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pricecast.errors import ConfigError

__all__ = ["BACKTEST_STRATEGIES", "STRATEGIES", "TRAINED_STRATEGIES", "check_strategies"]

#: Strategy names the CLI and the nightly flow accept, in the order they are reported.
STRATEGIES: tuple[str, ...] = ("fresh", "retrain", "naive", "drift")
#: The LSTM strategies a night trains (naive is always scored beside them); a night's default.
TRAINED_STRATEGIES: tuple[str, ...] = ("retrain", "fresh")
#: What `pricecast backtest` scores unless told otherwise.
BACKTEST_STRATEGIES: tuple[str, ...] = ("fresh", "retrain", "naive")


def check_strategies(strategies: Sequence[str], *, allowed: Sequence[str] = STRATEGIES) -> None:
    """Raise ConfigError unless every name is in `allowed`, named once, and there is one."""
    unknown = [s for s in strategies if s not in allowed]
    if unknown or not strategies or len(set(strategies)) != len(strategies):
        raise ConfigError(
            f"strategies {list(strategies)} are not valid: name each once, from "
            f"{', '.join(allowed)} (e.g. --strategies {','.join(allowed[:2])})"
        )
