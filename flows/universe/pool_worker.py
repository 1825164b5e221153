"""The process `pricecast worker` becomes: Prefect's process worker for one pool, run here rather
than by `prefect worker start`, so that it outlives a Prefect server outage of any length.

Prefect's worker gives up once its API stays unreachable: three failed polls in a row, four
times over, the wait doubling each time (18 minutes here with the client's default retries,
about a minute with them off), and `prefect worker start` then exits 1. A fleet of
workers would be gone after one long server outage (an upgrade, a reboot), and the nights after
it would wait for workers nobody restarted. Here that give-up is one line, the process waits for
the API's /health to answer again (saying so once), and starts the worker again under the same
name; its resident training process (owned by this pid) stays. Any other error ends the process
as before.

Besides its poll every PREFECT_WORKER_QUERY_SECONDS, the worker polls the moment Prefect's event
stream says a run was scheduled in its pool (`flows.universe.wakeup`), so a universe night's
batch starts at once rather than up to a poll interval later.

Ctrl-C and SIGTERM stop it as Prefect means them to (`prefect worker start`'s handlers raise
KeyboardInterrupt, which Prefect's worker swallowed here both while a flow run ran and while the
API was down: it never stopped, or ran on until it gave up and was then started again). The first
signal is final: the worker takes no new flow runs, lets the running ones end, then stops; if it
has not stopped STOP_GRACE_SECONDS after that (its shutdown calls an API that does not answer),
the process exits. A second signal exits at once; the flow runs still running then end Crashed
(their output went to this process) and a rerun of their night does them. The resident training
process follows its worker (it exits once the worker's pid is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any
from uuid import UUID

#: What Prefect's `critical_service_loop` raises when its API stays unreachable.
GAVE_UP = "Service exceeded error threshold"
#: How often the API's /health is asked while the worker waits for it.
HEALTH_POLL_SECONDS = 5.0
#: How long a stop request waits for Prefect's worker to shut down before the process exits.
STOP_GRACE_SECONDS = 15.0
#: How often a stopping worker looks whether its running flow runs have ended.
DRAIN_POLL_SECONDS = 0.5


class StopRequest:
    """Ctrl-C and SIGTERM for the worker process (see the module doc): the first one lets the
    running flow runs end, then stops the worker, and is final; a second one exits at once."""

    def __init__(self, name: str, *, grace: float = STOP_GRACE_SECONDS) -> None:
        self.name = name
        self.grace = grace
        self.requested = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._worker: Any = None
        self._signalled = False
        self._lock = threading.Lock()

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler runs between two bytecodes of the main thread, which may be printing
        # or holding a lock: it only notes the signal and leaves the rest to a thread.
        why = signal.Signals(signum).name
        if self._signalled:
            self._exit(f"{why} again: stopping worker {self.name!r} now")
        self._signalled = True
        threading.Thread(target=self.request, args=(why,), daemon=True).start()

    def running(self, task: asyncio.Task[None], worker: Any) -> None:
        """Prefect's worker (a `draining_worker_class()`) now running in `task`."""
        with self._lock:
            self._loop, self._task, self._worker = asyncio.get_running_loop(), task, worker
            if self.requested.is_set():
                worker.draining = True
                self._stop_worker()

    def request(self, why: str) -> None:
        """Stop the worker: no new flow runs, the running ones end, then it is cancelled."""
        with self._lock:
            if self.requested.is_set():
                return
            self.requested.set()
            if self._worker is not None:
                self._worker.draining = True
            running = flow_run_processes() if self._task is not None else []
            if running:
                print(
                    f"{why}: worker {self.name!r} takes no new flow runs and stops once its "
                    f"{len(running)} running flow run(s) end (again to stop at once)",
                    flush=True,
                )
                threading.Thread(target=self._drain, daemon=True).start()
                return
            print(f"{why}: stopping worker {self.name!r} (again to stop at once)", flush=True)
            self._stop_worker()

    def _drain(self) -> None:
        while flow_run_processes():
            time.sleep(DRAIN_POLL_SECONDS)
        with self._lock:
            self._stop_worker()

    def _stop_worker(self) -> None:
        if self._loop is None or self._task is None:
            return  # not running: the loop in `serve` sees the request
        self._loop.call_soon_threadsafe(self._task.cancel)
        timer = threading.Timer(self.grace, self._overdue)
        timer.daemon = True
        timer.start()

    def _overdue(self) -> None:
        self._exit(
            f"worker {self.name!r} did not stop within {self.grace:g} s (its shutdown waits for "
            "a Prefect API that does not answer): stopping now"
        )

    @staticmethod
    def _exit(line: str) -> None:
        os.write(1, (line + "\n").encode())  # not print: safe inside a signal handler
        os._exit(0)  # what is left is Prefect's shutdown; flow runs are processes of their own


def flow_run_processes(parent: int | None = None) -> list[int]:
    """The pids of the children of `parent` (default: this process) that run a flow run
    (`python -m prefect.engine`, or a ready engine process that was handed one; an idle ready
    process is not one)."""
    from flows.universe.ready_engine import runs_flow_run

    found = []
    wanted = str(os.getpid() if parent is None else parent)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            if ppid == wanted and runs_flow_run(int(proc.name)):
                found.append(int(proc.name))
    return found


