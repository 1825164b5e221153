"""The per-ticker lock: contended by another process, fenced by its token, and known lost when
its session dies or its file goes (SQLite file + Postgres)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from pricecast.errors import LockLost, LockTimeout
from storage.db import make_engine, session_scope
from storage.locks import advisory_key, lock_file_path, ticker_lock

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from storage.db import make_engine
    from storage.locks import ticker_lock

    url, lock_dir, release = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    with ticker_lock(make_engine(url), name="nightly:BTC-USD", timeout_seconds=5,
                     lock_dir=lock_dir, poll_seconds=0.05):
        print("locked", flush=True)
        while not release.exists():
            time.sleep(0.05)
    print("released", flush=True)
    """
)


def _start_holder(url: str, lock_dir: Path, release: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, str(lock_dir), str(release)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_advisory_key_is_stable_and_distinct() -> None:
    assert advisory_key("nightly:BTC-USD") == advisory_key("nightly:BTC-USD")
    assert advisory_key("nightly:BTC-USD") != advisory_key("nightly:ETH-USD")
    assert -(2**63) <= advisory_key("x") < 2**63


def test_second_process_waits_then_times_out_then_gets_the_lock(
    database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(database_url)
    release = tmp_path / "release"
    holder = _start_holder(database_url, tmp_path / "locks", release)
    try:
        started = time.monotonic()
        with (
            pytest.raises(LockTimeout, match="nightly:BTC-USD.*within 0.5 s"),
            ticker_lock(
                engine, name="nightly:BTC-USD", timeout_seconds=0.5, lock_dir=tmp_path / "locks"
            ),
        ):
            pass
        assert time.monotonic() - started >= 0.5
        # Another ticker is not blocked.
        with ticker_lock(
            engine, name="nightly:ETH-USD", timeout_seconds=0.5, lock_dir=tmp_path / "locks"
        ):
            pass
        # Released while we wait: we get it within the bound.
        release.touch()
        with ticker_lock(
            engine, name="nightly:BTC-USD", timeout_seconds=10, lock_dir=tmp_path / "locks"
        ):
            assert holder.wait(timeout=10) == 0
    finally:
        release.touch()
        holder.wait(timeout=10)
        engine.dispose()


@pytest.mark.postgres
def test_a_killed_holder_releases_the_postgres_lock(pg_url: str, tmp_path: Path) -> None:
    engine = make_engine(pg_url)
    holder = _start_holder(pg_url, tmp_path, tmp_path / "never")
    holder.kill()
    holder.wait(timeout=10)
    with ticker_lock(engine, name="nightly:BTC-USD", timeout_seconds=10, lock_dir=tmp_path):
        pass
    engine.dispose()


# ---------------------------------------------------------------- held, or known lost


def _write_price(session, close: float) -> None:
    from storage.prices import PriceRow, upsert_prices

    row = PriceRow(dt.date(2024, 1, 1), None, None, None, close, None, None)
    upsert_prices(session, ticker="LOCKED", rows=[row], source="test")


def _stored_closes(engine) -> list[float]:
    from storage.prices import read_prices

    with session_scope(engine) as session:
        return [row.close for row in read_prices(session, ticker="LOCKED")]


@pytest.mark.parametrize("name", ["nightly:BTC-USD", "nightly:ETH-USD"])  # key < 0 and > 0
def test_each_holder_gets_a_new_token_and_checks_pass_while_held(
    database_url: str, tmp_path: Path, name: str
) -> None:
    engine = make_engine(database_url)
    tokens = []
    for _ in range(2):
        with ticker_lock(engine, name=name, timeout_seconds=5, lock_dir=tmp_path) as lock:
            lock.check()
            with session_scope(engine) as session:
                lock.fence(session)
                _write_price(session, 10.0 + len(tokens))
            lock.check()
            assert not lock.lost
            tokens.append(lock.token)
    assert tokens[1] == tokens[0] + 1
    assert _stored_closes(engine) == [11.0]
    engine.dispose()


@pytest.mark.postgres
def test_a_killed_session_is_known_lost_and_cannot_commit(
    pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The lock's backend is terminated (what a server restart does to it): check() says so, a
    second holder gets the lock at once, and the first one's fenced write is rolled back."""
    engine = make_engine(pg_url)
    with ticker_lock(engine, name="nightly:LOCKED", timeout_seconds=5, lock_dir=tmp_path) as first:
        key = advisory_key("nightly:LOCKED")
        with engine.connect() as admin:
            # Only our lock's backend, in this test's own database: the server is shared.
            killed = admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = "
                    "current_database()) AND classid::bigint = :high AND objid::bigint = :low "
                    "AND objsubid = 1"
                ),
                {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF},
            ).all()
        assert killed == [(True,)]
        with pytest.raises(
            LockLost, match="lost the lock for nightly:LOCKED: its database session died"
        ):
            first.check()
        with ticker_lock(
            engine, name="nightly:LOCKED", timeout_seconds=1, lock_dir=tmp_path
        ) as second:
            assert second.token == first.token + 1
            with pytest.raises(LockLost), session_scope(engine) as session:
                _write_price(session, 1.0)
                first.fence(session)
            with session_scope(engine) as session:
                second.fence(session)
                _write_price(session, 2.0)
        assert _stored_closes(engine) == [2.0]
    assert "its database session is gone, so the server already released it" in caplog.text
    engine.dispose()


def test_a_lock_file_deleted_under_its_holder_is_known_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'locks.db'}")
    with ticker_lock(engine, name="nightly:LOCKED", timeout_seconds=5, lock_dir=tmp_path) as first:
        lock_file_path(tmp_path, "nightly:LOCKED").unlink()
        with pytest.raises(LockLost, match="its lock file .* was deleted"):
            first.check()
        with ticker_lock(
            engine, name="nightly:LOCKED", timeout_seconds=1, lock_dir=tmp_path
        ) as second:
            with pytest.raises(LockLost), session_scope(engine) as session:
                _write_price(session, 1.0)
                first.fence(session)
            second.check()
    assert _stored_closes(engine) == []
    engine.dispose()


def test_a_token_moved_by_another_holder_fails_the_fence(tmp_path: Path) -> None:
    """Whatever the backend lost, a later holder's token stops the earlier holder's commit."""
    engine = make_engine(f"sqlite:///{tmp_path / 'locks.db'}")
    with ticker_lock(engine, name="nightly:LOCKED", timeout_seconds=5, lock_dir=tmp_path) as lock:
        with engine.begin() as connection:
            connection.execute(text("UPDATE ticker_locks SET token = token + 1"))
        with (
            pytest.raises(LockLost, match=r"another run took it since \(token 2, ours was 1\)"),
            session_scope(engine) as session,
        ):
            _write_price(session, 1.0)
            lock.fence(session)
        assert lock.lost
    assert _stored_closes(engine) == []
    engine.dispose()
