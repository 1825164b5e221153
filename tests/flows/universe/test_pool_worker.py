"""`flows.universe.pool_worker`'s rules, in-process: what counts as Prefect's worker giving up on
its API (restarted) and what does not (it ends the process as before), and the wait for the API.
The real outage is `test_worker_outage.py`."""

from __future__ import annotations

from dataclasses import dataclass, field
from unittest import mock

import pytest

from flows.universe.pool_worker import GAVE_UP, StopRequest, gave_up, main, wait_for_api


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


@dataclass
class Loop:
    """What the fake Prefect worker's runs do, in order: 'gave up', 'bug', 'stop requested'
    (a Ctrl-C while it runs, then Prefect's give-up on its way out), anything else returns."""

    outcomes: list[str] = field(default_factory=list)
    stop: StopRequest = field(default_factory=lambda: StopRequest("w"))


@pytest.fixture
def loop(monkeypatch: pytest.MonkeyPatch) -> Loop:
    """`serve` with a fake Prefect worker (see Loop), an API that answers at once, and no signal
    handlers installed in pytest."""
    import flows.prefect_api
    import flows.universe.pool_worker as pool_worker

    fake = Loop()
    monkeypatch.setattr(flows.prefect_api, "prefect_api_url", lambda: "http://prefect:4200/api")
    monkeypatch.setattr(pool_worker, "install_stop", lambda name: fake.stop)
    monkeypatch.setattr(pool_worker, "wait_for_api", lambda url, **options: 3.0)

    async def run_once(pool: str, limit: int | None, name: str, stop: StopRequest) -> None:
        outcome = fake.outcomes.pop(0)
        if outcome == "stop requested":
            stop.request("SIGTERM")
            outcome = "gave up"
        if outcome == "gave up":
            raise BaseExceptionGroup("loops", [RuntimeError(f"{GAVE_UP}.")])
        if outcome == "bug":
            raise ExceptionGroup("loops", [KeyError("a bug")])

    monkeypatch.setattr(pool_worker, "_run_once", run_once)
    return fake


def test_a_give_up_is_one_line_and_a_restart(
    loop: Loop, capsys: pytest.CaptureFixture[str]
) -> None:
    loop.outcomes.extend(["gave up", "gave up", "returns"])

    assert main(["--pool", "p", "--name", "w"]) == 0

    out = capsys.readouterr().out
    assert out.count("stopped answering and Prefect's worker 'w' gave up") == 2
    assert "answers again after 3 s: starting worker 'w' again (restart 2)" in out
    assert out.rstrip().endswith("Worker 'w' stopped!")
    assert not loop.outcomes


def test_a_stop_request_is_final_even_when_the_worker_then_gives_up(
    loop: Loop, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seen with Prefect's own handlers: a SIGTERM during an outage was swallowed, the worker
    went on until it gave up, and would then have been started again."""
    loop.outcomes.extend(["stop requested", "returns"])

    with mock.patch("threading.Timer"):  # the grace period's exit is the real test's
        assert main(["--pool", "p", "--name", "w"]) == 0

    out = capsys.readouterr().out
    assert "SIGTERM: stopping worker 'w'" in out
    assert "gave up" not in out and "restart" not in out
    assert out.rstrip().endswith("Worker 'w' stopped!")
    assert loop.outcomes == ["returns"]  # never started again


def test_a_stop_request_ends_the_wait_for_the_api() -> None:
    stop = StopRequest("w")
    polls: list[str] = []

    def problem(url: str) -> str:
        polls.append(url)
        return "ConnectError: refused"

    def sleep(seconds: float) -> None:
        with mock.patch("threading.Timer"):
            stop.request("SIGINT")

    waited = wait_for_api(
        "http://prefect:4200/api", problem=problem, sleep=sleep, stopped=stop.requested.is_set
    )

    assert waited is None and len(polls) == 1


def test_any_other_error_ends_the_worker_with_one_line(
    loop: Loop, capsys: pytest.CaptureFixture[str]
) -> None:
    loop.outcomes.extend(["gave up", "bug"])

    assert main(["--pool", "p", "--name", "w"]) == 1

    captured = capsys.readouterr()
    assert "(restart 1)" in captured.out
    assert (
        captured.err.rstrip()
        .splitlines()[-1]
        .startswith("error: the worker for pool 'p' stopped: ")
    )
