"""Nightly bookkeeping: one row per (ticker, as_of) night, the promotion audit trail, the stored
forecasts and their realised scores. Every SQL statement the nightly flow needs lives here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Double,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from pricecast.errors import ConfigError
from storage.models import TICKER_LENGTH, Base, utc_now

#: Where a night is: started, finished, or stopped by an error (a rerun reopens it).
RunStatus = Literal["running", "done", "failed"]
#: What the promotion gate decided on a night that trained.
GateDecision = Literal["promote", "keep"]
#: What happened to the champion alias: the gate's decisions and the manual moves.
PromotionAction = Literal["promote", "keep", "manual-promote", "rollback", "external-move"]
NAME_LENGTH = 200
RUN_ID_LENGTH = 64


def _one_of(column: str, values: object) -> str:
    """A CHECK constraint's SQL: `column` holds one of the values of a Literal type."""
    return f"{column} IN ({', '.join(repr(v) for v in get_args(values))})"


class NightlyRun(Base):
    """One nightly run for a ticker as of a date: what it did, how long it took, how it ended.

    `trained` becomes True in the same transaction as the promotion decision, so a rerun of a
    night that got that far never trains again, and one that failed before it trains afresh.
    """

    __tablename__ = "nightly_runs"
    __table_args__ = (
        UniqueConstraint("ticker", "as_of"),
        CheckConstraint(_one_of("status", RunStatus), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ticker: Mapped[str] = mapped_column(String(TICKER_LENGTH))
    as_of: Mapped[dt.date] = mapped_column(Date)
    status: Mapped[RunStatus] = mapped_column(String(16))
    trained: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Monday of the latest complete week visible as of `as_of` ("has a week completed since?").
    last_complete_week: Mapped[dt.date | None] = mapped_column(Date)
    #: First held-out week: candidates trained only on target weeks before it.
    training_cutoff: Mapped[dt.date | None] = mapped_column(Date)
    decision: Mapped[GateDecision | None] = mapped_column(String(16))
    promoted_version: Mapped[int | None] = mapped_column(Integer)
    champion_version: Mapped[int | None] = mapped_column(Integer)
    flow_run_id: Mapped[str | None] = mapped_column(String(RUN_ID_LENGTH))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(RUN_ID_LENGTH))
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Promotion(Base):
    """The audit trail of the `champion` alias: every gate decision and every manual move."""

    __tablename__ = "promotions"
    __table_args__ = (
        Index("ix_promotions_ticker_created_at", "ticker", "created_at"),
        CheckConstraint(_one_of("action", PromotionAction), name="action"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ticker: Mapped[str] = mapped_column(String(TICKER_LENGTH))
    #: The night that decided (None for a manual move made outside a nightly run).
    as_of: Mapped[dt.date | None] = mapped_column(Date)
    action: Mapped[PromotionAction] = mapped_column(String(16))
    model_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    #: The version the alias points at after this decision (None: there is no champion).
    model_version: Mapped[int | None] = mapped_column(Integer)
    previous_version: Mapped[int | None] = mapped_column(Integer)
    candidate: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    numbers: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    run_ids: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    #: The gate's Diebold-Mariano p-value for the decided candidate (the larger of vs champion
    #: and vs naive: how likely its win is noise); None for manual moves and untested nights.
    p_value: Mapped[float | None] = mapped_column(Double)


#: The prediction-interval columns of `forecasts`, as (level, lower column, upper column).
INTERVAL_COLUMNS: tuple[tuple[float, str, str], ...] = (
    (0.80, "lower_80", "upper_80"),
    (0.95, "lower_95", "upper_95"),
)


class Forecast(Base):
    """One forecast close: made as of a night for a target date, and later its actual close."""

    __tablename__ = "forecasts"
    __table_args__ = (
        UniqueConstraint("ticker", "as_of", "target_date"),
        Index("ix_forecasts_ticker_target_date", "ticker", "target_date"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ticker: Mapped[str] = mapped_column(String(TICKER_LENGTH))
    as_of: Mapped[dt.date] = mapped_column(Date)
    target_date: Mapped[dt.date] = mapped_column(Date)
    predicted_close: Mapped[float] = mapped_column(Double)
    model_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    model_version: Mapped[int | None] = mapped_column(Integer)
    is_baseline: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    actual_close: Mapped[float | None] = mapped_column(Double)
    #: predicted - actual, in dollars.
    error: Mapped[float | None] = mapped_column(Double)
    scored_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: The 80 % and 95 % prediction interval in dollars (None: stored without one).
    lower_80: Mapped[float | None] = mapped_column(Double)
    upper_80: Mapped[float | None] = mapped_column(Double)
    lower_95: Mapped[float | None] = mapped_column(Double)
    upper_95: Mapped[float | None] = mapped_column(Double)

    def band(self, level: float) -> tuple[float, float] | None:
        """(lower, upper) of the `level` interval, None if this row has none."""
        for known, lower, upper in INTERVAL_COLUMNS:
            if abs(known - level) < 1e-9:
                low, high = getattr(self, lower), getattr(self, upper)
                return None if low is None or high is None else (float(low), float(high))
        raise KeyError(f"forecasts store no {level} interval")


class ForecastScore(Base):
    """Realised accuracy of one night's forecast week, once all its days have actual closes."""

    __tablename__ = "forecast_scores"
    __table_args__ = (UniqueConstraint("ticker", "as_of"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ticker: Mapped[str] = mapped_column(String(TICKER_LENGTH))
    #: The night the forecast was made.
    as_of: Mapped[dt.date] = mapped_column(Date)
    first_target_date: Mapped[dt.date] = mapped_column(Date)
    last_target_date: Mapped[dt.date] = mapped_column(Date)
    n_days: Mapped[int] = mapped_column(Integer)
    rmse: Mapped[float] = mapped_column(Double)
    mape: Mapped[float] = mapped_column(Double)
    model_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    model_version: Mapped[int | None] = mapped_column(Integer)
    is_baseline: Mapped[bool] = mapped_column(Boolean, default=False)
    scored_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


# --- nightly runs -------------------------------------------------------------------------------


def get_run(session: Session, *, ticker: str, as_of: dt.date) -> NightlyRun | None:
    return session.scalar(
        select(NightlyRun).where(NightlyRun.ticker == ticker, NightlyRun.as_of == as_of)
    )


def begin_run(
    session: Session,
    *,
    ticker: str,
    as_of: dt.date,
    last_complete_week: dt.date | None,
    flow_run_id: str | None,
) -> NightlyRun:
    """Mark the night running: a new row, or the earlier attempt's row reopened.

    A reopened row keeps `trained` and the decision of an attempt that got that far.
    """
    run = get_run(session, ticker=ticker, as_of=as_of)
    if run is None:
        run = NightlyRun(ticker=ticker, as_of=as_of, status="running", trained=False, attempts=1)
        session.add(run)
    else:
        run.status = "running"
        run.attempts = (run.attempts or 0) + 1
        run.error = None
        run.finished_at = None
        run.started_at = utc_now()
    run.last_complete_week = last_complete_week
    run.flow_run_id = flow_run_id
    session.flush()
    return run


def last_trained_run(session: Session, *, ticker: str, as_of: dt.date) -> NightlyRun | None:
    """The latest night up to `as_of` (inclusive) whose training and gate completed."""
    return session.scalar(
        select(NightlyRun)
        .where(NightlyRun.ticker == ticker, NightlyRun.as_of <= as_of, NightlyRun.trained)
        .order_by(NightlyRun.as_of.desc())
        .limit(1)
    )


def record_training(
    session: Session,
    *,
    ticker: str,
    as_of: dt.date,
    training_cutoff: dt.date | None,
    decision: GateDecision,
    promoted_version: int | None,
    champion_version: int | None,
    mlflow_run_id: str | None,
) -> None:
    """Training and the gate are done for this night (commit it with the promotions row)."""
    session.execute(
        update(NightlyRun)
        .where(NightlyRun.ticker == ticker, NightlyRun.as_of == as_of)
        .values(
            trained=True,
            training_cutoff=training_cutoff,
            decision=decision,
            promoted_version=promoted_version,
            champion_version=champion_version,
            mlflow_run_id=mlflow_run_id,
        )
    )


def finish_run(
    session: Session,
    *,
    ticker: str,
    as_of: dt.date,
    champion_version: int | None,
    timings: Mapping[str, Any],
    mlflow_run_id: str | None = None,
) -> None:
    values: dict[str, Any] = {
        "status": "done",
        "champion_version": champion_version,
        "timings": dict(timings),
        "finished_at": utc_now(),
        "error": None,
    }
    if mlflow_run_id is not None:
        values["mlflow_run_id"] = mlflow_run_id
    session.execute(
        update(NightlyRun)
        .where(NightlyRun.ticker == ticker, NightlyRun.as_of == as_of)
        .values(**values)
    )


def fail_run(session: Session, *, ticker: str, as_of: dt.date, error: str) -> None:
    """Mark the night failed (only if it was started; a failure before that leaves no row)."""
    session.execute(
        update(NightlyRun)
        .where(NightlyRun.ticker == ticker, NightlyRun.as_of == as_of)
        .values(status="failed", error=error[:4000], finished_at=utc_now())
    )


def close_orphaned_runs(session: Session, *, ticker: str, closed_by: dt.date) -> list[dt.date]:
    """Mark failed every night of `ticker` still `running` (call it under the ticker's lock:
    their holder is gone, so nothing else will close them); returns their dates."""
    stuck = list(
        session.scalars(
            select(NightlyRun.as_of).where(
                NightlyRun.ticker == ticker, NightlyRun.status == "running"
            )
        )
    )
    if stuck:
        session.execute(
            update(NightlyRun)
            .where(NightlyRun.ticker == ticker, NightlyRun.status == "running")
            .values(
                status="failed",
                error=(
                    "interrupted: its process ended (or lost the lock) before closing the night;"
                    f" closed by the night of {closed_by.isoformat()}. Rerun that --as-of"
                ),
                finished_at=utc_now(),
            )
        )
    return stuck


def done_dates(
    session: Session, *, ticker: str, start: dt.date | None = None, end: dt.date | None = None
) -> set[dt.date]:
    """Nights that completed for `ticker` (optionally within [start, end]): backfill skips them."""
    query = select(NightlyRun.as_of).where(NightlyRun.ticker == ticker, NightlyRun.status == "done")
    if start is not None:
        query = query.where(NightlyRun.as_of >= start)
    if end is not None:
        query = query.where(NightlyRun.as_of <= end)
    return set(session.scalars(query))


# --- promotions audit ---------------------------------------------------------------------------


def add_promotion(
    session: Session,
    *,
    ticker: str,
    as_of: dt.date | None,
    action: PromotionAction,
    model_name: str,
    model_version: int | None,
    previous_version: int | None,
    reason: str,
    actor: str,
    candidate: str | None = None,
    numbers: Mapping[str, Any] | None = None,
    run_ids: Mapping[str, Any] | None = None,
    p_value: float | None = None,
) -> Promotion:
    # The CHECK constraint would refuse it too, but only at commit and with a database's words.
    if action not in get_args(PromotionAction):
        raise ValueError(f"unknown promotion action {action!r}; one of {get_args(PromotionAction)}")
    row = Promotion(
        ticker=ticker,
        as_of=as_of,
        action=action,
        model_name=model_name,
        model_version=model_version,
        previous_version=previous_version,
        candidate=candidate,
        reason=reason,
        numbers=dict(numbers) if numbers is not None else None,
        run_ids=dict(run_ids) if run_ids is not None else None,
        actor=actor,
        p_value=p_value,
    )
    session.add(row)
    session.flush()
    return row


def promotion_history(session: Session, *, ticker: str, limit: int = 100) -> list[Promotion]:
    """Newest first."""
    return list(
        session.scalars(
            select(Promotion)
            .where(Promotion.ticker == ticker)
            .order_by(Promotion.created_at.desc(), Promotion.id.desc())
            .limit(limit)
        )
    )


def alias_moves(session: Session, *, ticker: str) -> list[Promotion]:
    """Decisions that moved the alias (promotions, manual moves, rollbacks), oldest first."""
    return list(
        session.scalars(
            select(Promotion)
            .where(Promotion.ticker == ticker, Promotion.action != "keep")
            .order_by(Promotion.created_at, Promotion.id)
        )
    )


# --- forecasts ----------------------------------------------------------------------------------


def _insert_forecasts(session: Session) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into `forecasts` in the session's dialect (both know ON CONFLICT DO NOTHING)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(Forecast)
    if dialect == "sqlite":
        return sqlite.insert(Forecast)
    raise ConfigError(
        f"database dialect {dialect!r} is not supported; use PostgreSQL "
        "(postgresql+psycopg2://...) or SQLite (sqlite:///...) in PRICECAST_DATABASE_URL"
    )


def store_forecast(
    session: Session,
    *,
    ticker: str,
    as_of: dt.date,
    closes: Mapping[dt.date, float],
    model_name: str,
    model_version: int | None,
    is_baseline: bool,
    bands: Mapping[dt.date, Mapping[str, float]] | None = None,
) -> int:
    """Insert one night's forecast; dates already stored for (ticker, as_of) are left as they
    were (a rerun never duplicates nor rewrites history). Returns the number of rows inserted.

    `bands` maps a target date to its interval bounds ({"lower_80": ..., "upper_95": ...})."""
    if not closes:
        return 0
    now = utc_now()
    bounds = [column for _, lower, upper in INTERVAL_COLUMNS for column in (lower, upper)]
    rows = [
        {
            "ticker": ticker,
            "as_of": as_of,
            "target_date": target_date,
            "predicted_close": float(close),
            "model_name": model_name,
            "model_version": model_version,
            "is_baseline": is_baseline,
            "created_at": now,
            **{
                column: _optional_float((bands or {}).get(target_date, {}).get(column))
                for column in bounds
            },
        }
        for target_date, close in sorted(closes.items())
    ]
    statement = (
        _insert_forecasts(session)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["ticker", "as_of", "target_date"])
    )
    result = session.execute(statement)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def latest_forecast(
    session: Session, *, ticker: str, as_of: dt.date | None = None
) -> list[Forecast]:
    """The days of the latest forecast made up to `as_of` (any night when None); [] if none."""
    query = select(Forecast.as_of).where(Forecast.ticker == ticker)
    if as_of is not None:
        query = query.where(Forecast.as_of <= as_of)
    night = session.scalar(query.order_by(Forecast.as_of.desc()).limit(1))
    return [] if night is None else forecasts_for(session, ticker=ticker, as_of=night)


def forecasts_since(
    session: Session, *, ticker: str, since: dt.date | None = None
) -> list[Forecast]:
    """Every stored forecast day of `ticker` (targets from `since` on), by night then date."""
    query = select(Forecast).where(Forecast.ticker == ticker)
    if since is not None:
        query = query.where(Forecast.target_date >= since)
    return list(session.scalars(query.order_by(Forecast.as_of, Forecast.target_date)))


def forecasts_for(session: Session, *, ticker: str, as_of: dt.date) -> list[Forecast]:
    return list(
        session.scalars(
            select(Forecast)
            .where(Forecast.ticker == ticker, Forecast.as_of == as_of)
            .order_by(Forecast.target_date)
        )
    )


def record_actuals(
    session: Session, *, ticker: str, as_of: dt.date, actuals: Mapping[dt.date, float]
) -> int:
    """Fill in the actual close of forecasts whose target date is known by `as_of` (only dates
    <= as_of count: a replayed night never scores with the future). Returns rows updated."""
    pending = session.scalars(
        select(Forecast).where(
            Forecast.ticker == ticker,
            Forecast.actual_close.is_(None),
            Forecast.target_date <= as_of,
        )
    ).all()
    now = utc_now()
    updated = 0
    for forecast in pending:
        actual = actuals.get(forecast.target_date)
        if actual is None:
            continue
        forecast.actual_close = float(actual)
        forecast.error = forecast.predicted_close - float(actual)
        forecast.scored_at = now
        updated += 1
    session.flush()
    return updated


def complete_unscored_forecasts(session: Session, *, ticker: str) -> dict[dt.date, list[Forecast]]:
    """Forecast weeks (by night) whose every day now has an actual close but no score yet."""
    scored = select(ForecastScore.as_of).where(ForecastScore.ticker == ticker)
    rows = session.scalars(
        select(Forecast)
        .where(Forecast.ticker == ticker, Forecast.as_of.not_in(scored))
        .order_by(Forecast.as_of, Forecast.target_date)
    ).all()
    nights: dict[dt.date, list[Forecast]] = {}
    for row in rows:
        nights.setdefault(row.as_of, []).append(row)
    return {
        night: forecasts
        for night, forecasts in nights.items()
        if all(f.actual_close is not None for f in forecasts)
    }


def add_forecast_score(
    session: Session,
    *,
    ticker: str,
    as_of: dt.date,
    forecasts: Sequence[Forecast],
    rmse: float,
    mape: float,
) -> ForecastScore:
    first = forecasts[0]
    row = ForecastScore(
        ticker=ticker,
        as_of=as_of,
        first_target_date=min(f.target_date for f in forecasts),
        last_target_date=max(f.target_date for f in forecasts),
        n_days=len(forecasts),
        rmse=rmse,
        mape=mape,
        model_name=first.model_name,
        model_version=first.model_version,
        is_baseline=first.is_baseline,
    )
    session.add(row)
    session.flush()
    return row


def scored_forecasts(session: Session, *, ticker: str, as_of: dt.date) -> list[Forecast]:
    """Forecast days with an actual close known by `as_of`, oldest first (realised accuracy)."""
    return list(
        session.scalars(
            select(Forecast)
            .where(
                Forecast.ticker == ticker,
                Forecast.actual_close.is_not(None),
                Forecast.target_date <= as_of,
            )
            .order_by(Forecast.target_date, Forecast.as_of)
        )
    )
