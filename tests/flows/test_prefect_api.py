"""`prefect_api_lost`: a connection error from the Prefect API during a command is one line that
names the server and the rerun, whether the server is still down when it is checked or already
answers again (it came back while Prefect's client retried); any other error passes through.
A real HTTP server stands in for the API's /health; the real outages are test_prefect_lost.py
and universe/test_api_lost.py."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest

import flows.prefect_api
from flows.prefect_api import prefect_api_lost
from pricecast.errors import ServiceUnavailable
from tests.conftest import free_port

RERUN = "pricecast nightly --all --as-of 2021-06-27"


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def answering(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """PREFECT_API_URL points at a server whose /health answers."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    monkeypatch.setattr(flows.prefect_api, "prefect_api_url", lambda: url)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


def _refused(url: str) -> httpx.ConnectError:
    return httpx.ConnectError("[Errno 111] Connection refused", request=httpx.Request("GET", url))


def _status(url: str, code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", url)
    response = httpx.Response(code, request=request)
    return httpx.HTTPStatusError(f"{code}", request=request, response=response)


def test_a_server_still_down_is_one_line_naming_it_and_the_rerun(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"  # nobody listens
    monkeypatch.setattr(flows.prefect_api, "prefect_api_url", lambda: url)
    with pytest.raises(ServiceUnavailable) as caught, prefect_api_lost("the universe night", RERUN):
        raise _refused(url)
    message = str(caught.value)
    assert message.startswith(f"lost the Prefect API at {url} during the universe night (Connect")
    assert message.endswith(f"Once it is back, rerun `{RERUN}`: it skips the nights already done")


def test_a_server_back_by_the_check_is_still_a_lost_server(answering: str) -> None:
    with pytest.raises(ServiceUnavailable) as caught, prefect_api_lost("the universe night", RERUN):
        raise _refused(answering)
    assert str(caught.value) == (
        f"lost the Prefect API at {answering} during the universe night (ConnectError: [Errno "
        f"111] Connection refused); it answers again now. Rerun `{RERUN}`: it skips the nights "
        "already done"
    )
    lost = prefect_api_lost("the universe night", RERUN)
    with pytest.raises(ServiceUnavailable, match="answers again now"), lost:
        raise _status(answering, 503)  # a server that was starting or stopping


def test_an_answering_server_s_own_error_passes_through(answering: str) -> None:
    with pytest.raises(httpx.HTTPStatusError), prefect_api_lost("the universe night", RERUN):
        raise _status(answering, 404)


def test_without_a_server_nothing_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows.prefect_api, "prefect_api_url", lambda: None)
    with pytest.raises(httpx.ConnectError), prefect_api_lost("the universe night", RERUN):
        raise _refused("http://127.0.0.1:1/api")
