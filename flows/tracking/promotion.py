"""Moves of the `champion` alias, each audited in `promotions`: the gate's decision, a manual
promotion, a rollback. The pure gate is `flows.night.policy.decide_promotion`.

Every move goes through `_audited_alias_move`: the audit row and the alias move share one
database transaction, so a failure anywhere leaves the champion as it was.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from flows.night.policy import Decision, Score, rollback_target
from flows.tracking.tracker import ChampionRef, Tracker, model_name
from pricecast.errors import ConfigError, DataError, ServiceUnavailable
from storage.db import session_scope
from storage.runs import Promotion, add_promotion, alias_moves, record_training


@dataclass(frozen=True)
class TrainedCandidate:
    """A candidate trained tonight and logged to MLflow, ready to become a model version."""

    name: str
    score: Score
    run_id: str
    model_uri: str
    model_id: str | None
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class AppliedDecision:
    decision: Decision
    versions: dict[str, int]
    promoted_version: int | None
    champion_version: int | None


def apply_decision(
    *,
    tracker: Tracker,
    engine: Engine,
    ticker: str,
    as_of: dt.date,
    decision: Decision,
    trained: Sequence[TrainedCandidate],
    champion: ChampionRef | None,
    training_cutoff: dt.date | None,
    run_ids: Mapping[str, str | None],
    actor: str = "nightly",
) -> AppliedDecision:
    """Register tonight's candidates (tagged with their scores, decision "pending"), then in one
    transaction: the audit row, the night marked trained, and the alias move last; finally each
    version's decision tag becomes "promoted" or "rejected".

    If the alias move fails the transaction rolls back (champion unchanged, night not trained,
    so a rerun trains again; the versions stay "pending"); if the commit fails after the move,
    the alias is put back.
    """
    versions = _register_tonight(tracker, ticker, as_of, decision, trained)
    previous = champion.version if champion is not None else None
    promoted = versions.get(decision.candidate or "") if decision.promote else None
    new_champion = promoted if promoted is not None else previous
    with _audited_alias_move(tracker, engine, ticker, to=promoted, previous=previous) as session:
        add_promotion(
            session,
            ticker=ticker,
            as_of=as_of,
            action=decision.action,
            model_name=model_name(ticker),
            model_version=new_champion,
            previous_version=previous,
            candidate=decision.candidate,
            reason=decision.reason,
            numbers={**decision.numbers, "versions": versions},
            run_ids=dict(run_ids),
            actor=actor,
        )
        record_training(
            session,
            ticker=ticker,
            as_of=as_of,
            training_cutoff=training_cutoff,
            decision=decision.action,
            promoted_version=promoted,
            champion_version=new_champion,
            mlflow_run_id=run_ids.get("parent"),
        )
    for version in versions.values():
        outcome = "promoted" if version == promoted else "rejected"
        _tag_best_effort(tracker, ticker, version, {"decision": outcome})
    return AppliedDecision(decision, versions, promoted, new_champion)


def _register_tonight(
    tracker: Tracker,
    ticker: str,
    as_of: dt.date,
    decision: Decision,
    trained: Sequence[TrainedCandidate],
) -> dict[str, int]:
    """A version per candidate trained tonight, tagged with its scores and decision "pending"."""
    champion_numbers = decision.numbers.get("champion")
    versions: dict[str, int] = {}
    for candidate in trained:
        versions[candidate.name] = tracker.register_version(
            ticker,
            model_uri=candidate.model_uri,
            run_id=candidate.run_id,
            model_id=candidate.model_id,
            metadata=candidate.metadata,
            tags={
                "as_of": as_of.isoformat(),
                "candidate": candidate.name,
                "mape": f"{candidate.score.mape:.6f}",
                "rmse": f"{candidate.score.rmse:.6f}",
                "naive_mape": f"{decision.numbers['naive']['mape']:.6f}",
                "champion_mape": ""
                if champion_numbers is None
                else f"{champion_numbers['mape']:.6f}",
                "decision": "pending",
                "reason": decision.reason[:4000],
            },
        )
    return versions


def _tag_best_effort(tracker: Tracker, ticker: str, version: int, tags: Mapping[str, str]) -> None:
    """The decision is already committed (audit row + alias); a failed tag must not undo it."""
    try:
        tracker.tag_version(ticker, version, tags)
    except ServiceUnavailable as exc:
        logging.getLogger(__name__).warning(
            "version %s keeps decision tag 'pending' (%s); the promotions table has the decision",
            version,
            exc,
        )


@contextmanager
def _audited_alias_move(
    tracker: Tracker, engine: Engine, ticker: str, *, to: int | None, previous: int | None
) -> Iterator[Session]:
    """One transaction for the audit rows (written in the block) and the alias move to version
    `to` (None: no move), made last so a failed write never moves it. If the commit fails after
    the move, the alias is put back to `previous`."""
    moved = False
    try:
        with session_scope(engine) as session:
            yield session
            session.flush()
            if to is not None:
                tracker.set_champion(ticker, to)
                moved = True
    except BaseException:
        if moved:
            _restore_alias(tracker, ticker, previous)
        raise


def _restore_alias(tracker: Tracker, ticker: str, previous: int | None) -> None:
    """Best effort: the database did not take the decision, so the alias goes back."""
    try:
        if previous is None:
            tracker.clear_champion(ticker)
        else:
            tracker.set_champion(ticker, previous)
    except Exception:  # the original failure is the one worth reporting
        pass


def _move_alias_by_hand(
    *,
    tracker: Tracker,
    engine: Engine,
    ticker: str,
    action: Literal["manual-promote", "rollback"],
    version: int,
    previous: int | None,
    reason: str,
    actor: str,
    numbers: Mapping[str, str],
) -> Promotion:
    """A move by hand (manual promotion, rollback): audited like the gate's, then tagged."""
    with _audited_alias_move(tracker, engine, ticker, to=version, previous=previous) as session:
        row = add_promotion(
            session,
            ticker=ticker,
            as_of=None,
            action=action,
            model_name=model_name(ticker),
            model_version=version,
            previous_version=previous,
            reason=reason,
            numbers=dict(numbers),
            run_ids=None,
            actor=actor,
        )
    tracker.tag_version(ticker, version, {"decision": action, "reason": reason[:4000]})
    return row


