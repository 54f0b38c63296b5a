"""Issue 13, items 1, 6, 9 and 10 against the real gateway: what the client got, and what the
upstream received (nothing, when the answer is a refusal).

1. routes are matched on the path as the upstream reads it (``paths``: case, trailing "/",
   trailing "." and spaces), so ``/ADMIN/x`` on a case-insensitive upstream is judged by the
   protected route; what is forwarded is still the path as sent;
6. ``strip_prefix`` strips a segment that carries ``;parameters``;
9. a catastrophic regex cannot stall the event loop (RE2);
10. an encoded ``;`` (``..%3B``) is refused like ``..;``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.support.gateway import gateway_with_issuer, raw_exchange, running_gateway, status_of
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOOSE = {
    "case": "insensitive",
    "trailing_slash": "ignored",
    "trailing_dot": "ignored",
    "trailing_space": "ignored",
}


@dataclass
class World:
    port: int
    upstream: RecordingUpstream
    issuer: TestIssuer
    tmp: Path


def routes_config(upstream: RecordingUpstream, issuer: TestIssuer) -> dict[str, Any]:
    admin = {"auth": "required", "require": {"scopes": {"all": ["admin"]}}}
    read = {"auth": "required", "require": {"scopes": {"all": ["read"]}}}
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {
            # Two names for one service: one read the way IIS does, one strictly.
            "iis": {"url": upstream.url, "paths": LOOSE},
            "strict": {"url": upstream.url},
        },
        "issuers": [{"issuer": issuer.url, "keys": {"jwks_uri": issuer.jwks_url},
                     "audiences": ["api://default"]}],
        "defaults": {"auth": "anonymous"},
        "routes": [
            {"match": {"path": "/admin/**"}, "upstream": "iis", **admin},
            {"match": {"path": "/secret"}, "upstream": "iis", **admin},
            {"match": {"path": {"regex": "/api/v1/private(/.*)?"}}, "upstream": "iis", **admin},
            {"match": {"path": "/strict/admin/**"}, "upstream": "strict", **admin},
            {"match": {"path": "/api/admin/**"}, "upstream": "strict", **admin},
            {"match": {"path": "/api/read/**"}, "upstream": "strict", **read},
            {"match": {"path": {"regex": "/(a+)+b"}}, "upstream": "strict", **admin},
            {"match": {"path": {"prefix": "/"}}, "upstream": "iis"},
        ],
    }  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("semantics")
    async with gateway_with_issuer(tmp, routes_config) as (gw, upstream, issuer):
        yield World(gw.proxy_port, upstream, issuer, tmp)


@pytest.fixture(autouse=True)
def fresh_log(world: World) -> None:
    world.upstream.received.clear()


async def send(port: int, target: bytes, token: str | None = None, timeout: float = 3.0) -> int:
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    request = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"Connection: close\r\n\r\n"
    response = await raw_exchange(port, request, timeout=timeout)
    assert response, "no answer"
    return status_of(response)


# --- 1. the path as the upstream reads it --------------------------------------------------

AS_THE_UPSTREAM_READS_IT = [
    pytest.param(b"/ADMIN/x", id="case"),
    pytest.param(b"/Admin", id="case-globstar-root"),
    pytest.param(b"/secret/", id="trailing-slash"),
    pytest.param(b"/secret.", id="trailing-dot"),
    pytest.param(b"/secret%20", id="trailing-space"),
    pytest.param(b"/admin./x", id="trailing-dot-on-a-directory"),
    pytest.param(b"/SeCrEt.%20/", id="everything-at-once"),
    pytest.param(b"/api/v1/Private/x", id="case-regex-route"),
    pytest.param(b"/%41dmin/x", id="case-via-an-encoded-letter"),
]


@pytest.mark.parametrize("target", AS_THE_UPSTREAM_READS_IT)
async def test_protected_spellings_are_judged_by_the_protected_route(
    world: World, target: bytes
) -> None:
    assert await send(world.port, target) == 401
    assert world.upstream.received == [], "a protected path reached the upstream anonymously"


@pytest.mark.parametrize("target", AS_THE_UPSTREAM_READS_IT)
async def test_allowed_requests_are_forwarded_as_sent(world: World, target: bytes) -> None:
    token = world.issuer.mint(scope="admin")
    assert await send(world.port, target, token) == 200
    sent = target.decode().replace("%41", "A")  # the normaliser decodes unreserved escapes
    assert world.upstream.last.raw_path == sent, "the path was rewritten on the way"


@pytest.mark.parametrize(
    ("target", "upstream_path"),
    [
        pytest.param(b"/STRICT/admin/x", "/STRICT/admin/x", id="case"),
        pytest.param(b"/strict/admin./x", "/strict/admin./x", id="trailing-dot"),
    ],
)
async def test_a_strict_upstream_keeps_the_strict_reading(
    world: World, target: bytes, upstream_path: str
) -> None:
    """The default is RFC 3986's reading; these go to the catch-all, as before."""
    assert await send(world.port, target) == 200
    assert world.upstream.last.raw_path == upstream_path


