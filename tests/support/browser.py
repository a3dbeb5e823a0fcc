"""A headless chromium for the pages' tests: Debian's (``apt-get install -y chromium``;
.ci/run installs it), driven by playwright, never a browser playwright downloads."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="chromium is not installed (apt-get install -y chromium; .ci/run does it)",
)


@contextlib.asynccontextmanager
async def browser(profile: Path) -> AsyncIterator[Any]:
    """A fresh chromium profile; the pages' console errors fail the test (a CSP violation
    or a script error shows there; 401 answers are expected)."""
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 900},
        )
        errors: list[str] = []
        context.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        context.on("weberror", lambda error: errors.append(str(error.error)))
        try:
            yield context
        finally:
            await context.close()
        assert [e for e in errors if "401" not in e] == []
