"""`flows.universe.pool_worker`'s rules, in-process: what counts as Prefect's worker giving up on
its API (restarted) and what does not (it ends the process as before), and the wait for the API.
The real outage is `test_worker_outage.py`."""

from __future__ import annotations

import pytest

from flows.universe.pool_worker import GAVE_UP, gave_up, main, wait_for_api


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


@pytest.fixture
def loop(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`serve` with a fake Prefect worker whose runs raise what `outcomes` holds, in order (None:
    it returns), an API that answers at once, and no signal handlers installed in pytest."""
    import prefect.utilities.processutils

    import flows.prefect_api
    import flows.universe.pool_worker as pool_worker

    outcomes: list[str] = []
    monkeypatch.setattr(flows.prefect_api, "prefect_api_url", lambda: "http://prefect:4200/api")
    monkeypatch.setattr(
        prefect.utilities.processutils, "setup_signal_handlers_worker", lambda *a: None
    )
    monkeypatch.setattr(pool_worker, "wait_for_api", lambda url: 3.0)

    async def run_once(pool: str, limit: int | None, name: str) -> None:
        outcome = outcomes.pop(0)
        if outcome == "gave up":
            raise BaseExceptionGroup("loops", [RuntimeError(f"{GAVE_UP}.")])
        if outcome == "bug":
            raise ExceptionGroup("loops", [KeyError("a bug")])

    monkeypatch.setattr(pool_worker, "_run_once", run_once)
    return outcomes


def test_a_give_up_is_one_line_and_a_restart(
    loop: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    loop.extend(["gave up", "gave up", "stopped"])

    assert main(["--pool", "p", "--name", "w"]) == 0

    out = capsys.readouterr().out
    assert out.count("stopped answering and Prefect's worker 'w' gave up") == 2
    assert "answers again after 3 s: starting worker 'w' again (restart 2)" in out
    assert not loop


def test_any_other_error_ends_the_worker_with_one_line(
    loop: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    loop.extend(["gave up", "bug"])

    assert main(["--pool", "p", "--name", "w"]) == 1

    captured = capsys.readouterr()
    assert "(restart 1)" in captured.out
    assert (
        captured.err.rstrip()
        .splitlines()[-1]
        .startswith("error: the worker for pool 'p' stopped: ")
    )
