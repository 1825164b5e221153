"""`flows.universe.pool_worker`'s rules, in-process: what counts as Prefect's worker giving up on
its API (restarted) and what does not (it ends the process as before), and the wait for the API.
The real outage is `test_worker_outage.py`."""

from __future__ import annotations

from flows.universe.pool_worker import GAVE_UP, gave_up, wait_for_api


def test_only_prefects_give_up_restarts_the_worker() -> None:
    give_up = RuntimeError(f"{GAVE_UP}.")
    assert gave_up(give_up)
    # Prefect's worker runs its loops in a task group: the give-up arrives in a group.
    assert gave_up(BaseExceptionGroup("loops", [give_up, RuntimeError(f"{GAVE_UP}.")]))
    assert gave_up(BaseExceptionGroup("outer", [BaseExceptionGroup("loops", [give_up])]))
    assert not gave_up(RuntimeError("the pool's type is kubernetes"))
    assert not gave_up(ValueError(GAVE_UP))
    assert not gave_up(BaseExceptionGroup("loops", [give_up, KeyError("a bug")]))


def test_the_wait_asks_the_api_until_it_answers() -> None:
    answers = iter(["ConnectError: refused", "ConnectError: refused", None])
    asked: list[str] = []
    slept: list[float] = []

    def problem(url: str) -> str | None:
        asked.append(url)
        return next(answers)

    wait_for_api("http://prefect:4200/api", poll_seconds=5.0, problem=problem, sleep=slept.append)

    assert asked == ["http://prefect:4200/api"] * 3
    assert slept == [5.0, 5.0]
