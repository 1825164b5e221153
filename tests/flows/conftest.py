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
