"""A worker's resident training process, with the worker's tiny pure-Python jobs: real processes
and a real Unix socket. The worker is stood for by a `sleep` process (its pid is the owner), the
flow runs by this test process connecting, running jobs and letting go (`shutdown_worker`)."""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.training import resident
from flows.training.worker import shutdown_worker
from pricecast.errors import TrainingProcessDied
from pricecast.processes import gone_within, process_alive
from tests.flows.training.jobs import DYING_LINE
from tests.flows.training.test_worker import (  # importable_tests: autouse here too
    _job_log,
    _pid,
    _run,
    importable_tests,  # noqa: F401
)


@pytest.fixture
def owner(monkeypatch: pytest.MonkeyPatch) -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in worker process; this test's flow runs are its flow runs."""
    process = subprocess.Popen(["sleep", "600"])
    monkeypatch.setenv(resident.SOCKET_ENV, str(resident.socket_path(process.pid)))
    monkeypatch.setenv(resident.OWNER_ENV, str(process.pid))
    yield process
    shutdown_worker()
    process.kill()
    process.wait()


def test_the_flow_runs_of_a_worker_share_its_resident_training_process(
    tmp_path: Path, owner: subprocess.Popen[bytes]
) -> None:
    first = _run(tmp_path, "run-1")
    assert first.timings["worker_resident"] == 1.0
    resident_pid = _pid(first)
    assert resident_pid != os.getpid()
    shutdown_worker()  # the first flow run ends: its resident stays
    assert process_alive(resident_pid)
    assert (tmp_path / "work" / resident.LOG_NAME).is_file()

    second = _run(tmp_path, "run-2")
    assert _pid(second) == resident_pid == second.timings["worker_pid"]
    assert second.timings["worker_resident"] == 1.0
    assert second.timings["import_seconds"] == 0.0  # the imports were paid once, by run 1


def test_a_flow_run_that_finds_the_resident_busy_starts_a_child_of_its_own(
    tmp_path: Path, owner: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    lock_path = resident.socket_path(owner.pid).with_name(f"training-{owner.pid}.sock.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:  # another flow run of this worker has it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _run(tmp_path, "busy")
    assert result.timings["worker_resident"] == 0.0
    assert "it is busy with another flow run of the worker" in capsys.readouterr().out


def test_a_flow_run_that_cannot_reach_its_workers_socket_starts_a_child_of_its_own(
    tmp_path: Path,
    owner: subprocess.Popen[bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the socket's folder should be")
    monkeypatch.setenv(resident.SOCKET_ENV, str(blocked / "training.sock"))
    result = _run(tmp_path, "unreachable")
    assert result.timings["worker_resident"] == 0.0
    out = capsys.readouterr().out
    assert f"not using the worker's resident training process ({blocked / 'training.sock'})" in out
    assert "this flow run starts a training process of its own" in out


def test_a_flow_run_whose_worker_is_gone_starts_a_child_of_its_own(
    tmp_path: Path, owner: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    owner.kill()
    owner.wait()
    result = _run(tmp_path, "orphan")
    assert result.timings["worker_resident"] == 0.0
    assert "its worker is gone" in capsys.readouterr().out


def test_a_resident_killed_in_a_job_is_one_line_and_the_next_run_gets_a_new_one(
    tmp_path: Path, owner: subprocess.Popen[bytes]
) -> None:
    before = _pid(_run(tmp_path, "before"))

    with pytest.raises(TrainingProcessDied) as raised:
        _run(tmp_path, "TICK-killed", "killed")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"the worker's resident training process (pid {before}) ended")
    assert f"its log: {_job_log(tmp_path, 'TICK-killed')}" in message
    assert message.endswith("rerun the same --as-of to complete the night")
    assert DYING_LINE in _job_log(tmp_path, "TICK-killed").read_text()

    after = _run(tmp_path, "after")  # a stale socket is left: the run starts a successor
    assert after.timings["worker_resident"] == 1.0
    assert _pid(after) != before


def test_a_stuck_job_in_the_resident_is_stopped_after_its_timeout(
    tmp_path: Path, owner: subprocess.Popen[bytes]
) -> None:
    pid = _pid(_run(tmp_path, "before"))
    with pytest.raises(TrainingProcessDied, match=r"did not finish training TICK .* within 1 s"):
        _run(tmp_path, "TICK-stuck", "stuck", timeout_seconds=1.0)
    assert gone_within(pid, 5, poll=0.1)


def test_a_resident_at_its_last_job_hands_over_to_a_successor(
    tmp_path: Path, owner: subprocess.Popen[bytes]
) -> None:
    pids = [_pid(_run(tmp_path, f"job-{i}", max_jobs=2)) for i in range(3)]
    assert pids[0] == pids[1] != pids[2]
    assert gone_within(pids[0], 20.0, poll=0.1)


def test_the_resident_exits_when_its_worker_is_gone(
    tmp_path: Path, owner: subprocess.Popen[bytes]
) -> None:
    pid = _pid(_run(tmp_path, "job"))
    shutdown_worker()
    owner.kill()
    owner.wait()
    assert gone_within(pid, resident.OWNER_CHECK_SECONDS * 5, poll=0.1)
    assert not resident.socket_path(owner.pid).exists()
    assert "its worker is gone: exiting" in (tmp_path / "work" / resident.LOG_NAME).read_text()
