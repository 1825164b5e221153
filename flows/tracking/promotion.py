"""Moves of the `champion` alias, each audited in `promotions`: the gate's decision, a manual
promotion, a rollback. The pure gate is `flows.night.policy.decide_promotion`.

Every move goes through `_audited_alias_move`: the audit row and the alias move share one
database transaction, so a failure anywhere leaves the champion as it was.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from flows.night.policy import Decision, Score, rollback_target
from flows.tracking.tracker import ChampionRef, Tracker, model_name
from pricecast.errors import ConfigError, DataError, ServiceUnavailable
from storage.db import session_scope
from storage.runs import (
    Promotion,
    add_promotion,
    alias_moves,
    promotion_history,
    record_training,
)


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
    fence: Callable[[Session], None] | None = None,
) -> AppliedDecision:
    """Register tonight's candidates (tagged with their scores, decision "pending"), then in one
    transaction: the audit row, the night marked trained, and the alias move last; finally each
    version's decision tag becomes "promoted" or "rejected".

    If the alias move fails the transaction rolls back (champion unchanged, night not trained,
    so a rerun trains again); if the commit fails after the move, the alias is put back. Either
    way the versions registered tonight are tagged "failed", never left "pending".
    """
    versions: dict[str, int] = {}
    try:
        return _apply(
            tracker, engine, ticker, as_of, decision, trained, champion, training_cutoff,
            run_ids, actor, fence, versions,
        )  # fmt: skip
    except BaseException:
        # Nothing was decided: no version stays "pending" (issue 12: no orphaned state).
        for version in versions.values():
            _tag_best_effort(tracker, ticker, version, {"decision": "failed"})
        raise


def _apply(
    tracker: Tracker,
    engine: Engine,
    ticker: str,
    as_of: dt.date,
    decision: Decision,
    trained: Sequence[TrainedCandidate],
    champion: ChampionRef | None,
    training_cutoff: dt.date | None,
    run_ids: Mapping[str, str | None],
    actor: str,
    fence: Callable[[Session], None] | None,
    versions: dict[str, int],
) -> AppliedDecision:
    """`apply_decision`'s body; `versions` fills as they are registered. `fence(session)` runs
    first in the decision's transaction (the lock's fencing check: no commit without it)."""
    _register_tonight(tracker, ticker, as_of, decision, trained, versions)
    previous = champion.version if champion is not None else None
    promoted = versions.get(decision.candidate or "") if decision.promote else None
    new_champion = promoted if promoted is not None else previous
    with _audited_alias_move(tracker, engine, ticker, to=promoted, previous=previous) as session:
        if fence is not None:
            fence(session)
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
            p_value=decision.p_value,
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
    for name, version in versions.items():
        outcome = "promoted" if version == promoted else "rejected"
        _tag_best_effort(tracker, ticker, version, {"decision": outcome})
        _describe_best_effort(
            tracker, ticker, version, version_description(outcome, as_of, name, decision)
        )
    _tag_runs_best_effort(tracker, run_decisions(run_ids, decision, promoted is not None))
    return AppliedDecision(decision, versions, promoted, new_champion)


def run_decisions(
    run_ids: Mapping[str, str | None], decision: Decision, promoted: bool
) -> dict[str, dict[str, str]]:
    """The gate's outcome as a `decision` tag on each scored model's MLflow run (a column of the
    runs table): the promoted candidate, the rejected ones, the champion kept or replaced, and
    naive as the baseline."""
    tags: dict[str, dict[str, str]] = {}
    for name, run_id in run_ids.items():
        if not run_id or name == "parent":
            continue
        if name == "champion":
            outcome = "replaced" if promoted else "kept"
        elif name == "naive":
            outcome = "baseline"
        else:
            outcome = "promoted" if promoted and name == decision.candidate else "rejected"
        tags[run_id] = {"decision": outcome}
    return tags


def version_description(outcome: str, as_of: dt.date, name: str, decision: Decision) -> str:
    """'promoted as of 2017-11-05: MAPE 3.10 % vs naive 3.90 % vs champion 3.40 % (p 0.012 vs
    naive, 0.200 vs champion)': what the registry's version list shows."""
    numbers = decision.numbers
    mine = numbers.get("candidates", {}).get(name, {})
    mape = mine.get("mape")
    parts = [f"MAPE {mape:.2f} %" if isinstance(mape, float | int) else "MAPE -"]
    parts.append(f"vs naive {numbers['naive']['mape']:.2f} %")
    champion = numbers.get("champion")
    parts.append(f"vs champion {champion['mape']:.2f} %" if champion else "(no champion before)")
    text = f"{outcome} as of {as_of.isoformat()}: " + " ".join(parts)
    p_values = [
        f"{mine[key]:.3f} vs {key.removeprefix('p_vs_')}"
        for key in ("p_vs_naive", "p_vs_champion")
        if mine.get(key) is not None
    ]
    return text + (f" (p {', '.join(p_values)})" if p_values else "")


def _describe_best_effort(tracker: Tracker, ticker: str, version: int, text: str) -> None:
    try:
        tracker.describe_version(ticker, version, text)
    except ServiceUnavailable as exc:
        logging.getLogger(__name__).warning("version %s has no description (%s)", version, exc)


def _tag_runs_best_effort(tracker: Tracker, tags: Mapping[str, Mapping[str, str]]) -> None:
    try:
        tracker.tag_runs(tags)
    except ServiceUnavailable as exc:
        logging.getLogger(__name__).warning("runs keep no decision tag (%s)", exc)


def _register_tonight(
    tracker: Tracker,
    ticker: str,
    as_of: dt.date,
    decision: Decision,
    trained: Sequence[TrainedCandidate],
    versions: dict[str, int],
) -> dict[str, int]:
    """A version per candidate trained tonight (added to `versions` as each is registered),
    tagged with its scores and decision "pending"."""
    champion_numbers = decision.numbers.get("champion")
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
                "champion_mape": "none"
                if champion_numbers is None
                else f"{champion_numbers['mape']:.6f}",
                "decision": "pending",
                **_p_value_tags(decision.numbers.get("candidates", {}).get(candidate.name, {})),
            },
        )
    return versions


def _p_value_tags(numbers: Mapping[str, object]) -> dict[str, str]:
    """The candidate's Diebold-Mariano p-values as version tags ("" when untestable)."""
    return {
        key: "" if numbers.get(key) is None else f"{numbers[key]:.6f}"
        for key in ("p_vs_naive", "p_vs_champion")
        if key in numbers
    }


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


def record_external_move(
    session: Session, *, ticker: str, as_of: dt.date, champion: ChampionRef | None
) -> str | None:
    """If the `champion` alias is not where the audit last put it (someone moved or removed it
    in the MLflow UI or with MLflow's API), record that as an 'external-move' row and return a
    one-line note; None when registry and audit agree."""
    latest = promotion_history(session, ticker=ticker, limit=1)
    recorded = latest[0].model_version if latest else None
    current = champion.version if champion is not None else None
    if current == recorded:
        return None
    was = f"version {recorded}" if recorded is not None else "no champion"
    now = f"version {current}" if current is not None else "no version (alias removed)"
    note = (
        f"the champion alias of {model_name(ticker)} points at {now}, but pricecast last put it "
        f"at {was}: it was moved outside pricecast (MLflow UI or API); recorded in promotions "
        "as an external move"
    )
    add_promotion(
        session,
        ticker=ticker,
        as_of=as_of,
        action="external-move",
        model_name=model_name(ticker),
        model_version=current,
        previous_version=recorded,
        reason=note,
        actor="mlflow registry (noticed by nightly)",
    )
    return note


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
