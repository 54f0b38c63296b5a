"""Path-confusion attacks (RFC 3986 §2.1, §2.4, §3.3, §5.2.4, §6.2.2; RFC 9112 §3.2.1).

The config protects ``/admin/**`` and ``/Key/**`` (scope ``admin``) and leaves ``/**``
anonymous. For each spelling of a path the outcome is one of:

* ``REFUSED``  - 400 and nothing reached the upstream;
* ``POLICY``   - the gateway itself read the path as a protected one: 401, nothing upstream;
* ``ELSEWHERE``- 200, the upstream got exactly the expected normalised path, and no lenient
  reading of it (repeated percent-decoding, ``\\`` as ``/``, ``;`` parameters stripped, NFKC,
  dot-segments) names a protected path;
* documented risks - 200, and only an upstream that folds case, trims trailing dots or spaces,
  or applies NFKC would read a protected path. They assert today's behaviour and name the risk
  so a change is noticed.
"""

from __future__ import annotations

import asyncio
import posixpath
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import pytest_asyncio

from tests.support.gateway import running_gateway
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROTECTED = ("admin", "Key")
REFUSED, POLICY, ELSEWHERE = 400, 401, 200


@dataclass
class World:
    port: int
    upstream: RecordingUpstream
    tmp: Path


def gateway_config(
    upstream: RecordingUpstream, paths: dict[str, str] | None = None, **limits: Any
) -> dict:
    admin_only = {"auth": "required", "require": {"scopes": {"all": ["admin"]}}}
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "limits": limits,
        "upstreams": {"app": {"url": upstream.url, "paths": paths or {}}},
        "issuers": [{"issuer": "https://issuer.invalid", "keys": {"jwks": {"keys": []}},
                     "audiences": ["api://default"]}],
        "defaults": {"auth": "anonymous"},
        "routes": [
            {"match": {"path": "/admin/**"}, "upstream": "app", **admin_only},
            {"match": {"path": "/Key/**"}, "upstream": "app", **admin_only},
            {"match": {"path": {"prefix": "/"}}, "upstream": "app"},
        ],
    }  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    upstream = RecordingUpstream(name="app")
    await upstream.start()
    tmp = tmp_path_factory.mktemp("paths")
    try:
        async with running_gateway(tmp, gateway_config(upstream)) as gw:
            yield World(gw.proxy_port, upstream, tmp)
    finally:
        await upstream.close()


@pytest.fixture(autouse=True)
def fresh_log(world: World) -> None:
    world.upstream.received.clear()


async def get(port: int, target: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 3)
    finally:
        writer.close()
    return int(response.split(b" ", 2)[1])


def _strip_params(path: str) -> str:
    return "/".join(segment.split(";", 1)[0] for segment in path.split("/"))


def lenient_readings(raw_path: str) -> set[str]:
    """What a careless upstream might make of a path (decoding up to three times)."""
    readings = set()
    path = raw_path.partition("?")[0]
    for _ in range(4):
        for candidate in (path, path.replace("\\", "/")):
            for variant in (candidate, _strip_params(candidate)):
                for form in (variant, unicodedata.normalize("NFKC", variant)):
                    readings.add(posixpath.normpath("/" + form.lstrip("/")))
        path = unquote(path, errors="surrogateescape")
    return readings


def names_protected(reading: str, *, fold_case: bool = False) -> bool:
    first = reading.lstrip("/").split("/", 1)[0]
    if fold_case:
        return first.lower() in {name.lower() for name in PROTECTED}
    return first in PROTECTED


def risky_readings(raw_path: str) -> set[str]:
    """Readings by upstreams that trim trailing dots and spaces per segment, or apply NFKC."""
    out = set()
    for reading in lenient_readings(raw_path):
        trimmed = "/".join(segment.rstrip(". ") for segment in reading.split("/"))
        out |= {trimmed, unicodedata.normalize("NFKC", trimmed)}
    return out


