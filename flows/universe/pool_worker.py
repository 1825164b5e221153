"""The process `pricecast worker` becomes: Prefect's process worker for one pool, run here rather
than by `prefect worker start`, so that it outlives a Prefect server outage of any length.

Prefect's worker gives up once its API stays unreachable: three failed polls in a row, four
times over, the wait doubling each time (18 minutes here with the client's default retries,
about a minute with them off), and `prefect worker start` then exits 1. A fleet of
workers would be gone after one long server outage (an upgrade, a reboot), and the nights after
it would wait for workers nobody restarted. Here that give-up is one line, the process waits for
the API's /health to answer again (saying so once), and starts the worker again under the same
name; its resident training process (owned by this pid) stays. Any other error ends the process
as before. Ctrl-C and SIGTERM stop it as they stop `prefect worker start` (the same handlers).

    python -m flows.universe.pool_worker --pool POOL [--limit N] --name NAME

`pricecast worker` prepares the environment (PATH, PREFECT_WORKER_QUERY_SECONDS, the resident's
socket) and execs this module, so that Prefect reads its settings from that environment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import traceback
from collections.abc import Callable

#: What Prefect's `critical_service_loop` raises when its API stays unreachable.
GAVE_UP = "Service exceeded error threshold"
#: How often the API's /health is asked while the worker waits for it.
HEALTH_POLL_SECONDS = 5.0


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
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Block until the API at `url` answers its /health; the seconds it took."""
    from flows.prefect_api import api_problem

    ask = problem or (lambda u: api_problem(u, timeout=5.0))
    started = time.monotonic()
    while ask(url) is not None:
        sleep(poll_seconds)
    return time.monotonic() - started


async def _run_once(pool: str, limit: int | None, name: str) -> None:
    from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS, PREFECT_WORKER_PREFETCH_SECONDS
    from prefect.workers.process import ProcessWorker

    worker = ProcessWorker(
        name=name,
        work_pool_name=pool,
        limit=limit,
        prefetch_seconds=PREFECT_WORKER_PREFETCH_SECONDS.value(),
        heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()),
    )
    await worker.start(printer=lambda *args: print(*args, flush=True))


def serve(pool: str, *, limit: int | None, name: str) -> int:
    """Prefect's worker for `pool`, started again after every give-up once the API answers."""
    from prefect.utilities.processutils import setup_signal_handlers_worker

    from flows.prefect_api import prefect_api_url
    from pricecast.urls import mask_url

    url = prefect_api_url()
    shown = mask_url(url) if url else "(ephemeral)"
    setup_signal_handlers_worker(os.getpid(), "the process worker", print)
    restarts = 0
    while True:
        try:
            asyncio.run(_run_once(pool, limit, name))
            return 0
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (Prefect's handler turns it into SIGINT)
            print(f"Worker {name!r} stopped!", flush=True)
            return 0
        except BaseException as exc:
            if url is None or not gave_up(exc):
                raise
        print(
            f"pricecast worker: the Prefect API at {shown} stopped answering and Prefect's worker "
            f"{name!r} gave up; waiting for the API to answer again, then starting the worker "
            "again (Ctrl-C stops)",
            flush=True,
        )
        try:
            waited = wait_for_api(url)
        except KeyboardInterrupt:
            print(f"Worker {name!r} stopped!", flush=True)
            return 0
        restarts += 1
        print(
            f"pricecast worker: the Prefect API at {shown} answers again after {waited:.0f} s: "
            f"starting worker {name!r} again (restart {restarts})",
            flush=True,
        )


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
