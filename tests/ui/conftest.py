"""Browser fixtures for the UI tests."""

from __future__ import annotations

import pytest

from tests.ui.browser import require_chromium


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of headless Chromium; skips without it, or fails the test under CI=true."""
    return require_chromium()
