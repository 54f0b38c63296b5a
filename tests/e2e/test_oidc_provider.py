"""The gateway against a certified authorization server (oidc-provider): RFC 6749 grants,
RFC 8707 resource indicators, RFC 9068 JWT access tokens, RFC 7662 introspection, RFC 7009
revocation, RFC 8414 discovery, key rotation, and two replicas sharing one Redis.

Tokens are obtained as a client obtains them (POST /token); the gateway is configured only
through discovery; what reached the upstream and what reached the provider are both counted.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.e2e.harness import call, evict, gateway_config, gateways
from tests.e2e.oidc import (
    ES256_RESOURCE,
    JWT_RESOURCE,
    OPAQUE_RESOURCE,
    OTHER_JWT_RESOURCE,
    OTHER_OPAQUE_RESOURCE,
    SHORT_JWT_RESOURCE,
    SHORT_OPAQUE_RESOURCE,
    OidcProvider,
    SigningKey,
    new_key,
)
from tests.support.upstream import RecordingUpstream

INTROSPECTION = "POST /token/introspection"
JWKS = "GET /jwks"
DISCOVERY = "GET /.well-known/openid-configuration"
BOTH_SCOPES = "orders:read orders:write"
INVALID_TOKEN = re.compile(r'^Bearer realm="gateway", error="invalid_token", error_description="')
# RFC 6750 §3: the challenge names the error and, for insufficient_scope, the scope needed.
INSUFFICIENT_SCOPE = re.compile(
    r'^Bearer realm="gateway", error="insufficient_scope", error_description="[^"]*", '
    r'scope="orders:write"$'
)


def replicas(cache_kind: str) -> int:
    return 2 if cache_kind == "redis" else 1


def jose_header(token: str) -> dict[str, Any]:
    segment = token.split(".")[0]
    header: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return header


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll until ``predicate`` holds; what the gateway does in the background (expiry,
    refresh, pub/sub) has no event a test could await."""
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.05)


# --- (1) JWT access tokens from client credentials ------------------------------------------


@pytest.mark.parametrize(
    ("resource", "alg"),
    [
        pytest.param(JWT_RESOURCE, "RS256", id="rs256"),
        pytest.param(ES256_RESOURCE, "ES256", id="es256"),
    ],
)
async def test_client_credentials_jwt_reaches_upstream_with_identity(
    tmp_path: Path,
    oidc: OidcProvider,
    upstream: RecordingUpstream,
    cache_kind: str,
    shared_cache: dict[str, Any] | None,
    resource: str,
    alg: str,
) -> None:
    token = await oidc.client_credentials(resource, BOTH_SCOPES)
    header = jose_header(token)
    assert (header["typ"], header["alg"]) == ("at+jwt", alg)  # RFC 9068 §2.1
    config = gateway_config(oidc, upstream.url, redis=shared_cache)
    async with gateways(tmp_path, config, replicas(cache_kind)) as fleet:
        for gateway in fleet:
            status, _ = await call(gateway, token)
            assert status == 200
            received = upstream.last
            assert received.header("X-Auth-Subject") == "service"  # RFC 9068 §2.2: client id
            assert received.header("X-Auth-Client-Id") == "service"
            assert received.header("X-Auth-Scopes") == BOTH_SCOPES
            assert received.header("Authorization") == f"Bearer {token}"
    assert len(upstream.received) == len(fleet)
    assert oidc.count(INTROSPECTION) == 0  # JWTs are validated locally


# --- (2) the route's scope is missing ---------------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "scope"),
    [
        pytest.param("service-limited", "orders:read", id="client-not-allowed-the-scope"),
        pytest.param("service", "orders:read", id="client-did-not-ask-for-the-scope"),
    ],
)
async def test_token_without_route_scope_is_403_insufficient_scope(
    tmp_path: Path, oidc: OidcProvider, upstream: RecordingUpstream, client_id: str, scope: str
) -> None:
    # The provider itself refuses orders:write to the limited client.
    status, body = await oidc.token_request(
        "service-limited",
        {"grant_type": "client_credentials", "resource": JWT_RESOURCE, "scope": BOTH_SCOPES},
    )
    assert (status, body["error"]) == (400, "invalid_scope")
    token = await oidc.client_credentials(JWT_RESOURCE, scope, client_id=client_id)
    async with gateways(tmp_path, gateway_config(oidc, upstream.url)) as (gateway,):
        assert (await call(gateway, token, "GET"))[0] == 200
        status, headers = await call(gateway, token, "POST")
    assert status == 403
    assert INSUFFICIENT_SCOPE.match(headers["WWW-Authenticate"]), headers["WWW-Authenticate"]
    assert [r.method for r in upstream.received] == ["GET"]


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param(OTHER_JWT_RESOURCE, id="jwt"),
        pytest.param(OTHER_OPAQUE_RESOURCE, id="opaque"),
    ],
)
async def test_token_for_another_resource_is_401(
    tmp_path: Path, oidc: OidcProvider, upstream: RecordingUpstream, resource: str
) -> None:
    token = await oidc.client_credentials(resource, BOTH_SCOPES)
    async with gateways(tmp_path, gateway_config(oidc, upstream.url)) as (gateway,):
        status, headers = await call(gateway, token)
    assert status == 401
    assert INVALID_TOKEN.match(headers["WWW-Authenticate"]), headers["WWW-Authenticate"]
    assert upstream.received == []


