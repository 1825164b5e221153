"""A night closes what an earlier crash of the same ticker left open (issue 12: no orphaned
state): rows still `running`, MLflow runs still RUNNING, versions still `decision=pending`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy.orm import Session

from flows.night import tasks
from flows.tracking.tracker import Tracker, model_name
from storage.db import ensure_schema, make_engine, session_scope
from storage.runs import begin_run, finish_run, get_run

EARLIER, TONIGHT = dt.date(2024, 3, 3), dt.date(2024, 3, 10)


def test_reconcile_closes_what_a_crashed_night_left_open(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    ensure_schema(engine)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "art")
    with session_scope(engine) as session:
        begin_run(session, ticker="ORPH", as_of=EARLIER, last_complete_week=None, flow_run_id=None)
        begin_run(session, ticker="DONE", as_of=EARLIER, last_complete_week=None, flow_run_id=None)
        finish_run(session, ticker="DONE", as_of=EARLIER, champion_version=None, timings={})
        begin_run(session, ticker="OTHER", as_of=EARLIER, last_complete_week=None, flow_run_id=None)
    experiment = tracker.ensure_experiment("ORPH")
    parent = tracker.start_parent_run(
        experiment_id=experiment, ticker="ORPH", as_of=EARLIER, flow_run_id=None, params={}
    )
    client = tracker.client
    child = client.create_run(
        experiment, tags={"pricecast.role": "candidate", "mlflow.parentRunId": parent}
    )
    foreign = client.create_run(experiment, tags={"note": "not a pricecast run"})
    client.create_registered_model(model_name("ORPH"))
    pending = client.create_model_version(
        model_name("ORPH"), source=str(tmp_path), tags={"decision": "pending"}
    )
    fenced: list[Session] = []

    closed = tasks.reconcile.fn(engine, tracker, "ORPH", TONIGHT, fenced.append)

    assert len(fenced) == 1  # the row updates commit only under the lock's fence
    assert closed["nightly_runs"] == [EARLIER]
    assert set(closed["mlflow_runs"]) == {parent, child.info.run_id}
    assert closed["versions"] == [int(pending.version)]
    with session_scope(engine) as session:
        orphan = get_run(session, ticker="ORPH", as_of=EARLIER)
        assert orphan is not None and orphan.status == "failed"
        assert orphan.error and "closed by the night of 2024-03-10" in orphan.error
        done, other = (get_run(session, ticker=t, as_of=EARLIER) for t in ("DONE", "OTHER"))
        assert done is not None and done.status == "done"
        assert other is not None and other.status == "running"  # another ticker's lock
    assert client.get_run(parent).info.status == "FAILED"
    assert client.get_run(child.info.run_id).info.status == "FAILED"
    assert client.get_run(foreign.info.run_id).info.status == "RUNNING"
    version = client.get_model_version(model_name("ORPH"), pending.version)
    assert version.tags["decision"] == "failed"
    # A second pass finds nothing left to close.
    again = tasks.reconcile.fn(engine, tracker, "ORPH", TONIGHT, fenced.append)
    assert again == {"nightly_runs": [], "mlflow_runs": [], "versions": []}
    engine.dispose()
