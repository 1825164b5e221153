"""`pricecast universe ...`: add, list, enable, disable, remove, import, on the embedded default
database; each mistake is one clear line and exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.universe.members import enabled_members, normalise_source, universe_engine
from flows.universe.plan import Member
from pricecast.errors import DataError, SourceError
from pricecast.settings import get_settings
from tests.flows.universe.cli_app import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def listed(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    code, out, _ = run(capsys, "universe", "list", "--json")
    assert code == 0
    return json.loads(out)


def test_add_list_disable_enable_remove(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "eth.csv").write_text("date,close\n2024-01-01,1\n")
    assert run(capsys, "universe", "add", "BTC-USD", "--source", "synthetic:7")[0] == 0
    code, out, err = run(capsys, "universe", "add", "ETH-USD", "--source", "csv:data/eth.csv")
    assert (code, err) == (0, "")
    # A relative CSV path is stored absolute: a worker runs each flow in a temporary folder.
    assert out.strip() == f"added ETH-USD (csv:{tmp_path / 'data' / 'eth.csv'})"
    code, _, err = run(capsys, "universe", "add", "SOL-USD", "--source", "csv:/nowhere/sol.csv")
    assert code == 0 and err.startswith("note: SOL-USD: /nowhere/sol.csv does not exist")

    rows = listed(capsys)
    assert [(r["ticker"], r["enabled"]) for r in rows] == [
        ("BTC-USD", True), ("ETH-USD", True), ("SOL-USD", True),
    ]  # fmt: skip
    assert run(capsys, "universe", "disable", "SOL-USD")[1] == "SOL-USD disabled\n"
    code, out, _ = run(capsys, "universe", "list")
    assert "SOL-USD  disabled  csv:/nowhere/sol.csv" in out
    assert out.splitlines()[-1] == "3 ticker(s), 2 enabled"
    with universe_engine() as engine:
        assert [m.ticker for m in enabled_members(engine)] == ["BTC-USD", "ETH-USD"]
    assert run(capsys, "universe", "enable", "SOL-USD")[0] == 0
    assert run(capsys, "universe", "remove", "ETH-USD")[0] == 0
    assert [r["ticker"] for r in listed(capsys)] == ["BTC-USD", "SOL-USD"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["universe", "add", "BTC-USD", "--source", "ftp:x"], "error: unknown source 'ftp:x'"),
        (["universe", "add", "BTC-USD", "--source", "csv:"], "give the file"),
        (["universe", "add", "BTC-USD", "--source", "synthetic:x"], "seed must be an integer"),
        (["universe", "add", "BTC USD", "--source", "http"], "characters a symbol cannot have"),
        (["universe", "add", "OLD", "--source", "http"], "error: already in the universe: OLD"),
        (["universe", "disable", "NOPE"], "error: unknown ticker 'NOPE'"),
        (["universe", "remove", "NOPE"], "add it with `pricecast universe add NOPE"),
        (["nightly", "--all", "--ticker", "X"], "--all runs every ticker of the universe"),
        (["nightly", "--all", "--where", "moon"], "--where must be one of auto, local, pool"),
        (
            [
                "backfill",
                "--all",
                "--source",
                "http",
                "--start",
                "2024-01-01",
                "--end",
                "2024-01-02",
            ],
            "--all replays every ticker of the universe",
        ),
        (["backfill", "--start", "2024-01-01", "--end", "2024-01-02"], "backfill needs --source"),
    ],
)
def test_mistakes_are_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert run(capsys, "universe", "add", "OLD", "--source", "http")[0] == 0
    code, out, err = run(capsys, *argv)
    assert code == 1, (out, err)
    assert message in err and err.startswith("error: ") and err.count("\n") == 1
    assert [r["ticker"] for r in listed(capsys)] == ["OLD"]


def test_import_adds_every_line_or_none(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "universe.csv"
    good.write_text(
        "\ufeffTicker,Source,comment\nBTC-USD,http,main\n\nETH-USD,synthetic:3,\n"
        "SOL-USD,csv:prices/sol.csv,later\n"
    )
    code, out, err = run(capsys, "universe", "import", str(good))
    assert (code, out) == (0, f"added 3 ticker(s) from {good}\n")
    assert f"SOL-USD: {tmp_path / 'prices' / 'sol.csv'} does not exist" in err
    rows = {r["ticker"]: r["source"] for r in listed(capsys)}
    assert rows == {
        "BTC-USD": "http",
        "ETH-USD": "synthetic:3",
        "SOL-USD": f"csv:{tmp_path / 'prices' / 'sol.csv'}",
    }

    bad = tmp_path / "bad.csv"
    bad.write_text(
        "ticker,source\nADA-USD,http\nXRP-USD,ftp:nope\nADA-USD,synthetic\nDOT USD,http\n"
        "ETH-USD,http\n"
    )
    code, _, err = run(capsys, "universe", "import", str(bad))
    assert code == 1 and err.count("\n") == 1
    assert f"3 problem(s) in {bad}, nothing imported" in err
    assert f"{bad} line 3: unknown source 'ftp:nope'" in err
    assert f"{bad} line 4: ADA-USD again (first on line 2)" in err
    assert f"{bad} line 5: ticker 'DOT USD'" in err
    # The file itself is fine except ETH-USD, which is already in the universe: nothing added.
    fine = tmp_path / "fine.csv"
    fine.write_text("source,ticker\nhttp,ADA-USD\nhttp,ETH-USD\n")
    code, _, err = run(capsys, "universe", "import", str(fine))
    assert code == 1 and "already in the universe: ETH-USD" in err
    assert sorted(str(r["ticker"]) for r in listed(capsys)) == ["BTC-USD", "ETH-USD", "SOL-USD"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        ("", "empty file"),
        ("symbol,source\nBTC,http\n", "no ticker column in the header"),
        ("ticker,source\n", "no tickers below the header"),
        ("ticker,source\nBTC\n", "line 2: 1 field(s), expected ticker,source"),
    ],
)
def test_unusable_import_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "u.csv"
    if content is not None:
        path.write_text(content)
    code, _, err = run(capsys, "universe", "import", str(path))
    assert code == 1 and message in err, err


def test_source_specs_go_through_the_ingest_parser(tmp_path: Path) -> None:
    settings = get_settings()
    assert normalise_source(" http ", settings) == "http"
    assert (
        normalise_source("http:http://127.0.0.1:9/api", settings) == "http:http://127.0.0.1:9/api"
    )
    assert normalise_source("csv:a.csv", settings, cwd=tmp_path) == f"csv:{tmp_path / 'a.csv'}"
    assert normalise_source("csv:~/a.csv", settings) == "csv:~/a.csv"
    with pytest.raises(SourceError, match="unknown source"):
        normalise_source("yahoo", settings)


def test_running_only_some_tickers(capsys: pytest.CaptureFixture[str]) -> None:
    with universe_engine() as engine, pytest.raises(DataError, match="the universe is empty"):
        enabled_members(engine)
    for ticker in ("A", "B", "C"):
        run(capsys, "universe", "add", ticker, "--source", "synthetic")
    run(capsys, "universe", "disable", "C")
    with universe_engine() as engine:
        assert enabled_members(engine, ["B"]) == [Member("B", "synthetic")]
        with pytest.raises(DataError, match=r"cannot run C \(disabled\), Z \(not in the universe"):
            enabled_members(engine, ["C", "Z"])


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        (["universe"], ["add", "list", "enable", "disable", "remove", "import"]),
        (["universe", "import"], ["ticker,source"]),
        (["nightly"], ["--all", "--as-of", "--json", "--where", "--pool"]),
        (["backfill"], ["--all", "--start", "--end", "--json"]),
        (["deploy"], ["--cron", "--pool", "--pool-limit", "universe night"]),
        (["worker"], ["--pool", "--limit", "Work Pools"]),
    ],
)
def test_help_names_the_options(
    capsys: pytest.CaptureFixture[str], command: list[str], mentions: list[str]
) -> None:
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0 and "Usage:" in out
    for word in mentions:
        assert word in out, (command, word)