def gave_up(exc: BaseException) -> bool:
    """Whether `exc` (or every error of an exception group) is Prefect's worker giving up on an
    unreachable API, and nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return all(gave_up(inner) for inner in exc.exceptions)
    return isinstance(exc, RuntimeError) and GAVE_UP in str(exc)


def wait_for_api(
    url: str,
    *,
    poll_seconds: float = HEALTH_POLL_SECONDS,
    problem: Callable[[str], str | None] | None = None,
    sleep: Callable[[float], object] = time.sleep,
    stopped: Callable[[], bool] = lambda: False,
) -> float | None:
    """Block until the API at `url` answers its /health; the seconds it took, None if
    `stopped()` came true first."""
    from flows.prefect_api import api_problem

    ask = problem or (lambda u: api_problem(u, timeout=5.0))
    started = time.monotonic()
    while ask(url) is not None:
        sleep(poll_seconds)
        if stopped():
            return None
    return time.monotonic() - started


def draining_worker_class() -> type[Any]:
    """Prefect's process worker, taking no new flow runs once its `draining` is set, and polling
    again as soon as one of its slots frees (a run ended, or another worker won its claim)."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.workers.process import ProcessWorker

    from flows.universe.ready_engine import ReadyEngines, serving

    class DrainingProcessWorker(ProcessWorker):
        draining = False
        #: Set by `wakeup.wake_worker`: makes the worker poll its pool now.
        wake: Callable[[], None] | None = None
        #: The engine process kept ready while the worker runs nothing (`ready_engine`).
        engines: ReadyEngines | None = None
        _in_flight = 0

        async def run(self, flow_run: FlowRun, configuration: Any, task_status: Any = None) -> Any:
            self._in_flight += 1
            try:
                with serving(self.engines):
                    return await super().run(flow_run, configuration, task_status)
            finally:
                self._in_flight -= 1
                if self.engines is not None and not self._in_flight and not self.draining:
                    self.engines.refill()

        async def get_and_submit_flow_runs(self) -> list[FlowRun]:
            if self.draining:
                return []
            return await super().get_and_submit_flow_runs()

        def _release_limit_slot(self, flow_run_id: UUID) -> None:
            super()._release_limit_slot(flow_run_id)
            if self.wake is not None:  # a free slot: a waiting run starts now, not at the poll
                self.wake()

    return DrainingProcessWorker


async def _run_once(pool: str, limit: int | None, name: str, stop: StopRequest) -> None:
    from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS, PREFECT_WORKER_PREFETCH_SECONDS

    from flows.universe.ready_engine import ReadyEngines
    from flows.universe.ready_engine import install as install_ready_engine
    from flows.universe.wakeup import wake_worker
    from pricecast.settings import get_settings

    worker = draining_worker_class()(
        name=name,
        work_pool_name=pool,
        limit=limit,
        prefetch_seconds=PREFECT_WORKER_PREFETCH_SECONDS.value(),
        heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()),
    )
    say = lambda line: print(f"pricecast worker: {line}", flush=True)  # noqa: E731
    if get_settings().worker_ready_engine:
        install_ready_engine()
        worker.engines = ReadyEngines(say)
        worker.engines.refill()
    task = asyncio.current_task()
    assert task is not None
    stop.running(task, worker)
    # Prefect's worker polls its pool every PREFECT_WORKER_QUERY_SECONDS; this makes it poll also
    # the moment a run is scheduled there (Prefect's event stream), so a batch starts at once.
    wake = asyncio.create_task(wake_worker(worker, log=say))
    try:
        await worker.start(printer=lambda *args: print(*args, flush=True))
    finally:
        wake.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await wake
        if worker.engines is not None:
            await worker.engines.close()


def install_stop(name: str) -> StopRequest:
    """This process's stop request, its signal handlers installed."""
    stop = StopRequest(name)
    stop.install()
    return stop


def serve(pool: str, *, limit: int | None, name: str) -> int:
    """Prefect's worker for `pool`, started again after every give-up once the API answers,
    until Ctrl-C or SIGTERM."""
    from flows.prefect_api import prefect_api_url
    from pricecast.urls import mask_url

    url = prefect_api_url()
    shown = mask_url(url) if url else "(ephemeral)"
    stop = install_stop(name)
    restarts = 0
    while not stop.requested.is_set():
        try:
            asyncio.run(_run_once(pool, limit, name, stop))
            break
        except (KeyboardInterrupt, asyncio.CancelledError):
            break  # a stop request (or Prefect's own KeyboardInterrupt)
        except BaseException as exc:
            if stop.requested.is_set():
                break  # whatever the cancelled worker raised on its way out
            if url is None or not gave_up(exc):
                raise
        print(
            f"pricecast worker: the Prefect API at {shown} stopped answering and Prefect's worker "
            f"{name!r} gave up; waiting for the API to answer again, then starting the worker "
            "again (Ctrl-C stops)",
            flush=True,
        )
        waited = wait_for_api(url, sleep=stop.requested.wait, stopped=stop.requested.is_set)
        if waited is None:
            break
        restarts += 1
        print(
            f"pricecast worker: the Prefect API at {shown} answers again after {waited:.0f} s: "
            f"starting worker {name!r} again (restart {restarts})",
            flush=True,
        )
    print(f"Worker {name!r} stopped!", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.universe.pool_worker")
    parser.add_argument("--pool", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    try:
        return serve(args.pool, limit=args.limit, name=args.name)
    except Exception as exc:  # the traceback for the worker's log, then the one line
        from flows.universe.report import one_line

        traceback.print_exc()
        print(f"error: the worker for pool {args.pool!r} stopped: {one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
