"""`pricecast status`: a night left `running` by a dead process and a Prefect run left
Submitting are listed with why, and `--fix` closes them; a night that is really running is not
touched."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from flows.cli import main
from pricecast.settings import get_settings
from storage.db import ensure_schema, make_engine, session_scope
from storage.locks import ticker_lock
from storage.runs import begin_run, get_run

AS_OF = dt.date(2024, 3, 10)


def _status(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    with pytest.raises(SystemExit) as exited:
        main(["status", "--json", *argv])
    out, err = capsys.readouterr()
    assert exited.value.code in (0, None), err
    return json.loads(out)


def _open_night(ticker: str) -> None:
    engine = make_engine(get_settings().resolved_database_url)
    ensure_schema(engine)
    with session_scope(engine) as session:
        begin_run(session, ticker=ticker, as_of=AS_OF, last_complete_week=None, flow_run_id="f1")
    engine.dispose()


def _status_of(ticker: str) -> str:
    engine = make_engine(get_settings().resolved_database_url)
    with session_scope(engine) as session:
        run = get_run(session, ticker=ticker, as_of=AS_OF)
        assert run is not None
        status = run.status
    engine.dispose()
    return status


def test_a_night_running_without_its_process_is_listed_then_closed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    get_settings.cache_clear()
    _open_night("DEAD")  # its process "died": the row stays running, nobody holds the lock
    _open_night("LIVE")
    settings = get_settings()
    engine = make_engine(settings.resolved_database_url)
    with ticker_lock(
        engine, name="nightly:LIVE", timeout_seconds=5, lock_dir=settings.resolved_home / "locks"
    ):
        report = _status(capsys)
        assert [s["what"] for s in report["stuck"]] == [
            "nightly DEAD as of 2024-03-10, flow run f1"
        ]
        (stuck,) = report["stuck"]
        assert "no process holds the ticker's lock" in stuck["why"] and not stuck["fixed"]
        assert _status_of("DEAD") == "running"

        fixed = _status(capsys, "--fix")
        assert [s["fixed"] for s in fixed["stuck"]] == [True]
        assert _status_of("DEAD") == "failed"
        assert _status_of("LIVE") == "running"  # its night really runs: left alone
    engine.dispose()
    assert _status(capsys)["stuck"][0]["what"].startswith("nightly LIVE")


@pytest.mark.slow
def test_a_prefect_run_left_submitting_is_listed_then_crashed(
    capsys: pytest.CaptureFixture[str], prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PRICECAST_DATABASE_URL", f"sqlite:///{get_settings().resolved_home}/x.db")
    get_settings.cache_clear()
    with httpx.Client(base_url=prefect_server, timeout=30) as api:
        flow = api.post("/flows/", json={"name": f"status-check-{uuid.uuid4().hex[:6]}"})
        flow.raise_for_status()
        created = api.post(
            "/flow_runs/",
            json={
                "flow_id": flow.json()["id"],
                "name": "STUCK 2024-03-10",
                "state": {"type": "PENDING", "name": "Submitting"},
            },
        )
        created.raise_for_status()
        run_id = created.json()["id"]
        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            report = _status(capsys, "--pending-minutes", "0")
            mine = [s for s in report["stuck"] if run_id in s["what"]]
            assert len(mine) == 1 and "Submitting for" in mine[0]["why"]
            assert _status(capsys, "--pending-minutes", "60")["stuck"] == []  # too recent

            _status(capsys, "--pending-minutes", "0", "--fix")
        state = api.get(f"/flow_runs/{run_id}").json()["state"]
    assert state["type"] == "CRASHED"
    assert "pricecast status --fix" in state["message"]
