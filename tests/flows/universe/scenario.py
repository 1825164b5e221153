"""The universe scenario both paths (in-process and on a work pool) are held to: three tickers
with learnable prices and one whose CSV does not exist; the night completes the three, reports
the fourth; once its file exists, a rerun runs only that one."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from flows.tracking.tracker import Tracker
from storage.db import make_engine, session_scope
from storage.runs import forecasts_for, get_run
from tests.flows.nightly_data import LEARNING_EPOCHS, NIGHT_1, SMALL, trend_prices, write_csv

GOOD = ("UNI-A", "UNI-B", "UNI-C")
MISSING = "UNI-MISSING"
AS_OF: dt.date = NIGHT_1
#: The nightly's tiny settings (tests/flows/nightly_data.py), for every process through the env.
SMALL_ENV = {
    "PRICECAST_EPOCHS": str(LEARNING_EPOCHS),
    "PRICECAST_HOLDOUT_WEEKS": str(SMALL["holdout_weeks"]),
    "PRICECAST_WINDOW_WEEKS": str(SMALL["window_weeks"]),
}


def write_universe(folder: Path) -> tuple[Path, Path]:
    """The import file (ticker,source) and the path of the CSV that does not exist yet."""
    lines = ["ticker,source"]
    for scale, ticker in enumerate(GOOD, start=1):
        prices = trend_prices()
        for column in ("open", "high", "low", "close"):
            prices[column] = prices[column] * scale
        lines.append(f"{ticker},csv:{write_csv(folder / f'{ticker}.csv', prices)}")
    missing = folder / f"{MISSING}.csv"
    lines.append(f"{MISSING},csv:{missing}")
    universe = folder / "universe.csv"
    universe.write_text("\n".join(lines) + "\n")
    return universe, missing


def fix_missing(missing: Path) -> None:
    write_csv(missing, trend_prices())


def by_ticker(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["ticker"]: t for t in payload["tickers"]}


def check_first_night(payload: dict[str, Any], database_url: str, mlflow_uri: str) -> None:
    """Three done (trained, promoted, champion, 7 forecasts), the missing CSV failed with the
    ingest's own message."""
    assert payload["as_of"] == AS_OF.isoformat()
    assert payload["failed"] == 1
    tickers = by_ticker(payload)
    assert sorted(tickers) == sorted([*GOOD, MISSING])
    failed = tickers[MISSING]
    assert (failed["status"], failed["trained"], failed["champion_version"]) == (
        "failed",
        False,
        None,
    )
    assert f"{MISSING}.csv: file not found" in failed["error"]
    assert failed["error"].startswith("SourceError: ")
    tracker = Tracker(mlflow_uri)
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            for ticker in GOOD:
                outcome = tickers[ticker]
                assert outcome["status"] == "done" and outcome["error"] is None, outcome
                assert outcome["trained"] is True
                assert outcome["promoted"] in {"retrain", "fresh"}
                champion = tracker.champion(ticker)
                assert champion is not None and champion.version == outcome["champion_version"]
                assert len(forecasts_for(session, ticker=ticker, as_of=AS_OF)) == 7
                night = get_run(session, ticker=ticker, as_of=AS_OF)
                assert night is not None and (night.status, night.attempts) == ("done", 1)
            night = get_run(session, ticker=MISSING, as_of=AS_OF)
            assert night is not None and night.status == "failed"
            assert night.error == failed["error"]
            assert tracker.champion(MISSING) is None
    finally:
        engine.dispose()
    assert payload["timings"]["train_seconds"] > 0
    assert payload["timings"]["total_seconds"] >= payload["timings"]["train_seconds"] / 2


def check_rerun(payload: dict[str, Any], database_url: str) -> None:
    """Only the fixed ticker ran (and trained); the others were skipped, their rows untouched."""
    assert payload["failed"] == 0
    tickers = by_ticker(payload)
    assert {t: o["status"] for t, o in tickers.items()} == {
        **dict.fromkeys(GOOD, "skipped"),
        MISSING: "done",
    }
    assert tickers[MISSING]["trained"] is True and tickers[MISSING]["error"] is None
    assert tickers[MISSING]["champion_version"] is not None
    assert not any(tickers[t]["trained"] for t in GOOD)
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            for ticker in GOOD:
                night = get_run(session, ticker=ticker, as_of=AS_OF)
                assert night is not None and night.attempts == 1
                assert tickers[ticker]["champion_version"] == night.champion_version
            night = get_run(session, ticker=MISSING, as_of=AS_OF)
            assert night is not None and (night.status, night.attempts) == ("done", 2)
            assert len(forecasts_for(session, ticker=MISSING, as_of=AS_OF)) == 7
    finally:
        engine.dispose()
