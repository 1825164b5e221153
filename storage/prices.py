"""Price repository: set-based upserts that keep revisions, rejected rows, and as-of reads.

Rows stream in batches (COPY on PostgreSQL, executemany on SQLite); re-loads go through a
temporary staging table and one set-based merge, so a ticker costs a handful of statements.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple, TypeVar, cast

from sqlalchemy import (
    Column,
    Date,
    Double,
    MetaData,
    Table,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateTable
from sqlalchemy.sql.dml import Insert

from pricecast.errors import DataError
from storage.models import DailyPrice, PriceRevision, RejectedRow, utc_now

VALUE_COLUMNS = ("open", "high", "low", "close", "volume", "market_cap")
_PRICE_COLUMNS = ("ticker", "date", *VALUE_COLUMNS, "source", "ingested_at")
BATCH_ROWS = 10_000
_T = TypeVar("_T")

PRICES = cast(Table, DailyPrice.__table__)
REVISIONS = cast(Table, PriceRevision.__table__)
REJECTED = cast(Table, RejectedRow.__table__)
_staging_metadata = MetaData()
# Per connection; on PostgreSQL its rows vanish at commit, and it is cleared before each use.
_staging = Table(
    "pricecast_price_staging",
    _staging_metadata,
    Column("date", Date, nullable=False),
    *(Column(name, Double) for name in VALUE_COLUMNS),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DELETE ROWS",
)


_STAGING_USED = "pricecast.prices.staging_used"


_staging_ddl_by_dialect: dict[str, str] = {}


def _staging_ddl(dialect: Dialect) -> str:
    """CREATE TEMPORARY TABLE IF NOT EXISTS ..., compiled once per dialect."""
    if dialect.name not in _staging_ddl_by_dialect:
        ddl = CreateTable(_staging, if_not_exists=True).compile(dialect=dialect)
        _staging_ddl_by_dialect[dialect.name] = str(ddl)
    return _staging_ddl_by_dialect[dialect.name]


class PriceRow(NamedTuple):
    """One validated day of prices; `close` is required and positive.

    Storage reads rows by position, so any tuple in this field order will do.
    """

    date: dt.date
    open: float | None
    high: float | None
    low: float | None
    close: float
    volume: float | None
    market_cap: float | None


class Rejection(NamedTuple):
    """A row refused under --skip-invalid: its line (None if it has none), raw text and why."""

    line_number: int | None
    raw: str
    reason: str


@dataclass(frozen=True)
class UpsertCounts:
    inserted: int
    updated: int
    unchanged: int

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.unchanged


@dataclass(frozen=True)
class PriceCoverage:
    first: dt.date
    last: dt.date
    count: int


def _batches(rows: Iterable[_T]) -> Iterator[list[_T]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, BATCH_ROWS)):
        yield batch


def _sqlite_rows(batch: Sequence[PriceRow]) -> Iterator[tuple[object, ...]]:
    """(date as ISO text, six values) per row, refusing a close that is not a positive number."""
    for row in batch:
        if not row[4] > 0:  # close; NaN would be stored as NULL
            raise DataError(f"close must be a positive number, got {row[4]!r} on {row[0]}")
        yield (row[0].isoformat(), *row[1:])


# PostgreSQL binary COPY: no float formatting or parsing, and values arrive bit for bit.
_PG_EPOCH_DAY = dt.date(2000, 1, 1).toordinal()
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_NULL_FIELD = struct.pack(">i", -1)
_DAY_FIELD = struct.Struct(">ii")
_FLOAT_FIELD = struct.Struct(">id")
_DAY_AND_SIX_FLOATS = struct.Struct(">ii" + "id" * len(VALUE_COLUMNS))


def _text_field(value: str) -> bytes:
    encoded = value.encode()
    return struct.pack(">i", len(encoded)) + encoded


def _timestamp_field(value: dt.datetime) -> bytes:
    return struct.pack(">iq", 8, (value - _PG_EPOCH) // dt.timedelta(microseconds=1))


def _binary_copy(
    rows: Sequence[PriceRow], *, before: bytes, after: bytes, fields: int
) -> io.BytesIO:
    """COPY BINARY data: per row `before` (encoded fields), date, the six values, `after`."""
    head = struct.pack(">h", fields) + before
    parts = [_COPY_HEADER]
    append = parts.append
    pack_full = _DAY_AND_SIX_FLOATS.pack
    for day, open_, high, low, close, volume, market_cap in rows:
        if not close > 0:  # also catches NaN, which PostgreSQL's CHECK (close > 0) lets through
            raise DataError(f"close must be a positive number, got {close!r} on {day}")
        days = day.toordinal() - _PG_EPOCH_DAY
        if open_ is None or high is None or low is None or volume is None or market_cap is None:
            body = _DAY_FIELD.pack(4, days) + b"".join(
                _NULL_FIELD if value is None else _FLOAT_FIELD.pack(8, value)
                for value in (open_, high, low, close, volume, market_cap)
            )
        else:
            body = pack_full(4, days, 8, open_, 8, high, 8, low, 8, close, 8, volume, 8, market_cap)
        append(head)
        append(body)
        append(after)
    append(_COPY_TRAILER)
    return io.BytesIO(b"".join(parts))


class PriceStaging:
    """Rows of one ticker from one source, streamed in batches, then merged into daily_prices.

    A ticker with no stored rows yet is loaded straight into daily_prices (COPY on PostgreSQL):
    nothing can conflict, so a first load runs at close to bulk-load speed. Otherwise rows go to
    a temporary table (no WAL, no index) and `merge` compares and applies them set-based, so an
    unchanged re-load writes nothing to daily_prices.
    Either way the caller's transaction decides whether anything is kept: roll back and nothing
    was written.
    """

    def __init__(self, session: Session, *, ticker: str, source: str) -> None:
        self._session = session
        self.ticker = ticker
        self.source = source
        self.staged = 0
        self._ingested_at = utc_now()
        self._postgres = session.get_bind().dialect.name == "postgresql"
        self._dates: set[dt.date] = set()  # spots a day sent twice before the database does
        stored = select(DailyPrice.date).where(DailyPrice.ticker == ticker).exists()
        if self._postgres:
            # Two loads of the same ticker take turns (SQLite locks the whole file); one round
            # trip takes the lock and asks whether the ticker has rows yet.
            query = select(
                func.pg_advisory_xact_lock(func.hashtext(f"pricecast.prices:{ticker}")), stored
            )
            self._direct = not session.execute(query).one()[1]
        else:
            self._direct = not session.execute(select(stored)).scalar()
        self._in_staging = 0
        self._staging_ready = False

    @property
    def first_load(self) -> bool:
        """True when the ticker had no stored rows, so rows go straight into daily_prices."""
        return self._direct

    def add(self, rows: Iterable[PriceRow]) -> int:
        """Stage rows (any order, any count; streamed in batches). Returns how many.

        Raises DataError if the same date comes twice (the transaction should be rolled back).
        """
        added = 0
        for batch in _batches(rows):
            self._check_new_days(batch)
            try:
                if self._direct:
                    self._insert_direct(batch)
                else:
                    self._insert_staging(batch)
            except IntegrityError as exc:  # a concurrent writer got there first
                raise self._duplicate_error(exc) from None
            added += len(batch)
        self.staged += added
        return added

    def _check_new_days(self, batch: list[PriceRow]) -> None:
        new = {row[0] for row in batch}
        if len(new) == len(batch) and self._dates.isdisjoint(new):
            self._dates |= new
            return
        seen: set[dt.date] = set()
        for row in batch:
            if row[0] in seen or row[0] in self._dates:
                raise DataError(f"{self.ticker}: date {row[0]} was sent twice; send each day once")
            seen.add(row[0])

    def _insert_direct(self, batch: list[PriceRow]) -> None:
        if self._postgres:
            data = _binary_copy(
                batch,
                before=_text_field(self.ticker),
                after=_text_field(self.source) + _timestamp_field(self._ingested_at),
                fields=len(_PRICE_COLUMNS),
            )
            self._copy("daily_prices", _PRICE_COLUMNS, data)
        else:
            # Bound as SQLAlchemy would, so ORM reads parse the timestamp back.
            to_db = DailyPrice.ingested_at.type.bind_processor(self._session.get_bind().dialect)
            stamp = to_db(self._ingested_at) if to_db else self._ingested_at
            self._session.connection().exec_driver_sql(
                f"INSERT INTO daily_prices ({', '.join(_PRICE_COLUMNS)}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(self.ticker, *row, self.source, stamp) for row in _sqlite_rows(batch)],
            )

    def _insert_staging(self, batch: list[PriceRow]) -> None:
        if not self._staging_ready:
            connection = self._session.connection()
            connection.exec_driver_sql(_staging_ddl(connection.dialect))
            # Empty at the start of every transaction (ON COMMIT DELETE ROWS, or a rollback);
            # only an earlier load in this same transaction can have left rows.
            if self._session.info.get(_STAGING_USED):
                connection.execute(delete(_staging))
            self._session.info[_STAGING_USED] = True
            self._staging_ready = True
        if self._postgres:
            data = _binary_copy(batch, before=b"", after=b"", fields=1 + len(VALUE_COLUMNS))
            self._copy(_staging.name, ("date", *VALUE_COLUMNS), data)
        else:
            self._session.connection().exec_driver_sql(
                f"INSERT INTO {_staging.name} VALUES (?, ?, ?, ?, ?, ?, ?)",
                list(_sqlite_rows(batch)),
            )
        self._in_staging += len(batch)

    def _copy(self, table: str, columns: Sequence[str], data: io.BytesIO) -> None:
        import psycopg2

        dbapi = self._session.connection().connection.dbapi_connection
        with dbapi.cursor() as cursor:  # type: ignore[union-attr]
            try:
                cursor.copy_expert(
                    f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT binary)", data
                )
            except psycopg2.IntegrityError as exc:
                raise IntegrityError(f"COPY {table}", None, exc) from exc

    def _duplicate_error(self, exc: IntegrityError) -> DataError:
        detail = str(exc.orig).strip().splitlines()
        where = next((line for line in detail if line.startswith("DETAIL")), detail[0])
        return DataError(
            f"{self.ticker}: the same date was sent twice ({where}); send each day once"
        )

    def merge(self) -> UpsertCounts:
        """Insert new days, update changed ones (old values -> price_revisions), keep the rest."""
        if self._direct:
            return UpsertCounts(inserted=self.staged, updated=0, unchanged=0)
        if not self._in_staging:
            return UpsertCounts(inserted=0, updated=0, unchanged=0)
        session, prices, staged = self._session, PRICES, _staging
        match = and_(prices.c.ticker == self.ticker, prices.c.date == staged.c.date)
        changed = or_(*(prices.c[c].is_distinct_from(staged.c[c]) for c in VALUE_COLUMNS))
        existing, updated = session.execute(
            select(
                func.count(prices.c.date),
                func.coalesce(func.sum(case((changed, 1), else_=0)), 0),
            ).select_from(staged.join(prices, match))
        ).one()
        total = self._in_staging
        stamp = literal(self._ingested_at, DailyPrice.ingested_at.type)
        if updated:
            revision_columns = ["ticker", "date", *VALUE_COLUMNS, "source", "ingested_at"]
            session.execute(
                insert(REVISIONS).from_select(
                    [*revision_columns, "revised_at", "revised_by_source"],
                    select(*(prices.c[c] for c in revision_columns), stamp, literal(self.source))
                    .select_from(staged.join(prices, match))
                    .where(changed),
                )
            )
            session.execute(
                update(prices)
                .where(match, changed)
                .values(
                    {c: staged.c[c] for c in VALUE_COLUMNS}
                    | {"source": self.source, "ingested_at": self._ingested_at}
                )
            )
        if existing < total:
            already = select(prices.c.date).where(match).exists()
            session.execute(
                insert(prices).from_select(
                    list(_PRICE_COLUMNS),
                    select(
                        literal(self.ticker),
                        staged.c.date,
                        *(staged.c[c] for c in VALUE_COLUMNS),
                        literal(self.source),
                        stamp,
                    ).where(~already),
                )
            )
        if not self._postgres:  # PostgreSQL empties it at commit (ON COMMIT DELETE ROWS)
            session.execute(delete(staged))
        return UpsertCounts(
            inserted=total - existing,
            updated=updated,
            unchanged=existing - updated,
        )


def stage_prices(session: Session, *, ticker: str, source: str) -> PriceStaging:
    """Start loading rows of `ticker` from `source` in the session's transaction."""
    return PriceStaging(session, ticker=ticker, source=source)


