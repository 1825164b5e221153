"""The per-ticker lock, held by one process and contended by another (SQLite file + Postgres)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pricecast.errors import LockTimeout
from storage.db import make_engine
from storage.locks import advisory_key, ticker_lock

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
