"""A flow-run process started before its flow run: a worker with nothing to do keeps one Prefect
engine process ready, its imports done, and hands it the next flow run.

A process worker starts `python -m prefect.engine` for every flow run it takes, and that process
spends its first ~1.5 s (and as much CPU) importing Prefect, then our flows, pandas and MLflow,
before the batch's first night can open. Here the worker starts that process ahead of time:
`python -m flows.universe.ready_engine` imports all of it, says it is ready, and waits on its
stdin. When the worker takes a flow run of ours, the engine process it would start is this one:
it gets the run's environment and working directory, and runs Prefect's own engine entry point
(`prefect.engine` as `__main__`) exactly as the started process would have. Only the wait is new.

Who uses which:
- Only a flow run whose command is ours (`flows.universe.fanout.ENGINE_COMMAND`, the same
  interpreter) and whose environment is the one the ready process was started with, apart from
  Prefect's per-run `PREFECT__*` variables (read when the run starts, never at import), takes
  it: settings read at import are then the run's own. Any other run starts its process as
  Prefect always does, and says why once.
- One process is kept ready, and only while the worker runs nothing: a batch run's process and a
  ready one beside it would be ~230 MB more at the worker's peak. The next one starts when the
  worker's last flow run has ended (`ReadyEngines.refill`).
- It follows its worker: the worker stops it when it stops, and a ready process whose stdin
  closes (its worker is gone) exits.

`PRICECAST_WORKER_READY_ENGINE=false` turns it off (the idle worker then holds ~230 MB less).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import json
import os
import runpy
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anyio.abc

#: What the ready process imports while it waits: everything a batch run's first night imports.
PRELOAD = (
    "prefect.engine",
    "prefect.flow_engine",
    "flows.universe.batch",
    "flows.universe.flow",
    "flows.night.flow",
    "mlflow",
)
#: The line a ready process writes to its stdout once its imports are done.
READY_LINE = b"pricecast: engine process ready\n"
#: A flow-run process's name (Linux's /proc/PID/comm) once a ready process runs a flow run, so
#: that `pool_worker.flow_run_processes` tells it from an idle one (their command lines are alike).
RUNNING_NAME = b"prefect.engine"
#: Prefect's per-run variables (flow run, deployment, worker, control channel): set for the run,
#: never compared, as Prefect reads them only when the run starts.
PER_RUN_PREFIX = "PREFECT__"
#: How long a stopping worker waits for its ready process to exit after SIGTERM.
STOP_SECONDS = 5.0

_current: contextvars.ContextVar[ReadyEngines | None] = contextvars.ContextVar(
    "pricecast_ready_engines", default=None
)


# ---- the ready process ---------------------------------------------------------------------


def main() -> int:
    """`python -m flows.universe.ready_engine`: import, say ready, wait for a flow run, run it."""
    # Idle, a Ctrl-C in the worker's terminal is the worker's to handle (it stops this process).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for module in PRELOAD:
        with contextlib.suppress(Exception):  # the engine's own import will say what is wrong
            importlib.import_module(module)
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), READY_LINE)
    order = sys.stdin.buffer.readline()
    if not order:
        return 0  # the worker stopped, or no longer needs it
    run = json.loads(order)
    os.environ.clear()
    os.environ.update(run["env"])
    if run.get("cwd"):
        os.chdir(run["cwd"])
        sys.path[0] = os.getcwd()  # where `python -m` started there would look first
    _name_process(RUNNING_NAME)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = [sys.argv[0]]
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    return 0


def _name_process(name: bytes) -> None:
    """This process's name in /proc/PID/comm (Linux; elsewhere nothing happens)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)  # PR_SET_NAME


def runs_flow_run(pid: int) -> bool:
    """Whether process `pid` is running a flow run: Prefect's engine command, or a ready process
    that was handed one."""
    proc = Path("/proc") / str(pid)
    try:
        if b"prefect.engine" in (proc / "cmdline").read_bytes():
            return True
        return (proc / "comm").read_bytes().strip() == RUNNING_NAME
    except OSError:
        return False


