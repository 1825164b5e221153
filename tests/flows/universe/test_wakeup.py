"""`flows.universe.wakeup` against a real `prefect server` (the session's): a worker polls the
moment a run is scheduled in its pool (and only its pool), a universe night sees its batch runs
end at once rather than at its next poll, and a real `pricecast worker` whose own poll is two
minutes apart takes a batch run within seconds."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.universe.fanout import BatchRun, wait_for_batches
from flows.universe.wakeup import StateWakeup, listen, wake_worker
from tests.conftest import PrefectServer, prefect_api, wait_for
from tests.flows.universe.test_pool import cli, pool_env, two_workers

__all__ = ["pool_env"]  # the fixture, imported for the end-to-end test


@pytest.fixture
def api_env(prefect_server: str) -> Iterator[str]:
    """Prefect's settings pointed at the session's server for this test."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield prefect_server
        # What the test's flows logged and emitted goes to this server now, not at exit.
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)


def _flow_id(api: httpx.Client) -> str:
    response = api.post("/flows/", json={"name": "wakeup-test"})
    response.raise_for_status()
    return str(response.json()["id"])


def _pool_with_deployment(api: httpx.Client) -> tuple[dict[str, Any], str]:
    """A new process pool and a deployment on it (never run: the tests only schedule runs)."""
    name = f"wake-{uuid.uuid4().hex[:8]}"
    pool = api.post("/work_pools/", json={"name": name, "type": "process"})
    pool.raise_for_status()
    deployment = api.post(
        "/deployments/",
        json={"name": name, "flow_id": _flow_id(api), "work_pool_name": name, "entrypoint": "x:y"},
    )
    deployment.raise_for_status()
    return pool.json(), str(deployment.json()["id"])


def _schedule(api: httpx.Client, deployment_id: str) -> str:
    run = api.post(f"/deployments/{deployment_id}/create_flow_run", json={})
    run.raise_for_status()
    return str(run.json()["id"])


class FakeWorker:
    """What `wake_worker` uses of Prefect's worker: its pool, whether it synced, its poll."""

    def __init__(self, pool: dict[str, Any]) -> None:
        from prefect.client.schemas.objects import WorkPool

        self._work_pool = WorkPool.model_validate(pool)
        self._has_successfully_synced = True
        self.draining = False
        self.polls: list[float] = []

    async def get_and_submit_flow_runs(self) -> list[Any]:
        self.polls.append(time.monotonic())
        return []


async def _polls_after(worker: FakeWorker, schedule: Any, *, wait: float) -> list[float]:
    """Run wake_worker, let its subscription settle, call `schedule()` (in a thread), and return
    the polls' delays after it."""
    waker = asyncio.create_task(wake_worker(worker, settle_seconds=0.3))
    try:
        await asyncio.sleep(1.5)  # subscribed (a backfilled event may poll once: not counted)
        worker.polls.clear()
        at = time.monotonic()
        await asyncio.to_thread(schedule)
        await asyncio.sleep(wait)
        return [round(t - at, 2) for t in worker.polls]
    finally:
        waker.cancel()
        await asyncio.gather(waker, return_exceptions=True)


def test_a_run_scheduled_in_the_pool_makes_the_worker_poll_at_once(api_env: str) -> None:
    api = prefect_api(api_env)
    pool, deployment = _pool_with_deployment(api)
    other_pool, other_deployment = _pool_with_deployment(api)
    worker = FakeWorker(pool)

    polls = asyncio.run(_polls_after(worker, lambda: _schedule(api, deployment), wait=2.0))
    # At once, then once more after settle_seconds (a claim another worker won may free a slot).
    assert len(polls) == 2 and polls[0] < 1.0, polls

    # A run scheduled in another pool does not concern this worker.
    elsewhere = asyncio.run(_polls_after(worker, lambda: _schedule(api, other_deployment), wait=2))
    assert elsewhere == []
    assert other_pool["id"] != pool["id"]

    # A draining worker takes nothing new, event or not.
    worker.draining = True
    assert asyncio.run(_polls_after(worker, lambda: _schedule(api, deployment), wait=2.0)) == []
    api.close()


