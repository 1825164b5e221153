"""The price tables (`daily_prices`, `price_revisions`, `rejected_rows`) and the lock fencing
table (`ticker_locks`) on the shared `Base`.

Table and column names are part of the data contract; schema changes are Alembic migrations.
"""

from __future__ import annotations

import datetime as dt
import importlib

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TICKER_LENGTH = 32
SOURCE_LENGTH = 500
LOCK_NAME_LENGTH = 200
CONTENT_KEY_LENGTH = 64  # sha256, hex


# Named constraints, so SQLite batch migrations and autogenerate can find them again.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base for every pricecast table (other modules add theirs to it)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Storage modules that add tables to Base; migrations and schema checks need all of them loaded.
MODEL_MODULES = ("storage.models", "storage.runs", "storage.universe")


def import_all_models() -> MetaData:
    """Import every storage module that defines tables and return the metadata."""
    for name in MODEL_MODULES:
        importlib.import_module(name)
    return Base.metadata


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class DailyPrice(Base):
    """One day of one ticker: the close is required and positive, the rest optional."""

    __tablename__ = "daily_prices"
    __table_args__ = (
        CheckConstraint("close > 0", name="close_positive"),
        CheckConstraint("high IS NULL OR low IS NULL OR high >= low", name="hl"),
    )

    ticker: Mapped[str] = mapped_column(String(TICKER_LENGTH), primary_key=True)
    date: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    open: Mapped[float | None] = mapped_column(Double)
    high: Mapped[float | None] = mapped_column(Double)
    low: Mapped[float | None] = mapped_column(Double)
    close: Mapped[float] = mapped_column(Double)
    volume: Mapped[float | None] = mapped_column(Double)
    market_cap: Mapped[float | None] = mapped_column(Double)
    source: Mapped[str] = mapped_column(String(SOURCE_LENGTH))
    ingested_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class PriceRevision(Base):
    """The values a row had before a re-ingest changed it (one row per change)."""

    __tablename__ = "price_revisions"
    __table_args__ = (Index("ix_price_revisions_ticker_date", "ticker", "date"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ticker: Mapped[str] = mapped_column(String(TICKER_LENGTH))
    date: Mapped[dt.date] = mapped_column(Date)
    open: Mapped[float | None] = mapped_column(Double)
    high: Mapped[float | None] = mapped_column(Double)
    low: Mapped[float | None] = mapped_column(Double)
    close: Mapped[float] = mapped_column(Double)
    volume: Mapped[float | None] = mapped_column(Double)
    market_cap: Mapped[float | None] = mapped_column(Double)
    source: Mapped[str] = mapped_column(String(SOURCE_LENGTH))
    ingested_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revised_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    revised_by_source: Mapped[str] = mapped_column(String(SOURCE_LENGTH))


class RejectedRow(Base):
    """A row refused under --skip-invalid: where it came from, its raw text and why.

    Stored once per (ticker, source, line and content): `content_key` is a digest of the line
    number and raw text, so loading the same bad file again adds nothing.
    """

    __tablename__ = "rejected_rows"
    __table_args__ = (
        Index("ix_rejected_rows_ticker", "ticker"),
        Index(
            "uq_rejected_rows_ticker_source_content_key",
            "ticker",
            "source",
            "content_key",
            unique=True,
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ticker: Mapped[str] = mapped_column(String(TICKER_LENGTH))
    source: Mapped[str] = mapped_column(String(SOURCE_LENGTH))
    line_number: Mapped[int | None] = mapped_column(Integer)
    raw: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    rejected_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    content_key: Mapped[str] = mapped_column(String(CONTENT_KEY_LENGTH))


class TickerLock(Base):
    """The fencing token of a named lock: +1 each time a holder acquires it.

    Work done under the lock commits only while the stored token is still the holder's, so a
    holder that lost its lock (a database restart) cannot commit after the next one took over.
    """

    __tablename__ = "ticker_locks"

    name: Mapped[str] = mapped_column(String(LOCK_NAME_LENGTH), primary_key=True)
    token: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str] = mapped_column(Text)
    acquired_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
