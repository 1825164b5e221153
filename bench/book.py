"""The book's benchmark, scored honestly: Bitcoin as of 2017-11-05, 19 held-out ISO weeks.

    .venv/bin/python bench/book.py ../shared/data/bitcoin_historical_prices.csv [--seeds 0-4]

Per candidate: median and range over seeds of RMSE ($) and MAPE (%), median training and
scoring seconds, and the process's peak memory so far. Baselines do not depend on the seed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from forecasting.base import Forecaster, NotFittedError  # noqa: E402
from forecasting.strategies import STRATEGIES  # noqa: E402
from forecasting.weeks import (  # noqa: E402
    CLOSE,
    DATE,
    DAY_COLUMNS,
    complete_weeks,
    from_point_relative,
    group_iso_weeks,
    point_relative,
)

AS_OF = "2017-11-05"
BOOK_MAPE = 8.4  # bitcoin_lstm_v0 in the book, with its leaky denormalisation
BOOK_TRAIN_START = pd.Timestamp("2016-01-01")
BOOK_WEEKS = 76


class BookLSTM(Forecaster):
    """The book's own protocol, for comparison only: one training sample (the 76 weeks from
    2016 before the last training week -> that week), every week relative to its own first close,
    100 epochs, batch 1. `leaky=True` turns predictions into dollars with the target week's
    first close, as the book does — a price unknown when the forecast is made."""

    def __init__(self, *, seed: int, leaky: bool, epochs: int = 100) -> None:
        self.name = "book-v0-leaky" if leaky else "book-v0-honest"
        self.seed, self.leaky, self.epochs = seed, leaky, epochs
        self.model = None

    def _relative(self, weeks: pd.DataFrame, target: pd.Timestamp) -> np.ndarray:
        closes = weeks.loc[weeks.index < target, list(DAY_COLUMNS)].to_numpy()[-BOOK_WEEKS:]
        return point_relative(closes, closes[:, :1])

    def fit(self, weeks: pd.DataFrame, *, train_until: pd.Timestamp) -> BookLSTM:
        from forecasting import model as lstm

        used = complete_weeks(weeks)
        used = used[(used.index >= BOOK_TRAIN_START) & (used.index < train_until)]
        target = used.index[-1]
        x = self._relative(used, target)[None]
        y = point_relative(
            used.loc[[target], list(DAY_COLUMNS)].to_numpy(), used.loc[target, DAY_COLUMNS[0]]
        )
        config = lstm.LSTMConfig(window_weeks=BOOK_WEEKS, epochs=self.epochs, batch_size=1)
        self.model = lstm.build_lstm(config, seed=self.seed)
        lstm.train(
            self.model, x, y, learning_rate=1e-3, epochs=self.epochs, batch_size=1, seed=self.seed
        )
        return self

    def predict(self, weeks: pd.DataFrame, target_weeks) -> np.ndarray:  # type: ignore[no-untyped-def]
        from forecasting.model import predict_relative

        if self.model is None:
            raise NotFittedError(self.name)
        inputs = np.stack([self._relative(weeks, t) for t in target_weeks])
        relative = predict_relative(self.model, inputs)
        if self.leaky:
            base = weeks.loc[list(target_weeks), DAY_COLUMNS[0]].to_numpy()
        else:
            base = np.array(
                [weeks.loc[weeks.index < t, DAY_COLUMNS[-1]].iloc[-1] for t in target_weeks]
            )
        return from_point_relative(relative, base[:, None])

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.name, "leaky": self.leaky, "epochs": self.epochs}


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,3' -> [0, 3]."""
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(part) for part in text.split(",")]


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def summarise(name: str, runs: list[dict[str, float]]) -> dict[str, Any]:
    def spread(key: str) -> dict[str, float]:
        values = [run[key] for run in runs]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    return {
        "name": name,
        "seeds": len(runs),
        "rmse": spread("rmse"),
        "mape": spread("mape"),
        "mape_per_seed": [round(run["mape"], 3) for run in runs],
        "train_seconds": statistics.median(run["train_seconds"] for run in runs),
        "predict_seconds": statistics.median(run["predict_seconds"] for run in runs),
        "peak_memory_mb": max(run["peak_memory_mb"] for run in runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="bitcoin_historical_prices.csv (the book's data)")
    parser.add_argument("--as-of", default=AS_OF)
    parser.add_argument("--holdout-weeks", type=int, default=19)
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,2")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--epochs", type=int, default=None, help="default: the model's own")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an LSTMConfig field, e.g. --config history_windows=0 (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--book-protocol",
        action="store_true",
        help="also run the book's own setup (76-week single sample), leaky and honest",
    )
    args = parser.parse_args(argv)

    daily = pd.read_csv(args.csv)[["date", "close"]].rename(columns={"date": DATE, "close": CLOSE})
    weeks = group_iso_weeks(daily, as_of=pd.Timestamp(args.as_of))
    started = time.perf_counter()
    from forecasting.backtest import backtest
    from forecasting.candidates import build_candidates
    from forecasting.model import LSTMConfig
    from forecasting.strategies import check_strategies

    strategies = [s.strip() for s in args.strategies.split(",")]
    check_strategies(strategies)
    overrides = dict(item.split("=", 1) for item in args.config)
    unknown = set(overrides) - set(LSTMConfig().to_dict())
    if unknown:
        parser.error(f"unknown --config field(s) {sorted(unknown)}")
    config = LSTMConfig.from_dict(LSTMConfig().to_dict() | overrides)
    if args.book_protocol:
        strategies += ["book-v0-leaky", "book-v0-honest"]
    seeds = parse_seeds(args.seeds)
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in strategies}
    held_out: list[str] = []
    for strategy in strategies:
        # Baselines ignore the seed: one run is all there is.
        for seed in seeds if strategy not in ("naive", "drift") else seeds[:1]:
            if strategy.startswith("book"):
                candidate: Forecaster = BookLSTM(seed=seed, leaky=strategy.endswith("leaky"))
            else:
                (candidate,) = build_candidates(
                    [strategy], seed=seed, epochs=args.epochs, config=config
                )
            result = backtest(
                weeks,
                as_of=pd.Timestamp(args.as_of),
                candidates=[candidate],
                holdout_weeks=args.holdout_weeks,
            )
            held_out = [w.date().isoformat() for w in result.held_out_weeks]
            scored = result.candidates[0]
            runs[strategy].append(
                {
                    "rmse": scored.rmse,
                    "mape": scored.mape,
                    "train_seconds": scored.train_seconds,
                    "predict_seconds": scored.predict_seconds,
                    "peak_memory_mb": peak_memory_mb(),
                }
            )
            print(
                f"  {strategy} seed {seed}: RMSE {scored.rmse:.1f} MAPE {scored.mape:.2f} % "
                f"train {scored.train_seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    summary = {
        "as_of": args.as_of,
        "config": config.to_dict(),
        "held_out_weeks": held_out,
        "seeds": seeds,
        "candidates": [summarise(name, found) for name, found in runs.items()],
        "total_seconds": time.perf_counter() - started,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"as of {args.as_of}: {len(held_out)} held-out ISO weeks {held_out[0]} .. {held_out[-1]}, "
        f"seeds {args.seeds}"
    )
    print(f"LSTM config: {config.to_dict()}")
    print(
        "| candidate | RMSE $ median (range) | MAPE % median (range) | train s | score s "
        "| peak MB |"
    )
    print("|---|---|---|---|---|---|")
    for c in summary["candidates"]:
        print(
            f"| {c['name']} | {c['rmse']['median']:.1f} ({c['rmse']['min']:.1f}–"
            f"{c['rmse']['max']:.1f}) | {c['mape']['median']:.2f} ({c['mape']['min']:.2f}–"
            f"{c['mape']['max']:.2f}) | {c['train_seconds']:.1f} | {c['predict_seconds']:.3f} "
            f"| {c['peak_memory_mb']:.0f} |"
        )
    print(f"book's bitcoin_lstm_v0 (leaky): MAPE {BOOK_MAPE} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