CASES = [
    # encoded dots and slashes in every case
    pytest.param(b"/public/..%2fadmin/x", REFUSED, None, id="dotdot-encoded-slash-lower"),
    pytest.param(b"/public/..%2Fadmin/x", REFUSED, None, id="dotdot-encoded-slash-upper"),
    pytest.param(b"/public/%2e%2e%2fadmin/x", REFUSED, None, id="all-encoded-dotdot-slash"),
    pytest.param(b"/admin%2fx", REFUSED, None, id="encoded-slash-inside-segment"),
    pytest.param(b"/%2e%2e/admin", REFUSED, None, id="encoded-dotdot-above-root"),
    pytest.param(b"/public/%2e%2e/admin/x", POLICY, None, id="encoded-dotdot-lower"),
    pytest.param(b"/public/%2E%2E/admin/x", POLICY, None, id="encoded-dotdot-upper"),
    pytest.param(b"/public/%2E%2e/admin/x", POLICY, None, id="encoded-dotdot-mixed"),
    pytest.param(b"/public/.%2e/admin/x", POLICY, None, id="half-encoded-dotdot"),
    pytest.param(b"/public/%2e./admin/x", POLICY, None, id="other-half-encoded-dotdot"),
    pytest.param(b"/%2e/admin/x", POLICY, None, id="encoded-dot-segment"),
    pytest.param(b"/admin/%2E/x", POLICY, None, id="encoded-dot-inside-protected"),
    # plain dot-segments and slashes
    pytest.param(b"//admin/x", POLICY, None, id="double-slash"),
    pytest.param(b"///admin//x", POLICY, None, id="many-slashes"),
    pytest.param(b"/./admin/x", POLICY, None, id="dot-segment"),
    pytest.param(b"/public/../admin/x", POLICY, None, id="dotdot-into-protected"),
    pytest.param(b"/public/./../admin", POLICY, None, id="dot-then-dotdot"),
    pytest.param(b"/public%20/../admin", POLICY, None, id="dotdot-after-encoded-space"),
    pytest.param(b"/admin", POLICY, None, id="protected-root-no-slash"),
    pytest.param(b"/admin/", POLICY, None, id="protected-root-slash"),
    pytest.param(b"/admin/x/..", POLICY, None, id="dotdot-back-to-protected-root"),
    pytest.param(b"/admin/%2e%2e/admin/x", POLICY, None, id="out-and-back-in"),
    pytest.param(b"/%61dmin/x", POLICY, None, id="encoded-unreserved-letter"),
    pytest.param(b"/adm%69n/x", POLICY, None, id="encoded-letter-inside"),
    pytest.param(b"/admin/../public", ELSEWHERE, "/public", id="dotdot-out-of-protected"),
    pytest.param(b"/adminx", ELSEWHERE, "/adminx", id="longer-segment"),
    pytest.param(b"/public/admin/x", ELSEWHERE, "/public/admin/x", id="protected-name-deeper"),
    pytest.param(b"/public?/../admin/x", ELSEWHERE, "/public?/../admin/x", id="dotdot-in-query"),
    # backslashes
    pytest.param(b"/public\\..\\admin\\x", REFUSED, None, id="raw-backslashes"),
    pytest.param(b"/public/%5c../admin", REFUSED, None, id="encoded-backslash-lower"),
    pytest.param(b"/public/..%5Cadmin", REFUSED, None, id="encoded-backslash-upper"),
    # path parameters (servlet containers strip ";..." before resolving)
    pytest.param(b"/public/..;/admin/x", REFUSED, None, id="dotdot-semicolon"),
    pytest.param(b"/public/..;x=1/admin/x", REFUSED, None, id="dotdot-semicolon-param"),
    pytest.param(b"/admin;jsessionid=1/x", REFUSED, None, id="param-on-protected-segment"),
    pytest.param(b"/;/admin/x", REFUSED, None, id="empty-segment-with-param"),
    pytest.param(b"/admin/.;/x", REFUSED, None, id="dot-semicolon"),
    # an encoded ";" (servlet stacks that decode first, then cut ";...", read "..%3B" as "..")
    pytest.param(b"/public/..%3B/admin/x", REFUSED, None, id="dotdot-encoded-semicolon"),
    pytest.param(b"/public/..%3b/admin/x", REFUSED, None, id="dotdot-encoded-semicolon-lower"),
    pytest.param(b"/public/%2e%2e%3b/admin/x", REFUSED, None, id="all-encoded-dotdot-semicolon"),
    pytest.param(b"/admin%3bx/secret", REFUSED, None, id="encoded-semicolon-in-a-name"),
    pytest.param(b"/public/..%253B/admin", REFUSED, None, id="double-encoded-semicolon"),
    pytest.param(b"/public/..%c0%bb/admin", REFUSED, None, id="overlong-semicolon"),
    pytest.param(b"/public/..%ef%bc%9b/admin", REFUSED, None, id="fullwidth-semicolon"),
    # double and deeper encodings
    pytest.param(b"/public/%252e%252e/admin/x", REFUSED, None, id="double-encoded-dots"),
    pytest.param(b"/public/%25252e%25252e/admin/x", REFUSED, None, id="triple-encoded-dots"),
    pytest.param(b"/public/..%252fadmin", REFUSED, None, id="double-encoded-slash"),
    pytest.param(b"/%2561dmin/x", REFUSED, None, id="double-encoded-letter"),
    pytest.param(b"/public/%25%32%65%25%32%65/admin", REFUSED, None, id="percent-then-encoded-hex"),
    # overlong UTF-8 and compatibility characters
    pytest.param(b"/public/%c0%ae%c0%ae/admin", REFUSED, None, id="overlong-2-byte-dot"),
    pytest.param(b"/public/%e0%80%ae%e0%80%ae/admin", REFUSED, None, id="overlong-3-byte-dot"),
    pytest.param(b"/public/..%c0%afadmin", REFUSED, None, id="overlong-slash"),
    pytest.param(
        b"/public/%f0%80%80%ae%f0%80%80%ae/admin", REFUSED, None, id="overlong-4-byte-dot"
    ),
    pytest.param(b"/public/%EF%BC%8E%EF%BC%8E/admin", REFUSED, None, id="fullwidth-dots"),
    pytest.param(b"/public/..%EF%BC%8Fadmin", REFUSED, None, id="fullwidth-slash"),
    pytest.param(b"/public/..%EF%BC%BCadmin", REFUSED, None, id="fullwidth-backslash"),
    pytest.param(b"/public/%E2%80%A5/admin", REFUSED, None, id="two-dot-leader"),
    pytest.param(b"/public/%EF%B9%92%EF%B9%92/admin", REFUSED, None, id="small-full-stops"),
    pytest.param(b"/public/%ED%A0%80", REFUSED, None, id="encoded-surrogate"),
    pytest.param(b"/public/%ff", REFUSED, None, id="invalid-utf8-byte"),
    # controls, NUL and malformed escapes
    pytest.param(b"/admin%00", REFUSED, None, id="encoded-nul"),
    pytest.param(b"/public%00/../admin", REFUSED, None, id="encoded-nul-before-dotdot"),
    pytest.param(b"/admin\x00/x", REFUSED, None, id="raw-nul"),
    pytest.param(b"/admin%09/x", REFUSED, None, id="encoded-tab"),
    pytest.param(b"/admin%0d%0aX-Injected:%201/x", REFUSED, None, id="encoded-crlf"),
    pytest.param(b"/admin%7f/x", REFUSED, None, id="encoded-del"),
    pytest.param(b"/admin%/x", REFUSED, None, id="lone-percent"),
    pytest.param(b"/admin%zz/x", REFUSED, None, id="bad-hex"),
    pytest.param(b"/%u0061dmin/x", REFUSED, None, id="iis-percent-u"),
    pytest.param(b"/adm\xc3\xadn/x", REFUSED, None, id="raw-utf8"),
    pytest.param(b"/admin x", REFUSED, None, id="raw-space-splits-request-line"),
    pytest.param(b"/public#/../admin", REFUSED, None, id="fragment"),
]