def _version_scores(tags: Mapping[str, str]) -> dict[str, str]:
    return {k: tags[k] for k in ("as_of", "candidate", "mape", "rmse", "naive_mape") if k in tags}


def promote_manually(
    *, tracker: Tracker, engine: Engine, ticker: str, version: int, reason: str, actor: str
) -> Promotion:
    """Point the alias at `version` by hand; audited like the gate's decisions."""
    if not reason.strip():
        raise ConfigError("a manual promotion needs a --reason (it goes into the audit trail)")
    info = tracker.version(ticker, version)
    if info is None:
        known = [v.version for v in tracker.versions(ticker)]
        raise DataError(
            f"{model_name(ticker)} has no version {version} (versions: {known or 'none'}); "
            "see `pricecast champion --ticker " + ticker + "`"
        )
    current = tracker.champion(ticker)
    previous = current.version if current is not None else None
    if previous == version:
        raise DataError(f"version {version} is already the champion of {ticker}")
    return _move_alias_by_hand(
        tracker=tracker,
        engine=engine,
        ticker=ticker,
        action="manual-promote",
        version=version,
        previous=previous,
        reason=reason,
        actor=actor,
        numbers=_version_scores(info.tags),
    )


def rollback(
    *, tracker: Tracker, engine: Engine, ticker: str, reason: str, actor: str
) -> Promotion:
    """Point the alias back at the champion before the current one; audited."""
    current = tracker.champion(ticker)
    if current is None:
        raise DataError(f"{ticker} has no champion to roll back")
    with session_scope(engine) as session:
        target = rollback_target(alias_moves(session, ticker=ticker))
    if target is None or target == current.version:
        raise DataError(
            f"{ticker}: no earlier champion to roll back to (current is version "
            f"{current.version}); use `pricecast promote --version N` to choose one"
        )
    info = tracker.version(ticker, target)
    return _move_alias_by_hand(
        tracker=tracker,
        engine=engine,
        ticker=ticker,
        action="rollback",
        version=target,
        previous=current.version,
        reason=reason or "rollback",
        actor=actor,
        numbers=_version_scores(info.tags if info else {}),
    )
