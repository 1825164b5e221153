"""HTTP source against a local server speaking Binance's klines payload, and its failures."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from flows.ingest.load import ingest
from flows.ingest.sources.http_source import PAGE_LIMIT, HttpSource, binance_symbol
from pricecast.errors import SourceError
from storage.db import make_engine, session_scope
from storage.prices import read_prices

DAY_MS = 86_400_000
FIRST_DAY = dt.date(2017, 8, 17)
NOW = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)  # mid-day: 2024-06-01's candle is open


def _ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


def _candle(day: dt.date) -> list:
    """One daily kline exactly as Binance sends it (prices and volumes as strings)."""
    i = (day - FIRST_DAY).days
    close = 4000 + i
    return [
        _ms(day),
        f"{close - 10:.8f}",
        f"{close + 50:.8f}",
        f"{close - 60:.8f}",
        f"{close:.8f}",
        f"{100 + i:.8f}",
        _ms(day) + DAY_MS - 1,
        f"{(100 + i) * close:.8f}",
        1000 + i,
        "50.00000000",
        "200000.00000000",
        "0",
    ]


class KlinesServer:
    """Serves /api/v3/klines from FIRST_DAY to NOW's day; `failures` are played first, in order."""

    def __init__(self) -> None:
        self.failures: list[tuple] = []
        self.requests: list[dict[str, list[str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                query = parse_qs(urlparse(self.path).query)
                server.requests.append(query)
                if server.failures:
                    server.fail(self, *server.failures.pop(0))
                    return
                if query.get("symbol") != ["BTCUSDT"]:
                    self.reply(400, json.dumps({"code": -1121, "msg": "Invalid symbol."}))
                    return
                start, end = int(query["startTime"][0]), int(query["endTime"][0])
                limit = min(int(query.get("limit", ["500"])[0]), PAGE_LIMIT)
                candles = []
                day = max(FIRST_DAY, dt.datetime.fromtimestamp(start / 1000, dt.UTC).date())
                while _ms(day) <= min(end, _ms(NOW.date())) and len(candles) < limit:
                    if _ms(day) >= start:
                        candles.append(_candle(day))
                    day += dt.timedelta(days=1)
                self.reply(200, json.dumps(candles))

            def reply(self, status: int, body: str, headers: dict | None = None) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def fail(handler, kind: str, *args) -> None:
        if kind == "status":
            status, headers = args[0], (args[1] if len(args) > 1 else {})
            handler.reply(status, json.dumps({"code": -1, "msg": "failure"}), headers)
        elif kind == "malformed":
            handler.reply(200, '[[1502928000000, "4261.48", ')
        elif kind == "truncated":
            body = json.dumps([_candle(FIRST_DAY)]).encode()
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(body) + 100))
            handler.end_headers()
            handler.wfile.write(body[:20])
            handler.wfile.flush()
            handler.close_connection = True
        elif kind == "slow":
            time.sleep(args[0])
            handler.reply(200, "[]")


@pytest.fixture
def server() -> Iterator[KlinesServer]:
    srv = KlinesServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def _source(server: KlinesServer, sleeps: list[float], **kwargs) -> HttpSource:
    options = {"timeout": 2.0, "retries": 2, "backoff": 0.01} | kwargs
    return HttpSource(base_url=server.url, sleep=sleeps.append, now=lambda: NOW, **options)


def _read(source: HttpSource, start: dt.date | None, end: dt.date) -> list:
    frames = list(source.read(ticker="BTC-USD", start=start, end=end))
    return [row for frame in frames for row in frame.itertuples(index=False)]


def test_pages_through_long_ranges_and_skips_the_open_candle(server, sleeps) -> None:
    source = _source(server, sleeps)
    rows = _read(source, None, NOW.date())
    expected_days = (NOW.date() - FIRST_DAY).days  # today's candle is still open
    assert len(rows) == expected_days
    assert len(server.requests) == -(-(expected_days + 1) // PAGE_LIMIT)
    starts = [int(q["startTime"][0]) for q in server.requests]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert rows[0].date.date() == FIRST_DAY and rows[-1].date.date() == NOW.date() - dt.timedelta(1)
    assert (rows[0].close, rows[0].volume) == ("4000.00000000", "400000.00000000")
    assert source.notes() == ["skipped the day in progress (its candle has not closed yet)"]
    assert sleeps == []


def test_a_short_range_is_one_request_with_the_range(server, sleeps) -> None:
    rows = _read(_source(server, sleeps), dt.date(2020, 1, 1), dt.date(2020, 1, 10))
    assert [r.date.date().day for r in rows] == list(range(1, 11))
    (query,) = server.requests
    assert query["symbol"] == ["BTCUSDT"] and query["interval"] == ["1d"]
    assert int(query["startTime"][0]) == _ms(dt.date(2020, 1, 1))
    assert int(query["endTime"][0]) == _ms(dt.date(2020, 1, 11)) - 1


def test_5xx_and_truncated_bodies_are_retried_with_exponential_backoff(server, sleeps) -> None:
    server.failures = [("status", 503), ("truncated",)]
    rows = _read(_source(server, sleeps), dt.date(2020, 1, 1), dt.date(2020, 1, 3))
    assert len(rows) == 3
    assert sleeps == [0.01, 0.02]


def test_429_waits_as_long_as_retry_after_says(server, sleeps) -> None:
    server.failures = [("status", 429, {"Retry-After": "3"})]
    rows = _read(_source(server, sleeps), dt.date(2020, 1, 1), dt.date(2020, 1, 2))
    assert len(rows) == 2 and sleeps == [3.0]


def test_a_very_long_retry_after_fails_at_once(server, sleeps) -> None:
    server.failures = [("status", 429, {"Retry-After": "3600"})]
    with pytest.raises(SourceError, match="rate-limited for 3600 s"):
        _read(_source(server, sleeps), dt.date(2020, 1, 1), dt.date(2020, 1, 2))


@pytest.mark.parametrize(
    "failure, message",
    [
        (("status", 500), "HTTP 500 Internal Server Error, 3 attempt"),
        (("truncated",), "truncated or broken response"),
    ],
)
def test_persistent_failures_name_the_url(server, sleeps, failure, message) -> None:
    server.failures = [failure] * 3
    with pytest.raises(SourceError, match=message) as info:
        _read(_source(server, sleeps), dt.date(2020, 1, 1), dt.date(2020, 1, 2))
    assert f"GET {server.url}/api/v3/klines?symbol=BTCUSDT" in str(info.value)
    assert sleeps == [0.01, 0.02]


def test_malformed_json_is_a_source_error_naming_the_url(server, sleeps) -> None:
    server.failures = [("malformed",)]
    with pytest.raises(SourceError, match="malformed JSON") as info:
        _read(_source(server, sleeps), dt.date(2020, 1, 1), dt.date(2020, 1, 2))
    assert server.url in str(info.value)
    assert sleeps == []


def test_timeouts_are_retried_then_reported(server, sleeps) -> None:
    server.failures = [("slow", 0.6), ("slow", 0.6)]
    with pytest.raises(SourceError, match="timed out after 0.2 s, 2 attempt"):
        _read(_source(server, sleeps, timeout=0.2, retries=1), dt.date(2020, 1, 1), NOW.date())


def test_an_unknown_symbol_is_not_retried(server, sleeps) -> None:
    source = _source(server, sleeps, symbol_map={"BTC-USD": "NOPE"})
    with pytest.raises(SourceError, match="HTTP 400 Invalid symbol.*symbol NOPE"):
        _read(source, dt.date(2020, 1, 1), dt.date(2020, 1, 2))
    assert len(server.requests) == 1


def test_a_server_that_is_down_is_a_source_error(sleeps) -> None:
    source = HttpSource(base_url="http://127.0.0.1:9", retries=1, backoff=0, sleep=sleeps.append)
    with pytest.raises(SourceError, match="connection failed"):
        list(source.read(ticker="BTC-USD", start=dt.date(2020, 1, 1), end=dt.date(2020, 1, 2)))


def test_ticker_to_symbol() -> None:
    assert binance_symbol("BTC-USD") == "BTCUSDT"
    assert binance_symbol("eth-eur") == "ETHEUR"
    assert binance_symbol("BNBBTC") == "BNBBTC"
    assert binance_symbol("BTC-USD", {"BTC-USD": "BTCUSDC"}) == "BTCUSDC"
    with pytest.raises(SourceError, match="must start with http"):
        HttpSource(base_url="api.binance.com")


def test_ingest_from_the_api_into_the_database(server, database_url) -> None:
    source = _source(server, [])
    summary = ingest(
        database_url=database_url,
        ticker="BTC-USD",
        source=source,
        start=dt.date(2023, 12, 1),
        today=NOW.date(),
    )
    assert summary.inserted == (NOW.date() - dt.date(2023, 12, 1)).days
    assert summary.missing_days == [] and summary.rejected == 0
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        first = read_prices(session, ticker="BTC-USD")[0]
    engine.dispose()
    i = (dt.date(2023, 12, 1) - FIRST_DAY).days
    assert first.close == 4000 + i and first.market_cap is None
    assert first.volume == (100 + i) * (4000 + i)
