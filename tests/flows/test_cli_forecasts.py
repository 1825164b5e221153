"""`pricecast forecast` and `pricecast accuracy` through the real CLI entry point, on a SQLite
store holding hand-made prices and forecasts (scores and coverage checked by hand)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from pricecast.settings import get_settings
from storage.db import ensure_schema, make_engine, session_scope
from storage.runs import record_actuals, store_forecast

D = dt.date
# Week 1 (2024-01-01..07) closes at 100; week 2 rises 100..112; week 3 starts 120, 121, 122.
CLOSES = {D(2024, 1, d): 100.0 for d in range(1, 8)}
CLOSES.update({D(2024, 1, 8 + i): 100.0 + 2 * i for i in range(7)})
CLOSES.update({D(2024, 1, 15 + i): 120.0 + i for i in range(3)})
WEEK2 = [D(2024, 1, 8 + i) for i in range(7)]
WEEK3 = [D(2024, 1, 15 + i) for i in range(7)]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.fixture
def stored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "prices.csv"
    csv.write_text("Date,Close\n" + "".join(f"{d},{c}\n" for d, c in sorted(CLOSES.items())))
    code, _, err = run(["ingest", "--ticker", "BTC-USD", "--source", f"csv:{csv}"], capsys)
    assert code == 0, err
    engine = make_engine(get_settings().resolved_database_url)
    ensure_schema(engine)
    with session_scope(engine) as session:
        # Made as of Sunday 01-07 by version 3: 101 every day, 80 % band ±2, 95 % band ±6.
        store_forecast(
            session,
            ticker="BTC-USD",
            as_of=D(2024, 1, 7),
            closes=dict.fromkeys(WEEK2, 101.0),
            model_name="pricecast-BTC-USD",
            model_version=3,
            is_baseline=False,
            bands={
                day: {"lower_80": 99.0, "upper_80": 103.0, "lower_95": 95.0, "upper_95": 107.0}
                for day in WEEK2
            },
        )
        # Made as of 01-14 by naive (no bands): 112 every day; three days known so far.
        store_forecast(
            session,
            ticker="BTC-USD",
            as_of=D(2024, 1, 14),
            closes=dict.fromkeys(WEEK3, 112.0),
            model_name="naive",
            model_version=None,
            is_baseline=True,
        )
        record_actuals(session, ticker="BTC-USD", as_of=D(2024, 1, 17), actuals=CLOSES)
    engine.dispose()


def _mape(actual: list[float], predicted: float) -> float:
    a = np.array(actual)
    return float(100 * np.mean(np.abs(a - predicted) / a))


def test_forecast_shows_the_latest_with_its_intervals(stored, capsys) -> None:
    code, out, err = run(["forecast", "--ticker", "BTC-USD"], capsys)
    assert code == 0, err
    assert "BTC-USD forecast made as of 2024-01-14 by naive baseline" in out
    assert "no prediction intervals" in out

    code, out, err = run(["forecast", "--as-of", "2024-01-10", "--json"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert (payload["as_of"], payload["model_version"], payload["week_start"]) == (
        "2024-01-07",
        3,
        "2024-01-08",
    )
    assert payload["made_at"] is not None
    assert payload["days"][0] == {
        "date": "2024-01-08",
        "close": 101.0,
        "lower_80": 99.0,
        "upper_80": 103.0,
        "lower_95": 95.0,
        "upper_95": 107.0,
        "actual_close": 100.0,
    }
    code, out, _ = run(["forecast", "--as-of", "2024-01-10"], capsys)
    assert "by pricecast-BTC-USD v3" in out
    assert "Mon 2024-01-08       101.00          99.00 .. 103.00" in out


def test_accuracy_scores_forecasts_naive_and_coverage(stored, tmp_path: Path, capsys) -> None:
    plot = tmp_path / "accuracy.png"
    code, out, err = run(["accuracy", "--ticker", "BTC-USD", "--json", "--plot", str(plot)], capsys)
    assert code == 0, err
    report = json.loads(out)
    week2, week3 = report["weeks"]
    actual2 = [CLOSES[d] for d in WEEK2]  # 100, 102, ..., 112
    assert week2["days"] == 7 and week2["made_by"] == "pricecast-BTC-USD v3"
    assert week2["mape"] == pytest.approx(_mape(actual2, 101.0))
    assert week2["naive_mape"] == pytest.approx(_mape(actual2, 100.0))  # the 01-07 close
    assert week2["rmse"] == pytest.approx(np.sqrt(np.mean((np.array(actual2) - 101.0) ** 2)))
    # 80 % band [99, 103] holds 100 and 102; 95 % band [95, 107] holds 100..106.
    assert week2["coverage_80"] == pytest.approx(2 / 7)
    assert week2["coverage_95"] == pytest.approx(4 / 7)
    assert week3["days"] == 3 and week3["made_by"] == "naive baseline"
    assert week3["coverage_80"] is None and week3["coverage_80_days"] == 0
    assert week3["naive_mape"] == pytest.approx(week3["mape"])  # naive is 112, the 01-14 close
    overall = report["overall"]
    assert overall["days"] == 10 and overall["coverage_80_days"] == 7
    assert overall["coverage_95"] == pytest.approx(4 / 7)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    code, out, err = run(["accuracy", "--since", "2024-01-15"], capsys)
    assert code == 0, err
    assert "2024-01-15  naive baseline" in out and "2024-01-08" not in out
    code, out, _ = run(["accuracy"], capsys)
    assert "the 80 % band held 28.6 % and the 95 % band 57.1 % of 7 day(s)" in out


def test_clear_one_line_errors(stored, capsys) -> None:
    code, _, err = run(["forecast", "--ticker", "ETH-USD"], capsys)
    assert code == 1 and err.startswith("error: no forecast stored for ETH-USD")
    code, _, err = run(["forecast", "--as-of", "2024-13-01"], capsys)
    assert code == 1 and "--as-of '2024-13-01' is not a date" in err
    code, _, err = run(["forecast", "--as-of", "2024-01-06"], capsys)
    assert code == 1 and "made on or before 2024-01-06" in err
    code, _, err = run(["accuracy", "--since", "2024-02-01"], capsys)
    assert code == 1 and "no forecast stored for BTC-USD for days from 2024-02-01 on" in err
    code, _, err = run(["accuracy", "--plot", "out.jpg"], capsys)
    assert code == 1 and "ending in .png" in err
    assert len(err.strip().splitlines()) == 1
