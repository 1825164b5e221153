"""The universe of tickers the nightly runs over (`tickers` table): each ticker with its price
source and whether it is enabled. Every SQL statement on that table lives here.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from sqlalchemy import Boolean, DateTime, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from pricecast.errors import DataError
from storage.models import SOURCE_LENGTH, TICKER_LENGTH, Base, utc_now
from storage.runs import NightlyRun, Promotion

#: Letters, digits and the punctuation market symbols use (BTC-USD, BRK.B, ^GSPC, EURUSD=X).
_TICKER = re.compile(r"^[A-Za-z0-9^][A-Za-z0-9._=^-]*$")


class Ticker(Base):
    """One member of the universe: `source` is an ingest spec (csv:PATH, http[:URL],
    synthetic[:SEED]); a disabled ticker stays listed but its nights are not run."""

    __tablename__ = "tickers"

    ticker: Mapped[str] = mapped_column(String(TICKER_LENGTH), primary_key=True)
    source: Mapped[str] = mapped_column(String(SOURCE_LENGTH))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    added_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


def check_ticker(ticker: str) -> str:
    """The ticker stripped of surrounding blanks; DataError if it cannot be a ticker."""
    name = ticker.strip()
    if not name:
        raise DataError("empty ticker: give a symbol such as BTC-USD")
    if len(name) > TICKER_LENGTH:
        raise DataError(f"ticker {name!r} is longer than {TICKER_LENGTH} characters")
    if not _TICKER.match(name):
        raise DataError(
            f"ticker {name!r} has characters a symbol cannot have; use letters, digits and "
            ". _ = ^ - (e.g. BTC-USD, BRK.B, ^GSPC)"
        )
    return name


def _check_source(source: str) -> str:
    spec = source.strip()
    if not spec:
        raise DataError("empty source: give csv:PATH, http[:URL] or synthetic[:SEED]")
    if len(spec) > SOURCE_LENGTH:
        raise DataError(f"source {spec[:40]!r}... is longer than {SOURCE_LENGTH} characters")
    return spec


def get_ticker(session: Session, *, ticker: str) -> Ticker | None:
    return session.get(Ticker, ticker)


def list_tickers(session: Session, *, enabled_only: bool = False) -> list[Ticker]:
    """The universe in ticker order (only the enabled members if `enabled_only`)."""
    query = select(Ticker).order_by(Ticker.ticker)
    if enabled_only:
        query = query.where(Ticker.enabled.is_(True))
    return list(session.scalars(query))


def add_tickers(session: Session, members: Sequence[tuple[str, str]]) -> list[Ticker]:
    """Add (ticker, source) pairs, all or none: a ticker given twice or already in the universe
    is a DataError naming every one of them, and nothing is added."""
    checked = [(check_ticker(ticker), _check_source(source)) for ticker, source in members]
    names = [ticker for ticker, _ in checked]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise DataError(f"ticker(s) given more than once: {', '.join(twice)}")
    present = sorted(session.scalars(select(Ticker.ticker).where(Ticker.ticker.in_(names))))
    if present:
        raise DataError(
            f"already in the universe: {', '.join(present)}; `pricecast universe remove` it "
            "first to change its source"
        )
    now = utc_now()
    rows = [
        Ticker(ticker=ticker, source=source, enabled=True, added_at=now, updated_at=now)
        for ticker, source in checked
    ]
    session.add_all(rows)
    session.flush()
    return rows


def add_ticker(session: Session, *, ticker: str, source: str) -> Ticker:
    """Add one ticker (enabled); DataError if it is already in the universe."""
    (row,) = add_tickers(session, [(ticker, source)])
    return row


def _known(session: Session, ticker: str) -> Ticker:
    row = get_ticker(session, ticker=ticker)
    if row is None:
        known = session.scalars(select(Ticker.ticker).order_by(Ticker.ticker).limit(20)).all()
        listed = ", ".join(known) if known else "the universe is empty"
        raise DataError(
            f"unknown ticker {ticker!r}: not in the universe ({listed}); "
            f"add it with `pricecast universe add {ticker} --source SPEC`"
        )
    return row


def set_enabled(session: Session, *, ticker: str, enabled: bool) -> Ticker:
    """Enable or disable a ticker (its history stays); DataError if it is unknown."""
    row = _known(session, ticker)
    if row.enabled != enabled:
        row.enabled = enabled
        row.updated_at = utc_now()
        session.flush()
    return row


def remove_ticker(session: Session, *, ticker: str) -> None:
    """Take a ticker out of the universe (its prices, runs and models stay); DataError if it is
    unknown."""
    _known(session, ticker)
    session.execute(delete(Ticker).where(Ticker.ticker == ticker))


# --- the universe's nights (read-only views of nightly_runs and promotions) --------------------


def nights_as_of(
    session: Session, *, as_of: dt.date, tickers: Sequence[str]
) -> dict[str, NightlyRun]:
    """Each ticker's night as of `as_of` (tickers without one are absent)."""
    if not tickers:
        return {}
    rows = session.scalars(
        select(NightlyRun).where(NightlyRun.as_of == as_of, NightlyRun.ticker.in_(tickers))
    )
    return {row.ticker: row for row in rows}


def nights_between(
    session: Session, *, tickers: Sequence[str], start: dt.date, end: dt.date
) -> list[NightlyRun]:
    """The tickers' nights in [start, end], by ticker then date."""
    if not tickers:
        return []
    return list(
        session.scalars(
            select(NightlyRun)
            .where(
                NightlyRun.ticker.in_(tickers),
                NightlyRun.as_of >= start,
                NightlyRun.as_of <= end,
            )
            .order_by(NightlyRun.ticker, NightlyRun.as_of)
        )
    )


def gate_decisions(
    session: Session, *, as_of: dt.date, tickers: Sequence[str]
) -> dict[str, Promotion]:
    """The promotion gate's latest decision (promote or keep) of each ticker's night as of
    `as_of`, with its numbers (tickers whose night did not reach the gate are absent)."""
    if not tickers:
        return {}
    rows = session.scalars(
        select(Promotion)
        .where(
            Promotion.as_of == as_of,
            Promotion.ticker.in_(tickers),
            Promotion.action.in_(("promote", "keep")),
        )
        .order_by(Promotion.created_at, Promotion.id)
    )
    return {row.ticker: row for row in rows}  # the latest of a ticker's rows wins