# ---- the worker's side ----------------------------------------------------------------------


def without_per_run(env: Mapping[str, str | None]) -> dict[str, str]:
    """`env` without Prefect's per-run variables (and without unset ones)."""
    return {
        key: value
        for key, value in env.items()
        if value is not None and not key.startswith(PER_RUN_PREFIX)
    }


def expected_environment() -> dict[str, str]:
    """The environment Prefect gives a flow-run process of a pool with no `env` job variable,
    without the per-run part: this process's, then the current Prefect settings."""
    from prefect.settings import get_current_settings

    env: dict[str, str | None] = dict(os.environ)
    env.update(get_current_settings().to_environment_variables(exclude_unset=True))
    return without_per_run(env)


def _same_interpreter(command: list[str], env: Mapping[str, str]) -> bool:
    """Whether `command` is `python -m prefect.engine` run by this process's interpreter (the
    `python` first on the run's PATH lives beside it)."""
    import shutil

    from flows.universe.fanout import ENGINE_COMMAND

    if command != ENGINE_COMMAND.split():
        return False
    found = shutil.which(command[0], path=env.get("PATH"))
    if found is None:
        return False
    with contextlib.suppress(OSError):
        return os.path.samefile(Path(found).parent, Path(sys.executable).parent)
    return False


class ReadyEngines:
    """A worker's ready engine process (at most one; see the module doc)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log
        self._process: anyio.abc.Process | None = None
        self._environment: dict[str, str] = {}
        self._starting: asyncio.Task[None] | None = None
        self._next: dict[str, str] | None = None
        self._told: set[str] = set()
        self._closed = False

    def refill(self) -> None:
        """Start a ready process in the background unless there is one (or one is starting), with
        the environment of the last flow run of ours (before the first: the expected one)."""
        if self._closed or self._process is not None:
            return
        if self._starting is not None and not self._starting.done():
            return
        wanted = self._next if self._next is not None else expected_environment()
        self._starting = asyncio.get_running_loop().create_task(self._start(wanted))

    async def _start(self, environment: dict[str, str]) -> None:
        import anyio

        started = time.perf_counter()
        try:
            process = await anyio.open_process(
                [sys.executable, "-m", __name__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment,
            )
        except OSError as exc:
            self._say_once("start", f"could not start an engine process ahead of time: {exc}")
            return
        if self._closed:
            await _stop(process)
            return
        self._process, self._environment = process, environment
        if await _wait_ready(process):
            self._log(
                f"engine process {process.pid} ready for the next flow run "
                f"({time.perf_counter() - started:.1f} s of imports)"
            )
        elif self._process is process:
            self._process = None
            self._say_once(
                "exited", f"the engine process started ahead of time exited ({process.returncode})"
            )

    async def take(
        self, command: list[str], env: Mapping[str, str | None], cwd: str | os.PathLike[str] | None
    ) -> anyio.abc.Process | None:
        """The ready process, handed this flow run's environment and directory; None if there is
        none, if the run's command is not ours (the process stays ready), or if the run's
        environment differs (then it is stopped, and the next one gets the run's)."""
        if self._starting is not None and not self._starting.done():
            # Still importing (a run right after the worker started): it will be ready sooner
            # than a new process would, and its stdout is read until it says so.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._starting)
        wanted = without_per_run(env)
        if not _same_interpreter(command, wanted):
            return None  # not our engine command: the ready process waits for one that is
        self._next = wanted  # the next ready process gets the environment our runs have
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return None
        if wanted != self._environment:
            differ = sorted(
                key
                for key in set(wanted) | set(self._environment)
                if wanted.get(key) != self._environment.get(key)
            )
            self._say_once(
                "environment",
                "a flow run's environment differs from the engine process started ahead of "
                f"time (variables {differ[:8]}): it starts its own, the next ready one gets its "
                "environment",
            )
            await _stop(process)
            return None
        order = {"env": {k: v for k, v in env.items() if v is not None}, "cwd": str(cwd or "")}
        try:
            assert process.stdin is not None
            await process.stdin.send(json.dumps(order).encode() + b"\n")
            await process.stdin.aclose()
        except Exception as exc:  # it died between the check and the order
            self._say_once("order", f"the engine process started ahead of time is gone ({exc})")
            await _stop(process)
            return None
        return process

    async def close(self) -> None:
        """Stop the ready process (the worker is stopping)."""
        self._closed = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
        process, self._process = self._process, None
        if process is not None:
            await _stop(process)

    def _say_once(self, what: str, line: str) -> None:
        if what not in self._told:
            self._told.add(what)
            self._log(line)


async def _wait_ready(process: anyio.abc.Process) -> bool:
    """Read the process's stdout up to its ready line (what comes before goes to ours)."""
    assert process.stdout is not None
    seen = b""
    while READY_LINE not in seen:
        try:
            chunk = await process.stdout.receive()
        except Exception:  # it closed its stdout: it exited
            return False
        seen += chunk
        before, found, _ = seen.partition(READY_LINE)
        if not found and b"\n" in seen:
            head, _, seen = seen.rpartition(b"\n")
            sys.stdout.buffer.write(head + b"\n")
            sys.stdout.flush()
        elif found and before:
            sys.stdout.buffer.write(before)
            sys.stdout.flush()
    return True


async def _stop(process: anyio.abc.Process) -> None:
    import anyio

    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
    with anyio.move_on_after(STOP_SECONDS, shield=True):
        await process.wait()
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()
    with contextlib.suppress(Exception):
        await process.aclose()


# ---- the hook into Prefect's process worker ----------------------------------------------------


@contextlib.contextmanager
def serving(engines: ReadyEngines | None) -> Any:
    """Flow runs started in this block (a worker's `run`) may take `engines`' ready process."""
    token = _current.set(engines)
    try:
        yield
    finally:
        _current.reset(token)


def install() -> None:
    """Make Prefect's engine starter take a ready process when the running worker has one.

    Prefect's `EngineCommandStarter` starts the flow-run process through its module's
    `run_process` (Prefect's documented place to change how it is started); this wraps it once
    per process. Runs outside `serving` (or with nothing ready) start as before."""
    from prefect.runner import _starter_engine

    original = _starter_engine.run_process
    if getattr(original, "_pricecast_ready_engine", False):
        return

    async def run_process(command: list[str], **kwargs: Any) -> Any:
        engines = _current.get()
        extra = set(kwargs) - {"env", "cwd", "stream_output", "task_status", "task_status_handler"}
        process = None
        if engines is not None and not extra:
            process = await engines.take(command, kwargs.get("env") or {}, kwargs.get("cwd"))
        if process is None:
            return await original(command, **kwargs)
        return await _run_ready(process, **kwargs)

    run_process._pricecast_ready_engine = True  # type: ignore[attr-defined]
    _starter_engine.run_process = run_process  # type: ignore[assignment]


async def _run_ready(
    process: anyio.abc.Process,
    *,
    stream_output: Any = False,
    task_status: Any = None,
    task_status_handler: Callable[[Any], Any] | None = None,
    **_: Any,
) -> anyio.abc.Process:
    """Prefect's `run_process` for a process that is already running: report it started, pass
    its output on, wait for it to end (and end it if the wait is cancelled)."""
    from prefect.utilities.processutils import consume_process_output

    if stream_output is True:
        stream_output = (sys.stdout, sys.stderr)
    try:
        if task_status is not None:
            task_status.started(
                task_status_handler(process) if task_status_handler else process.pid
            )
        if stream_output:
            await consume_process_output(
                process, stdout_sink=stream_output[0], stderr_sink=stream_output[1]
            )
        else:
            await consume_process_output(process)
        await process.wait()
    finally:
        await _stop(process)
    return process


if __name__ == "__main__":
    raise SystemExit(main())
