"""HTTP/1.1 attacks on the gateway's edge (RFC 9112 §2-3, §6-7, §9.3; RFC 9110 §7.2, §7.6.1).

Request smuggling shapes, pipelining, absolute-form and Host tricks, routing-override headers,
oversized and malformed messages, slow clients and old protocol versions, all sent as raw
bytes to the real gateway. Each case checks what the client got back (every status line on
the connection, and whether the gateway closed it) and what the upstream received. The
invariant behind every table: nothing reaches ``/admin`` (scope ``admin``), ``/private``
(scope ``read``) or ``DELETE /items`` (scope ``write``) without that route's policy.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.support.gateway import gateway_with_issuer, running_gateway
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEEPALIVE = 2.0
MAX_LINE = 4096
MAX_FIELD = 3000
MAX_HEADERS = 32
SMUGGLED = b"GET /admin/secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
CLOSE = "Connection: close"
_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? (\d{3}) ")


@dataclass
class Exchange:
    data: bytes
    closed: bool  # the gateway closed the connection (rather than going quiet)

    @property
    def statuses(self) -> list[int]:
        return [int(code) for code in _STATUS_LINE.findall(self.data)]


async def exchange(port: int, data: bytes, *, quiet: float = 0.3) -> Exchange:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunks: list[bytes] = []
    closed = False
    try:
        writer.write(data)
        await writer.drain()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), quiet)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
    except ConnectionResetError:
        closed = True
    finally:
        writer.close()
    return Exchange(b"".join(chunks), closed)


@dataclass
class World:
    port: int
    upstream: RecordingUpstream
    issuer: TestIssuer
    tmp: Path

    def token(self, scope: str = "read") -> str:
        return self.issuer.mint(scope=scope)

    def paths(self) -> list[str]:
        return [received.raw_path for received in self.upstream.received]


def gateway_config(upstream: RecordingUpstream, issuer: TestIssuer, **extra: Any) -> dict:
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "limits": {"keepalive_timeout": f"{KEEPALIVE}s", "max_request_line": MAX_LINE,
                   "max_header_size": MAX_FIELD, "max_headers": MAX_HEADERS},
        "upstreams": {"app": {"url": upstream.url, "preserve_host": True}},
        "issuers": [{"issuer": issuer.url, "keys": {"jwks_uri": issuer.jwks_url},
                     "audiences": ["api://default"]}],
        "defaults": {"auth": "anonymous"},
        "routes": [
            {"match": {"host": "api.example"}, "upstream": "app", "auth": "required",
             "require": {"scopes": {"all": ["admin"]}}},
            {"match": {"path": "/admin/**"}, "upstream": "app", "auth": "required",
             "require": {"scopes": {"all": ["admin"]}}},
            {"match": {"path": "/private/**"}, "upstream": "app", "auth": "required",
             "require": {"scopes": {"all": ["read"]}}},
            {"match": {"path": "/items/**", "methods": ["DELETE"]}, "upstream": "app",
             "auth": "required", "require": {"scopes": {"all": ["write"]}}},
            {"match": {"path": {"prefix": "/"}}, "upstream": "app"},
        ],
    }  # fmt: skip
    config.update(extra)
    return config


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("http")
    async with gateway_with_issuer(tmp, gateway_config) as (gw, upstream, issuer):
        yield World(gw.proxy_port, upstream, issuer, tmp)


@pytest.fixture(autouse=True)
def fresh_log(world: World) -> None:
    world.upstream.received.clear()


async def assert_still_serving(world: World) -> None:
    result = await exchange(
        world.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert result.statuses == [200], "the gateway stopped serving after an attack"


def closing(request_bytes: bytes) -> bytes:
    """The same request asking the gateway to close afterwards, so a test need not wait."""
    if request_bytes.endswith(b"\r\n\r\n"):
        return request_bytes[:-2] + b"Connection: close\r\n\r\n"
    return request_bytes


def post(headers: bytes, body: bytes) -> bytes:
    return b"POST /public HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body


# --- request smuggling (RFC 9112 §6.1, §6.3, §7.1) ------------------------------------------

CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"

REFUSED_FRAMING = [
    pytest.param(
        post(b"Content-Length: 15\r\nTransfer-Encoding: chunked\r\n", CHUNKED_HELLO + SMUGGLED),
        id="cl-te",
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", CHUNKED_HELLO + SMUGGLED),
        id="te-cl",
    ),
    pytest.param(post(b"Content-Length: 5, 5\r\n", b"hello" + SMUGGLED), id="cl-list-same-value"),
    pytest.param(post(b"Content-Length: 5, 46\r\n", b"hello" + SMUGGLED), id="cl-list-conflicting"),
    pytest.param(post(b"Content-Length: +5\r\n", b"hello" + SMUGGLED), id="cl-plus-sign"),
    pytest.param(post(b"Content-Length: -5\r\n", b"hello" + SMUGGLED), id="cl-negative"),
    pytest.param(post(b"Content-Length: 0x5\r\n", b"hello" + SMUGGLED), id="cl-hex"),
    pytest.param(post(b"Content-Length: 5.0\r\n", b"hello" + SMUGGLED), id="cl-decimal"),
    pytest.param(post(b"Content-Length: 5 5\r\n", b"hello" + SMUGGLED), id="cl-inner-space"),
    pytest.param(
        post(b"Content-Length: 18446744073709551621\r\n", b"hello" + SMUGGLED), id="cl-overflow-u64"
    ),
    pytest.param(post(b"Content-Length : 5\r\n", b"hello" + SMUGGLED), id="cl-space-before-colon"),
    pytest.param(post(b"Content-Length:\r\n 5\r\n", b"hello" + SMUGGLED), id="cl-obs-fold"),
    pytest.param(
        post(b"Content-Length: 46\r\nTransfer-Encoding: xchunked\r\n", CHUNKED_HELLO + SMUGGLED),
        id="te-xchunked-with-cl",
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked\t\r\n", CHUNKED_HELLO + SMUGGLED), id="te-trailing-tab"
    ),
    pytest.param(
        post(b"Transfer-Encoding : chunked\r\n", CHUNKED_HELLO + SMUGGLED),
        id="te-space-before-colon",
    ),
    pytest.param(
        post(b"Transfer-Encoding:\r\n chunked\r\n", CHUNKED_HELLO + SMUGGLED), id="te-obs-fold"
    ),
    pytest.param(
        post(b"Transfer-Encoding: \x0bchunked\r\n", CHUNKED_HELLO + SMUGGLED), id="te-vertical-tab"
    ),
    pytest.param(
        post(b"Transfer-Encoding: identity\r\n", CHUNKED_HELLO + SMUGGLED), id="te-identity"
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked, chunked\r\n", CHUNKED_HELLO + SMUGGLED),
        id="te-chunked-twice-in-list",
    ),
    pytest.param(
        post(
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            CHUNKED_HELLO + SMUGGLED,
        ),
        id="te-two-fields",
    ),
    pytest.param(
        post(
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            CHUNKED_HELLO + SMUGGLED,
        ),
        id="te-chunked-then-identity",
    ),
    pytest.param(
        post(
            b"Transfer-Encoding: chunked\r\n",
            b"ffffffffffffffffff1\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
        ),
        id="chunk-size-overflow",
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
        id="chunk-size-negative",
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
        id="chunk-size-hex-prefix",
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked\r\n", b" 5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
        id="chunk-size-leading-space",
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n" + SMUGGLED), id="chunk-bare-lf"
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked\r\n", b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
        id="chunk-longer-than-size",
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello0\r\n\r\n" + SMUGGLED),
        id="chunk-missing-crlf",
    ),
    pytest.param(
        b"POST /public HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello" + SMUGGLED, id="bare-lf-head"
    ),
    pytest.param(
        b"POST /public HTTP/1.1\r\nHost: x\rContent-Length: 5\r\n\r\nhello" + SMUGGLED,
        id="bare-cr-in-head",
    ),
    pytest.param(
        post(b"X-A: a\x00b\r\nContent-Length: 5\r\n", b"hello" + SMUGGLED), id="nul-in-field-value"
    ),
    pytest.param(
        post(b"Content-Length: 5\r\nX-A\r\n", b"hello" + SMUGGLED), id="field-without-colon"
    ),
]


@pytest.mark.parametrize("request_bytes", REFUSED_FRAMING)
async def test_ambiguous_framing_is_refused_and_connection_closed(
    world: World, request_bytes: bytes
) -> None:
    result = await exchange(world.port, request_bytes)
    assert result.statuses == [400], result.data[:200]
    assert result.closed, "after a framing error the connection must not be reused"
    assert world.upstream.received == []
    await assert_still_serving(world)


# Unusual but valid framing: the body is exactly what the framing says, and the bytes after it
# are a second request that meets the admin route's policy on its own.
TOLERATED_FRAMING = [
    pytest.param(post(b"Content-Length:  5 \r\n", b"hello" + SMUGGLED), id="cl-surrounding-ows"),
    pytest.param(post(b"Content-Length: 0005\r\n", b"hello" + SMUGGLED), id="cl-leading-zeros"),
    pytest.param(
        post(b"Transfer-Encoding: chunked \r\n", CHUNKED_HELLO + SMUGGLED), id="te-trailing-space"
    ),
    pytest.param(
        post(b"Transfer-Encoding: CHUNKED\r\n", CHUNKED_HELLO + SMUGGLED), id="te-uppercase"
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked\r\n", b'5;ext=1;b="x"\r\nhello\r\n0\r\n\r\n' + SMUGGLED),
        id="chunk-extensions",
    ),
    pytest.param(
        post(
            b"Transfer-Encoding: chunked\r\n",
            b"5\r\nhello\r\n0\r\nX-Auth-Subject: admin\r\n\r\n" + SMUGGLED,
        ),
        id="chunked-trailer-spoofs-identity",
    ),
    pytest.param(
        post(b"Transfer_Encoding: chunked\r\nContent-Length: 5\r\n", b"hello" + SMUGGLED),
        id="te-underscore-alias-with-cl",
    ),
    pytest.param(post(b"Content-Length: 5\r\n", b"hello" + SMUGGLED), id="plain-pipelined-smuggle"),
]


@pytest.mark.parametrize("request_bytes", TOLERATED_FRAMING)
async def test_valid_framing_keeps_the_next_request_separate(
    world: World, request_bytes: bytes
) -> None:
    result = await exchange(world.port, request_bytes)
    assert result.statuses == [200, 401], result.data[:300]
    [received] = world.upstream.received
    assert (received.method, received.raw_path, received.body_size) == ("POST", "/public", 5)
    assert received.header("X-Auth-Subject") is None
    assert received.header("Transfer_Encoding") is None


# --- pipelining: authentication never sticks to a connection --------------------------------


def get(path: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: x", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_pipelined_second_request_without_token_is_refused(world: World) -> None:
    data = get("/private/a", f"Authorization: Bearer {world.token()}") + get("/private/b", CLOSE)
    result = await exchange(world.port, data)
    assert result.statuses == [200, 401]
    assert world.paths() == ["/private/a"]


async def test_pipelined_second_request_with_other_scheme_is_refused(world: World) -> None:
    data = get("/private/a", f"Authorization: Bearer {world.token()}") + get(
        "/admin/x", "Authorization: Basic YWRtaW46YWRtaW4=", CLOSE
    )
    result = await exchange(world.port, data)
    assert result.statuses == [200, 401]
    assert world.paths() == ["/private/a"]


async def test_pipelined_http10_keepalive_second_request_is_refused(world: World) -> None:
    first = get("/private/a", f"Authorization: Bearer {world.token()}", "Connection: keep-alive",
                version="1.0")  # fmt: skip
    result = await exchange(world.port, first + get("/private/b", version="1.0"))
    assert result.statuses[:1] == [200]
    assert result.statuses[1:] in ([], [401])
    assert world.paths() == ["/private/a"]


async def test_identity_headers_do_not_leak_to_the_next_request_on_a_pooled_connection(
    world: World,
) -> None:
    data = get("/private/a", f"Authorization: Bearer {world.token()}") + get("/public/b", CLOSE)
    result = await exchange(world.port, data)
    assert result.statuses == [200, 200]
    first, second = world.upstream.received
    assert first.header("X-Auth-Subject") == "user-1"
    assert second.header("X-Auth-Subject") is None
    assert second.header("Authorization") is None


async def test_request_after_refused_framing_on_same_connection_is_not_served(
    world: World,
) -> None:
    bad = post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!")
    result = await exchange(world.port, bad + get("/public/after"))
    assert result.statuses == [400]
    assert result.closed
    assert world.upstream.received == []


# --- request target forms and Host (RFC 9112 §3.2, RFC 9110 §7.2) --------------------------

TARGETS = [
    pytest.param(
        b"GET http://evil.example/admin/x HTTP/1.1\r\nHost: x\r\n\r\n",
        [400],
        None,
        id="absolute-form-other-host-admin",
    ),
    pytest.param(
        b"GET http://x/admin/x HTTP/1.1\r\nHost: x\r\n\r\n",
        [401],
        None,
        id="absolute-form-same-host-admin-needs-token",
    ),
    pytest.param(
        b"GET http://api.example/public HTTP/1.1\r\nHost: x\r\n\r\n",
        [400],
        None,
        id="absolute-form-names-protected-vhost",
    ),
    pytest.param(
        b"GET http://x/public HTTP/1.1\r\nHost: api.example\r\n\r\n",
        [400],
        None,
        id="absolute-form-hides-protected-host",
    ),
    pytest.param(
        b"GET http://x@x/public HTTP/1.1\r\nHost: x\r\n\r\n",
        [400],
        None,
        id="absolute-form-userinfo",
    ),
    pytest.param(
        b"GET http://x:80/public HTTP/1.1\r\nHost: x\r\n\r\n",
        [400],
        None,
        id="absolute-form-port-differs-from-host",
    ),
    pytest.param(
        b"GET ftp://x/public HTTP/1.1\r\nHost: x\r\n\r\n",
        [400],
        None,
        id="absolute-form-other-scheme",
    ),
    pytest.param(
        b"GET http://x/../admin/x HTTP/1.1\r\nHost: x\r\n\r\n",
        [400],
        None,
        id="absolute-form-dotdot-above-root",
    ),
    pytest.param(
        b"GET http://x/public#/../admin/x HTTP/1.1\r\nHost: x\r\n\r\n",
        [400],
        None,
        id="absolute-form-fragment",
    ),
    pytest.param(
        b"GET HTTP://X/public HTTP/1.1\r\nHost: x\r\n\r\n",
        [200],
        "/public",
        id="absolute-form-uppercase-scheme-host",
    ),
    pytest.param(
        b"GET //x/admin HTTP/1.1\r\nHost: x\r\n\r\n",
        [200],
        "/x/admin",
        id="scheme-relative-is-a-path",
    ),
    pytest.param(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", [400], None, id="asterisk-form-get"),
    pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", [400], None, id="asterisk-form-options"),
    pytest.param(b"GET admin/x HTTP/1.1\r\nHost: x\r\n\r\n", [400], None, id="relative-target"),
    pytest.param(
        b"GET /public#/../admin/x HTTP/1.1\r\nHost: x\r\n\r\n", [400], None, id="fragment-in-target"
    ),
    pytest.param(
        b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
        [400, 405],
        None,
        id="connect-authority-form",
    ),
    pytest.param(
        b"CONNECT /admin/x HTTP/1.1\r\nHost: x\r\n\r\n", [405], None, id="connect-origin-form"
    ),
    pytest.param(b"TRACE /public HTTP/1.1\r\nHost: x\r\n\r\n", [405], None, id="trace"),
]


@pytest.mark.parametrize(("request_bytes", "statuses", "upstream_path"), TARGETS)
async def test_request_target_forms(
    world: World, request_bytes: bytes, statuses: list[int], upstream_path: str | None
) -> None:
    result = await exchange(world.port, closing(request_bytes))
    assert len(result.statuses) == 1 and result.statuses[0] in statuses, result.data[:200]
    assert world.paths() == ([] if upstream_path is None else [upstream_path])


# The first route protects the virtual host api.example (scope admin) and the upstream keeps the
# client's Host (preserve_host): any spelling of Host that still means api.example to an
# upstream must meet that policy or be refused.
HOSTS = [
    pytest.param("api.example", [401], id="control-protected-host"),
    pytest.param("API.EXAMPLE", [401], id="uppercase"),
    pytest.param("api.example.", [401], id="trailing-dot"),
    pytest.param("api.example:8080", [401], id="with-port"),
    pytest.param("api.example:", [401], id="empty-port"),
    pytest.param(" api.example ", [401], id="surrounding-ows"),
    pytest.param("evil@api.example", [400], id="userinfo-before"),
    pytest.param("api.example@evil", [400], id="userinfo-after"),
    pytest.param("api.example/admin", [400], id="with-path"),
    pytest.param("api.example?x", [400], id="with-query"),
    pytest.param("api.example#x", [400], id="with-fragment"),
    pytest.param("api.example:80:80", [400], id="two-ports"),
    pytest.param("api.example:99999", [400], id="port-out-of-range"),
    pytest.param("api.example:+80", [400], id="port-with-sign"),
    pytest.param("api.example, other", [400], id="list"),
    pytest.param("api.example%2e", [400], id="percent-encoded"),
    pytest.param("[api.example]", [400], id="bracketed-name"),
    pytest.param("api.example\\x", [400], id="backslash"),
    pytest.param("a" * 300, [400], id="very-long"),
    pytest.param("api." + "a" * 64 + ".example", [200], id="label-over-63-chars-still-other-host"),
    pytest.param("", [200], id="empty-host-is-no-host"),
]


@pytest.mark.parametrize(("host", "statuses"), HOSTS)
async def test_host_spellings_cannot_escape_the_host_route(
    world: World, host: str, statuses: list[int]
) -> None:
    data = f"GET /public HTTP/1.1\r\nHost: {host}\r\n{CLOSE}\r\n\r\n".encode()
    result = await exchange(world.port, data)
    assert result.statuses == statuses, result.data[:200]
    if statuses == [200]:
        [received] = world.upstream.received
        assert received.raw_path == "/public"
        assert received.header("Host") == host
    else:
        assert world.upstream.received == []


@pytest.mark.parametrize(
    "hosts",
    [
        pytest.param(("api.example", "x"), id="protected-first"),
        pytest.param(("x", "api.example"), id="protected-second"),
        pytest.param(("x", "x"), id="same-twice"),
        pytest.param(("api.example", "API.EXAMPLE"), id="same-host-two-spellings"),
    ],
)
async def test_two_host_fields_are_refused(world: World, hosts: tuple[str, str]) -> None:
    data = "GET /public HTTP/1.1\r\nHost: {}\r\nHost: {}\r\n\r\n".format(*hosts).encode()
    result = await exchange(world.port, data)
    assert result.statuses == [400]
    assert world.upstream.received == []


@pytest.mark.parametrize(
    "host_bytes",
    [
        pytest.param("api.exampl\u0435".encode(), id="cyrillic-homoglyph-utf8"),
        pytest.param(b"api.example\x00", id="nul"),
        pytest.param(b"api.ex\xe4mple", id="latin1-byte"),
    ],
)
async def test_non_ascii_host_is_refused(world: World, host_bytes: bytes) -> None:
    result = await exchange(
        world.port, b"GET /public HTTP/1.1\r\nHost: " + host_bytes + b"\r\n\r\n"
    )
    assert result.statuses == [400]
    assert world.upstream.received == []


# --- headers some upstream frameworks route on -------------------------------------------

OVERRIDES = [
    pytest.param("GET", "/items/1", "X-HTTP-Method-Override: DELETE", id="x-http-method-override"),
    pytest.param("GET", "/items/1", "X-HTTP-Method: DELETE", id="x-http-method"),
    pytest.param("GET", "/items/1", "X-Method-Override: DELETE", id="x-method-override"),
    pytest.param("POST", "/items/1", "x-http-method-override: DELETE", id="lowercase-override"),
    pytest.param("GET", "/items/1", "X_HTTP_Method_Override: DELETE", id="underscore-override"),
    pytest.param("GET", "/public", "X-Original-URL: /admin/secret", id="x-original-url"),
    pytest.param("GET", "/public", "X-Rewrite-URL: /admin/secret", id="x-rewrite-url"),
    pytest.param("GET", "/public", "X-Forwarded-Prefix: /admin", id="x-forwarded-prefix"),
    pytest.param(
        "GET",
        "/public",
        "X-Original-Url: /admin/secret\r\nX-Original-URL: /x",
        id="x-original-url-twice",
    ),
]


@pytest.mark.parametrize(("method", "path", "header"), OVERRIDES)
async def test_routing_override_headers_neither_route_nor_reach_upstream(
    world: World, method: str, path: str, header: str
) -> None:
    data = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\n{header}\r\n{CLOSE}\r\nContent-Length: 0\r\n\r\n"
    )
    result = await exchange(world.port, data.encode())
    assert result.statuses == [200], "the route must be chosen by the real method and path"
    [received] = world.upstream.received
    assert (received.method, received.raw_path) == (method, path)
    sent_name = header.split(":", 1)[0].lower()
    assert [k for k, _ in received.headers if k.lower() == sent_name] == []


async def test_method_override_query_parameter_documented(world: World) -> None:
    """Documented risk: Rails, Laravel and Symfony (http_method_override) read a ``_method``
    parameter of a POST as the method. The gateway routes POST /items/1 to the anonymous route
    and forwards the query untouched, so such an upstream would run DELETE without the
    ``write`` scope. Mitigation is upstream (turn the override off) or a POST route policy."""
    data = b"POST /items/1?_method=DELETE HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    result = await exchange(world.port, data)
    assert result.statuses == [200]
    assert world.paths() == ["/items/1?_method=DELETE"]


async def test_routing_override_headers_are_dropped_even_from_trusted_proxies(
    world: World,
) -> None:
    config = gateway_config(
        world.upstream, world.issuer, forwarding={"trusted_proxies": ["127.0.0.1/32"]}
    )
    directory = world.tmp / "trusted"
    directory.mkdir(exist_ok=True)
    async with running_gateway(directory, config) as gw:
        data = b"GET /public HTTP/1.1\r\nHost: x\r\nX-Original-URL: /admin/secret\r\n\r\n"
        result = await exchange(gw.proxy_port, data)
    assert result.statuses == [200]
    [received] = world.upstream.received
    assert received.header("X-Original-URL") is None


# --- sizes and counts (RFC 9112 §3, RFC 6585 §5) -------------------------------------------

OVERSIZED = [
    pytest.param(
        b"GET /" + b"a" * MAX_LINE + b" HTTP/1.1\r\nHost: x\r\n\r\n", {414}, id="request-line"
    ),
    pytest.param(
        b"GET /public?" + b"q" * MAX_LINE + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        {414},
        id="query-string",
    ),
    pytest.param(
        b"G" * MAX_LINE + b" / HTTP/1.1\r\nHost: x\r\n\r\n", {400, 414}, id="method-token"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * (MAX_FIELD + 1) + b"\r\n\r\n",
        {431},
        id="header-value",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: x\r\nX-" + b"n" * MAX_FIELD + b": v\r\n\r\n",
        {431},
        id="header-name",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
        + b"\r\n",
        {431},
        id="header-count",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"Cookie: a=b\r\n" * (MAX_HEADERS + 1) + b"\r\n",
        {431},
        id="header-count-repeated-name",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * MAX_FIELD + b"\r\n\r\n",
        {431},
        id="authorization-value",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: " + b"h" * MAX_FIELD + b"\r\n\r\n", {431}, id="host-value"
    ),
]


@pytest.mark.parametrize(("request_bytes", "allowed"), OVERSIZED)
async def test_oversized_messages_are_refused_and_closed(
    world: World, request_bytes: bytes, allowed: set[int]
) -> None:
    result = await exchange(world.port, request_bytes)
    assert len(result.statuses) == 1 and result.statuses[0] in allowed, result.data[:200]
    assert result.closed
    assert world.upstream.received == []
    await assert_still_serving(world)


async def test_large_header_block_within_limits_is_served_unchanged(world: World) -> None:
    """No total header budget beyond count x field size: the largest legal head still works."""
    headers = b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * (MAX_FIELD - 100)) for i in range(MAX_HEADERS - 2)
    )
    head = b"GET /public HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n"
    result = await exchange(world.port, head)
    assert result.statuses == [200]
    assert len(world.upstream.last.headers_named("X-H0")) == 1


# --- slow clients -------------------------------------------------------------------------


async def test_slow_partial_heads_do_not_block_other_clients(world: World) -> None:
    writers = []
    for _ in range(50):
        _, writer = await asyncio.open_connection("127.0.0.1", world.port)
        writer.write(b"GET /private/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
        writers.append(writer)
    try:
        started = time.monotonic()
        await assert_still_serving(world)
        assert time.monotonic() - started < 1.0
    finally:
        for writer in writers:
            writer.close()
    assert world.paths() == ["/health"]


async def test_trickled_head_is_cut_off_near_the_keepalive_timeout(world: World) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", world.port)
    writer.write(b"GET /public HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    started = time.monotonic()
    closed_after = None
    try:
        while time.monotonic() - started < KEEPALIVE * 3:
            await asyncio.sleep(0.25)
            if reader.at_eof():
                closed_after = time.monotonic() - started
                break
            writer.write(b"a")
            try:
                await writer.drain()
            except ConnectionError:
                closed_after = time.monotonic() - started
                break
    finally:
        writer.close()
    assert closed_after is not None, "a client trickling a head byte by byte is never cut off"
    assert closed_after <= KEEPALIVE + 1.5
    assert world.upstream.received == []


# --- protocol versions and methods (RFC 9112 §2.3, §3.1; RFC 9110 §9) ----------------------

VERSIONS = [
    pytest.param(b"GET /public HTTP/1.0\r\n\r\n", [200], "/public", id="http10-without-host"),
    pytest.param(b"GET /admin/x HTTP/1.0\r\n\r\n", [401], None, id="http10-admin-needs-token"),
    pytest.param(b"GET /admin/x\r\n\r\n", [505], None, id="http09-refused-before-auth"),
    pytest.param(b"GET /public HTTP/1.2\r\nHost: x\r\n\r\n", [400, 505], None, id="http12"),
    pytest.param(b"GET /public HTTP/9.9\r\nHost: x\r\n\r\n", [400, 505], None, id="http99"),
    pytest.param(
        b"GET /public HTTP/1.1.1\r\nHost: x\r\n\r\n", [400], None, id="version-three-parts"
    ),
    pytest.param(b"GET /public http/1.1\r\nHost: x\r\n\r\n", [400], None, id="version-lowercase"),
    pytest.param(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", [400, 505], None, id="h2-prior-knowledge-preface"
    ),
    pytest.param(
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", [400], None, id="tls-client-hello"
    ),
]


@pytest.mark.parametrize(("request_bytes", "statuses", "upstream_path"), VERSIONS)
async def test_protocol_versions(
    world: World, request_bytes: bytes, statuses: list[int], upstream_path: str | None
) -> None:
    result = await exchange(world.port, closing(request_bytes))
    assert len(result.statuses) == 1 and result.statuses[0] in statuses, result.data[:200]
    assert world.paths() == ([] if upstream_path is None else [upstream_path])


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /public\r\nHost: x\r\n\r\n", id="http09"),
        pytest.param(b"GET /public HTTP/2.0\r\nHost: x\r\n\r\n", id="http20-text"),
    ],
)
async def test_unsupported_versions_are_refused(world: World, request_bytes: bytes) -> None:
    result = await exchange(world.port, request_bytes)
    assert result.statuses in ([400], [505])
    assert world.upstream.received == []


METHODS = [
    pytest.param(b"G@T", id="method-with-at"),
    pytest.param(b"GET\x00", id="method-with-nul"),
    pytest.param(b"delete", id="lowercase-delete-vs-delete-route"),
    pytest.param(b"Delete", id="mixed-case-delete"),
    pytest.param(b"FOO", id="unknown-token"),
    pytest.param(b"G\xc3\x89T", id="non-ascii"),
    pytest.param(b"", id="empty-method"),
]


@pytest.mark.parametrize("method", METHODS)
async def test_invalid_or_case_variant_methods_are_refused(world: World, method: bytes) -> None:
    result = await exchange(world.port, method + b" /items/1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert result.statuses == [400], result.data[:200]
    assert world.upstream.received == []