@pytest.mark.parametrize(("target", "status", "upstream_path"), CASES)
async def test_path_spellings(
    world: World, target: bytes, status: int, upstream_path: str | None
) -> None:
    assert await get(world.port, target) == status
    if upstream_path is None:
        assert world.upstream.received == [], "a refused or protected path reached the upstream"
        return
    [received] = world.upstream.received
    assert received.raw_path == upstream_path
    lenient = sorted(r for r in lenient_readings(received.raw_path) if names_protected(r))
    assert lenient == [], f"a lenient upstream would read {lenient} without the admin policy"


# Documented risks: by default the gateway forwards these under the anonymous route, which is
# correct for a case-sensitive, strict upstream; an upstream that folds case (Windows, IIS,
# Express, ASP.NET Core), trims trailing dots and spaces from segments (Windows file APIs) or
# applies NFKC would serve a protected path. Declare how the upstream reads paths
# (``upstreams.NAME.paths``, deploy/PATHS.md): see test_paths_settings_close_the_documented_risks.
RISKS = [
    pytest.param(b"/ADMIN/x", "/ADMIN/x", id="case-upper"),
    pytest.param(b"/Admin/x", "/Admin/x", id="case-title"),
    pytest.param(b"/aDmIn/x", "/aDmIn/x", id="case-mixed"),
    pytest.param(b"/key/x", "/key/x", id="case-lower-Key-route"),
    pytest.param(b"/%41dmin/x", "/Admin/x", id="case-via-encoded-letter"),
    pytest.param(b"/admin./x", "/admin./x", id="trailing-dot"),
    pytest.param(b"/admin%2e/x", "/admin./x", id="trailing-encoded-dot"),
    pytest.param(b"/admin../x", "/admin../x", id="trailing-two-dots"),
    pytest.param(b"/admin%20/x", "/admin%20/x", id="trailing-space"),
    pytest.param(b"/admin.%20/x", "/admin.%20/x", id="trailing-dot-space"),
    pytest.param(b"/%EF%BD%81dmin/x", "/%EF%BD%81dmin/x", id="fullwidth-letter-nfkc"),
    pytest.param(b"/%E2%84%AAey/x", "/%E2%84%AAey/x", id="kelvin-sign-nfkc"),
]


