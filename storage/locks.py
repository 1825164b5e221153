"""The per-ticker lock around train-score-promote: two runs for a ticker never interleave, and a
run that lost its lock knows it and cannot commit.

PostgreSQL: a session-level advisory lock on a dedicated connection (the server releases it when
that session dies: the process is killed, the server restarts). SQLite: an exclusive `fcntl` lock
on a file next to the state (same machine). The second run polls for a bounded time, then raises
LockTimeout.

Each acquisition also raises the lock's fencing token in `ticker_locks` (its own committed
transaction). `TickerLock.check()` says whether the lock is still ours; `TickerLock.fence(session)`
makes the caller's transaction commit only while the stored token is still ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from sqlalchemy import Connection, Engine, Table, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from pricecast.errors import LockLost, LockTimeout
from storage.db import ensure_schema, unavailable
from storage.models import TickerLock as TickerLockRow
from storage.models import utc_now

DEFAULT_POLL_SECONDS = 0.25
LOCKS = cast(Table, TickerLockRow.__table__)
_log = logging.getLogger(__name__)
_HOLDS_ADVISORY_KEY = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND classid::bigint = :high AND objid::bigint = :low"
    " AND objsubid = 1)"
)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock (the same in every process)."""
    digest = hashlib.blake2b(f"pricecast:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_file_path(lock_dir: Path, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return Path(lock_dir) / f"{safe}.lock"


def _timeout(name: str, where: str, timeout_seconds: float) -> LockTimeout:
    return LockTimeout(
        f"another run holds the lock for {name} ({where}) and did not release it within "
        f"{timeout_seconds:g} s; wait for it to finish, or raise PRICECAST_LOCK_TIMEOUT_SECONDS"
    )


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def _next_token(connection: Connection, name: str) -> int:
    """Raise the stored token of `name` by one (1 the first time) and return it; not committed."""
    holder = f"{socket.gethostname()} pid {os.getpid()}"
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    upsert = insert(LOCKS).values(name=name, token=1, holder=holder, acquired_at=utc_now())
    upsert = upsert.on_conflict_do_update(
        index_elements=[LOCKS.c.name],
        set_={
            "token": LOCKS.c.token + 1,
            "holder": upsert.excluded.holder,
            "acquired_at": upsert.excluded.acquired_at,
        },
    )
    return int(connection.execute(upsert.returning(LOCKS.c.token)).scalar_one())


def stored_token(connection: Connection | Session, name: str) -> int | None:
    """The current fencing token of `name` (None if it was never taken)."""
    return connection.execute(select(LOCKS.c.token).where(LOCKS.c.name == name)).scalar()


class TickerLock(ABC):
    """A held lock: `name`, the fencing `token` this holder got, and the checks the work under
    the lock calls before and while it commits."""

    def __init__(self, name: str, token: int) -> None:
        self.name = name
        self.token = token
        self._lost: str | None = None

    def check(self) -> None:
        """Raise LockLost unless the lock is still ours: its session (or lock file) is alive and
        holds it, and no later holder raised the token. Once lost, always lost."""
        if self._lost is None:
            self._lost = self._why_lost()
        if self._lost is not None:
            raise LockLost(
                f"lost the lock for {self.name}: {self._lost}; nothing after that was committed. "
                "Rerun the same --as-of once the other run (if any) has finished"
            )

    def fence(self, session: Session) -> None:
        """Inside the caller's transaction: lock the token row (PostgreSQL) and raise LockLost
        unless the token is still ours, so that transaction commits only while we hold the lock.
        A later holder's acquisition waits for that commit."""
        query = select(LOCKS.c.token).where(LOCKS.c.name == self.name)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        token = session.execute(query).scalar()
        if token != self.token:
            self._lost = self._lost or self._token_moved(token)
        self.check()

    def token_unchanged(self, session: Session) -> bool:
        """Inside the caller's transaction: whether no later holder raised the token (locking
        its row on PostgreSQL until that transaction ends). A lock lost only because its
        session died is still unclaimed then, so this night's own row may still be closed."""
        query = select(LOCKS.c.token).where(LOCKS.c.name == self.name)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        return bool(session.execute(query).scalar() == self.token)

    @property
    def lost(self) -> bool:
        """True once a check found the lock lost."""
        return self._lost is not None

    def _token_moved(self, token: int | None) -> str:
        return f"another run took it since (token {token}, ours was {self.token})"

    @abstractmethod
    def _why_lost(self) -> str | None:
        """Why the lock is no longer ours (None while it is): each kind of lock asks its own."""


class _AdvisoryLock(TickerLock):
    """A PostgreSQL advisory lock held by the session of one dedicated connection."""

    def __init__(self, name: str, token: int, *, connection: Connection, key: int) -> None:
        super().__init__(name, token)
        self._connection = connection
        self._key = key
        self._use = threading.Lock()  # one connection; checks may come from task threads

    def _why_lost(self) -> str | None:
        params = {"high": (self._key >> 32) & 0xFFFFFFFF, "low": self._key & 0xFFFFFFFF}
        with self._use:
            try:
                held = self._connection.execute(_HOLDS_ADVISORY_KEY, params).scalar()
                token = stored_token(self._connection, self.name)
                self._connection.commit()
            except SQLAlchemyError as exc:
                return f"its database session died ({_first_line(exc)})"
        if not held:
            return "PostgreSQL no longer shows this session holding it"
        if token != self.token:
            return self._token_moved(token)
        return None

    def release(self) -> None:
        """Unlock; a session that already died released it with itself (a warning, no error)."""
        with self._use:
            try:
                if self._connection.invalidated:
                    gone: str | None = self._lost or "the connection was closed"
                else:
                    gone = None
                    unlocked = self._connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": self._key}
                    ).scalar()
                    self._connection.commit()
                    if not unlocked:
                        _log.warning(
                            "lock %s was no longer held by this session when released", self.name
                        )
            except SQLAlchemyError as exc:
                gone = _first_line(exc)
            finally:
                try:
                    self._connection.close()
                except SQLAlchemyError as exc:  # closing a dead connection: nothing to keep
                    _log.debug("closing the lock connection of %s: %s", self.name, exc)
        if gone is not None:
            _log.warning(
                "lock %s: its database session is gone, so the server already released it (%s)",
                self.name,
                gone,
            )


