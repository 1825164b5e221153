"""The Prefect UI of the session's real server renders in headless Chromium and shows API data."""

from __future__ import annotations

import struct
from pathlib import Path

import httpx
import pytest

from tests.ui.browser import dump_dom, screenshot, visible_text

pytestmark = pytest.mark.slow

FLOW = "pricecast-ui-check"
RUN_NAME = "UI-T 2024-03-10"
WIDTH, HEIGHT = 1400, 900


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_flow_run_page_shows_the_run_the_api_holds(
    chromium: str, prefect_server: str, tmp_path: Path
) -> None:
    with httpx.Client(base_url=prefect_server, timeout=30) as api:
        flow = api.post("/flows/", json={"name": FLOW})
        flow.raise_for_status()
        created = api.post(
            "/flow_runs/",
            json={
                "flow_id": flow.json()["id"],
                "name": RUN_NAME,
                "tags": ["pricecast"],
                "state": {"type": "COMPLETED", "name": "Completed"},
            },
        )
        created.raise_for_status()
    # The address Prefect itself prints for a run (`prefect deployment run`, logs).
    page = f"{prefect_server.removesuffix('/api')}/runs/flow-run/{created.json()['id']}"

    text = visible_text(dump_dom(page))

    # The UI shows this banner when its own calls to the API fail.
    assert "Can't connect to Server API" not in text, text[:2000]
    for expected in (f"Flow Run: {RUN_NAME}", FLOW, "pricecast", "Completed", "Artifacts"):
        assert expected in text, f"{expected!r} missing from {page}: {text[:2000]}"

    shot = screenshot(page, tmp_path / "prefect-flow-run.png", width=WIDTH, height=HEIGHT)
    assert _png_size(shot) == (WIDTH, HEIGHT)
    assert shot.stat().st_size > 20_000, "a blank page compresses to a few kilobytes"
