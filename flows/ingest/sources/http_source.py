"""Daily candles from a public, keyless HTTP API (Binance `GET /api/v3/klines`, interval 1d).

Timeouts, retries with exponential backoff on 5xx, timeouts and dropped connections, HTTP 429
honouring Retry-After, and pagination over long ranges (1000 candles per request).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
import pandas as pd

from flows.ingest.sources import DATE, ERROR, FIELDS, LINE, RAW
from pricecast.errors import SourceError

if TYPE_CHECKING:
    from pricecast.settings import Settings

KLINES_PATH = "/api/v3/klines"
PAGE_LIMIT = 1000
DAY_MS = 86_400_000
# Binance's first daily candle (BTCUSDT) is 2017-08-17; asking earlier is harmless.
DEFAULT_START = dt.date(2017, 8, 1)
MAX_BACKOFF_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 120.0
# Kline fields: [open time, open, high, low, close, base volume, close time, quote volume, ...]
_OPEN_TIME, _OPEN, _HIGH, _LOW, _CLOSE, _CLOSE_TIME, _QUOTE_VOLUME = 0, 1, 2, 3, 4, 6, 7


class _Transient(Exception):
    """A failure worth retrying; `delay` overrides the backoff (Retry-After)."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


def binance_symbol(ticker: str, symbol_map: Mapping[str, str] | None = None) -> str:
    """BTC-USD -> BTCUSDT (USD is quoted in Tether on Binance), ETH-EUR -> ETHEUR, BNBBTC as is.

    `symbol_map` (setting PRICECAST_HTTP_SYMBOLS) overrides the rule per ticker.
    """
    if symbol_map and ticker in symbol_map:
        return symbol_map[ticker]
    base, sep, quote = ticker.upper().partition("-")
    if not sep:
        return base
    return base + ("USDT" if quote == "USD" else quote)


def _to_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