# --- (3) opaque tokens: one introspection call -----------------------------------------------


async def test_opaque_token_is_introspected_once(
    tmp_path: Path,
    oidc: OidcProvider,
    upstream: RecordingUpstream,
    cache_kind: str,
    shared_cache: dict[str, Any] | None,
) -> None:
    token = await oidc.client_credentials(OPAQUE_RESOURCE, BOTH_SCOPES)
    assert token.count(".") != 2  # really opaque, so auto mode must introspect it
    long_cache = {"max_ttl": "30s", "l1": {"ttl": "30s"}}
    config = gateway_config(oidc, upstream.url, redis=shared_cache, cache=long_cache)
    async with gateways(tmp_path, config, replicas(cache_kind)) as fleet:
        assert (await call(fleet[0], token))[0] == 200
        await asyncio.sleep(0.2)  # the Redis write is off the request's critical path
        for index in range(20):
            status, _ = await call(fleet[index % len(fleet)], token)
            assert status == 200
    assert oidc.count(INTROSPECTION) == 1
    received = upstream.last
    # No X-Auth-Subject here: oidc-provider's answer for a client-credentials token has no
    # "sub" (OPTIONAL in RFC 7662 §2.2) while its JWT form does; see deploy/INTEROP.md.
    assert received.header("X-Auth-Client-Id") == "service"
    assert received.header("X-Auth-Scopes") == BOTH_SCOPES


# --- (4) revocation at the provider (RFC 7009) ------------------------------------------------


async def test_revoked_token_is_accepted_until_its_cache_entry_expires(
    tmp_path: Path,
    oidc: OidcProvider,
    upstream: RecordingUpstream,
    cache_kind: str,
    shared_cache: dict[str, Any] | None,
) -> None:
    token = await oidc.client_credentials(OPAQUE_RESOURCE, "orders:read")
    config = gateway_config(oidc, upstream.url, redis=shared_cache)  # max_ttl and l1 ttl 2s
    async with gateways(tmp_path, config, replicas(cache_kind)) as fleet:
        cached_at = time.monotonic()
        assert (await call(fleet[0], token))[0] == 200
        await asyncio.sleep(0.2)
        assert await oidc.revoke(token) == 200
        assert (await oidc.introspect(token)) == {"active": False}
        for gateway in fleet:  # RFC 7662 §4: a cached answer may hide a revocation a while
            assert (await call(gateway, token))[0] == 200
        for gateway in fleet:

            async def rejected(gateway: Any = gateway) -> bool:
                return (await call(gateway, token))[0] == 401

            await wait_for(rejected, 4.0, "rejection after the cache entry expired")
            assert time.monotonic() - cached_at < 2.0 + 1.5  # max_ttl plus slack


async def test_eviction_rejects_a_revoked_token_at_once(
    tmp_path: Path,
    oidc: OidcProvider,
    upstream: RecordingUpstream,
    cache_kind: str,
    shared_cache: dict[str, Any] | None,
) -> None:
    token = await oidc.client_credentials(OPAQUE_RESOURCE, "orders:read")
    long_cache = {"max_ttl": "60s", "l1": {"ttl": "60s"}}
    config = gateway_config(oidc, upstream.url, redis=shared_cache, cache=long_cache)
    async with gateways(tmp_path, config, replicas(cache_kind)) as fleet:
        for gateway in fleet:
            assert (await call(gateway, token))[0] == 200
        assert await oidc.revoke(token) == 200
        for gateway in fleet:
            assert (await call(gateway, token))[0] == 200  # cached for up to 60s
        await evict(fleet[0], {"token": token})
        status, headers = await call(fleet[0], token)
        assert status == 401
        assert INVALID_TOKEN.match(headers["WWW-Authenticate"])
        for gateway in fleet[1:]:  # the other replica hears it through Redis pub/sub

            async def rejected(gateway: Any = gateway) -> bool:
                return (await call(gateway, token))[0] == 401

            await wait_for(rejected, 1.0, "eviction reaching the other replica")


