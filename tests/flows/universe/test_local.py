"""The universe night in this process, without servers (the embedded default: SQLite database,
MLflow SQLite store, Prefect's test server): the scenario of `scenario.py`, real tiny trainings."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

import pytest

from pricecast.settings import get_settings
from storage.db import make_engine, session_scope
from storage.runs import get_run
from tests.flows.nightly_data import NIGHT_1, NIGHT_2
from tests.flows.universe.scenario import (
    AS_OF,
    GOOD,
    MISSING,
    SMALL_ENV,
    check_first_night,
    check_rerun,
    fix_missing,
    write_universe,
)
from tests.flows.universe.test_members import run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _universe_runs() -> list:  # type: ignore[type-arg]
    """The nightly-universe flow runs, newest first, with their ticker subflows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["nightly-universe"])),
            sort=FlowRunSort.START_TIME_DESC,
        )


def _children(parent_id: UUID) -> dict[str, object]:
    """Flow run name -> run of the subflows whose tracking task is in `parent_id`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])
            )
        )
    return {run.name: run for run in runs}


def _markdown(flow_run_id: UUID) -> str:
    """The universe run's own markdown artifact (its subflows have theirs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["nightly-universe"]))
        )
    (artifact,) = [a for a in found if a.flow_run_id == flow_run_id]
    return str(artifact.data)


def test_universe_night_in_process_then_a_rerun_runs_only_the_fixed_ticker(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    isolated_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in SMALL_ENV.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    universe, missing = write_universe(tmp_path)
    assert run(capsys, "universe", "import", str(universe))[0] == 0
    database_url = get_settings().resolved_database_url
    mlflow_uri = get_settings().resolved_mlflow_uri

    code, out, err = run(
        capsys, "nightly", "--all", "--as-of", AS_OF.isoformat(), "--json", "--where", "local"
    )

    assert code == 1, err[-3000:]
    first = json.loads(out)  # stdout is only the JSON
    check_first_night(first, database_url, mlflow_uri)
    parent = _universe_runs()[0]
    assert parent.state.type.value == "FAILED"
    children = _children(parent.id)
    # Each ticker's night is its own run, named after the ticker, under the universe run.
    assert set(children) == {*GOOD, MISSING}
    assert {n: r.state.type.value for n, r in children.items()} == {  # type: ignore[attr-defined]
        **dict.fromkeys(GOOD, "COMPLETED"),
        MISSING: "FAILED",
    }
    table = _markdown(parent.id)
    rows = [line for line in table.splitlines() if line.startswith(f"| {MISSING} ")]
    assert len(rows) == 1 and "file not found" in rows[0]
    assert sum(line.startswith("| UNI-") for line in table.splitlines()) == 4

    fix_missing(missing)
    code, out, err = run(capsys, "nightly", "--all", "--as-of", AS_OF.isoformat(), "--json")

    assert code == 0, err[-3000:]
    check_rerun(json.loads(out), database_url)
    rerun = _universe_runs()[0]
    assert rerun.id != parent.id and rerun.state.type.value == "COMPLETED"
    assert set(_children(rerun.id)) == {MISSING}
    # Without --json: one line per ticker.
    code, out, _ = run(capsys, "nightly", "--all", "--as-of", AS_OF.isoformat())
    assert code == 0
    assert f"  {MISSING:<12} already done" in out
    assert out.splitlines()[-1].startswith("4 ticker(s), 0 failed")


def test_universe_backfill_stops_only_the_failing_ticker_and_resumes_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SMALL_ENV.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    universe, missing = write_universe(tmp_path)
    assert run(capsys, "universe", "import", str(universe))[0] == 0
    for ticker in GOOD[1:]:
        assert run(capsys, "universe", "disable", ticker)[0] == 0
    window = ["--start", NIGHT_1.isoformat(), "--end", NIGHT_2.isoformat(), "--every", "week"]

    code, out, err = run(capsys, "backfill", "--all", *window, "--json", "--where", "local")

    assert code == 1, err[-3000:]
    first = json.loads(out)
    assert (first["nights"], first["failed"]) == (2, 1)
    tickers = {t["ticker"]: t for t in first["tickers"]}
    assert set(tickers) == {GOOD[0], MISSING}
    assert tickers[GOOD[0]] == {
        "ticker": GOOD[0], "status": "done", "replayed": 2, "trained_nights": 2,
        "skipped_done": 0, "failed_at": None, "error": None,
    }  # fmt: skip
    stopped = tickers[MISSING]
    assert (stopped["status"], stopped["replayed"], stopped["failed_at"]) == (
        "failed",
        0,
        NIGHT_1.isoformat(),
    )
    assert "file not found" in stopped["error"]
    engine = make_engine(get_settings().resolved_database_url)
    try:
        with session_scope(engine) as session:
            # The failing ticker stopped at its first night: the second was never tried.
            assert get_run(session, ticker=MISSING, as_of=NIGHT_2) is None
    finally:
        engine.dispose()

    fix_missing(missing)
    code, out, err = run(capsys, "backfill", "--all", *window, "--json")

    assert code == 0, err[-3000:]
    again = {t["ticker"]: t for t in json.loads(out)["tickers"]}
    assert (again[GOOD[0]]["status"], again[GOOD[0]]["skipped_done"]) == ("skipped", 2)
    assert (again[MISSING]["replayed"], again[MISSING]["skipped_done"]) == (2, 0)
    assert again[MISSING]["status"] == "done" and again[MISSING]["trained_nights"] >= 1
