"""Every unexpected CLI error is one line plus a log path; the traceback only with --debug."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

import flows.cli
from flows.cli import logs as cli_logs
from flows.cli import main


@pytest.fixture(autouse=True)
def fresh_log_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_logs, "_path", None)
    monkeypatch.setattr(cli_logs, "DEBUG", False)


def _boom(**_: object) -> None:
    raise RuntimeError("boom at postgresql://u:hunter2@db.example/prices\nsecond line")


def test_an_unexpected_error_is_one_line_and_a_log_with_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], isolated_home: Path
) -> None:
    monkeypatch.setattr(flows.cli, "app", _boom)
    with pytest.raises(SystemExit) as exited:
        main(["weeks"])
    out, err = capsys.readouterr()
    assert exited.value.code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: unexpected RuntimeError: boom at postgresql://u:")
    assert "hunter2" not in err and "--debug shows it" in err
    log = Path(lines[0].split("traceback in ", 1)[1].split(";", 1)[0])
    assert log.parent == isolated_home / "work" / "logs" and log.name.startswith("cli-")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "_boom" in text
    assert "hunter2" not in text


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows.cli, "app", _boom)
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "weeks"])


def test_prefect_error_logs_go_to_the_file_not_the_console(isolated_home: Path) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(cli_logs._PrefectErrorsToFile())
    logger = logging.getLogger("prefect.flow_runs.test_cli_errors")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info("Beginning flow run")
        try:
            raise RuntimeError("the training process died")
        except RuntimeError:
            logger.exception("Encountered exception during execution")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "Beginning flow run\n"
    text = cli_logs.log_path().read_text()
    assert "Encountered exception during execution" in text and "Traceback" in text


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PRICECAST_TRAINING_THREADS", "-1", "greater than or equal to 0"),
        ("PRICECAST_UNIVERSE_PARALLEL_NIGHTS", "two", "valid integer"),
    ],
)
def test_a_bad_setting_is_named_with_its_value_and_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    isolated_home: Path,
    variable: str,
    value: str,
    says: str,
) -> None:
    from pricecast.settings import get_settings

    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            main(["universe", "list"])
    finally:
        monkeypatch.delenv(variable)
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert exited.value.code == 1
    assert err.startswith(f"error: invalid setting {variable}='{value}': "), err
    assert says in err and "Fix or unset it" in err and len(err.strip().splitlines()) == 1