# --- (5) signing key rotation -----------------------------------------------------------------


async def test_rotated_signing_key_costs_exactly_one_key_set_refetch(
    tmp_path: Path,
    oidc: OidcProvider,
    upstream: RecordingUpstream,
    initial_keys: list[SigningKey],
) -> None:
    old_tokens = [await oidc.client_credentials(JWT_RESOURCE, "orders:read") for _ in range(2)]
    async with gateways(tmp_path, gateway_config(oidc, upstream.url)) as (gateway,):
        assert (oidc.count(DISCOVERY), oidc.count(JWKS)) == (1, 1)
        assert (await call(gateway, old_tokens[0]))[0] == 200
        # Rotate: a new RSA key signs from now on; the old one stays published a while.
        new = new_key("RS256", "rsa-rotated")
        oidc.publish_keys([new, *initial_keys])
        new_tokens = [await oidc.client_credentials(JWT_RESOURCE, "orders:read") for _ in range(3)]
        assert {jose_header(t)["kid"] for t in new_tokens} == {"rsa-rotated"}
        for token in new_tokens:
            assert (await call(gateway, token))[0] == 200
        assert oidc.count(JWKS) == 2  # one refetch for the unknown kid, then known
        # A never-seen token signed with the old key: verified with the still-published key.
        assert jose_header(old_tokens[1])["kid"] == "rsa-initial"
        assert (await call(gateway, old_tokens[1]))[0] == 200
        assert (oidc.count(DISCOVERY), oidc.count(JWKS)) == (1, 2)
    assert len(upstream.received) == 5


async def test_removed_signing_key_is_refused_after_the_next_refresh(
    tmp_path: Path,
    oidc: OidcProvider,
    upstream: RecordingUpstream,
    initial_keys: list[SigningKey],
) -> None:
    before, after = [await oidc.client_credentials(JWT_RESOURCE, "orders:read") for _ in range(2)]
    config = gateway_config(oidc, upstream.url, refresh={"default": "1s", "min": "1s"})
    async with gateways(tmp_path, config) as (gateway,):
        assert (await call(gateway, before))[0] == 200
        new = new_key("RS256", "rsa-successor")
        # The old RSA key leaves the JWK Set; the successor signs.
        oidc.publish_keys([new, *(key for key in initial_keys if key.alg != "RS256")])
        fetched = oidc.count(JWKS)

        async def refreshed() -> bool:
            return oidc.count(JWKS) > fetched

        await wait_for(refreshed, 3.0, "the periodic key-set refresh")
        status, headers = await call(gateway, after)
        assert status == 401
        assert INVALID_TOKEN.match(headers["WWW-Authenticate"])
        successor = await oidc.client_credentials(JWT_RESOURCE, "orders:read")
        assert (await call(gateway, successor))[0] == 200
    assert len(upstream.received) == 2


# --- (6) expiry --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param(SHORT_JWT_RESOURCE, id="jwt"),
        pytest.param(SHORT_OPAQUE_RESOURCE, id="opaque"),
    ],
)
async def test_expired_token_is_401_invalid_token(
    tmp_path: Path, oidc: OidcProvider, upstream: RecordingUpstream, resource: str
) -> None:
    async with gateways(tmp_path, gateway_config(oidc, upstream.url)) as (gateway,):
        token = await oidc.client_credentials(resource, "orders:read")  # lives 1 s
        assert (await call(gateway, token))[0] == 200  # and is cached now
        await asyncio.sleep(2.2)  # past exp plus the 1 s leeway
        status, headers = await call(gateway, token)
    assert status == 401
    challenge = headers["WWW-Authenticate"]
    assert INVALID_TOKEN.match(challenge), challenge
    assert len(upstream.received) == 1


# --- (7) authorization code and refresh token ------------------------------------------------


