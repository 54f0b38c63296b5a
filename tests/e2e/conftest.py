"""Fixtures for the end-to-end suite: a real oidc-provider, real gateways, a real Redis.

Without Node.js the suite is skipped with the reason, except under CI (``CI`` set), where a
missing provider fails loudly: CI must never pass by skipping the interoperability tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.oidc import (
    OidcProvider,
    ProviderUnavailable,
    SigningKey,
    ensure_node_modules,
    new_key,
)
from tests.support.certificates import TestCA
from tests.support.redis import redis_url_or_start


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"e2e: {reason}; CI must run the e2e suite, not skip it", pytrace=False)
    pytest.skip(f"e2e: {reason}")


@pytest.fixture(scope="session")
def initial_keys() -> list[SigningKey]:
    return [new_key("RS256", "rsa-initial"), new_key("ES256", "ec-initial")]


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """The CA of the provider's TLS listener and of the clients' certificates."""
    return TestCA(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def oidc_session(initial_keys: list[SigningKey], test_ca: TestCA) -> Iterator[OidcProvider]:
    """One provider process for the whole suite (about half a second to start), listening
    over plain http and, for RFC 8705 clients, over TLS with client certificates."""
    server = test_ca.issue("oidc-provider", server=True)
    provider = OidcProvider(keys=list(initial_keys), tls=(server.cert_file, server.key_file))
    try:
        ensure_node_modules()
        provider.start()
    except ProviderUnavailable as exc:
        reason = str(exc)
    else:
        reason = None
    if reason is not None:
        unavailable(reason)  # outside the except block: no chained traceback in the report
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture
def oidc(oidc_session: OidcProvider, initial_keys: list[SigningKey]) -> Iterator[OidcProvider]:
    """The shared provider with fresh counters; keys a test rotated are put back after it."""
    oidc_session.reset_counters()
    yield oidc_session
    if oidc_session.keys != initial_keys:
        oidc_session.publish_keys(initial_keys)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_url_or_start() as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
def cache_kind(request: pytest.FixtureRequest) -> str:
    """Flows run against one gateway with its in-process cache, and against two replicas
    sharing one Redis (the second answers from what the first cached)."""
    return str(request.param)


@pytest.fixture
def shared_cache(cache_kind: str, request: pytest.FixtureRequest) -> dict[str, Any] | None:
    if cache_kind == "memory":
        return None
    url = request.getfixturevalue("redis_url")
    return {"url": url, "timeout": "500ms", "key_prefix": f"e2e:{uuid.uuid4().hex}:"}
