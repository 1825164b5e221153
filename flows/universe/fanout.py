"""The fan-out on a Prefect work pool: how many batch runs the pool can take (its online workers
and its concurrency limit), submitting them as subflows of the calling run (`run_deployment(...,
timeout=0, as_subflow=True)`), and waiting for them by polling their states.

The outcome of each ticker is read back from the database by the caller, not from Prefect's
result storage: a batch run only has to end.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from uuid import UUID

from flows.prefect_api import prefect_api_url as api_url
from flows.universe.plan import Member, NightParams
from pricecast.errors import ConfigError

UNIVERSE_FLOW = "nightly-universe"
BATCH_FLOW = "nightly-batch"
#: The command a worker runs for each flow run of our deployments: Prefect's engine, by the
#: `python` first on the worker's PATH (`pricecast worker` puts its own interpreter there).
#: Naming it skips the workspace supervisor a process worker starts when no command is set, a
#: second Python process that imports Prefect only to prepare a workspace we do not use (no pull
#: steps: the package is installed), which cost ~1.5 s and as much CPU per batch run.
ENGINE_COMMAND = "python -m prefect.engine"
#: Nobody picked a batch up for this long while no worker is online: say so in the log.
NO_WORKER_WARNING_SECONDS = 60.0


def batch_deployment(pool: str) -> str:
    """`nightly-batch/<pool>`: the deployment a universe night fans out to on `pool`."""
    return f"{BATCH_FLOW}/{pool}"


def universe_deployment(pool: str) -> str:
    """`nightly-universe/<pool>`: the scheduled universe night on `pool`."""
    return f"{UNIVERSE_FLOW}/{pool}"


@dataclass(frozen=True)
class PoolStatus:
    name: str
    online_workers: int
    concurrency_limit: int | None
    is_paused: bool
    type: str


@dataclass(frozen=True)
class BatchRun:
    """One submitted batch: its tickers and, once it ended, its final state."""

    members: tuple[Member, ...]
    flow_run_id: UUID
    name: str
    parent_task_run_id: UUID | None = None
    state_type: str | None = None
    state_name: str | None = None
    message: str | None = None

    @property
    def completed(self) -> bool:
        return self.state_type == "COMPLETED"

    def describe_end(self) -> str:
        """'batch run "pricecast 2/3: A, B" ended Crashed: <message>' (or never ended)."""
        if self.state_type is None:
            return f'batch run "{self.name}" {self.message or "did not end"}'
        detail = f": {self.message}" if self.message else ""
        return f'batch run "{self.name}" ended {self.state_name}{detail}'


def deployment_exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True


def pool_status(pool: str) -> PoolStatus:
    """The pool's online workers and limit; ConfigError if the pool does not exist."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            work_pool = client.read_work_pool(pool)
        except ObjectNotFound:
            raise ConfigError(
                f"work pool {pool!r} does not exist on {api_url()}; create it and the "
                f"deployments with `pricecast deploy --pool {pool}`"
            ) from None
        online = client.read_workers_for_work_pool(
            pool, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))
        )
    return PoolStatus(
        pool, len(online), work_pool.concurrency_limit, work_pool.is_paused, work_pool.type
    )


def current_work_pool() -> str | None:
    """The work pool the calling flow run was picked from (None when it runs elsewhere)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run.id:
        return None
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(str(flow_run.id))).work_pool_name


def batch_name(pool: str, index: int, count: int, members: Sequence[Member]) -> str:
    tickers = ", ".join(m.ticker for m in members)
    name = f"{pool} {index}/{count}: {tickers}"
    return name if len(name) <= 120 else name[:117] + "..."


def submit_batches(
    pool: str,
    batches: Sequence[Sequence[Member]],
    dates: Sequence[dt.date],
    params: NightParams,
    *,
    idempotency_prefix: str | None = None,
) -> list[BatchRun]:
    """One `nightly-batch` run per batch on `pool`, linked to the calling run; returns at once."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    runs = []
    for index, members in enumerate(batches, start=1):
        name = batch_name(pool, index, len(batches), members)
        flow_run = run_deployment(  # from sync code it returns the FlowRun itself
            batch_deployment(pool),
            parameters={
                "members": [m.to_parameter() for m in members],
                "dates": [d.isoformat() for d in dates],
                **params.to_kwargs(),
            },
            flow_run_name=name,
            timeout=0,
            as_subflow=True,
            tags=["pricecast", "universe"],
            idempotency_key=(
                f"{idempotency_prefix}:{index}/{len(batches)}" if idempotency_prefix else None
            ),
        )
        assert isinstance(flow_run, FlowRun)
        runs.append(BatchRun(tuple(members), flow_run.id, name, flow_run.parent_task_run_id))
    return runs