async def authorization_code_tokens(oidc: OidcProvider) -> tuple[dict[str, Any], dict[str, Any]]:
    """A user's tokens for the "app" client, and what one refresh grant gave back."""
    first = await oidc.authorization_code(
        "alice", JWT_RESOURCE, f"openid offline_access {BOTH_SCOPES}"
    )
    assert "refresh_token" in first, first
    refreshed = await oidc.refresh(first["refresh_token"], JWT_RESOURCE)
    assert refreshed["access_token"] != first["access_token"]
    return first, refreshed


async def test_access_tokens_from_code_and_refresh_grants_are_accepted(
    tmp_path: Path, oidc: OidcProvider, upstream: RecordingUpstream
) -> None:
    first, refreshed = await authorization_code_tokens(oidc)
    async with gateways(tmp_path, gateway_config(oidc, upstream.url)) as (gateway,):
        for response in (first, refreshed):
            assert (await call(gateway, response["access_token"]))[0] == 200
            received = upstream.last
            assert received.header("X-Auth-Subject") == "alice"
            assert received.header("X-Auth-Client-Id") == "app"
            assert received.header("X-Auth-Scopes") == BOTH_SCOPES
    assert len(upstream.received) == 2


async def audience_less_access_token(oidc: OidcProvider) -> str:
    """Client credentials without a resource indicator: an opaque token for no audience."""
    status, body = await oidc.token_request(
        "service", {"grant_type": "client_credentials", "scope": "orders:read"}
    )
    assert status == 200, body
    token: str = body["access_token"]
    return token


async def refresh_token(oidc: OidcProvider) -> str:
    _, refreshed = await authorization_code_tokens(oidc)
    token: str = refreshed["refresh_token"]
    return token


@pytest.mark.parametrize(
    "make_token",
    [
        # RFC 6749 §1.5: refresh tokens are "never sent to resource servers"; oidc-provider
        # answers active:true for them with neither aud nor token_type.
        pytest.param(refresh_token, id="refresh-token"),
        pytest.param(audience_less_access_token, id="access-token-without-resource"),
    ],
)
async def test_introspected_token_not_for_our_audience_is_refused(
    tmp_path: Path,
    oidc: OidcProvider,
    upstream: RecordingUpstream,
    make_token: Callable[[OidcProvider], Awaitable[str]],
) -> None:
    token = await make_token(oidc)
    answer = await oidc.introspect(token)
    assert answer["active"] is True and "aud" not in answer, answer
    async with gateways(tmp_path, gateway_config(oidc, upstream.url)) as (gateway,):
        status, headers = await call(gateway, token)
    assert status == 401, "a token for no audience was accepted"
    assert INVALID_TOKEN.match(headers["WWW-Authenticate"])
    assert upstream.received == []


# --- sender-constrained tokens (RFC 9449) ---------------------------------------------------


@pytest.mark.parametrize(
    "resource", [pytest.param(JWT_RESOURCE, id="jwt"), pytest.param(OPAQUE_RESOURCE, id="opaque")]
)
async def test_dpop_bound_token_is_not_accepted_as_a_bearer_token(
    tmp_path: Path, oidc: OidcProvider, upstream: RecordingUpstream, resource: str
) -> None:
    token = await oidc.client_credentials(
        resource, "orders:read", dpop_key=ec.generate_private_key(ec.SECP256R1())
    )
    async with gateways(tmp_path, gateway_config(oidc, upstream.url)) as (gateway,):
        status, headers = await call(gateway, token)
    assert status == 401, "a DPoP-bound token was used without its proof of possession"
    assert INVALID_TOKEN.match(headers["WWW-Authenticate"])
    assert upstream.received == []


# --- interoperability limits ------------------------------------------------------------------


async def test_introspect_jwts_fails_closed_where_the_provider_cannot_introspect_jwts(
    tmp_path: Path, oidc: OidcProvider, upstream: RecordingUpstream
) -> None:
    """oidc-provider answers 400 unsupported_token_type for JWT access tokens at its
    introspection endpoint, so ``introspect_jwts`` cannot work with it. That answer is about
    the token, not an outage (RFC 6749 §5.2): the client gets 401 invalid_token (never a 503
    that tells it to retry and pages operators), the token never passes unchecked, and the
    answer is cached like any inactive one - deploy/INTEROP.md says so."""
    token = await oidc.client_credentials(JWT_RESOURCE, "orders:read")
    config = gateway_config(oidc, upstream.url, introspect_jwts=True)
    async with gateways(tmp_path, config) as (gateway,):
        status, headers = await call(gateway, token)
        again, _ = await call(gateway, token)
    assert status == again == 401
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert oidc.count(INTROSPECTION) == 1
    assert upstream.received == []
