"""The kept-alive connection check against real uvicorn servers: several workers (uvicorn's
multi-worker bind leaves Nagle's algorithm on, as under `mlflow server`'s default) against one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flows.tracking.keepalive import keepalive_delay, slow_keepalive_warning
from tests.conftest import free_port, stop_group, wait_for
from tests.flows.universe.test_pool import ROOT

#: Answers /health as MLflow's server does: headers, then the body in a second write.
APP = textwrap.dedent(
    """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"OK"})
    """
)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def uvicorn_server(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    (tmp_path / "health_app.py").write_text(APP)
    started: list[subprocess.Popen[bytes]] = []

    def start(workers: int) -> str:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(tmp_path), "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(workers), "--log-level", "warning",
             "health_app:app"],
            start_new_session=True,
        )  # fmt: skip
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url + "/health"), 60, f"uvicorn --workers {workers}", process)
        return url

    yield start
    for process in started:
        stop_group(process, grace=10)


def test_several_uvicorn_workers_are_named_with_the_fix(
    uvicorn_server: Callable[[int], str],
) -> None:
    url = uvicorn_server(2)

    measured = keepalive_delay(url)
    warning = slow_keepalive_warning(url)

    assert measured is not None
    fresh, kept = measured
    assert kept - fresh > 0.025, measured
    assert warning is not None
    assert f"MLflow server at {url}" in warning
    assert "--workers 1" in warning


def test_one_uvicorn_worker_gets_no_warning(uvicorn_server: Callable[[int], str]) -> None:
    url = uvicorn_server(1)

    assert slow_keepalive_warning(url) is None


def test_no_server_or_no_http_gets_no_warning(tmp_path: Path) -> None:
    assert slow_keepalive_warning(f"http://127.0.0.1:{free_port()}") is None
    assert slow_keepalive_warning(f"sqlite:///{tmp_path / 'mlflow.db'}") is None
    assert slow_keepalive_warning("http://user:secret@127.0.0.1:1/") is None


@pytest.mark.slow
def test_pricecast_worker_says_so_before_it_starts(
    uvicorn_server: Callable[[int], str], prefect_server: str, tmp_path: Path
) -> None:
    """The worker's start, on the session's Prefect server, with MLFLOW_TRACKING_URI at a slow
    server: the warning is on stderr, and the worker still starts (stopped by SIGTERM)."""
    slow = uvicorn_server(2)
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PRICECAST_HOME": str(tmp_path / "home"),
        "PRICECAST_TRAINING_RESIDENT": "false",
        "MLFLOW_TRACKING_URI": slow,
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.flows.universe.cli_app", "worker",
         "--pool", f"keepalive-{uuid.uuid4().hex[:8]}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    # A worker that never warns runs on: stop it after a minute, which ends its stderr.
    watchdog = threading.Timer(60, lambda: os.killpg(worker.pid, signal.SIGTERM))
    watchdog.start()
    try:
        assert worker.stderr is not None
        lines = []
        for line in worker.stderr:
            lines.append(line)
            if line.startswith("warning: the MLflow server"):
                break
        warned = [x for x in lines if x.startswith("warning: the MLflow server")]
        assert warned and f"at {slow}" in warned[0] and "--workers 1" in warned[0], lines
    finally:
        watchdog.cancel()
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
