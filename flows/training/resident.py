"""The `pricecast worker`'s resident training process: TensorFlow and MLflow imported once per
worker, not once per flow run.

A Prefect process worker starts each flow run (a batch of tickers) in a new process. Without a
resident process each batch run starts a training process of its own, and pays the imports
(5-7 s) and the first compilation of the network again. `pricecast worker` starts one training
process beside the Prefect worker. It listens on a Unix socket, PRICECAST_TRAINING_SOCKET, which
every flow run of that worker inherits. A flow run sends its jobs there over the protocol a
child's pipes carry (`flows.training.worker`), and the process stays for the worker's next runs.

- One flow run at a time has it: an exclusive lock on `<socket>.lock`, held while connected
  (released by the kernel if the flow run dies). A second flow run of the same worker
  (`pricecast worker --limit 2`) starts a child of its own, as it would without a resident.
- It exits by the rules of a child (after `training_worker_max_jobs` jobs, or once its memory
  grew by more than RETIRE_GROWTH), when it is killed, and when its worker is gone
  (PRICECAST_TRAINING_OWNER, checked between jobs). The next flow run that finds nobody
  listening starts a new one under the same lock, which then stays for the runs after it.
- A job that never ends is stopped by killing the process, like a child.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from flows.training.worker import (
    IDLE_GRACE_SECONDS,
    RERUN_HINT,
    SOCKET_ENV,
    WARM_IMPORTS,
    JobChannel,
    JobCount,
    _send,
    serve_jobs,
    training_command,
    training_env,
    warm_up,
)
from pricecast.errors import TrainingProcessDied
from pricecast.processes import gone_within, process_alive

#: The pid of the `pricecast worker` the resident belongs to; it exits once that is gone.
OWNER_ENV = "PRICECAST_TRAINING_OWNER"
#: How often an idle resident checks that its worker is still there.
OWNER_CHECK_SECONDS = 2.0
#: How long a flow run waits for a resident it started to listen.
LISTEN_WAIT_SECONDS = 15.0
LOG_NAME = "training-resident.log"
#: How long a flow run whose resident's connection ended waits for that process to be gone.
ENDING_WAIT_SECONDS = 3.0


def socket_path(owner: int) -> Path:
    """The socket of worker `owner`'s resident: short (a Unix socket path has at most 107
    bytes, PRICECAST_HOME may be long) and per user."""
    return Path(tempfile.gettempdir()) / f"pricecast-{os.getuid()}" / f"training-{owner}.sock"


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


# --- the worker's side --------------------------------------------------------------------------


def start_resident(
    path: Path,
    *,
    owner: int,
    log: Path,
    max_jobs: int,
    idle_seconds: float,
    warm_imports: Sequence[str] = WARM_IMPORTS,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Start a resident training process for worker `owner` on `path` (it imports in the
    background); its pid. Its output goes to `log`."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = training_command(
        "--listen",
        str(path),
        "--owner",
        str(owner),
        max_jobs=max_jobs,
        idle_seconds=idle_seconds + IDLE_GRACE_SECONDS,
        warm_imports=warm_imports,
    )
    detached = subprocess.run(
        [sys.executable, "-c", _DETACH, str(log), *command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=training_env(os.environ if environ is None else environ),
        # Not the caller's folder: a flow run's is a temporary one, gone when the run ends.
        cwd=log.parent,
        check=False,
        timeout=60,
    )
    if detached.returncode != 0 or not detached.stdout.strip().isdigit():
        raise OSError(f"could not start the resident training process: {detached.stderr[-500:]}")
    return int(detached.stdout)


#: Start argv[2:] as a grandchild in a session of its own, its output appended to argv[1], and
#: print its pid. It is then nobody's child: a Prefect worker waits for the processes it started
#: before it stops, and would wait for this one, which waits for the worker to be gone.
_DETACH = """
import os, sys
log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
pid = os.fork()
if pid == 0:
    os.setsid()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.execv(sys.argv[2], sys.argv[2:])