def upsert_prices(
    session: Session, *, ticker: str, rows: Iterable[PriceRow], source: str
) -> UpsertCounts:
    """Upsert by (ticker, date): new days inserted, changed days updated with their old values
    kept in price_revisions, identical days untouched. `rows` may be a stream of any length.
    Raises DataError if a date comes twice (the transaction should then be rolled back)."""
    staging = stage_prices(session, ticker=ticker, source=source)
    staging.add(rows)
    return staging.merge()


def rejection_key(line_number: int | None, raw: str) -> str:
    """The digest that makes a rejected row unique within its (ticker, source): line and text."""
    text = f"{'' if line_number is None else line_number}\n{raw}"
    return hashlib.sha256(text.encode()).hexdigest()


def _insert_ignoring_stored(dialect: Dialect) -> Insert:
    """INSERT INTO rejected_rows ... ON CONFLICT DO NOTHING ... RETURNING id, for this dialect."""
    index_elements = ["ticker", "source", "content_key"]
    if dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        pg_insert = postgresql.insert(REJECTED).on_conflict_do_nothing(
            index_elements=index_elements
        )
        return pg_insert.returning(REJECTED.c.id)
    if dialect.name == "sqlite":
        from sqlalchemy.dialects import sqlite

        lite_insert = sqlite.insert(REJECTED).on_conflict_do_nothing(index_elements=index_elements)
        return lite_insert.returning(REJECTED.c.id)
    raise DataError(f"rejected rows: unsupported database {dialect.name}")


