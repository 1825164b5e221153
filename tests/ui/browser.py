"""Headless Chromium for UI tests: a page's DOM once its scripts ran, and a screenshot of it.

Single-page apps (Prefect, MLflow) render after fetching from their API, so each call gives the
page a virtual-time budget: timers run fast-forward and the clock waits for the network.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

# Debian's package installs `chromium`; other distributions name it `chromium-browser`.
CHROMIUM_NAMES = ("chromium", "chromium-browser")
DEFAULT_WAIT_MS = 15_000
# Wall-clock bound per page: start-up plus the page's own API calls, on a slow shared machine.
DEFAULT_TIMEOUT = 120.0
IN_CI = os.environ.get("CI", "").lower() == "true"


class BrowserError(RuntimeError):
    """Chromium is missing, failed, or did not finish within its timeout."""


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def require_chromium() -> str:
    """The browser's path; under CI=true a missing browser fails the test, elsewhere skips it."""
    path = find_chromium()
    if path is None:
        message = "chromium is not installed: `apt-get install chromium` (as root, .ci/run does it)"
        if IN_CI:
            pytest.fail(message + " (CI=true: browser tests must run)")
        pytest.skip(message)
    return path


def dump_dom(
    url: str,
    *,
    wait_ms: int = DEFAULT_WAIT_MS,
    width: int = 1400,
    height: int = 900,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """The page's serialised DOM after `wait_ms` of virtual time."""
    return _run_chromium(url, ["--dump-dom"], wait_ms, width, height, timeout)


def screenshot(
    url: str,
    path: Path,
    *,
    width: int = 1400,
    height: int = 900,
    wait_ms: int = DEFAULT_WAIT_MS,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Save a PNG of the page's first screen (`width` x `height`) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    args = ["--run-all-compositor-stages-before-draw", f"--screenshot={path}"]
    _run_chromium(url, args, wait_ms, width, height, timeout)
    if not path.is_file():
        raise BrowserError(f"chromium wrote no screenshot of {url} to {path}")
    return path


def visible_text(dom: str) -> str:
    """The DOM's text as a reader sees it: no scripts or styles, whitespace collapsed."""
    parser = _TextParser()
    parser.feed(dom)
    parser.close()
    return " ".join(" ".join(parser.chunks).split())


class _TextParser(HTMLParser):
    _HIDDEN = frozenset({"script", "style", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN and self._hidden_depth:
            self._hidden_depth -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self.chunks.append(data)


def _run_chromium(
    url: str, args: list[str], wait_ms: int, width: int, height: int, timeout: float
) -> str:
    binary = find_chromium()
    if binary is None:
        raise BrowserError("chromium is not installed: `apt-get install chromium`")
    with tempfile.TemporaryDirectory(prefix="pricecast-chromium-") as profile:
        argv = [
            binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}",
            f"--window-size={width},{height}", f"--virtual-time-budget={wait_ms}", *args, url,
        ]  # fmt: skip
        # A session of its own: on timeout the renderer and GPU children go with the browser.
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise BrowserError(f"chromium did not finish {url} within {timeout:.0f} s") from exc
    if process.returncode != 0:
        # Headless chromium logs D-Bus complaints on every start; they say nothing here.
        errors = [line for line in stderr.splitlines() if "dbus" not in line]
        raise BrowserError(
            f"chromium exited {process.returncode} on {url}: " + "\n".join(errors[-20:])
        )
    return stdout