print(pid)
"""


# --- the resident's side ------------------------------------------------------------------------


def listen(
    path: Path, *, owner: int, max_jobs: int, idle_seconds: float, warm_imports: Sequence[str]
) -> int:
    """The resident's loop: bind `path` at once (flow runs that connect while it imports wait
    for its 'ready' line), then serve one connection at a time, each with the child's protocol,
    until it is due to exit or worker `owner` is gone."""
    os.dup2(2, 1)  # stdout and stderr are the resident's log
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a resident that was killed leaves its socket behind
    server.bind(str(path))
    server.listen(8)
    bound = path.stat().st_ino

    def stop_listening() -> None:
        # Closed before the last answer goes out, so that the flow run's next connect finds
        # nobody listening and starts a successor instead of reaching this process; the file is
        # removed unless a successor's already replaced it.
        server.close()
        with contextlib.suppress(OSError):
            if path.stat().st_ino == bound:
                path.unlink()

    try:
        import_seconds = warm_up(warm_imports)
        traced = _warm_trainer() + _warm_model_logging()
        _say(owner, f"ready on {path} after {import_seconds:.1f} s of imports" + traced)
        waiting, _, _ = select.select([server], [], [], 0)
        if not waiting:  # nobody waited for the imports: the first flow run pays nothing
            import_seconds = 0.0
        count = JobCount(max(1, max_jobs))
        while not count.retiring:
            readable, _, _ = select.select([server], [], [], OWNER_CHECK_SECONDS)
            if not readable:
                if not process_alive(owner):
                    _say(owner, "its worker is gone: exiting")
                    _lock_path(path).unlink(missing_ok=True)
                    return 0
                continue
            connection, _ = server.accept()
            _serve_connection(connection, count, import_seconds, idle_seconds, stop_listening)
            import_seconds = 0.0  # only the first flow run waited for them
        _say(owner, f"exiting after {count.done} job(s); the next flow run starts a new one")
        return 0
    finally:
        stop_listening()


def _warm_trainer() -> str:
    """The nightly network's training step traced while the resident waits for its first job
    (`forecasting.model.warm_trainer`), when the jobs' modules are warm; what it did, for the
    log. Not in a flow run's own child: there it would only delay the first job's start."""
    model = sys.modules.get("forecasting.model")
    if model is None:
        return ""
    return f" and {model.warm_trainer():.1f} s tracing the nightly network's training step"


def _warm_model_logging() -> str:
    """MLflow's map of the installed packages' modules, built while the resident waits for its
    first job: MLflow builds it once per process, on the first model it logs (to check the
    model's pip requirements against what is installed), ~0.4 s of CPU on the first job's logging
    thread beside its training. Best effort (a private MLflow function): a job builds it anyway."""
    started = time.perf_counter()
    try:
        from mlflow.utils.requirements_utils import _init_modules_to_packages_map

        _init_modules_to_packages_map()
    except Exception:
        return ""
    return f", {time.perf_counter() - started:.1f} s mapping modules to packages for MLflow"


def _serve_connection(
    connection: socket.socket,
    count: JobCount,
    import_seconds: float,
    idle_seconds: float,
    stop_listening: Callable[[], None],
) -> None:
    with connection, connection.makefile("r") as jobs_in:
        protocol: IO[str] = connection.makefile("w")
        try:
            ready = {"ready": True, "pid": os.getpid(), "import_seconds": import_seconds}
            _send(protocol, ready)
            serve_jobs(
                jobs_in,
                protocol,
                count,
                idle_seconds=idle_seconds,
                before_last_answer=stop_listening,
            )
        except OSError as exc:  # the flow run went away; its job, if any, finished here
            print(f"a flow run's connection ended: {exc}", file=sys.stderr)
        finally:
            with contextlib.suppress(OSError):
                protocol.close()


def _say(owner: int, text: str) -> None:
    """One timestamped line in the resident's log."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} resident training process {os.getpid()} (worker {owner}): {text}",
          file=sys.stderr, flush=True)  # fmt: skip


# --- a flow run's side --------------------------------------------------------------------------