class HttpSource:
    """`http[:BASE_URL]`: daily candles from a Binance-compatible klines API."""

    def __init__(
        self,
        *,
        base_url: str,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 1.0,
        symbol_map: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise SourceError(
                f"HTTP source base URL {base_url!r} must start with http:// or https:// "
                "(PRICECAST_HTTP_BASE_URL or --source http:URL)"
            )
        self.base_url = base_url.rstrip("/")
        self.label = f"http:{self.base_url}"[:500]
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.symbol_map = dict(symbol_map or {})
        self._sleep = sleep
        self._now = now
        self._symbol = ""
        self._notes: list[str] = []

    @classmethod
    def from_settings(cls, settings: Settings, *, base_url: str | None = None) -> HttpSource:
        return cls(
            base_url=base_url or settings.http_base_url,
            timeout=settings.http_timeout_seconds,
            retries=settings.http_retries,
            backoff=settings.http_backoff_seconds,
            symbol_map=settings.http_symbols,
        )

    def locate(self, line: int | None, day: str) -> str:
        return f"{self.base_url}{KLINES_PATH} {self._symbol} candle {day}"

    def notes(self) -> list[str]:
        return list(self._notes)

    def url(self, symbol: str, start_ms: int, end_ms: int) -> str:
        query = urlencode(
            {
                "symbol": symbol,
                "interval": "1d",
                "startTime": start_ms,
                "endTime": end_ms,
                "limit": PAGE_LIMIT,
            }
        )
        return f"{self.base_url}{KLINES_PATH}?{query}"

    def read(self, *, ticker: str, start: dt.date | None, end: dt.date) -> Iterator[pd.DataFrame]:
        self._notes = []
        self._symbol = binance_symbol(ticker, self.symbol_map)
        cursor = _to_ms(start or DEFAULT_START)
        end_ms = _to_ms(end + dt.timedelta(days=1)) - 1
        with httpx.Client(timeout=self.timeout, follow_redirects=True) as client:
            while cursor <= end_ms:
                url = self.url(self._symbol, cursor, end_ms)
                candles = _check_shape(self._get_json(client, url), url)
                if not candles:
                    break
                frame = self._frame(candles)
                if len(frame):
                    yield frame
                last_open = candles[-1][_OPEN_TIME]
                if len(candles) < PAGE_LIMIT:
                    break
                if last_open < cursor:
                    raise SourceError(f"GET {url}: the API went backwards in time; cannot page")
                cursor = last_open + 1

    def _frame(self, candles: list[list[Any]]) -> pd.DataFrame:
        now_ms = self._now().timestamp() * 1000
        done = [c for c in candles if c[_CLOSE_TIME] < now_ms]
        if len(done) < len(candles):
            self._notes.append("skipped the day in progress (its candle has not closed yet)")
        return pd.DataFrame(
            {
                LINE: pd.Series([None] * len(done), dtype=object),
                RAW: [json.dumps(c) for c in done],
                ERROR: pd.Series([None] * len(done), dtype=object),
                DATE: pd.to_datetime([c[_OPEN_TIME] for c in done], unit="ms"),
                "open": [c[_OPEN] for c in done],
                "high": [c[_HIGH] for c in done],
                "low": [c[_LOW] for c in done],
                "close": [c[_CLOSE] for c in done],
                # The quote-currency volume (USDT for BTC-USD), like the dollar volumes of files.
                "volume": [c[_QUOTE_VOLUME] for c in done],
                "market_cap": pd.Series([None] * len(done), dtype=object),
            },
            columns=[LINE, RAW, ERROR, *FIELDS],
        )

    def _get_json(self, client: httpx.Client, url: str) -> Any:
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(client, url)
            except _Transient as failure:
                if attempt == attempts - 1:
                    raise SourceError(
                        f"GET {url}: {failure.reason}, {attempts} attempt(s); check "
                        "PRICECAST_HTTP_BASE_URL and the network, or retry later"
                    ) from None
                delay = failure.delay
                if delay is None:
                    delay = min(self.backoff * 2**attempt, MAX_BACKOFF_SECONDS)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, client: httpx.Client, url: str) -> Any:
        try:
            response = client.get(url)
        except httpx.TimeoutException:
            raise _Transient(f"timed out after {self.timeout:g} s") from None
        except httpx.RemoteProtocolError as exc:
            raise _Transient(f"truncated or broken response ({exc})") from None
        except httpx.TransportError as exc:
            raise _Transient(f"connection failed ({exc})") from None
        status = response.status_code
        if status in (429, 418):  # 418: Binance's "banned for hammering after a 429"
            wait = _retry_after(response.headers.get("Retry-After"))
            if wait is not None and wait > MAX_RETRY_AFTER_SECONDS:
                raise SourceError(
                    f"GET {url}: HTTP {status} rate-limited for {wait:.0f} s; retry later"
                )
            raise _Transient(f"HTTP {status} rate-limited", delay=wait)
        if status >= 500:
            raise _Transient(f"HTTP {status} {response.reason_phrase}")
        if status >= 400:
            raise SourceError(
                f"GET {url}: HTTP {status} {_api_message(response)}; check the ticker "
                f"(symbol {self._symbol}, PRICECAST_HTTP_SYMBOLS) and the base URL"
            )
        try:
            return json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SourceError(
                f"GET {url}: malformed JSON in the response ({exc}); is the base URL a "
                "Binance-compatible klines API?"
            ) from None


def _api_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "msg" in body:
            return str(body["msg"])
    except ValueError:
        pass
    return response.reason_phrase or response.text[:200]


def _check_shape(payload: Any, url: str) -> list[list[Any]]:
    """Klines are a list of lists: [open time (int ms), "open", "high", "low", "close", ...]."""
    if not isinstance(payload, list):
        raise SourceError(
            f"GET {url}: expected a JSON list of candles, got {type(payload).__name__}"
        )
    for index, candle in enumerate(payload):
        if (
            not isinstance(candle, list)
            or len(candle) <= _QUOTE_VOLUME
            or not isinstance(candle[_OPEN_TIME], int)
            or not isinstance(candle[_CLOSE_TIME], int)
        ):
            raise SourceError(
                f"GET {url}: candle {index} is not [open time, open, high, low, close, volume, "
                f"close time, quote volume, ...]: {json.dumps(candle)[:120]}"
            )
    return payload