def wait_for_batches(
    runs: Sequence[BatchRun],
    *,
    pool: str,
    timeout_seconds: float,
    poll_seconds: float,
    log: Callable[[str], None] = print,
) -> list[BatchRun]:
    """Poll the runs' states until every one is final or `timeout_seconds` passed; runs that
    never started by then are cancelled (a later worker would otherwise run them unreported).
    The tracking task of each run in the parent mirrors its end. Polls every `poll_seconds`, and
    at once when Prefect's event stream says one of the runs changed state (`wakeup.py`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.universe.wakeup import state_wakeup

    pending = {run.flow_run_id: run for run in runs}
    ended: dict[UUID, BatchRun] = {}
    started = time.monotonic()
    warned_at = started
    seen_states: dict[UUID, str | None] = {}
    with get_client(sync_client=True) as client, state_wakeup(list(pending)) as wakeup:
        while pending:
            wakeup.clear()  # a change from here on cuts the wait below short
            found = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(pending)))
            )
            for flow_run in found:
                state = flow_run.state
                run = pending[flow_run.id]
                if state is None:
                    continue
                if seen_states.get(flow_run.id) != state.name:
                    seen_states[flow_run.id] = state.name
                    log(f'batch run "{run.name}": {state.name}')
                if state.is_final():
                    ended[flow_run.id] = replace(
                        run,
                        state_type=state.type.value,
                        state_name=state.name,
                        message=state.message,
                    )
                    del pending[flow_run.id]
                    _mirror(client, ended[flow_run.id])
            if not pending:
                break
            now = time.monotonic()
            if now - started > timeout_seconds:
                for run in _give_up(client, list(pending.values()), timeout_seconds):
                    ended[run.flow_run_id] = run
                break
            waiting = [seen_states.get(i) for i in pending]
            if now - warned_at > NO_WORKER_WARNING_SECONDS and all(
                s in (None, "Scheduled", "Late") for s in waiting
            ):
                warned_at = now
                online = pool_status(pool).online_workers
                log(
                    f"{len(pending)} batch run(s) still waiting for a worker of pool {pool!r} "
                    f"({online} online); start one with `pricecast worker --pool {pool}`"
                )
            wakeup.wait(poll_seconds)
    return [ended[run.flow_run_id] for run in runs]


def _mirror(client: object, run: BatchRun) -> None:
    """The parent's tracking task of `run` ends like the run (run_deployment leaves it Pending
    when it does not wait)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import State
    from prefect.states import Completed, Failed

    if run.parent_task_run_id is None or not isinstance(client, SyncPrefectClient):
        return
    state: State[None] = Completed() if run.completed else Failed(message=run.describe_end())
    try:
        client.set_task_run_state(run.parent_task_run_id, state, force=True)
    except Exception:  # cosmetic: the graph in the UI, never worth failing the night
        return


def _give_up(client: object, runs: Sequence[BatchRun], timeout_seconds: float) -> list[BatchRun]:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.states import Cancelled

    assert isinstance(client, SyncPrefectClient)
    gave_up = []
    for run in runs:
        current = client.read_flow_run(run.flow_run_id).state
        name = current.name if current else "unknown"
        note = f"did not end within {timeout_seconds:g} s (it was {name})"
        if current is not None and current.type.value == "SCHEDULED":
            client.set_flow_run_state(
                run.flow_run_id, Cancelled(message=f"the universe night stopped waiting: {note}")
            )
            note += "; cancelled it: no worker took it"
        gave_up.append(replace(run, message=note))
        _mirror(client, gave_up[-1])
    return gave_up