class ResidentWorker(JobChannel):
    """A flow run's connection to its worker's resident training process."""

    resident = True

    def __init__(
        self,
        connection: socket.socket,
        lock: IO[str],
        *,
        idle_seconds: float,
        log_path: Path,
        warm_imports: Sequence[str],
    ) -> None:
        super().__init__(idle_seconds=idle_seconds, log_path=log_path, warm_imports=warm_imports)
        self.connection: socket.socket | None = connection
        self.lock: IO[str] | None = lock
        self._in = connection.makefile("r")
        self._pid = _peer_pid(connection)

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def usable(self) -> bool:
        return self.connection is not None and super().usable

    def _write(self, line: str) -> None:
        if self.connection is None:
            raise BrokenPipeError("the connection is closed")
        self.connection.sendall(line.encode())

    def _readable(self, timeout: float | None) -> bool:
        if self.connection is None:
            return True  # readline says it ended
        readable, _, _ = select.select([self.connection], [], [], timeout)
        return bool(readable)

    def _readline(self) -> str:
        return self._in.readline() if self.connection is not None else ""

    def _died(self, activity: str, log: Path) -> TrainingProcessDied:
        self.close()
        # A killed process's connection can end a moment before its listening socket closes:
        # wait for it to be gone, so that the next flow run's connect does not reach a listener
        # that is dying (it then starts a successor) and the line says what happened.
        ended = gone_within(self._pid, ENDING_WAIT_SECONDS)
        how = "ended" if ended else "closed its connection"
        return TrainingProcessDied(
            f"the worker's resident training process (pid {self._pid}) {how} while {activity}; "
            f"its log: {log} (the resident's own: {self.log_path.with_name(LOG_NAME)}); "
            f"the next flow run starts a new one; {RERUN_HINT}"
        )

    def close(self, *, kill: bool = False) -> None:
        if kill and self._pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        if self.connection is not None:
            with contextlib.suppress(OSError):
                self._in.close()
                self.connection.close()
            self.connection = None
        if self.lock is not None:
            self.lock.close()  # releases the flock: the next flow run may connect
            self.lock = None


def _peer_pid(connection: socket.socket) -> int:
    """The pid of the process at the other end of a Unix socket (Linux's SO_PEERCRED)."""
    credentials = getattr(socket, "SO_PEERCRED", None)
    if credentials is None:
        return 0
    raw = connection.getsockopt(socket.SOL_SOCKET, credentials, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", raw)[0]
    return pid


def _connect(path: Path, *, wait_seconds: float = 0.0) -> socket.socket | None:
    """A connection to the socket at `path`, retried for `wait_seconds`; None if nobody
    listens there."""
    deadline = time.monotonic() + wait_seconds
    while True:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(str(path))
            return connection
        except OSError:  # no file yet, or a stale one nobody listens on
            connection.close()
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def connect_resident(
    *,
    idle_seconds: float,
    log_path: Path,
    max_jobs: int,
    warm_imports: Sequence[str] = WARM_IMPORTS,
) -> ResidentWorker | None:
    """The worker's resident training process for this flow run, started if it is not running
    (and the worker still is); None when another flow run has it or it cannot be had. The caller
    then starts a child of its own, as without a resident; why is printed (the flow run's log)."""
    path = Path(os.environ[SOCKET_ENV])
    owner = int(os.environ.get(OWNER_ENV) or 0)
    lock: IO[str] | None = None
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = open(_lock_path(path), "a")  # noqa: SIM115 - held for the connection's life
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        connection = _connect(path)
        resident_log = log_path.with_name(LOG_NAME)
        if connection is None and owner and process_alive(owner):
            start_resident(
                path,
                owner=owner,
                log=resident_log,
                max_jobs=max_jobs,
                idle_seconds=idle_seconds,
                warm_imports=warm_imports,
            )
            connection = _connect(path, wait_seconds=LISTEN_WAIT_SECONDS)
            if connection is None:
                raise OSError(
                    f"it did not listen within {LISTEN_WAIT_SECONDS:g} s; see {resident_log}"
                )
    except BlockingIOError:
        why = "it is busy with another flow run of the worker (pricecast worker --limit > 1)"
        connection = None
    except OSError as exc:
        why = f"{exc}"
        connection = None
    else:
        why = "its worker is gone" if connection is None else ""
    if connection is None:
        if lock is not None:
            lock.close()
        print(f"not using the worker's resident training process ({path}): {why}; this flow run "
              "starts a training process of its own")  # fmt: skip
        return None
    assert lock is not None
    return ResidentWorker(
        connection,
        lock,
        idle_seconds=idle_seconds,
        log_path=log_path,
        warm_imports=warm_imports,
    )
