"""The per-ticker lock across a real PostgreSQL restart (a throwaway cluster): known lost, never
held twice for a commit, and released without an error."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import Engine

from pricecast.errors import LockLost
from storage.db import make_engine, session_scope
from storage.locks import ticker_lock
from storage.prices import PriceRow, read_prices, upsert_prices
from tests.faults.conftest import ThrowawayPostgres

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

NAME = "nightly:BTC-USD"


def _write_close(session, close: float) -> None:
    row = PriceRow(dt.date(2024, 1, 1), None, None, None, close, None, None)
    upsert_prices(session, ticker="BTC-USD", rows=[row], source="fault test")


def _closes(engine: Engine) -> list[float]:
    with session_scope(engine) as session:
        return [row.close for row in read_prices(session, ticker="BTC-USD")]


def test_a_restart_loses_the_lock_and_check_says_so(
    throwaway_pg: ThrowawayPostgres, fault_pg_url: str, tmp_path: Path
) -> None:
    engine = make_engine(fault_pg_url)
    with ticker_lock(engine, name=NAME, timeout_seconds=5, lock_dir=tmp_path) as lock:
        lock.check()
        throwaway_pg.restart()
        with pytest.raises(LockLost, match=f"lost the lock for {NAME}: its database session died"):
            lock.check()
        assert lock.lost
        with pytest.raises(LockLost):  # lost for good, even though the server is back
            lock.check()
    engine.dispose()


def test_after_a_restart_the_next_holder_wins_and_the_first_cannot_commit(
    throwaway_pg: ThrowawayPostgres, fault_pg_url: str, tmp_path: Path
) -> None:
    first_engine, second_engine = make_engine(fault_pg_url), make_engine(fault_pg_url)
    with ticker_lock(first_engine, name=NAME, timeout_seconds=5, lock_dir=tmp_path) as first:
        throwaway_pg.restart(down_seconds=1.0)
        # The server released the dead session's lock: a second night gets it at once.
        with ticker_lock(second_engine, name=NAME, timeout_seconds=1, lock_dir=tmp_path) as second:
            assert second.token == first.token + 1
            # The first night, unaware, writes and fences in one transaction: rolled back.
            with pytest.raises(LockLost), session_scope(first_engine) as session:
                _write_close(session, 1.0)
                first.fence(session)
            with session_scope(second_engine) as session:
                second.fence(session)
                _write_close(session, 2.0)
            second.check()
    assert _closes(second_engine) == [2.0]
    first_engine.dispose()
    second_engine.dispose()


HOLDER = textwrap.dedent(
    """
    import logging, sys, time
    from pathlib import Path
    from pricecast.errors import LockLost
    from storage.db import make_engine
    from storage.locks import ticker_lock

    logging.basicConfig(level=logging.WARNING)
    url, lock_dir, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    with ticker_lock(make_engine(url), name="nightly:BTC-USD", timeout_seconds=5,
                     lock_dir=lock_dir) as lock:
        print("locked", flush=True)
        while not go.exists():
            time.sleep(0.05)
        try:
            lock.check()
            print("still held", flush=True)
        except LockLost as exc:
            print(f"lost: {exc}", flush=True)
    print("released", flush=True)
    """
)


def test_releasing_after_a_restart_is_not_an_error(
    throwaway_pg: ThrowawayPostgres, fault_pg_url: str, tmp_path: Path
) -> None:
    """A process whose work is done exits 0 even though its lock died with the server."""
    go = tmp_path / "go"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, fault_pg_url, str(tmp_path), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        throwaway_pg.restart()
        go.touch()
        out, err = holder.communicate(timeout=60)
    finally:
        go.touch()
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
    assert holder.returncode == 0, err
    assert out.splitlines()[0].startswith("lost: lost the lock for nightly:BTC-USD")
    assert out.splitlines()[-1] == "released"
    assert "its database session is gone, so the server already released it" in err
    assert "Traceback" not in err


def test_a_lock_held_across_no_restart_survives_the_checks(
    fault_pg_url: str, tmp_path: Path
) -> None:
    engine = make_engine(fault_pg_url)
    with ticker_lock(engine, name=NAME, timeout_seconds=5, lock_dir=tmp_path) as lock:
        for _ in range(3):
            lock.check()
        with session_scope(engine) as session:
            lock.fence(session)
            _write_close(session, 3.0)
    assert _closes(engine) == [3.0]
    engine.dispose()
