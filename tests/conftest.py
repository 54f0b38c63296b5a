"""Fixtures shared by every test: real servers on loopback, nothing mocked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream


def pytest_asyncio_loop_factories(config, item):
    """Tests run on uvloop when it is installed, as the gateway does in production."""
    try:
        import uvloop
    except ImportError:
        return {"asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    server = RecordingUpstream(name="app")
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def issuer() -> AsyncIterator[TestIssuer]:
    """A real authorization server on loopback: discovery, JWKS, token minting."""
    server = TestIssuer()
    await server.start()
    yield server
    await server.close()
