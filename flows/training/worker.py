"""The training process: a child Python process that keeps TensorFlow and MLflow imported and runs
jobs one at a time (`python -m flows.training --serve`), and the parent side that feeds it.

TensorFlow keeps memory after every fit(), so the flow process never imports it: the parent writes
a job into a workdir (see `protocol`), sends one JSON line naming the job function, the workdir
and the job's own log file, and reads one JSON line back when the job is done. The worker exits
after `max_jobs` jobs or when idle, so its memory goes back to the OS.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import datetime as dt
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from flows.training.protocol import (
    DEFAULT_JOB_FUNCTION,
    JsonObject,
    TrainingJob,
    TrainingResult,
    decode_error,
    encode_error,
    read_result,
    write_job,
    write_result,
)
from pricecast.errors import PricecastError, TrainingFailed, TrainingProcessDied

#: What the real job needs, imported before the worker says it is ready so a job does not pay.
WARM_IMPORTS: tuple[str, ...] = (
    "matplotlib.figure",
    "mlflow.keras",
    "forecasting.backtest",
    "forecasting.candidates",
)
STARTUP_TIMEOUT_SECONDS = 300.0
#: The child waits this much longer for work than the parent trusts it to, so a job is never
#: sent to a worker that is just exiting.
IDLE_GRACE_SECONDS = 60.0
#: Each job's output goes to a file of its own in this folder (beside the worker's log); the
#: newest ones are kept after their workdir is gone.
JOB_LOG_FOLDER = "training-jobs"
KEPT_JOB_LOGS = 200
#: A worker whose memory grew by more than this fraction since its first job exits after the
#: job it is on, so a long batch stays within the first job's footprint + 15 % at the cost of one
#: re-import. Training on one compiled trainer per architecture (`forecasting.model.train`) keeps
#: TensorFlow from keeping ~28 MB per ticker's fits; this bounds whatever else grows.
RETIRE_GROWTH = 0.15
RERUN_HINT = "rerun the same --as-of to complete the night"
#: Set by `pricecast worker` for its flow runs: the socket of its resident training process.
SOCKET_ENV = "PRICECAST_TRAINING_SOCKET"


@dataclass(frozen=True)
class JobDone:
    """The child's answer to one job; its result (or error) is in the workdir."""

    code: int
    rss_mb: float
    job_seconds: float
    #: The process exits after this job: its last job, or its memory grew past RETIRE_GROWTH.
    retiring: bool = False


# --- parent side --------------------------------------------------------------------------------


class JobChannel(abc.ABC):
    """The parent's side of one training process: one JSON line per job out, one 'ready' line when
    it has imported, one 'done' line per job back. `TrainingWorker` talks to a child of its own
    over pipes; `flows.training.resident.ResidentWorker` to the worker's resident process over a
    socket."""

    def __init__(self, *, idle_seconds: float, log_path: Path, warm_imports: Sequence[str]) -> None:
        self.idle_seconds = idle_seconds
        self.log_path = log_path
        self.warm_imports = tuple(warm_imports)
        self.jobs = 0
        self.retiring = False
        self.import_seconds: float | None = None  # known once the process said it is ready
        self.last_used = time.monotonic()

    #: True for the `pricecast worker`'s resident process (shared across flow runs).
    resident = False

    @property
    @abc.abstractmethod
    def pid(self) -> int:
        """The training process's pid."""

    @property
    def usable(self) -> bool:
        return time.monotonic() - self.last_used < self.idle_seconds and not self.retiring

    def run(
        self,
        workdir: Path,
        *,
        job_log: Path,
        activity: str,
        job_function: str = DEFAULT_JOB_FUNCTION,
        timeout_seconds: float | None = None,
    ) -> JobDone:
        """Run `job_function` on `workdir` in the process, its output going to `job_log`."""
        if self.import_seconds is None:
            starting = f"starting (importing {', '.join(self.warm_imports) or 'nothing'})"
            ready = self._receive(STARTUP_TIMEOUT_SECONDS, starting, self.log_path)
            self.import_seconds = float(ready["import_seconds"])
        message = {"function": job_function, "workdir": str(workdir), "log": str(job_log)}
        try:
            self._write(json.dumps(message) + "\n")
        except OSError:  # a broken pipe or a reset socket: the process is gone
            raise self._died(activity, job_log) from None
        done = self._receive(timeout_seconds, activity, job_log)
        self.jobs += 1
        self.last_used = time.monotonic()
        self.retiring = bool(done.get("retiring", False))
        return JobDone(
            code=int(done["code"]),
            rss_mb=float(done["rss_mb"]),
            job_seconds=float(done["job_seconds"]),
            retiring=self.retiring,
        )

    def _receive(self, timeout: float | None, activity: str, log: Path) -> JsonObject:
        """The process's next protocol line; a dead or stuck process is a one-line error."""
        if not self._readable(timeout):
            self.close(kill=True)
            raise TrainingProcessDied(
                f"the training process (pid {self.pid}) did not finish {activity} within "
                f"{timeout:g} s and was stopped; its log: {log}; {RERUN_HINT}"
            )
        try:
            line = self._readline()
        except OSError:
            line = ""
        if not line:
            raise self._died(activity, log)
        message: JsonObject = json.loads(line)
        return message

    @abc.abstractmethod
    def _write(self, line: str) -> None:
        """Send one protocol line."""

    @abc.abstractmethod
    def _readable(self, timeout: float | None) -> bool:
        """Whether a line (or the end) can be read within `timeout`."""

    @abc.abstractmethod
    def _readline(self) -> str:
        """The next protocol line; empty at the end."""

    @abc.abstractmethod
    def _died(self, activity: str, log: Path) -> TrainingProcessDied:
        """The one-line error for a process that ended while `activity`."""

    @abc.abstractmethod
    def close(self, *, kill: bool = False) -> None:
        """Let go of the process (`kill`: stop it first)."""


