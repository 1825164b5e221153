"""The universe's members as the commands see them: sources checked with the ingest's own parser,
CSV paths made absolute (workers run flows in other folders), an import file read whole and checked
before anything is written."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from flows.ingest.sources import parse_source
from flows.universe.plan import Member
from pricecast.errors import DataError, PricecastError
from pricecast.settings import Settings, get_settings
from storage.db import ensure_schema, make_engine, session_scope
from storage.universe import (
    Ticker,
    add_tickers,
    check_ticker,
    list_tickers,
    remove_ticker,
    set_enabled,
)

IMPORT_COLUMNS = ("ticker", "source")
MAX_LISTED_PROBLEMS = 20


@dataclass
class Added:
    """Tickers added, and what the user should know (e.g. a CSV this machine does not see)."""

    tickers: list[Ticker]
    notes: list[str] = field(default_factory=list)


@contextmanager
def universe_engine(settings: Settings | None = None) -> Iterator[Engine]:
    """An engine on the pricecast database, migrated to head, disposed at the end."""
    engine = make_engine((settings or get_settings()).resolved_database_url)
    try:
        ensure_schema(engine)
        yield engine
    finally:
        engine.dispose()


def normalise_source(spec: str, settings: Settings, *, cwd: Path | None = None) -> str:
    """The spec checked by the ingest's parser (SourceError if it is not one), a relative CSV
    path made absolute against `cwd`: a worker runs each flow in a temporary folder."""
    source = spec.strip()
    parse_source(source, settings)
    kind, _, argument = source.partition(":")
    path = argument.strip()
    if kind.strip().lower() == "csv" and not path.startswith("~") and not Path(path).is_absolute():
        source = f"csv:{((cwd or Path.cwd()) / path).resolve()}"
    return source


def csv_file(source: str) -> Path | None:
    """The file of a `csv:PATH` source, None for other kinds."""
    kind, _, argument = source.partition(":")
    return Path(argument.strip()).expanduser() if kind.strip().lower() == "csv" else None


def _visibility_notes(members: list[Ticker]) -> list[str]:
    notes = []
    for row in members:
        path = csv_file(row.source)
        if path is not None and not path.is_file():
            notes.append(
                f"{row.ticker}: {path} does not exist on this machine; its nights fail until "
                "the file is there (on every worker that may run it)"
            )
    return notes


def add_member(ticker: str, source: str, *, settings: Settings | None = None) -> Added:
    """Add one ticker with its source; DataError if it is already in the universe, SourceError
    if the source is not an ingest spec."""
    settings = settings or get_settings()
    name = check_ticker(ticker)
    spec = normalise_source(source, settings)
    with universe_engine(settings) as engine, session_scope(engine) as session:
        rows = add_tickers(session, [(name, spec)])
    return Added(rows, _visibility_notes(rows))


def read_import_file(path: Path, settings: Settings) -> list[tuple[str, str]]:
    """(ticker, source) pairs of a CSV file with columns `ticker,source` (header required, any
    order, other columns ignored). Every problem is reported at once with its line; nothing is
    returned if there is one."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; give a CSV file with columns ticker,source")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read it as a UTF-8 CSV file ({exc})") from None
    if not rows:
        raise DataError(f"{path}: empty file; the first line must be the header ticker,source")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in IMPORT_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"{path} line 1: no {' or '.join(missing)} column in the header "
            f"({','.join(rows[0]) or 'empty'}); the file needs columns ticker,source"
        )
    at_ticker, at_source = header.index("ticker"), header.index("source")
    members: list[tuple[str, str]] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) <= max(at_ticker, at_source):
            problems.append(f"{path} line {number}: {len(row)} field(s), expected ticker,source")
            continue
        try:
            ticker = check_ticker(row[at_ticker])
            source = normalise_source(row[at_source], settings, cwd=Path.cwd())
        except PricecastError as exc:
            problems.append(f"{path} line {number}: {exc}")
            continue
        if ticker in first_line:
            problems.append(
                f"{path} line {number}: {ticker} again (first on line {first_line[ticker]})"
            )
            continue
        first_line[ticker] = number
        members.append((ticker, source))
    if problems:
        shown = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(shown)
        raise DataError(
            f"{len(problems)} problem(s) in {path}, nothing imported: "
            + "; ".join(shown)
            + (f"; and {more} more" if more else "")
        )
    if not members:
        raise DataError(f"{path}: no tickers below the header; nothing imported")
    return members


def import_members(path: Path, *, settings: Settings | None = None) -> Added:
    """Add every ticker of an import file, all or none (see `read_import_file`); a ticker
    already in the universe is a DataError and nothing is added."""
    settings = settings or get_settings()
    pairs = read_import_file(path.expanduser(), settings)
    with universe_engine(settings) as engine, session_scope(engine) as session:
        rows = add_tickers(session, pairs)
    return Added(rows, _visibility_notes(rows))


def list_members(*, enabled_only: bool = False, settings: Settings | None = None) -> list[Ticker]:
    with universe_engine(settings) as engine, session_scope(engine) as session:
        return list_tickers(session, enabled_only=enabled_only)


def set_member_enabled(ticker: str, enabled: bool, *, settings: Settings | None = None) -> Ticker:
    with universe_engine(settings) as engine, session_scope(engine) as session:
        return set_enabled(session, ticker=ticker.strip(), enabled=enabled)


def remove_member(ticker: str, *, settings: Settings | None = None) -> None:
    with universe_engine(settings) as engine, session_scope(engine) as session:
        remove_ticker(session, ticker=ticker.strip())


def enabled_members(engine: Engine, only: list[str] | None = None) -> list[Member]:
    """The enabled members in ticker order; `only` restricts them to those tickers (DataError
    naming any that is not an enabled member)."""
    with session_scope(engine) as session:
        rows = list_tickers(session)
    if not rows:
        raise DataError(
            "the universe is empty: add tickers first, e.g. "
            "pricecast universe add BTC-USD --source http"
        )
    enabled = [Member(r.ticker, r.source) for r in rows if r.enabled]
    if only is None:
        return enabled
    wanted = [t.strip() for t in only if t.strip()]
    known = {m.ticker for m in enabled}
    disabled = {r.ticker for r in rows if not r.enabled}
    unknown = [t for t in wanted if t not in known]
    if unknown:
        kinds = [f"{t} ({'disabled' if t in disabled else 'not in the universe'})" for t in unknown]
        raise DataError(
            f"cannot run {', '.join(kinds)}; see `pricecast universe list` "
            "(enable with `pricecast universe enable TICKER`)"
        )
    return [m for m in enabled if m.ticker in set(wanted)]