@pytest.mark.parametrize(("target", "upstream_path"), RISKS)
async def test_documented_risk_spellings_reach_upstream_unprotected(
    world: World, target: bytes, upstream_path: str
) -> None:
    assert await get(world.port, target) == 200
    [received] = world.upstream.received
    assert received.raw_path == upstream_path
    assert any(names_protected(r, fold_case=True) for r in risky_readings(received.raw_path)), (
        "not a risk after all: update the table"
    )


# The same spellings with the upstream declared as IIS reads paths (deploy/PATHS.md): each is
# judged by the protected route, or refused where upstreams disagree on its reading.
AS_IIS_READS_THEM = {
    "case-upper": POLICY, "case-title": POLICY, "case-mixed": POLICY,
    "case-lower-Key-route": POLICY, "case-via-encoded-letter": POLICY,
    "trailing-dot": POLICY, "trailing-encoded-dot": POLICY, "trailing-two-dots": POLICY,
    "trailing-space": POLICY, "trailing-dot-space": POLICY,
    "kelvin-sign-nfkc": REFUSED,  # Java folds U+212A into "k", .NET does not: refused
    "fullwidth-letter-nfkc": ELSEWHERE,  # no upstream folds case into it; NFKC only
}  # fmt: skip
IIS = {"case": "insensitive", "trailing_dot": "ignored", "trailing_space": "ignored"}


async def test_paths_settings_close_the_documented_risks(world: World) -> None:
    directory = world.tmp / "iis"
    directory.mkdir(exist_ok=True)
    assert {p.id for p in RISKS} == set(AS_IIS_READS_THEM)
    async with running_gateway(directory, gateway_config(world.upstream, IIS)) as gw:
        for case in RISKS:
            target, upstream_path = case.values
            world.upstream.received.clear()
            expected = AS_IIS_READS_THEM[case.id]
            assert await get(gw.proxy_port, target) == expected, case.id
            paths = [r.raw_path for r in world.upstream.received]
            assert paths == ([upstream_path] if expected == ELSEWHERE else []), case.id


async def test_path_parameters_cannot_dodge_a_protected_route(world: World) -> None:
    directory = world.tmp / "params"
    directory.mkdir(exist_ok=True)
    config = gateway_config(world.upstream, None, path_parameters=True)
    async with running_gateway(directory, config) as gw:
        status = await get(gw.proxy_port, b"/admin;x=1/secret")
    paths = [r.raw_path for r in world.upstream.received]
    assert (status, paths) == (401, []), (status, paths)