def test_a_stream_that_cannot_open_is_retried_and_said_once() -> None:
    """No server behind the URL: `listen` says so once, keeps trying, and never raises."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.universe.wakeup import scheduled_in_pool

    said: list[str] = []

    async def main() -> None:
        task = asyncio.create_task(
            listen(lambda: scheduled_in_pool(uuid.uuid4()), lambda event: None,
                   log=said.append, retry_seconds=(0.1, 0.2))
        )  # fmt: skip
        await asyncio.sleep(2.0)
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        asyncio.run(main())
    assert len(said) == 1 and "polling only" in said[0], said
    assert "ws://127.0.0.1:9/api/events/out" in said[0], said  # where, and what to let through


def test_the_universe_night_sees_its_batch_end_before_its_next_poll(api_env: str) -> None:
    api = prefect_api(api_env)
    run = api.post("/flow_runs/", json={"flow_id": _flow_id(api), "state": {"type": "RUNNING"}})
    run.raise_for_status()
    run_id = uuid.UUID(run.json()["id"])

    def finish() -> None:
        time.sleep(1.0)
        api.post(
            f"/flow_runs/{run_id}/set_state",
            json={"state": {"type": "COMPLETED"}, "force": True},
        ).raise_for_status()

    threading.Thread(target=finish).start()
    started = time.monotonic()
    (ended,) = wait_for_batches(
        [BatchRun((), run_id, "wakeup test batch")],
        pool="unused",
        timeout_seconds=120,
        poll_seconds=60,  # without the events the wait would end only here
        log=lambda line: None,
    )
    took = time.monotonic() - started
    assert ended.completed
    assert took < 10, f"took {took:.1f} s"
    api.close()


def test_without_an_api_url_the_wakeup_is_a_plain_sleep() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        wakeup = StateWakeup([uuid.uuid4()]).start()
    assert wakeup._thread is None
    started = time.monotonic()
    assert wakeup.wait(0.3) is False
    assert time.monotonic() - started >= 0.29
    wakeup.stop()


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_with_a_two_minute_poll_takes_a_batch_run_within_seconds(
    pool_env: dict[str, str], tmp_path: Path, prefect_server: str
) -> None:
    """A real `pricecast worker` whose Prefect poll is 120 s apart: a batch run created after its
    first poll runs within seconds (the event), not at its next poll."""
    env = {**pool_env, "PREFECT_WORKER_QUERY_SECONDS": "120"}
    pool = env["PRICECAST_WORKER_POOL"]
    deployed = cli(env, "deploy", timeout=300)
    assert deployed.returncode == 0, deployed.stderr
    api = prefect_api(prefect_server)
    with two_workers(env, tmp_path, count=1) as (logs, _):
        wait_for(lambda: "started!" in logs[0].read_text(), 120, "the worker started")
        time.sleep(2.0)  # past its first poll, which found nothing
        deployment = api.get(f"/deployments/name/nightly-batch/{pool}").json()
        run = api.post(
            f"/deployments/{deployment['id']}/create_flow_run",
            json={"parameters": {"members": [], "dates": []}},
        )
        run.raise_for_status()
        created = time.monotonic()

        def state() -> str:
            return str(api.get(f"/flow_runs/{run.json()['id']}").json()["state"]["type"])

        wait_for(lambda: state() != "SCHEDULED", 60, "the worker took the run")
        took = time.monotonic() - created
        wait_for(lambda: state() == "COMPLETED", 120, "the empty batch completed")
    assert took < 10, f"the worker took the run after {took:.1f} s"
    api.close()


def test_a_freed_slot_wakes_the_worker() -> None:
    """Prefect's worker frees a slot when a run ends or another worker won its claim; ours then
    polls at once (`wake`), not at its next poll."""
    from flows.universe.pool_worker import draining_worker_class

    with warnings.catch_warnings():  # Prefect notes that the subclass takes the "process" type
        warnings.simplefilter("ignore", UserWarning)
        worker = draining_worker_class()(name="w", work_pool_name="p", limit=None)
    woken: list[bool] = []
    worker.wake = lambda: woken.append(True)
    worker._release_limit_slot(uuid.uuid4())
    assert woken == [True]


def test_a_ticker_night_ends_without_waiting_for_its_heartbeat_thread(api_env: str) -> None:
    """Prefect joins a flow run's heartbeat thread, which sleeps in one-second steps, when the
    run ends; the nights of a batch send none (their batch's run does), so they end at once."""
    from prefect import flow

    from flows.universe.batch import without_heartbeats

    returned: list[float] = []

    @flow
    def night() -> None:
        returned.append(time.monotonic())

    @flow
    def batch() -> dict[str, float]:
        night()
        with_heartbeat = time.monotonic() - returned[-1]
        with without_heartbeats():
            night()
        without = time.monotonic() - returned[-1]
        return {"with": with_heartbeat, "without": without}

    waited = batch()
    assert waited["without"] < 0.3, waited
    assert waited["with"] > waited["without"] + 0.3, waited  # what Prefect does by default


def test_a_worker_woken_by_every_poll_polls_at_most_twice_a_second() -> None:
    """A claim the server keeps turning down frees the worker's slot, which wakes it, on every
    poll: the wake-ups are bounded (no stream here: its URL answers nothing)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class Refused(FakeWorker):
        wake: Any = None

        async def get_and_submit_flow_runs(self) -> list[Any]:
            await super().get_and_submit_flow_runs()
            assert self.wake is not None
            self.wake()  # as a turned-down claim does
            return []

    worker = Refused({"name": "p", "type": "process", "id": str(uuid.uuid4())})

    async def main() -> None:
        waker = asyncio.create_task(wake_worker(worker, settle_seconds=0.3, min_cycle_seconds=1))
        await asyncio.sleep(0.5)
        assert worker.wake is not None
        worker.wake()
        await asyncio.sleep(3.0)
        waker.cancel()
        await asyncio.gather(waker, return_exceptions=True)

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        asyncio.run(main())
    assert 4 <= len(worker.polls) <= 8, worker.polls


@pytest.mark.slow
def test_the_wakeup_comes_back_with_a_restarted_server(own_prefect_server: PrefectServer) -> None:
    """The server goes away under a listening worker and comes back: the worker's log hears of
    it once, the stream opens again on its own, and the next scheduled run wakes the worker at
    once."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = own_prefect_server
    api = httpx.Client(base_url=server.url, timeout=30)
    pool, deployment = _pool_with_deployment(api)
    worker = FakeWorker(pool)
    said: list[str] = []

    async def main() -> list[float]:
        waker = asyncio.create_task(wake_worker(worker, retry_seconds=(0.5, 1.0), log=said.append))
        try:
            await asyncio.sleep(1.5)
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(2.0)
            await asyncio.to_thread(server.start)
            await asyncio.sleep(3.0)  # the stream opens again within its 1 s retry
            worker.polls.clear()
            at = time.monotonic()
            await asyncio.to_thread(_schedule, api, deployment)
            await asyncio.sleep(2.0)
            return [round(t - at, 2) for t in worker.polls]
        finally:
            waker.cancel()
            await asyncio.gather(waker, return_exceptions=True)

    with temporary_settings(updates={PREFECT_API_URL: server.url}):
        polls = asyncio.run(main())
    assert polls and polls[0] < 1.0, polls
    # The worker's log says so once for the outage (`pricecast worker` prints it).
    assert len(said) == 1 and "polling only" in said[0], said
    api.close()
