"""Prefect's event stream as a wake-up: a worker takes a new batch run, and a universe night sees
its batch runs end, the moment the server says so instead of at their next poll.

Both still poll; the events only cut the wait. A worker polls its pool every
PREFECT_WORKER_QUERY_SECONDS (2 s here), so a universe night's batch waited 1 s on average (up to
2 s) before a worker took it; the universe night read its batch runs' states every
PRICECAST_UNIVERSE_POLL_SECONDS. Polling faster costs the Prefect server CPU on every poll, idle
or not (a pool poll ~31 ms); a subscription costs nothing while nothing happens. The server emits
`prefect.flow-run.<State>` for every state a flow run enters, with its work pool among the
related resources, and its websocket delivers them within tens of milliseconds.

Best effort by design: no API URL (the embedded default) means no subscription, and a stream that
fails is opened again later, the polls meanwhile doing what they always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from prefect.events.filters import EventFilter

#: After a stream failed or closed: the first wait before opening it again, and the longest.
RETRY_SECONDS = (2.0, 60.0)

#: A worker polls its pool when a run is scheduled there, and once more this much later: two
#: workers that polled on the same event both try the first run, and the one that lost it takes
#: the next only once its claim on the first has been turned down.
SETTLE_SECONDS = 0.3

#: At most one such pair of polls a second, whatever wakes the worker: a claim the server keeps
#: turning down frees its slot, which wakes the worker, every time.
MIN_CYCLE_SECONDS = 1.0


async def listen(
    make_filter: Callable[[], EventFilter],
    on_event: Callable[[Any], None],
    *,
    log: Callable[[str], None] | None = None,
    retry_seconds: tuple[float, float] = RETRY_SECONDS,
) -> None:
    """Call `on_event(event)` for every event of Prefect's stream that `make_filter()` matches,
    until cancelled. A stream that fails or closes is opened again after a wait that doubles
    up to `retry_seconds[1]`; `log` hears of the first failure of a series."""
    from prefect.events.clients import events_out_socket_from_api_url, get_events_subscriber

    from flows.prefect_api import prefect_api_url
    from pricecast.urls import mask_url

    first, longest = retry_seconds
    delay = first
    told = False
    while True:
        try:
            async with get_events_subscriber(filter=make_filter(), reconnection_attempts=2) as sub:
                delay, told = first, False
                async for event in sub:
                    on_event(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if log is not None and not told:
                stream = events_out_socket_from_api_url(mask_url(prefect_api_url() or "?"))
                log(
                    f"Prefect's event stream {stream} failed ({type(exc).__name__}: {exc}); "
                    f"polling only until it is back (trying again in {delay:g} s). If this "
                    "lasts while the Prefect API answers, let websockets through to that URL"
                )
                told = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, longest)


def scheduled_in_pool(pool_id: UUID) -> EventFilter:
    """Flow runs entering Scheduled (new, or rescheduled) in the work pool `pool_id`. (The
    server's stream ignores a `related` filter, so the pool goes in `any_resource`.)"""
    from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

    return EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.Scheduled"]),
        any_resource=EventAnyResourceFilter(id=[_pool_resource(pool_id)]),
    )


def _pool_resource(pool_id: UUID) -> str:
    return f"prefect.work-pool.{pool_id}"


def concerns_pool(event: Any, pool_id: UUID) -> bool:
    """Whether `event` names the work pool `pool_id` among its related resources."""
    return any(related.id == _pool_resource(pool_id) for related in event.related)


def states_of(flow_run_ids: Iterable[UUID]) -> EventFilter:
    """Every state change of these flow runs."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    return EventFilter(
        event=EventNameFilter(prefix=["prefect.flow-run."]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{i}" for i in flow_run_ids]),
    )


async def wake_worker(
    worker: Any,
    *,
    settle_seconds: float = SETTLE_SECONDS,
    min_cycle_seconds: float = MIN_CYCLE_SECONDS,
    retry_seconds: tuple[float, float] = RETRY_SECONDS,
    log: Callable[[str], None] | None = None,
) -> None:
    """Make Prefect's `worker` poll its pool whenever a run is scheduled there, and whenever
    it calls its `wake` (a slot freed), until cancelled (run beside `worker.start()`). Waits for
    the worker's first sync, which tells the pool's id; each wake-up polls twice,
    `settle_seconds` apart, and wake-ups come at most once per `min_cycle_seconds`. `log`
    hears once of each series of stream failures."""
    while getattr(worker, "_work_pool", None) is None or not getattr(
        worker, "_has_successfully_synced", True
    ):
        await asyncio.sleep(0.2)
    wanted = asyncio.Event()
    if hasattr(worker, "wake"):  # pool_worker's worker class: a freed slot polls too
        worker.wake = wanted.set

    async def poll() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await wanted.wait()
            started = loop.time()
            for pause in (0.0, settle_seconds):
                await asyncio.sleep(pause)
                wanted.clear()
                if getattr(worker, "draining", False):
                    continue
                with contextlib.suppress(Exception):  # the worker's own poll reports failures
                    await worker.get_and_submit_flow_runs()
            await asyncio.sleep(max(0.0, min_cycle_seconds - (loop.time() - started)))

    def on_event(event: Any) -> None:
        if concerns_pool(event, worker._work_pool.id):
            wanted.set()

    poller = asyncio.create_task(poll())
    try:
        await listen(
            lambda: scheduled_in_pool(worker._work_pool.id),
            on_event,
            log=log,
            retry_seconds=retry_seconds,
        )
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller


class StateWakeup:
    """A thread listening for state changes of some flow runs: `wait(timeout)` returns early
    (True) once one happened since the last `clear()`. Without a Prefect API URL it never
    listens, and `wait` is a plain sleep."""

    def __init__(self, flow_run_ids: Iterable[UUID]) -> None:
        self._ids = list(flow_run_ids)
        self._event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StateWakeup:
        from flows.prefect_api import prefect_api_url

        if not self._ids or prefect_api_url() is None:
            return self
        ready = threading.Event()

        def run() -> None:
            async def main() -> None:
                self._loop = asyncio.get_running_loop()
                self._task = asyncio.current_task()
                ready.set()
                await listen(lambda: states_of(self._ids), lambda event: self._event.set())

            with contextlib.suppress(asyncio.CancelledError, Exception):
                asyncio.run(main())
            ready.set()

        # In the caller's context: Prefect's settings (its API URL among them) live in it.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(run,), name="pricecast-run-events", daemon=True
        )
        self._thread.start()
        ready.wait(5.0)
        return self

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def stop(self) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(5.0)


@contextlib.contextmanager
def state_wakeup(flow_run_ids: Iterable[UUID]) -> Iterator[StateWakeup]:
    """A started StateWakeup for these runs, stopped on the way out."""
    wakeup = StateWakeup(flow_run_ids).start()
    try:
        yield wakeup
    finally:
        wakeup.stop()
