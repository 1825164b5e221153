"""The promotion gate (pure), the rollback stack, and the audited alias moves on a real local
MLflow store and database: the audit row and the alias move commit together or not at all."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session

from flows.night.policy import Score, decide_promotion, rollback_target
from flows.tracking.promotion import (
    TrainedCandidate,
    apply_decision,
    promote_manually,
    record_external_move,
    rollback,
)
from flows.tracking.tracker import Tracker
from pricecast.errors import ConfigError, DataError
from storage.db import ensure_schema, make_engine, session_scope
from storage.runs import Promotion, alias_moves
from tests.flows.tracking.mlflow_store import logged_model_dir, register_versions


def _s(name: str, mape: float, rmse: float = 1.0) -> Score:
    return Score(name, mape, rmse)


def test_the_best_candidate_beating_champion_and_naive_is_promoted() -> None:
    decision = decide_promotion(
        [_s("retrain", 4.0), _s("fresh", 3.0)],
        champion=_s("champion", 3.5),
        naive=_s("naive", 5.0),
        champion_version=7,
    )
    assert (decision.action, decision.candidate) == ("promote", "fresh")
    assert "fresh MAPE 3.000 % beats naive (5.000 %) and champion v7 (3.500 %)" in decision.reason
    assert decision.numbers["champion"] == {"mape": 3.5, "rmse": 1.0, "version": 7}
    assert decision.numbers["candidates"]["retrain"]["mape"] == 4.0


def test_a_candidate_worse_than_the_champion_is_not_promoted() -> None:
    decision = decide_promotion(
        [_s("fresh", 3.0)], champion=_s("champion", 2.9), naive=_s("naive", 5.0)
    )
    assert (decision.action, decision.candidate) == ("keep", None)
    assert "does not beat champion (2.900 %)" in decision.reason
    assert "the champion stays" in decision.reason


def test_nothing_worse_than_naive_is_promoted_even_without_champion() -> None:
    decision = decide_promotion(
        [_s("fresh", 6.0), _s("retrain", 5.5)], champion=None, naive=_s("naive", 5.0)
    )
    assert decision.action == "keep"
    assert "best candidate retrain MAPE 5.500 % does not beat naive (5.000 %)" in decision.reason
    assert "naive serves" in decision.reason
    # Beating the champion is not enough when naive is better still.
    worse_than_naive = decide_promotion(
        [_s("fresh", 4.5)], champion=_s("champion", 6.0), naive=_s("naive", 4.0)
    )
    assert worse_than_naive.action == "keep"


def test_no_champion_means_beating_naive_is_enough() -> None:
    decision = decide_promotion([_s("retrain", 4.9)], champion=None, naive=_s("naive", 5.0))
    assert (decision.action, decision.candidate) == ("promote", "retrain")


def test_the_margin_and_ties() -> None:
    tie = decide_promotion([_s("fresh", 5.0)], champion=None, naive=_s("naive", 5.0))
    assert tie.action == "keep"
    within_margin = decide_promotion(
        [_s("fresh", 4.6)], champion=None, naive=_s("naive", 5.0), margin=0.5
    )
    assert within_margin.action == "keep"
    beyond_margin = decide_promotion(
        [_s("fresh", 4.4)], champion=None, naive=_s("naive", 5.0), margin=0.5
    )
    assert beyond_margin.action == "promote"
    with pytest.raises(ConfigError, match="margin"):
        decide_promotion([_s("fresh", 1.0)], champion=None, naive=_s("naive", 5.0), margin=-1)


def test_unscored_candidates_keep_the_champion() -> None:
    decision = decide_promotion([_s("fresh", float("nan"))], champion=None, naive=_s("naive", 5.0))
    assert decision.action == "keep"
    assert decide_promotion([], champion=None, naive=_s("naive", 5.0)).action == "keep"


def _move(action: str, version: int | None) -> Promotion:
    return Promotion(
        ticker="X",
        as_of=dt.date(2024, 1, 7),
        action=action,
        model_name="m",
        model_version=version,
        previous_version=None,
        reason="",
        actor="t",
    )


def test_rollback_walks_back_the_alias_history_like_a_stack() -> None:
    moves = [_move("promote", 1), _move("promote", 3), _move("manual-promote", 4)]
    assert rollback_target(moves) == 3
    moves.append(_move("rollback", 3))
    assert rollback_target(moves) == 1  # a second rollback goes further back, not to 4
    moves.append(_move("rollback", 1))
    assert rollback_target(moves) is None
    assert rollback_target([]) is None


# --- the audited alias moves --------------------------------------------------------------------

AS_OF = dt.date(2020, 9, 6)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    """One MLflow store for the module (its schema takes seconds); each test its own ticker."""
    root = tmp_path_factory.mktemp("mlflow")
    return Tracker(f"sqlite:///{root / 'mlflow.db'}", artifact_root=root / "artifacts")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'pricecast.db'}")
    ensure_schema(engine)
    yield engine
    engine.dispose()


@contextmanager
def commits_fail(engine: Engine) -> Iterator[None]:
    """Every commit to `engine` fails, as when the database goes away at the last moment (the
    MLflow store's own sessions commit as usual)."""

    def refuse(session: Session) -> None:
        if session.bind is engine:
            raise RuntimeError("the database went away at commit")

    event.listen(Session, "before_commit", refuse)
    try:
        yield
    finally:
        event.remove(Session, "before_commit", refuse)


def _audit_rows(engine: Engine, ticker: str) -> list[tuple[str, int | None, int | None]]:
    with session_scope(engine) as session:
        return [
            (m.action, m.model_version, m.previous_version)
            for m in alias_moves(session, ticker=ticker)
        ]


def _champion(tracker: Tracker, ticker: str) -> int | None:
    found = tracker.champion(ticker)
    return found.version if found is not None else None


def test_manual_promotions_and_a_rollback_are_audited_alias_moves(
    tracker: Tracker, engine: Engine, tmp_path: Path
) -> None:
    ticker = "MAN"
    one, two = register_versions(tracker, ticker, 2, tmp_path)
    by_hand = partial(promote_manually, tracker=tracker, engine=engine, ticker=ticker, actor="ops")

    by_hand(version=one, reason="first by hand")
    row = by_hand(version=two, reason="second by hand")
    assert (row.action, row.model_version, row.previous_version) == ("manual-promote", two, one)
    assert row.numbers == {"mape": "2.500000"}
    assert _champion(tracker, ticker) == two
    with pytest.raises(DataError, match="already the champion"):
        by_hand(version=two, reason="again")

    rollback(tracker=tracker, engine=engine, ticker=ticker, reason="", actor="ops")
    assert _champion(tracker, ticker) == one
    assert _audit_rows(engine, ticker) == [
        ("manual-promote", one, None),
        ("manual-promote", two, one),
        ("rollback", one, two),
    ]
    info = tracker.version(ticker, one)
    assert info is not None
    assert (info.tags["decision"], info.tags["reason"]) == ("rollback", "rollback")


def test_a_failed_commit_puts_a_manual_move_back(
    tracker: Tracker, engine: Engine, tmp_path: Path
) -> None:
    ticker = "BACK"
    one, two = register_versions(tracker, ticker, 2, tmp_path)
    by_hand = partial(promote_manually, tracker=tracker, engine=engine, ticker=ticker, actor="ops")
    by_hand(version=one, reason="first")

    with commits_fail(engine), pytest.raises(RuntimeError, match="went away"):
        by_hand(version=two, reason="lost")

    assert _champion(tracker, ticker) == one
    assert _audit_rows(engine, ticker) == [("manual-promote", one, None)]


def _tonight(tracker: Tracker, ticker: str, tmp_path: Path, mape: float) -> TrainedCandidate:
    run_id, model_uri = logged_model_dir(tracker, tracker.ensure_experiment(ticker), tmp_path)
    return TrainedCandidate(
        name="fresh",
        score=Score("fresh", mape, 1.0),
        run_id=run_id,
        model_uri=model_uri,
        model_id=None,
        metadata={"window_weeks": "40"},
    )


def _gate(
    tracker: Tracker, engine: Engine, ticker: str, candidate: TrainedCandidate
) -> tuple[int | None, dict[str, int]]:
    champion = tracker.champion(ticker)
    decision = decide_promotion(
        [candidate.score],
        champion=Score("champion", 3.0, 1.0) if champion else None,
        naive=Score("naive", 4.0, 1.0),
        champion_version=champion.version if champion else None,
    )
    applied = apply_decision(
        tracker=tracker,
        engine=engine,
        ticker=ticker,
        as_of=AS_OF,
        decision=decision,
        trained=[candidate],
        champion=champion,
        training_cutoff=AS_OF,
        run_ids={"parent": "parent-run", "fresh": candidate.run_id},
    )
    return applied.promoted_version, applied.versions


def test_the_gates_decision_registers_audits_and_moves_the_alias(
    tracker: Tracker, engine: Engine, tmp_path: Path
) -> None:
    ticker = "GATE"
    promoted, versions = _gate(tracker, engine, ticker, _tonight(tracker, ticker, tmp_path, 2.0))
    assert promoted == versions["fresh"] == _champion(tracker, ticker)

    kept, rejected = _gate(tracker, engine, ticker, _tonight(tracker, ticker, tmp_path, 3.5))
    assert kept is None
    assert _champion(tracker, ticker) == promoted
    info = tracker.version(ticker, rejected["fresh"])
    assert info is not None and info.tags["decision"] == "rejected"
    assert _audit_rows(engine, ticker) == [("promote", promoted, None)]
    with session_scope(engine) as session:
        actions = session.scalars(select(Promotion.action).order_by(Promotion.id)).all()
    assert actions == ["promote", "keep"]


@pytest.mark.parametrize("has_champion", [False, True])
def test_a_failed_commit_after_the_gate_moved_the_alias_puts_it_back(
    tracker: Tracker, engine: Engine, tmp_path: Path, has_champion: bool
) -> None:
    ticker = f"FAIL{int(has_champion)}"
    before = None
    if has_champion:
        before, _ = _gate(tracker, engine, ticker, _tonight(tracker, ticker, tmp_path, 2.0))
    candidate = _tonight(tracker, ticker, tmp_path, 1.0)  # better: the gate promotes it

    with commits_fail(engine), pytest.raises(RuntimeError, match="went away"):
        _gate(tracker, engine, ticker, candidate)

    assert _champion(tracker, ticker) == before
    with session_scope(engine) as session:
        rows = session.scalar(select(func.count()).select_from(Promotion))
    assert rows == (1 if has_champion else 0)
    newest = tracker.versions(ticker)[0]
    assert newest.run_id == candidate.run_id
    assert newest.tags["decision"] == "failed"  # registered, never decided: not left pending


def test_the_gate_describes_versions_and_tags_every_scored_run(
    tracker: Tracker, engine: Engine, tmp_path: Path
) -> None:
    ticker = "DESC"
    promoted, _ = _gate(tracker, engine, ticker, _tonight(tracker, ticker, tmp_path, 2.0))
    assert promoted is not None
    version = tracker.client.get_model_version(f"pricecast-{ticker}", str(promoted))
    assert version.description == (
        "promoted as of 2020-09-06: MAPE 2.00 % vs naive 4.00 % (no champion before)"
    )
    assert version.tags["champion_mape"] == "none"  # not blank on the first version
    model = tracker.client.get_registered_model(f"pricecast-{ticker}")
    assert f"@champion is version {promoted}" in model.description

    kept_candidate = _tonight(tracker, ticker, tmp_path, 3.5)
    _, rejected = _gate(tracker, engine, ticker, kept_candidate)
    second = tracker.client.get_model_version(f"pricecast-{ticker}", str(rejected["fresh"]))
    assert (second.description or "").startswith(
        "rejected as of 2020-09-06: MAPE 3.50 % vs naive 4.00 % vs champion 3.00 %"
    )
    run = tracker.client.get_run(kept_candidate.run_id)
    assert run.data.tags["decision"] == "rejected"


def test_the_night_records_an_alias_moved_outside_pricecast(
    tracker: Tracker, engine: Engine, tmp_path: Path
) -> None:
    ticker = "EXT"
    promoted, _ = _gate(tracker, engine, ticker, _tonight(tracker, ticker, tmp_path, 2.0))
    (other,) = register_versions(tracker, ticker, 1, tmp_path)

    def notice() -> str | None:
        with session_scope(engine) as session:
            return record_external_move(
                session, ticker=ticker, as_of=AS_OF, champion=tracker.champion(ticker)
            )

    assert notice() is None  # registry and audit agree
    # Someone moves the alias in the MLflow UI (MLflow's API underneath).
    tracker.client.set_registered_model_alias(f"pricecast-{ticker}", "champion", str(other))
    note = notice()
    assert note is not None
    assert f"points at version {other}, but pricecast last put it at version {promoted}" in note
    assert _audit_rows(engine, ticker)[-1] == ("external-move", other, promoted)
    assert notice() is None  # recorded once

    tracker.client.delete_registered_model_alias(f"pricecast-{ticker}", "champion")
    assert "no version (alias removed)" in (notice() or "")
    assert _audit_rows(engine, ticker)[-1] == ("external-move", None, other)
