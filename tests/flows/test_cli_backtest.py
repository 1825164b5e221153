"""`pricecast backtest` through the real CLI entry point, on synthetic prices in the database."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from flows.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.fixture
def synthetic_in_db(monkeypatch: pytest.MonkeyPatch) -> None:
    """Half a year of synthetic closes for SYN, and 4-week windows so tiny models suffice."""
    from flows.ingest.load import ingest
    from pricecast.settings import get_settings

    monkeypatch.setenv("PRICECAST_WINDOW_WEEKS", "4")
    get_settings.cache_clear()
    ingest(
        database_url=get_settings().resolved_database_url,
        ticker="SYN",
        source="synthetic:3",
        start=dt.date(2023, 1, 2),
        end=dt.date(2023, 7, 2),
    )


def test_backtest_json_scores_every_strategy_on_the_same_weeks(synthetic_in_db, capsys) -> None:
    argv = ["backtest", "--ticker", "SYN", "--as-of", "2023-06-28", "--holdout-weeks", "3"]
    code, out, err = run(
        [*argv, "--strategies", "fresh,retrain,naive,drift", "--epochs", "1", "--json"], capsys
    )
    assert code == 0, err
    report = json.loads(out)
    # 2023-06-28 is a Wednesday: the week of 2023-06-26 is not over, so it is not held out.
    assert report["held_out_weeks"] == ["2023-06-05", "2023-06-12", "2023-06-19"]
    assert report["as_of"] == "2023-06-28" and report["ticker"] == "SYN"
    assert [c["name"] for c in report["candidates"]] == ["fresh", "retrain", "naive", "drift"]
    for candidate in report["candidates"]:
        assert set(candidate) == {"name", "rmse", "mape", "train_seconds"}
        assert candidate["rmse"] > 0 and 0 < candidate["mape"] < 100
    lstm_seconds = [c["train_seconds"] for c in report["candidates"][:2]]
    assert all(seconds > 0 for seconds in lstm_seconds)

    code, out, err = run([*argv, "--strategies", "naive,drift"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        "SYN backtest as of 2023-06-28: 3 held-out weeks 2023-06-05 .. 2023-06-19 "
        "(candidates trained on target weeks before 2023-06-05)"
    )
    naive = next(c for c in report["candidates"] if c["name"] == "naive")
    assert lines[2].split() == ["naive", f"{naive['rmse']:.2f}", f"{naive['mape']:.2f}", "0.0"]


def test_user_errors_are_one_line_and_exit_1(synthetic_in_db, capsys) -> None:
    code, out, err = run(["backtest", "--ticker", "NOPE", "--as-of", "2023-06-28"], capsys)
    assert code == 1 and out == ""
    assert err == (
        "error: no prices stored for NOPE up to 2023-06-28; load some first, e.g. "
        "pricecast ingest --ticker NOPE --source synthetic\n"
    )
    code, _, err = run(["backtest", "--ticker", "SYN", "--strategies", "fresh,best"], capsys)
    assert code == 1 and err.startswith("error: strategies ['fresh', 'best'] are not valid")
    code, _, err = run(["backtest", "--ticker", "SYN", "--as-of", "2023-13-01"], capsys)
    assert code == 1 and "--as-of '2023-13-01' is not a date" in err
    code, _, err = run(
        ["backtest", "--ticker", "SYN", "--as-of", "2023-03-01", "--holdout-weeks", "19"], capsys
    )
    assert code == 1 and "held-out weeks needs more" in err
