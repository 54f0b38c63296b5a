"""Identity-header spoofing and injection (RFC 9110 §5.1, §5.5, §7.6.1; RFC 3875 §4.1.18).

The upstream trusts identity headers because only the gateway sets them. A client must not be
able to send one (in any case, with ``_`` for ``-``, twice, under the identity prefix, or by
naming the gateway's own in ``Connection``), and no claim value may smuggle a header line or
bytes a parser might misread. Every case inspects the upstream's raw header list.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.support.gateway import gateway_with_issuer, running_gateway, wait_ready
from tests.support.issuer import TestIssuer
from tests.support.upstream import Received, RecordingUpstream

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEFAULT_NAMES = ("X-Auth-Subject", "X-Auth-Client-Id", "X-Auth-Scopes")
CUSTOM = {
    "X-User": "{sub}",
    "X-Name": "{claims.name}",
    "X-Groups": "{groups}",
    "X-Email": "{email}",
    "X-Tenant": "tenant-{claims.tenant}",
    "X-Claims": "{@claims}",
}


@dataclass
class World:
    port: int
    upstream: RecordingUpstream
    issuer: TestIssuer
    tmp: Path

    def signed_with_raw_member(self, name: str, raw_json_value: bytes) -> str:
        """A real token whose ``name`` claim is written as raw JSON text (e.g. an escape no
        Python string survives encoding)."""
        now = int(time.time())
        claims = {"iss": self.issuer.url, "sub": "user-1", "client_id": "client-1",
                  "aud": "api://default", "exp": now + 300, "iat": now,
                  "scope": "read"}  # fmt: skip
        claims.pop(name, None)
        payload = json.dumps(claims).encode()[:-1] + f', "{name}": '.encode() + raw_json_value
        kid = self.issuer.default_kid("RS256")
        key = self.issuer.signing_keys[kid].private
        return TestIssuer.sign({"alg": "RS256", "kid": kid}, payload + b"}", alg="RS256", key=key)


def gateway_config(upstream: RecordingUpstream, issuer: TestIssuer, **extra: Any) -> dict:
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "limits": {"max_token_size": 60000, "max_header_size": 65536},
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": [{"issuer": issuer.url, "keys": {"jwks_uri": issuer.jwks_url},
                     "audiences": ["api://default"]}],
        "routes": [
            {"match": {"path": "/read/**"}, "upstream": "app", "forward_authorization": False,
             "require": {"scopes": {"all": ["read"]}}},
            {"match": {"path": "/custom/**"}, "upstream": "app", "identity_headers": CUSTOM,
             "forward_authorization": False},
            {"match": {"path": "/whoami"}, "upstream": "app", "auth": "anonymous",
             "identify_anonymous": True, "forward_authorization": False},
            {"match": {"path": "/public/**"}, "upstream": "app", "auth": "anonymous"},
        ],
    }  # fmt: skip
    config.update(extra)
    return config


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("identity")
    async with gateway_with_issuer(tmp, gateway_config) as (gw, upstream, issuer):
        yield World(gw.proxy_port, upstream, issuer, tmp)


@pytest.fixture(autouse=True)
def fresh_log(world: World) -> None:
    world.upstream.received.clear()


async def send(port: int, path: str, headers: list[tuple[str, str]], token: str | None) -> int:
    """One raw request, so header names and values reach the gateway byte for byte."""
    lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        response = await asyncio.wait_for(reader.read(), 3)
    finally:
        writer.close()
    return int(response.split(b" ", 2)[1])


def canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def identity_like(received: Received, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """Headers an upstream (CGI/WSGI folding included) would read as an identity header."""
    wanted = {canonical(n) for n in names}
    return [
        (name, value)
        for name, value in received.headers
        if canonical(name) in wanted or canonical(name).startswith("x-auth-")
    ]


def assert_header_safe(received: Received) -> None:
    for name, value in received.headers:
        assert all(0x20 <= ord(c) < 0x7F for c in value), (name, value)
        assert "_" not in name, name
    assert received.header("X-Injected") is None


# --- spoofed identity headers -------------------------------------------------------------

SPOOFS = [
    pytest.param([("X-Auth-Subject", "admin")], id="exact-name"),
    pytest.param([("x-auth-subject", "admin")], id="lowercase"),
    pytest.param([("X-AUTH-SUBJECT", "admin")], id="uppercase"),
    pytest.param([("X_Auth_Subject", "admin")], id="underscores"),
    pytest.param([("x_auth_subject", "admin")], id="lowercase-underscores"),
    pytest.param([("X-Auth_Subject", "admin")], id="one-underscore"),
    pytest.param([("X_AUTH-SUBJECT", "admin")], id="mixed-separators"),
    pytest.param([("X-Auth-Subject", "admin"), ("X-Auth-Subject", "root")], id="duplicates"),
    pytest.param([("X-Auth-Subject", "admin"), ("x_auth_subject", "root")], id="duplicate-alias"),
    pytest.param([("X-Auth-Role", "root")], id="prefix-other-name"),
    pytest.param([("x-auth-", "root")], id="bare-prefix"),
    pytest.param([("X-Auth-Scopes", "admin write")], id="scopes"),
    pytest.param(
        [("Connection", "X-Auth-Client-Id"), ("X-Auth-Client-Id", "evil")],
        id="connection-names-ours",
    ),
    pytest.param(
        [("Connection", "keep-alive, x-auth-subject, X-Auth-Scopes")],
        id="connection-lists-several-of-ours",
    ),
    pytest.param(
        [("Connection", "X-Auth-Subject"), ("Connection", "X-Auth-Scopes")],
        id="two-connection-fields",
    ),
    pytest.param([("X-Auth-Subject", "")], id="empty-value"),
    pytest.param(
        [("X-Forwarded-User", "admin"), ("X_Forwarded_User", "admin")],
        id="underscore-on-unrelated-name",
    ),
]


@pytest.mark.parametrize("spoofed", SPOOFS)
@pytest.mark.parametrize("path", ["/read/x", "/whoami", "/public/x"])
async def test_spoofed_identity_headers_never_reach_upstream(
    world: World, spoofed: list[tuple[str, str]], path: str
) -> None:
    token = world.issuer.mint({"sub": "alice"}) if path != "/public/x" else None
    assert await send(world.port, path, spoofed, token) == 200
    [received] = world.upstream.received
    expected = (
        [("X-Auth-Subject", "alice"), ("X-Auth-Client-Id", "client-1"), ("X-Auth-Scopes", "read")]
        if token
        else []
    )
    assert identity_like(received, DEFAULT_NAMES) == expected
    assert_header_safe(received)


CUSTOM_SPOOFS = [
    pytest.param("X-User", id="custom-name"),
    pytest.param("x-user", id="custom-lowercase"),
    pytest.param("X_User", id="custom-underscore"),
    pytest.param("X-Tenant", id="custom-with-literal-text"),
    pytest.param("X-Claims", id="custom-all-claims"),
    pytest.param("X-Name", id="custom-claim-absent-from-token"),
]


@pytest.mark.parametrize("name", CUSTOM_SPOOFS)
async def test_custom_identity_headers_cannot_be_spoofed_on_their_route(
    world: World, name: str
) -> None:
    token = world.issuer.mint({"sub": "alice", "tenant": "t1"})
    assert await send(world.port, "/custom/x", [(name, "evil")], token) == 200
    received = world.upstream.last
    assert all(value != "evil" for _, value in received.headers)
    assert received.headers_named("X-User") == ["alice"]
    assert received.headers_named("X-Tenant") == ["tenant-t1"]
    assert received.header("X-Name") is None  # the token has no name claim


@pytest.mark.parametrize("name", ["X-User", "x-user"])
async def test_custom_identity_header_is_stripped_on_every_route(world: World, name: str) -> None:
    assert await send(world.port, "/public/x", [(name, "admin")], None) == 200
    received = world.upstream.last
    assert received.header("X-User") is None


# --- header syntax tricks the parser must refuse ---------------------------------------------

MALFORMED = [
    pytest.param("X-Auth-Subject : admin", id="space-before-colon"),
    pytest.param("X-Auth-Subject\t: admin", id="tab-before-colon"),
    pytest.param("X-Other: a\r\n X-Auth-Subject: admin", id="obs-fold-continuation"),
    pytest.param("X-Other: a\rX-Auth-Subject: admin", id="bare-cr"),
    pytest.param("X-Auth-Subject\x00: admin", id="nul-in-name"),
    pytest.param("X-Auth-Sub\xe9ject: admin", id="non-ascii-name"),
]


@pytest.mark.parametrize("line", MALFORMED)
async def test_malformed_header_lines_are_refused(world: World, line: str) -> None:
    name, _, value = line.partition(": ")
    status = await send(world.port, "/public/x", [(name, value)], None)
    assert status == 400
    assert world.upstream.received == []


# --- claim values rendered into headers -------------------------------------------------------

INJECTIONS = [
    pytest.param(
        {"sub": "alice\r\nX-Injected: 1"}, "X-User", "alice%0D%0AX-Injected: 1", id="crlf-sub"
    ),
    pytest.param({"sub": "a\nX-Injected: 1"}, "X-User", "a%0AX-Injected: 1", id="lf-sub"),
    pytest.param({"sub": "a\rX-Injected: 1"}, "X-User", "a%0DX-Injected: 1", id="cr-sub"),
    pytest.param({"sub": "a\x00b"}, "X-User", "a%00b", id="nul-sub"),
    pytest.param({"sub": "a\x7fb"}, "X-User", "a%7Fb", id="del-sub"),
    pytest.param({"sub": "a\tb"}, "X-User", "a%09b", id="tab-sub"),
    pytest.param({"sub": "\tadmin\t"}, "X-User", "%09admin%09", id="outer-tabs-sub"),
    # Parsers strip outer whitespace (RFC 9110 §5.5): " admin" must not arrive as "admin".
    pytest.param({"sub": " admin"}, "X-User", "%20admin", id="leading-space-sub"),
    pytest.param({"sub": "admin "}, "X-User", "admin%20", id="trailing-space-sub"),
    pytest.param({"sub": "  admin  "}, "X-User", "%20%20admin%20%20", id="outer-spaces-sub"),
    pytest.param({"sub": "   "}, "X-User", "%20%20%20", id="only-spaces-sub"),
    pytest.param({"sub": "a\x0bb\x0cc"}, "X-User", "a%0Bb%0Cc", id="vt-ff-sub"),
    pytest.param({"sub": "\u00e9"}, "X-User", "%C3%A9", id="latin1-range-sub"),
    pytest.param({"sub": "a\x85b"}, "X-User", "a%C2%85b", id="nel-sub"),
    pytest.param({"sub": "a\u2028b"}, "X-User", "a%E2%80%A8b", id="line-separator-sub"),
    pytest.param(
        {"sub": "%0D%0AX-Injected: 1"}, "X-User", "%250D%250AX-Injected: 1", id="pre-encoded-crlf"
    ),
    pytest.param(
        {"name": "x\r\n\r\nGET /admin HTTP/1.1"},
        "X-Name",
        "x%0D%0A%0D%0AGET /admin HTTP/1.1",
        id="crlf-request-split",
    ),
    pytest.param(
        {"groups": ["a\r\nX-Injected: 1", "b"]},
        "X-Groups",
        "a%0D%0AX-Injected: 1,b",
        id="crlf-in-array-item",
    ),
    pytest.param(
        {"groups": [{"k": "v\r\n"}, 1, True]},
        "X-Groups",
        '{"k":"v\\r\\n"},1,true',
        id="object-in-array-json-escaped",
    ),
    pytest.param({"email": "e@x\u0000"}, "X-Email", "e@x%00", id="nul-email"),
    pytest.param(
        {"tenant": "t\r\nX-Injected: 1"},
        "X-Tenant",
        "tenant-t%0D%0AX-Injected: 1",
        id="crlf-after-literal",
    ),
]


@pytest.mark.parametrize(("claims", "header", "expected"), INJECTIONS)
async def test_claim_values_cannot_inject_headers(
    world: World, claims: dict[str, Any], header: str, expected: str
) -> None:
    token = world.issuer.mint(claims)
    assert await send(world.port, "/custom/x", [], token) == 200
    received = world.upstream.last
    assert received.headers_named(header) == [expected]
    assert_header_safe(received)


# An array's members are joined with ','; a ',' (or '%') inside a member is percent-encoded,
# so the upstream that splits on ',' and decodes each piece gets the members back.
ARRAYS = [
    pytest.param({"groups": ["users,admins"]}, "X-Groups", "users%2Cadmins", id="comma-in-group"),
    pytest.param({"groups": ["users,admins", "ops"]}, "X-Groups", "users%2Cadmins,ops",
                 id="comma-in-group-and-another"),
    pytest.param({"groups": ["a%2Cb", " c"]}, "X-Groups", "a%252Cb,%20c",
                 id="pre-encoded-comma-and-outer-space"),
    pytest.param({"groups": ["a, b"]}, "X-Groups", "a%2C b", id="comma-space-in-group"),
]  # fmt: skip


@pytest.mark.parametrize(("claims", "header", "expected"), ARRAYS)
async def test_array_members_cannot_read_as_two(
    world: World, claims: dict[str, Any], header: str, expected: str
) -> None:
    token = world.issuer.mint(claims)
    assert await send(world.port, "/custom/x", [], token) == 200
    received = world.upstream.last
    assert received.headers_named(header) == [expected]
    assert_header_safe(received)


async def test_token_without_scope_or_scp_is_served_without_a_scopes_header(
    world: World,
) -> None:
    token = world.issuer.mint({"scope": None})
    assert await send(world.port, "/whoami", [("X-Auth-Scopes", "admin")], token) == 200
    received = world.upstream.last
    assert received.header("X-Auth-Subject") == "user-1"
    assert received.header("X-Auth-Scopes") is None


async def test_lone_surrogate_claim_is_replaced_not_crashing(world: World) -> None:
    token = world.signed_with_raw_member("sub", b'"\\ud800x"')
    assert await send(world.port, "/custom/x", [], token) == 200
    received = world.upstream.last
    assert received.headers_named("X-User") == ["?x"]
    assert_header_safe(received)


async def test_whole_claim_set_header_round_trips(world: World) -> None:
    claims = {"sub": "a\r\nX-Injected: 1", "name": "\u00e9\u2028", "nested": {"k": ["\x00"]}}
    token = world.issuer.mint(claims)
    assert await send(world.port, "/custom/x", [], token) == 200
    received = world.upstream.last
    encoded = received.header("X-Claims") or ""
    assert set(encoded) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    decoded = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert {k: decoded[k] for k in claims} == claims
    assert_header_safe(received)


async def test_oversized_claim_omits_the_header_and_still_strips_spoofs(world: World) -> None:
    token = world.issuer.mint({"sub": "s" * 9000})
    assert await send(world.port, "/custom/x", [("X-User", "admin")], token) == 200
    received = world.upstream.last
    assert received.header("X-User") is None
    assert received.header("X-Claims") is None  # over MAX_VALUE_BYTES once encoded
    assert received.header("X-Tenant") is None  # no tenant claim: omitted, not half-filled


# --- the access log is a sink for claim values too -----------------------------------------


async def _text_log_lines(
    world: World, capsys: pytest.CaptureFixture[str], token: str
) -> tuple[int, list[str]]:
    directory = world.tmp / f"log{len(list(world.tmp.iterdir()))}"
    directory.mkdir()
    config = gateway_config(world.upstream, world.issuer, logging={"format": "text"})
    async with running_gateway(directory, config) as gw:
        await wait_ready(gw)
        capsys.readouterr()
        status = await send(gw.proxy_port, "/read/x", [], token)
        await asyncio.sleep(0.7)  # the access log flushes at least twice a second
    return status, [line for line in capsys.readouterr().out.splitlines() if line]


async def test_claim_values_cannot_forge_text_access_log_lines(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    token = world.issuer.mint({"client_id": "svc\ntime=forged status=200 decision=allow"})
    status, lines = await _text_log_lines(world, capsys, token)
    assert status == 200
    assert not any(line.startswith("time=forged") for line in lines), lines


async def test_surrogate_client_id_does_not_break_the_text_access_log(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    token = world.signed_with_raw_member("client_id", b'"\\ud800"')
    status, _ = await _text_log_lines(world, capsys, token)
    assert status == 200