class _FileLock(TickerLock):
    """An exclusive `fcntl` lock on a file; the token lives in the (SQLite) database."""

    def __init__(self, name: str, token: int, *, engine: Engine, path: Path, fd: int) -> None:
        super().__init__(name, token)
        self._engine = engine
        self._path = path
        self._fd = fd

    def _why_lost(self) -> str | None:
        try:
            if os.fstat(self._fd).st_ino != os.stat(self._path).st_ino:
                return f"its lock file {self._path} was replaced"
        except FileNotFoundError:
            return f"its lock file {self._path} was deleted"
        try:
            with self._engine.connect() as connection:
                token = stored_token(connection, self.name)
        except SQLAlchemyError as exc:
            return f"its token could not be read ({_first_line(exc)})"
        return self._token_moved(token) if token != self.token else None


@contextmanager
def ticker_lock(
    engine: Engine,
    *,
    name: str,
    timeout_seconds: float,
    lock_dir: Path,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
) -> Iterator[TickerLock]:
    """Hold the lock called `name` (e.g. "nightly:BTC-USD") for the duration of the block.

    Waits up to `timeout_seconds` for another holder, then raises LockTimeout; raises
    ServiceUnavailable if the database cannot be reached. Yields the held `TickerLock` (call
    `check()` between steps, `fence(session)` in the transaction that must commit only while
    the lock is held). Leaving the block releases it; a lock whose session already died is
    released by the server, and leaving is not an error then.
    """
    ensure_schema(engine)
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, name, timeout_seconds, poll_seconds) as lock:
            yield lock
    else:
        path = lock_file_path(lock_dir, name)
        with _file_lock(engine, path, name, timeout_seconds, poll_seconds) as lock:
            yield lock


@contextmanager
def _advisory_lock(
    engine: Engine, name: str, timeout_seconds: float, poll_seconds: float
) -> Iterator[TickerLock]:
    key = advisory_key(name)
    try:
        connection = engine.connect()
    except (OperationalError, InterfaceError) as exc:
        raise unavailable(engine, exc) from exc
    try:
        deadline = time.monotonic() + timeout_seconds
        while True:
            got = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})
            # Session-level locks are not part of a transaction: end it so none stays open.
            connection.commit()
            if got.scalar():
                break
            if time.monotonic() >= deadline:
                where = f"PostgreSQL advisory lock {key} on {engine.url.database}"
                raise _timeout(name, where, timeout_seconds)
            time.sleep(poll_seconds)
        try:
            token = _next_token(connection, name)
            connection.commit()
        except BaseException:
            # Best effort: if the session died, the server released the lock with it.
            with contextlib.suppress(SQLAlchemyError):
                connection.rollback()
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
            raise
    except DBAPIError as exc:
        connection.close()
        if isinstance(exc, OperationalError | InterfaceError):
            raise unavailable(engine, exc) from exc
        raise
    except BaseException:
        connection.close()
        raise
    lock = _AdvisoryLock(name, token, connection=connection, key=key)
    try:
        yield lock
    finally:
        lock.release()


@contextmanager
def _file_lock(
    engine: Engine, path: Path, name: str, timeout_seconds: float, poll_seconds: float
) -> Iterator[TickerLock]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _timeout(name, f"file lock {path}", timeout_seconds) from None
                time.sleep(poll_seconds)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            try:
                with engine.begin() as connection:
                    token = _next_token(connection, name)
            except (OperationalError, InterfaceError) as exc:
                raise unavailable(engine, exc) from exc
            yield _FileLock(name, token, engine=engine, path=path, fd=fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
