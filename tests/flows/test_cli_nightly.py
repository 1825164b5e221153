"""`pricecast nightly --json`, `champion`, `promote` and `rollback` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from pricecast.settings import get_settings
from tests.flows.nightly_data import LEARNING_EPOCHS, NIGHT_1, trend_prices, write_csv

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module", autouse=True)
def prefect_logging_on_the_session_stderr() -> None:
    """Prefect configures its logging on first use (`from prefect import flow`), binding its
    console handler to the sys.stderr of that moment. Inside a test that is capsys's buffer,
    closed after the test: every later Prefect log line in the session would then fail with
    "I/O operation on closed file" (and recurse). Configure it here, before capsys exists."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_nightly_json_then_champion_promote_and_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PRICECAST_WINDOW_WEEKS", "4")  # tiny windows: trains in seconds
    get_settings.cache_clear()
    csv = write_csv(tmp_path / "trend.csv", trend_prices())
    code, out, _ = _run(
        capsys,
        "nightly",
        "--ticker",
        "CLI",
        "--source",
        f"csv:{csv}",
        "--as-of",
        NIGHT_1.isoformat(),
        "--epochs",
        str(LEARNING_EPOCHS),
        "--holdout-weeks",
        "3",
        "--json",
    )
    assert code == 0
    night = json.loads(out)
    assert night["trained"] is True
    assert {c["name"] for c in night["candidates"]} == {"retrain", "fresh", "naive"}
    for candidate in night["candidates"]:
        assert set(candidate) >= {"name", "rmse", "mape", "train_seconds"}
    assert night["promoted"] in {"retrain", "fresh"}
    assert isinstance(night["champion_version"], int)
    assert night["timings"]["total_seconds"] >= night["timings"]["train_seconds"] > 0
    versions = {c["name"]: c["version"] for c in night["candidates"] if c["version"]}
    other = next(v for v in versions.values() if v != night["champion_version"])

    code, out, _ = _run(capsys, "champion", "--ticker", "CLI", "--json")
    status = json.loads(out)
    assert code == 0 and status["champion"]["version"] == night["champion_version"]
    assert status["champion"]["scores"]["candidate"] == night["promoted"]
    assert [h["action"] for h in status["history"]] == ["promote"]

    code, out, _ = _run(
        capsys, "promote", "--ticker", "CLI", "--version", str(other), "--reason", "try it"
    )
    assert code == 0 and f"champion is now version {other}" in out
    code, out, _ = _run(capsys, "rollback", "--ticker", "CLI", "--reason", "it was worse")
    assert code == 0 and f"rolled back to version {night['champion_version']}" in out

    code, out, _ = _run(capsys, "champion", "--ticker", "CLI")
    assert code == 0
    assert f"champion: version {night['champion_version']}" in out
    assert out.count("\n  ") == 3  # three history rows: rollback, manual-promote, promote
    assert "rollback" in out and "manual-promote" in out and "it was worse" in out

    # User mistakes: one line on stderr, exit code 1, nothing moved.
    code, _, err = _run(capsys, "rollback", "--ticker", "CLI")
    assert code == 1 and err.startswith("error: CLI: no earlier champion to roll back to")
    code, _, err = _run(capsys, "promote", "--ticker", "CLI", "--version", "99", "--reason", "x")
    assert code == 1 and "has no version 99" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "nightly", "--ticker", "CLI", "--as-of", "2020-13-01")
    assert code == 1 and "--as-of '2020-13-01' is not a date" in err
    code, out, _ = _run(capsys, "champion", "--ticker", "CLI", "--json")
    assert json.loads(out)["champion"]["version"] == night["champion_version"]
