"""What every command group shares: option parsing, JSON output, and opening the stores.

Heavy imports (SQLAlchemy models, MLflow) stay inside the functions so that `--help` stays fast.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from pricecast.errors import DataError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from flows.tracking.tracker import Tracker

DEFAULT_TICKER = "BTC-USD"


def parse_day(value: str | None, option: str) -> dt.date | None:
    """'2024-01-31' -> date; None stays None. DataError naming the option otherwise."""
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise DataError(
            f"{option} {value!r} is not a date: use YYYY-MM-DD, e.g. 2024-01-31"
        ) from None


def parse_required_day(value: str, option: str) -> dt.date:
    """A required YYYY-MM-DD option."""
    day = parse_day(value, option)
    assert day is not None  # a required option is never None
    return day


def parse_strategies(value: str) -> list[str]:
    """'fresh, retrain,naive' -> ['fresh', 'retrain', 'naive'] (checked by check_strategies)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def print_json(payload: object) -> None:
    """Print `payload` as indented JSON on stdout (dates and other values as strings)."""
    typer.echo(json.dumps(payload, indent=2, default=str))


@contextmanager
def open_engine(*, migrate: bool = True) -> Iterator[Engine]:
    """An engine on PRICECAST_DATABASE_URL (migrated to head unless `migrate` is False),
    disposed when the block ends."""
    from pricecast.settings import get_settings
    from storage.db import ensure_schema, make_engine

    engine = make_engine(get_settings().resolved_database_url)
    try:
        if migrate:
            ensure_schema(engine)
        yield engine
    finally:
        engine.dispose()


@contextmanager
def open_stores() -> Iterator[tuple[Engine, Tracker]]:
    """The database engine and the MLflow tracker, for commands that read or move the champion."""
    from flows.tracking.tracker import Tracker
    from pricecast.settings import get_settings

    settings = get_settings()
    with open_engine() as engine:
        yield (
            engine,
            Tracker(
                settings.resolved_mlflow_uri,
                artifact_root=settings.mlflow_artifact_root,
                public_url=settings.mlflow_public_url,
            ),
        )


def stored_closes(ticker: str, as_of: dt.date) -> list[tuple[dt.date, float]]:
    """The ticker's stored daily closes up to `as_of`; DataError saying how to load some if none."""
    from storage.db import session_scope
    from storage.prices import read_closes

    with open_engine() as engine, session_scope(engine) as session:
        closes = read_closes(session, ticker=ticker, as_of=as_of)
    if not closes:
        raise DataError(
            f"no prices stored for {ticker} up to {as_of}; load some first, e.g. "
            f"pricecast ingest --ticker {ticker} --source synthetic"
        )
    return closes
