"""The per-ticker lock around train-score-promote: two runs for a ticker never interleave.

PostgreSQL: a session-level advisory lock on a dedicated connection (released by the server if
the process dies). SQLite: an exclusive `fcntl` lock on a file next to the state (same machine).
The second run polls for a bounded time, then raises LockTimeout.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import InterfaceError, OperationalError

from pricecast.errors import LockTimeout
from storage.db import unavailable

DEFAULT_POLL_SECONDS = 0.25


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


@contextmanager
def ticker_lock(
    engine: Engine,
    *,
    name: str,
    timeout_seconds: float,
    lock_dir: Path,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
) -> Iterator[None]:
    """Hold the lock called `name` (e.g. "nightly:BTC-USD") for the duration of the block.

    Waits up to `timeout_seconds` for another holder, then raises LockTimeout.
    """
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, name, timeout_seconds, poll_seconds):
            yield
    else:
        with _file_lock(lock_file_path(lock_dir, name), name, timeout_seconds, poll_seconds):
            yield


@contextmanager
def _advisory_lock(
    engine: Engine, name: str, timeout_seconds: float, poll_seconds: float
) -> Iterator[None]:
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
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()
    finally:
        connection.close()


@contextmanager
def _file_lock(
    path: Path, name: str, timeout_seconds: float, poll_seconds: float
) -> Iterator[None]:
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
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
