"""Is the MLflow server slow on kept-alive connections? A server behind uvicorn's multi-worker
mode (`mlflow server`'s default `--workers 4`) leaves Nagle's algorithm on for the connections it
accepts (uvicorn issue #3149): it writes a response's headers and body separately, the body waits
for the client's delayed ACK, and every request after a connection's first takes ~40 ms more on
Linux. MLflow's client keeps its connections alive, so each of a night's ~70 tracking calls per
ticker pays that (`bench/universe.py`: one worker's eight tickers took 43.5 s instead of 35.2 s).

`slow_keepalive_warning` compares requests to the server's /health on fresh connections with
requests on one kept-alive connection, and returns a line saying what to do when the kept ones
are markedly slower. Best effort: any error means no warning (other checks say when the server
does not answer).
"""

from __future__ import annotations

import http.client
import socket
import statistics
import time
from urllib.parse import SplitResult, urlsplit

from flows.tracking.tracker import health_url
from pricecast.urls import mask_url

#: Requests on fresh connections, and on one kept-alive connection after its first.
SAMPLES = 3
#: How much slower the kept-alive requests must be (median against median) to warn; a delayed
#: ACK costs ~40 ms on Linux, a healthy server answers /health in a few.
THRESHOLD_SECONDS = 0.025


def _connection(parts: SplitResult, timeout: float) -> http.client.HTTPConnection:
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname or "", parts.port, timeout=timeout)
    connection.connect()
    # As MLflow's client (urllib3) does: the request goes out at once, so what waits is the reply.
    assert connection.sock is not None
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def _timed_get(connection: http.client.HTTPConnection, path: str) -> float:
    started = time.perf_counter()
    connection.request("GET", path)  # HTTP/1.1: the connection stays open
    response = connection.getresponse()
    response.read()
    if response.status >= 400:
        raise OSError(f"/health answered {response.status}")
    return time.perf_counter() - started


def keepalive_delay(tracking_uri: str, *, timeout: float = 5.0) -> tuple[float, float] | None:
    """(median seconds of a /health request on a fresh connection, on a kept-alive one), None
    when the URI is not an HTTP server or the requests fail."""
    if urlsplit(tracking_uri).scheme not in ("http", "https"):
        return None
    parts = urlsplit(health_url(tracking_uri))
    if not parts.hostname:
        return None
    try:
        fresh = []
        for _ in range(SAMPLES):
            connection = _connection(parts, timeout)
            try:
                fresh.append(_timed_get(connection, parts.path))
            finally:
                connection.close()
        connection = _connection(parts, timeout)
        try:
            _timed_get(connection, parts.path)  # the connection's first request is a fresh one
            kept = [_timed_get(connection, parts.path) for _ in range(SAMPLES)]
        finally:
            connection.close()
    except (OSError, http.client.HTTPException, ValueError):
        return None
    return statistics.median(fresh), statistics.median(kept)


def slow_keepalive_warning(tracking_uri: str) -> str | None:
    """A line naming the slow server and the fix, None when kept-alive requests are not slower."""
    measured = keepalive_delay(tracking_uri)
    if measured is None:
        return None
    fresh, kept = measured
    if kept - fresh < THRESHOLD_SECONDS:
        return None
    return (
        f"the MLflow server at {mask_url(tracking_uri)} answers a request on a kept-alive "
        f"connection in {kept * 1000:.0f} ms, on a new one in {fresh * 1000:.0f} ms: it probably "
        "runs several uvicorn workers (`mlflow server`'s default --workers 4), which leave "
        "Nagle's algorithm on, and every MLflow call of a night waits for a delayed ACK "
        "(~1 s per ticker). Start it with --workers 1, as `make up` and the compose file do"
    )
