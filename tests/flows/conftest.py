"""Fixtures for flow tests: one Prefect test harness per session, and price loading helpers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Flows run against a temporary Prefect server (SQLite) started once per test session.

    The startup bound is generous: the test machine is small and shared.
    """
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(autouse=True)
def _fresh_prefect_log_handlers() -> Iterator[None]:
    """Rebind Prefect's console handlers to this test's streams.

    Prefect binds its console handler to the sys.stderr of the first flow run; pytest's capture
    closes that stream after the test, and a later test's log record then fails inside the
    handler (RecursionError through the logging error path).
    """
    import contextlib
    import logging
    import sys

    from prefect.logging.handlers import PrefectConsoleHandler

    for name in ["", *logging.root.manager.loggerDict]:
        found = logging.getLogger(name) if name else logging.root
        for handler in getattr(found, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                # Not setStream: it flushes the old stream, which capture may have closed. The
                # handler writes through its rich console, which keeps a file of its own.
                with handler.lock or contextlib.nullcontext():
                    handler.stream = sys.stderr
                    handler.console.file = sys.stderr
    yield
