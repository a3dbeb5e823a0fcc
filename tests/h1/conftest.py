"""Fixtures the h1 tests share: scripted servers started per test and closed after it."""

from __future__ import annotations

import pytest
from support.scripted import ScriptedServer


@pytest.fixture
async def serve():
    """``await serve(answer)`` starts a ScriptedServer; every one started closes at teardown."""
    servers: list[ScriptedServer] = []

    async def start(answer) -> ScriptedServer:
        server = await ScriptedServer(answer).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()