def record_rejected(
    session: Session, *, ticker: str, source: str, rejections: Iterable[Rejection]
) -> int:
    """Store refused rows (source, line number, raw text, reason), streamed in batches; a row
    already stored for this ticker and source (same line, same text) is not stored again.

    Returns how many rows were new.
    """
    now = utc_now()
    statement = _insert_ignoring_stored(session.get_bind().dialect)
    stored = 0
    for batch in _batches(rejections):
        result = session.execute(
            statement,
            [
                {
                    "ticker": ticker,
                    "source": source,
                    "line_number": r.line_number,
                    "raw": r.raw,
                    "reason": r.reason,
                    "rejected_at": now,
                    "content_key": rejection_key(r.line_number, r.raw),
                }
                for r in batch
            ],
        )
        stored += len(result.all())
    return stored


def close_before(
    session: Session, *, ticker: str, day: dt.date, within_days: int
) -> tuple[dt.date, float] | None:
    """The latest stored (date, close) of `ticker` in the `within_days` days before `day`."""
    prices = PRICES
    row = session.execute(
        select(prices.c.date, prices.c.close)
        .where(
            prices.c.ticker == ticker,
            prices.c.date < day,
            prices.c.date >= day - dt.timedelta(days=within_days),
        )
        .order_by(prices.c.date.desc())
        .limit(1)
    ).first()
    return (row[0], row[1]) if row is not None else None