async def test_characters_an_upstream_may_fold_into_ascii_are_refused(world: World) -> None:
    # U+017F LATIN SMALL LETTER LONG S: Java's equalsIgnoreCase reads it as "s".
    assert await send(world.port, b"/%C5%BFecret") == 400
    assert world.upstream.received == []


async def test_defaults_paths_apply_to_every_upstream(world: World) -> None:
    upstream = world.upstream
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": [{"issuer": world.issuer.url, "keys": {"jwks_uri": world.issuer.jwks_url},
                     "audiences": ["api://default"]}],
        "defaults": {"auth": "anonymous", "paths": {"case": "insensitive"}},
        "routes": [
            {"match": {"path": "/admin/**"}, "upstream": "app", "auth": "required"},
            {"match": {"path": {"prefix": "/"}}, "upstream": "app"},
        ],
    }  # fmt: skip
    directory = world.tmp / "defaults"
    directory.mkdir(exist_ok=True)
    async with running_gateway(directory, config) as gw:
        assert await send(gw.proxy_port, b"/ADMIN/x") == 401
    assert upstream.received == []


# --- 6. strip_prefix and path parameters ---------------------------------------------------


async def test_strip_prefix_strips_a_segment_with_parameters(world: World) -> None:
    upstream = world.upstream
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "limits": {"path_parameters": True},
        "upstreams": {"app": {"url": upstream.url}},
        "defaults": {"auth": "anonymous"},
        "routes": [
            {"match": {"path": {"prefix": "/public"}}, "upstream": "app",
             "rewrite": {"strip_prefix": "/public", "add_prefix": "/base"}},
        ],
    }  # fmt: skip
    directory = world.tmp / "strip"
    directory.mkdir(exist_ok=True)
    async with running_gateway(directory, config) as gw:
        statuses = [
            await send(gw.proxy_port, b"/public;x/a"),
            await send(gw.proxy_port, b"/public;jsessionid=1/a;v=2/b"),
            await send(gw.proxy_port, b"/public/a"),
        ]
    assert statuses == [200, 200, 200]
    assert [r.raw_path for r in upstream.received] == ["/base/a", "/base/a;v=2/b", "/base/a"]


# --- 9. catastrophic regexes ---------------------------------------------------------------


async def test_a_catastrophic_regex_answers_in_linear_time(world: World) -> None:
    """``/(a+)+b`` took 1.9 s for 26 characters on Python's re; each extra "a" doubles it."""
    started = time.perf_counter()
    status = await send(world.port, b"/" + b"a" * 30, timeout=5.0)
    elapsed = time.perf_counter() - started
    assert status == 200  # no "b": not the protected regex route, so the catch-all
    assert elapsed < 0.5, f"the regex took {elapsed:.2f}s"
    assert world.upstream.last.raw_path == "/" + "a" * 30
    assert await send(world.port, b"/" + b"a" * 30 + b"b") == 401  # and it still matches


async def test_the_event_loop_keeps_serving_during_attack_paths(world: World) -> None:
    attacks = [send(world.port, b"/" + b"a" * 4000, timeout=5.0) for _ in range(20)]
    started = time.perf_counter()
    statuses = await asyncio.gather(*attacks, send(world.port, b"/ok"))
    assert time.perf_counter() - started < 2.0
    assert set(statuses) == {200}


# --- 10. an encoded ";" --------------------------------------------------------------------

ENCODED_SEMICOLONS = [
    pytest.param(b"/api/read/..%3B/admin/x", id="issue-13-reproduction"),
    pytest.param(b"/api/read/..%3b/admin/x", id="lowercase-hex"),
    pytest.param(b"/api/read/%2e%2e%3b/admin/x", id="all-encoded"),
    pytest.param(b"/api/read/%2E.%3B/admin/x", id="mixed"),
    pytest.param(b"/api/read/..%253B/admin/x", id="double-encoded"),
    pytest.param(b"/api/read/..%25%33%42/admin/x", id="double-encoded-via-unreserved-escapes"),
    pytest.param(b"/api/read/..%C0%BB/admin/x", id="overlong-utf8"),
    pytest.param(b"/api/read/..%EF%BC%9B/admin/x", id="fullwidth-semicolon"),
    pytest.param(b"/api/read/..;/admin/x", id="raw-for-comparison"),
    pytest.param(b"/api/read%3Bx/../admin/x", id="inside-a-name"),
]


@pytest.mark.parametrize("target", ENCODED_SEMICOLONS)
async def test_every_encoding_of_a_semicolon_is_refused(world: World, target: bytes) -> None:
    token = world.issuer.mint(scope="read")  # may read, may not administer
    assert await send(world.port, target, token) == 400
    assert world.upstream.received == [], "an encoded ';' reached a servlet-style upstream"


async def test_the_read_token_still_reads(world: World) -> None:
    token = world.issuer.mint(scope="read")
    assert await send(world.port, b"/api/read/x", token) == 200
    assert await send(world.port, b"/api/admin/x", token) == 403
    assert [r.raw_path for r in world.upstream.received] == ["/api/read/x"]
