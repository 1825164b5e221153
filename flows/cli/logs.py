"""Where the CLI puts what a user does not need on screen: the traceback of an unexpected error
and Prefect's own error logs of a failed flow run go to a log file under PRICECAST_HOME
(`work/logs/cli-*.log`); the screen gets one line naming that file. `--debug` shows them all.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import traceback
from pathlib import Path

#: Set by `main` from the global `--debug` flag.
DEBUG = False
_path: Path | None = None


def log_path() -> Path:
    """This command's log file (created on first use), under PRICECAST_HOME/work/logs."""
    global _path
    if _path is None:
        from pricecast.settings import get_settings

        try:
            home = get_settings().resolved_home
        except Exception:  # a broken setting must not hide the error being logged
            home = Path(os.environ.get("PRICECAST_HOME", ".pricecast"))
        folder = home / "work" / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        _path = folder / f"cli-{stamp}-{os.getpid()}.log"
    return _path


def _append(text: str) -> None:
    from pricecast.urls import mask_secrets

    with open(log_path(), "a", encoding="utf-8") as handle:
        handle.write(mask_secrets(text).rstrip("\n") + "\n")


def write_traceback(exc: BaseException) -> Path:
    """The full traceback of `exc` appended to the log file; returns its path."""
    _append("".join(traceback.format_exception(exc)))
    return log_path()


class _PrefectErrorsToFile(logging.Filter):
    """On a console handler: Prefect's error records (a failed task or flow run, with its
    traceback) go to the log file instead; the CLI prints the one-line error itself."""

    _formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.name.startswith("prefect"):
            return True
        try:
            _append(self._formatter.format(record))
        except OSError:
            return True  # no log file: better on screen than lost
        return False


def quiet_prefect_console() -> None:
    """Call after Prefect is imported (its logging configured), before running a flow: Prefect's
    console handlers stop printing its error tracebacks (they go to the log file; the Prefect
    API still gets them). No-op with --debug."""
    if DEBUG:
        return
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import APILogHandler

    ensure_logging_setup()  # idempotent: the handlers exist before the first flow needs them
    for name in ("", "prefect"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, APILogHandler):
                continue
            if not any(isinstance(f, _PrefectErrorsToFile) for f in handler.filters):
                handler.addFilter(_PrefectErrorsToFile())
