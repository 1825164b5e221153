"""`pricecast db upgrade`, `ingest` and `weeks` through the real CLI entry point."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from flows.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_db_upgrade_on_the_embedded_default(isolated_home: Path, capsys) -> None:
    code, out, err = run(["db", "upgrade"], capsys)
    assert code == 0, err
    assert out.startswith(f"database sqlite:///{isolated_home}/pricecast.db is at revision")
    assert (isolated_home / "pricecast.db").exists()


def test_ingest_then_weeks(tmp_path: Path, capsys) -> None:
    # 2024-01-01 is a Monday: two complete ISO weeks, then Mon..Wed of the third.
    csv = tmp_path / "btc.csv"
    csv.write_text(
        "Date,Close\n" + "".join(f"2024-01-{d:02d},{100 + d}\n" for d in range(1, 18) if d != 10)
    )
    code, out, err = run(["ingest", "--ticker", "BTC-USD", "--source", f"csv:{csv}"], capsys)
    assert code == 0, err
    assert f"BTC-USD from csv:{csv}: 16 rows read, 16 inserted" in out
    assert "missing days in that range: 1 (2024-01-10)" in out
    code, out, err = run(
        ["weeks", "--ticker", "BTC-USD", "--as-of", "2024-01-17", "--json"], capsys
    )
    assert code == 0, err
    report = json.loads(out)
    assert (report["complete_weeks"], report["incomplete_weeks"]) == (1, 2)
    assert report["missing_dates"] == ["2024-01-10"]
    assert [w["week_start"] for w in report["last_weeks"]] == [
        "2024-01-01",
        "2024-01-08",
        "2024-01-15",
    ]
    assert report["last_weeks"][0]["closes"] == [101.0, 102.0, 103.0, 104.0, 105.0, 106.0, 107.0]
    code, out, _ = run(["weeks", "--as-of", "2024-01-07"], capsys)
    assert code == 0
    assert "complete weeks: 1, incomplete weeks: 0, missing days: 0" in out
    assert "2024-W01 (2024-01-01)  complete: 101.00 102.00" in out


def test_ingest_json_summary_and_idempotence(capsys) -> None:
    argv = ["ingest", "--source", "synthetic", "--start", "2023-01-01", "--as-of", "2023-03-31"]
    code, out, _ = run([*argv, "--json"], capsys)
    assert code == 0 and json.loads(out)["inserted"] == 90
    code, out, _ = run([*argv, "--json"], capsys)
    summary = json.loads(out)
    assert (summary["inserted"], summary["unchanged"]) == (0, 90)


def test_a_refused_file_prints_one_line_per_problem_and_exits_1(tmp_path: Path, capsys) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("date,close\n2024-01-01,1\n2024-01-02,-1\nnope,2\n")
    code, out, err = run(["ingest", "--source", f"csv:{csv}"], capsys)
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"error: refused csv:{csv}: 2 invalid row(s), nothing written (fix them, or pass "
        "--skip-invalid to load the valid rows and record the others in rejected_rows):",
        f"{csv} line 3: close must be > 0, got -1",
        f"{csv} line 4: date 'nope' is not a date (expected YYYY-MM-DD)",
    ]
    code, out, _ = run(["ingest", "--source", f"csv:{csv}", "--skip-invalid"], capsys)
    assert code == 0 and "1 inserted, 0 updated, 0 unchanged, 2 rejected" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ingest", "--source", "ftp:x"], "error: unknown source 'ftp:x'"),
        (["ingest", "--source", "csv:/no/such.csv"], "error: /no/such.csv: file not found"),
        (
            ["ingest", "--source", "synthetic", "--as-of", "31.01.2024"],
            "error: --as-of '31.01.2024' is not a date",
        ),
        (["weeks", "--as-of", "2024-02-30"], "error: --as-of '2024-02-30' is not a date"),
        (["weeks", "--ticker", "NONE"], "error: no prices stored for NONE"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(argv, message, capsys) -> None:
    code, _, err = run(argv, capsys)
    assert code == 1
    assert err.startswith(message) and len(err.strip().splitlines()) == 1


def test_database_down_is_one_line_with_the_password_masked(monkeypatch, capsys) -> None:
    from pricecast.settings import get_settings

    url = f"postgresql+psycopg2://bob:hunter2@127.0.0.1:{_closed_port()}/prices"
    monkeypatch.setenv("PRICECAST_DATABASE_URL", url)
    get_settings.cache_clear()
    for argv in (["db", "upgrade"], ["weeks"], ["ingest", "--source", "synthetic"]):
        code, _, err = run(argv, capsys)
        assert code == 1
        assert err.startswith("error: database unreachable at postgresql+psycopg2://bob:***@")
        assert "hunter2" not in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(capsys) -> None:
    from pricecast.errors import SourceError

    with pytest.raises(SourceError):
        main(["--debug", "ingest", "--source", "ftp:x"])


@pytest.mark.parametrize("command", [["db", "upgrade"], ["ingest"], ["weeks"]])
def test_help(command, capsys) -> None:
    code, out, _ = run([*command, "--help"], capsys)
    assert code == 0 and "Usage:" in out


def test_environment_defaults_are_set_before_any_command_can_import_prefect(monkeypatch) -> None:
    """Prefect and MLflow read their settings when imported: the CLI must not import Prefect
    before `main` puts its defaults (and MLflow's) into the environment."""
    import os
    import subprocess
    import sys

    from pricecast.settings import ENVIRONMENT_DEFAULTS

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, flows.cli; print('prefect' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "False"
    for name in ENVIRONMENT_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert {name: os.environ[name] for name in ENVIRONMENT_DEFAULTS} == ENVIRONMENT_DEFAULTS
