"""Fixtures shared by every test: real servers on loopback, nothing mocked."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.upstream import RecordingUpstream


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    server = RecordingUpstream(name="app")
    await server.start()
    yield server
    await server.close()