def read_closes(session: Session, *, ticker: str, as_of: dt.date) -> list[tuple[dt.date, float]]:
    """(date, close) for `ticker`, oldest first, only dates <= as_of."""
    prices = PRICES
    result = session.execute(
        select(prices.c.date, prices.c.close)
        .where(prices.c.ticker == ticker, prices.c.date <= as_of)
        .order_by(prices.c.date)
    )
    return [(day, close) for day, close in result]


def read_prices(
    session: Session,
    *,
    ticker: str,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> list[PriceRow]:
    """Full daily rows for `ticker` in [start, end] (inclusive, both optional), oldest first."""
    prices = PRICES
    query = select(prices.c.date, *(prices.c[c] for c in VALUE_COLUMNS)).where(
        prices.c.ticker == ticker
    )
    if start is not None:
        query = query.where(prices.c.date >= start)
    if end is not None:
        query = query.where(prices.c.date <= end)
    return [PriceRow(*row) for row in session.execute(query.order_by(prices.c.date))]


def read_dates(session: Session, *, ticker: str, start: dt.date, end: dt.date) -> list[dt.date]:
    """The stored dates of `ticker` in [start, end], oldest first."""
    prices = PRICES
    return list(
        session.scalars(
            select(prices.c.date)
            .where(prices.c.ticker == ticker, prices.c.date.between(start, end))
            .order_by(prices.c.date)
        )
    )


def missing_dates(session: Session, *, ticker: str, start: dt.date, end: dt.date) -> list[dt.date]:
    """Calendar days in [start, end] with no stored row for `ticker` (one count when none)."""
    prices = PRICES
    in_range = and_(prices.c.ticker == ticker, prices.c.date.between(start, end))
    stored = session.execute(select(func.count()).where(in_range)).scalar_one()
    span = (end - start).days + 1
    if stored >= span:
        return []
    have = set(read_dates(session, ticker=ticker, start=start, end=end))
    days = (start + dt.timedelta(days=k) for k in range(span))
    return [day for day in days if day not in have]


def price_coverage(
    session: Session, *, ticker: str, as_of: dt.date | None = None
) -> PriceCoverage | None:
    """First and last stored date and the number of days (up to as_of); None if no rows."""
    prices = PRICES
    query = select(func.min(prices.c.date), func.max(prices.c.date), func.count()).where(
        prices.c.ticker == ticker
    )
    if as_of is not None:
        query = query.where(prices.c.date <= as_of)
    first, last, count = session.execute(query).one()
    if not count:
        return None
    return PriceCoverage(first=first, last=last, count=count)


def list_tickers(session: Session) -> list[str]:
    """Every ticker with stored prices, sorted."""
    prices = PRICES
    return list(session.scalars(select(prices.c.ticker).distinct().order_by(prices.c.ticker)))


def read_revisions(session: Session, *, ticker: str) -> list[PriceRevision]:
    """Revisions of `ticker`, oldest change first."""
    return list(
        session.scalars(
            select(PriceRevision)
            .where(PriceRevision.ticker == ticker)
            .order_by(PriceRevision.date, PriceRevision.id)
        )
    )


def read_rejected(session: Session, *, ticker: str) -> list[RejectedRow]:
    """Rejected rows of `ticker`, in the order they were recorded."""
    return list(
        session.scalars(
            select(RejectedRow).where(RejectedRow.ticker == ticker).order_by(RejectedRow.id)
        )
    )