class TrainingWorker(JobChannel):
    """One training process of this process's own. Reusing it across nights (a backfill) saves
    the imports (seconds per night); it exits after `max_jobs` jobs or `idle_seconds` without
    work, so TensorFlow's memory stays bounded."""

    def __init__(
        self,
        *,
        max_jobs: int,
        idle_seconds: float,
        log_path: Path,
        warm_imports: Sequence[str] = WARM_IMPORTS,
        idle_grace_seconds: float = IDLE_GRACE_SECONDS,
    ) -> None:
        super().__init__(idle_seconds=idle_seconds, log_path=log_path, warm_imports=warm_imports)
        self.max_jobs = max(1, max_jobs)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = training_command(
            "--serve",
            max_jobs=self.max_jobs,
            idle_seconds=idle_seconds + idle_grace_seconds,
            warm_imports=self.warm_imports,
        )
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=training_env(os.environ),
                text=True,
                bufsize=1,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def usable(self) -> bool:
        alive = self.process.poll() is None
        return alive and super().usable and self.jobs < self.max_jobs

    def _write(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line)
        self.process.stdin.flush()

    def _readable(self, timeout: float | None) -> bool:
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], timeout)
        return bool(readable)

    def _readline(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline()

    def _died(self, activity: str, log: Path) -> TrainingProcessDied:
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # its output closed but it lingers: finish it
            self.close(kill=True)
            code = self.process.returncode
        return TrainingProcessDied(
            f"the training process (pid {self.pid}) {_how_it_ended(code)} while {activity}; "
            f"its log: {log}; {RERUN_HINT}"
        )

    def close(self, *, kill: bool = False) -> None:
        if self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()  # the child's cue to exit
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def training_command(
    *mode: str, max_jobs: int, idle_seconds: float, warm_imports: Sequence[str]
) -> list[str]:
    """`python -m flows.training <mode> ...`: a training process's command line."""
    return [
        sys.executable,
        "-m",
        "flows.training",
        *mode,
        "--max-jobs",
        str(max(1, max_jobs)),
        "--idle-seconds",
        str(idle_seconds),
        "--warm",
        ",".join(warm_imports),
    ]


def training_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a training process."""
    env = dict(environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # glibc's per-thread malloc arenas (up to 8 per core) hold freed memory in a process
    # with TensorFlow's thread pools and the job's logging thread: two keep RSS ~3 % lower.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env["PYTHONUNBUFFERED"] = "1"
    env["MPLBACKEND"] = "Agg"  # no display in the child; plots are files
    return env


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory, or stopped from outside)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


_worker: JobChannel | None = None
_worker_lock = threading.Lock()
_job_lock = threading.Lock()
_shutdown_registered = False


def _take_worker(
    *, max_jobs: int, idle_seconds: float, log_path: Path, warm_imports: Sequence[str]
) -> JobChannel:
    """The process's training worker: the `pricecast worker`'s resident training process when
    this flow run has one to itself (see `flows.training.resident`), else a child of this
    process, started if there is none (or it expired)."""
    global _worker, _shutdown_registered
    with _worker_lock:
        if not _shutdown_registered:
            atexit.register(shutdown_worker)
            _shutdown_registered = True
        if _worker is None or not _worker.usable or _worker.warm_imports != tuple(warm_imports):
            if _worker is not None:
                _worker.close()
            resident = _resident_worker(max_jobs, idle_seconds, log_path, warm_imports)
            _worker = resident or TrainingWorker(
                max_jobs=max_jobs,
                idle_seconds=idle_seconds,
                log_path=log_path,
                warm_imports=warm_imports,
            )
        return _worker


def _resident_worker(
    max_jobs: int, idle_seconds: float, log_path: Path, warm_imports: Sequence[str]
) -> JobChannel | None:
    """The resident training process of the `pricecast worker` this flow run runs under, if it
    has one (PRICECAST_TRAINING_SOCKET) and it is free; None: start a child of our own."""
    if not os.environ.get(SOCKET_ENV):
        return None
    from flows.training.resident import connect_resident

    return connect_resident(
        idle_seconds=idle_seconds,
        log_path=log_path,
        max_jobs=max_jobs,
        warm_imports=warm_imports,
    )


def prewarm_worker(
    *,
    max_jobs: int,
    idle_seconds: float,
    log_path: Path,
    warm_imports: Sequence[str] = WARM_IMPORTS,
) -> None:
    """Start the worker's imports now, so they overlap with the flow's own I/O."""
    _take_worker(
        max_jobs=max_jobs, idle_seconds=idle_seconds, log_path=log_path, warm_imports=warm_imports
    )


def shutdown_worker() -> None:
    global _worker
    with _worker_lock:
        if _worker is not None:
            _worker.close()
            _worker = None


def new_job_log(worker_log: Path, name: str) -> Path:
    """A fresh log file for one job, in the folder beside the worker's log; the oldest job logs
    beyond `KEPT_JOB_LOGS` are deleted."""
    folder = worker_log.parent / JOB_LOG_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    logs = []
    for entry in os.scandir(folder):
        with contextlib.suppress(OSError):  # another thread may be pruning too
            logs.append((entry.stat().st_mtime, Path(entry.path)))
    logs.sort()
    for _, old in logs[: max(0, len(logs) - KEPT_JOB_LOGS + 1)]:
        old.unlink(missing_ok=True)
    log = folder / f"{name}.log"
    log.touch()
    return log


def run_in_child(
    job: TrainingJob,
    closes: Sequence[tuple[dt.date, float]],
    *,
    workdir: Path,
    max_jobs: int = 1,
    idle_seconds: float = 300.0,
    log_path: Path | None = None,
    timeout_seconds: float | None = None,
    job_function: str = DEFAULT_JOB_FUNCTION,
    warm_imports: Sequence[str] = WARM_IMPORTS,
) -> TrainingResult:
    """Run `job` in the training worker (a fresh one when `max_jobs` is 1) and return its result.

    The job's output goes to its own log under `<log_path folder>/training-jobs/<workdir>.log`,
    kept after the workdir is gone. A pricecast error raised in the child comes back as the same
    kind with the same message; an unexpected one as `TrainingFailed`, a dead child as
    `TrainingProcessDied`, each one line naming that log.
    """
    write_job(workdir, job, closes)
    worker_log = log_path or workdir.parent / "training-worker.log"
    job_log = new_job_log(worker_log, workdir.name)
    started = time.perf_counter()
    with _job_lock:  # one job at a time per worker, even if flows run in threads
        worker = _take_worker(
            max_jobs=max_jobs,
            idle_seconds=idle_seconds,
            log_path=worker_log,
            warm_imports=warm_imports,
        )
        try:
            done = worker.run(
                workdir,
                job_log=job_log,
                activity=job.activity,
                job_function=job_function,
                timeout_seconds=timeout_seconds,
            )
        except BaseException:
            shutdown_worker()  # never reuse a worker in an unknown state
            raise
        jobs, import_seconds = worker.jobs, worker.import_seconds or 0.0
        resident, pid = worker.resident, worker.pid
    elapsed = time.perf_counter() - started
    payload = read_result(workdir)
    if payload is None:
        raise TrainingFailed(
            f"{job.activity} ended (code {done.code}) without a result; its log: {job_log}"
        )
    if "error" in payload:
        raise decode_error(payload["error"], activity=job.activity, log=job_log)
    result = TrainingResult.from_payload(payload)
    timings = {
        **result.timings,
        "worker_rss_mb": done.rss_mb,
        "job_seconds": done.job_seconds,
        "worker_jobs": float(jobs),
        "worker_pid": float(pid),
        # 1: the job ran in the `pricecast worker`'s resident training process.
        "worker_resident": 1.0 if resident else 0.0,
        # The first job of a worker waited for its imports (unless a prewarm hid them).
        "import_seconds": import_seconds if jobs == 1 else 0.0,
    }
    return replace(result, timings=timings, child_seconds=elapsed)


# --- child side ---------------------------------------------------------------------------------


def serve(*, max_jobs: int, idle_seconds: float, warm_imports: Sequence[str]) -> int:
    """The worker loop: one JSON line per job on stdin, one 'done' line per job on stdout."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to a log, never into the protocol
    import_seconds = warm_up(warm_imports)
    _send(protocol, {"ready": True, "pid": os.getpid(), "import_seconds": import_seconds})
    serve_jobs(sys.stdin, protocol, JobCount(max(1, max_jobs)), idle_seconds=idle_seconds)
    return 0


def warm_up(warm_imports: Sequence[str]) -> float:
    """Import what the jobs need and size TensorFlow's thread pools; the seconds it took."""
    started = time.perf_counter()
    for module in warm_imports:
        importlib.import_module(module)
    _limit_threads()
    return time.perf_counter() - started


@dataclass
class JobCount:
    """A training process's jobs so far; it exits after `max_jobs`, or once its memory grew by
    more than RETIRE_GROWTH since its first job."""

    max_jobs: int
    done: int = 0
    first_rss: float | None = None
    retiring: bool = False

    def count(self, rss: float) -> None:
        self.done += 1
        self.first_rss = self.first_rss or rss
        grew = rss > self.first_rss * (1 + RETIRE_GROWTH)
        self.retiring = grew or self.done >= self.max_jobs


def serve_jobs(
    jobs_in: IO[str],
    protocol: IO[str],
    count: JobCount,
    *,
    idle_seconds: float,
    before_last_answer: Callable[[], None] | None = None,
) -> None:
    """Run the jobs that arrive on `jobs_in`, answering each on `protocol`, until it closes,
    stays idle for `idle_seconds`, or the process is due to exit (`count.retiring`; then
    `before_last_answer` runs before the answer to its last job goes out)."""
    while not count.retiring:
        readable, _, _ = select.select([jobs_in], [], [], idle_seconds)
        line = jobs_in.readline() if readable else ""
        if not line:
            return  # idle for too long, or the parent closed its end
        message = json.loads(line)
        started = time.perf_counter()
        with _output_to(Path(message["log"])):
            code = _run_job(message["function"], Path(message["workdir"]))
        rss = _rss_mb()
        count.count(rss)
        if count.retiring and before_last_answer is not None:
            before_last_answer()
        _send(
            protocol,
            {
                "done": True,
                "code": code,
                "rss_mb": rss,
                "job_seconds": time.perf_counter() - started,
                "retiring": count.retiring,  # the parent needs another process for its next job
            },
        )
        if not count.retiring:
            _release_memory()  # after answering: this overlaps with the flow's next steps


def _send(protocol: IO[str], message: Mapping[str, object]) -> None:
    protocol.write(json.dumps(message) + "\n")
    protocol.flush()  # a socket's text file is not line-buffered


@contextlib.contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """The job's stdout and stderr, Python's and native libraries' alike, go to its own log."""
    sys.stdout.flush()
    sys.stderr.flush()
    worker_log = os.dup(2)
    with open(log, "ab") as target:
        os.dup2(target.fileno(), 1)
        os.dup2(target.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(worker_log, 1)
        os.dup2(worker_log, 2)
        os.close(worker_log)


def _run_job(function: str, workdir: Path) -> int:
    """Run one job; its result, or its error, is written to the workdir."""
    try:
        payload = _job_function(function)(workdir)
        write_result(workdir, payload)
        return 0
    except Exception as exc:
        if isinstance(exc, PricecastError):
            print(f"error: {exc}", file=sys.stderr)
        else:
            traceback.print_exc()
        write_result(workdir, {"error": encode_error(exc)})
        return 1


def _job_function(name: str) -> Callable[[Path], Mapping[str, object]]:
    module, _, attribute = name.partition(":")
    function: Callable[[Path], Mapping[str, object]] = getattr(
        importlib.import_module(module), attribute
    )
    return function


def _limit_threads() -> None:
    """TensorFlow's op pools sized by PRICECAST_TRAINING_THREADS (before its first op)."""
    from pricecast.settings import get_settings

    threads = get_settings().training_threads
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is None or threads < 1:
        return
    tensorflow.config.threading.set_intra_op_parallelism_threads(threads)
    tensorflow.config.threading.set_inter_op_parallelism_threads(threads)


def _release_memory() -> None:
    """Drop Keras' global state (names, the seed generator) so the next job starts as a fresh
    process would. Without the full garbage collection `clear_session` does by default: it costs
    ~0.3 s per job and growing, between one job and the next, and gives back no memory
    (what grows is bounded by the retire rule)."""
    keras = sys.modules.get("keras")
    if keras is not None:  # the job trained
        keras.backend.clear_session(free_memory=False)


def _rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0
