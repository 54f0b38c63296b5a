"""RFC 7662 introspection against a real endpoint: client authentication (RFC 6749 §2.3,
RFC 7523), answer validation, failing closed, and the single retry on connection errors."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth.identity import Identity
from gateway.auth.introspection import Introspector
from gateway.auth.settings import IssuerSettings
from gateway.config.models import ClientAuth, Introspection, IssuerHTTP
from gateway.problems import InvalidToken, ServiceUnavailable
from tests.support.introspection import TestIntrospectionServer
from tests.support.settings import Issuer

ISSUER = "https://as.example/"
AUDIENCE = "api://orders"
TOKEN = "opaque-token-7f3c9a"
CLIENT_ID = "gate way:1%"  # characters RFC 6749 §2.3.1 form-encoding must protect
SECRET = "s3cr:et+%/ é"


def issuer_config(client: ClientAuth, **changes: Any) -> IssuerSettings:
    introspection = Introspection(client=client, timeout=changes.pop("timeout", 0.5))
    settings: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE, "api://other"],
        "introspection": introspection,
        "mode": "introspection",
        **changes,
    }
    return Issuer(**settings)


def basic_client() -> ClientAuth:
    return ClientAuth(method="client_secret_basic", client_id=CLIENT_ID, client_secret=SECRET)


def pem(private_key: Any, path: Path) -> Path:
    path.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        yield client


ServerFactory = Callable[..., Awaitable[TestIntrospectionServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    servers: list[TestIntrospectionServer] = []

    async def make(port: int = 0, **options: Any) -> TestIntrospectionServer:
        options.setdefault("client_id", CLIENT_ID)
        options.setdefault("client_secret", SECRET)
        server = TestIntrospectionServer(**options)
        server.default_fields = {"aud": AUDIENCE}  # answers name us unless a test says not
        servers.append(server)
        await server.start(port)
        return server

    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def server(make_server: ServerFactory) -> TestIntrospectionServer:
    return await make_server()


def introspector(
    url: str, session: aiohttp.ClientSession, client: ClientAuth | None = None, **changes: Any
) -> Introspector:
    config = issuer_config(client or basic_client(), **changes)
    return Introspector(config, session, endpoint=url)


# --- client authentication -----------------------------------------------------------------


def rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    ("method", "key_factory", "alg"),
    [
        pytest.param("client_secret_basic", None, None, id="basic-form-encoded"),
        pytest.param("client_secret_post", None, None, id="post"),
        pytest.param("private_key_jwt", rsa_key, "RS256", id="private-key-jwt-rs256"),
        pytest.param(
            "private_key_jwt", lambda: ec.generate_private_key(ec.SECP256R1()), "ES256",
            id="private-key-jwt-es256",
        ),
    ],
)  # fmt: skip
async def test_each_client_auth_method_is_accepted(
    make_server: ServerFactory,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    method: str,
    key_factory: Callable[[], Any] | None,
    alg: str | None,
) -> None:
    if key_factory is None:
        server = await make_server(auth_method=method)
        client = ClientAuth(method=method, client_id=CLIENT_ID, client_secret=SECRET)  # type: ignore[arg-type]
    else:
        key = key_factory()
        server = await make_server(auth_method=method, public_key=key.public_key())
        client = ClientAuth(
            method="private_key_jwt",
            client_id=CLIENT_ID,
            private_key_file=pem(key, tmp_path / "client.pem"),
            private_key_alg=alg,  # type: ignore[arg-type]
            key_id="k1",
        )
    server.add_token(TOKEN, sub="alice", exp=time.time() + 60)
    checker = introspector(server.url, session, client)
    for _ in range(2):  # a second call: a private_key_jwt assertion must not be replayed
        identity = await checker.introspect(TOKEN)
        assert identity is not None
        assert identity.subject == "alice"
    assert (server.auth_failures, server.calls, checker.calls) == (0, 2, 2)
    sent = server.requests[0]
    assert sent["form"]["token"] == TOKEN
    assert sent["form"]["token_type_hint"] == "access_token"
    assert sent["headers"]["Accept"] == "application/json"
    assert sent["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert ("client_secret" in sent["form"]) == (method == "client_secret_post")
    assert ("Authorization" in sent["headers"]) == (method == "client_secret_basic")


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("client_secret_basic", id="basic"),
        pytest.param("client_secret_post", id="post"),
        pytest.param("private_key_jwt", id="private-key-jwt-wrong-key"),
    ],
)
async def test_rejected_client_credentials_fail_closed(
    make_server: ServerFactory, session: aiohttp.ClientSession, tmp_path: Path, method: str
) -> None:
    server = await make_server(auth_method=method, public_key=rsa_key().public_key())
    if method == "private_key_jwt":
        client = ClientAuth(
            method="private_key_jwt",
            client_id=CLIENT_ID,
            private_key_file=pem(rsa_key(), tmp_path / "other.pem"),
        )
    else:
        client = ClientAuth(method=method, client_id=CLIENT_ID, client_secret="wrong")  # type: ignore[arg-type]
    server.add_token(TOKEN, sub="alice")
    with pytest.raises(ServiceUnavailable):
        await introspector(server.url, session, client).introspect(TOKEN)
    assert server.auth_failures == 1


# --- answers -------------------------------------------------------------------------------


async def test_active_answer_becomes_an_identity(
    server: TestIntrospectionServer, session: aiohttp.ClientSession
) -> None:
    exp = int(time.time()) + 120
    server.add_token(
        TOKEN, sub="alice", client_id="web", scope="orders:read orders:write",
        aud=[AUDIENCE, "api://elsewhere"], iss=ISSUER, exp=exp, username="al",
    )  # fmt: skip
    identity = await introspector(server.url, session).introspect(TOKEN)
    assert identity == Identity(
        issuer=ISSUER,
        subject="alice",
        client_id="web",
        scopes=frozenset({"orders:read", "orders:write"}),
        audiences=(AUDIENCE, "api://elsewhere"),
        expires_at=float(exp),
        token_kind="opaque",
        claims={
            "sub": "alice", "client_id": "web", "scope": "orders:read orders:write",
            "aud": [AUDIENCE, "api://elsewhere"], "iss": ISSUER, "exp": exp, "username": "al",
        },
    )  # fmt: skip
    assert "active" not in identity.claims
    with pytest.raises(TypeError):
        identity.claims["sub"] = "mallory"  # type: ignore[index]


async def test_scopes_come_from_the_first_configured_claim_present(
    server: TestIntrospectionServer, session: aiohttp.ClientSession
) -> None:
    server.add_token(TOKEN, scp=["a", "b"], scope="ignored")
    checker = introspector(server.url, session, scope_claims=["scp", "scope"])
    identity = await checker.introspect(TOKEN)
    assert identity is not None
    assert identity.scopes == frozenset({"a", "b"})
    assert (identity.subject, identity.audiences, identity.expires_at) == (None, (AUDIENCE,), None)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(None, id="unknown-token"),
        pytest.param({"active": False}, id="active-false"),
        pytest.param({"active": False, "sub": "alice", "iss": "https://evil/"}, id="false-wins"),
    ],
)
async def test_inactive_is_none(
    server: TestIntrospectionServer, session: aiohttp.ClientSession, fields: dict[str, Any] | None
) -> None:
    if fields is not None:
        server.add_token(TOKEN, **fields)
    assert await introspector(server.url, session).introspect(TOKEN) is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        pytest.param({"iss": "https://other.example/"}, "issuer", id="iss-mismatch"),
        pytest.param({"aud": "api://elsewhere"}, "audience", id="aud-string-mismatch"),
        pytest.param({"aud": ["x", "y"]}, "audience", id="aud-list-mismatch"),
        pytest.param({"aud": []}, "audience", id="aud-empty-list"),
        pytest.param({"aud": None}, "audience", id="aud-missing-refresh-token-shape"),
        pytest.param({"exp": -40.0}, "expired", id="expired-beyond-leeway"),
        pytest.param({"nbf": 40.0}, "not_yet_valid", id="nbf-beyond-leeway"),
        pytest.param({"token_type": "refresh_token"}, "token_type", id="refresh-token"),
        pytest.param({"token_use": "refresh_token"}, "token_type", id="hydra-refresh-token"),
    ],
)
async def test_active_answers_contradicting_the_issuer_are_invalid(
    server: TestIntrospectionServer,
    session: aiohttp.ClientSession,
    fields: dict[str, Any],
    reason: str,
) -> None:
    now = time.time()
    for name in ("exp", "nbf"):
        if name in fields:
            fields[name] += now
    server.add_token(TOKEN, sub="alice", **fields)
    with pytest.raises(InvalidToken) as raised:
        await introspector(server.url, session).introspect(TOKEN)
    assert raised.value.reason == reason


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="no-iss"),
        pytest.param({"iss": ISSUER, "aud": "api://other"}, id="second-audience"),
        pytest.param({"exp": -20.0, "nbf": 20.0}, id="within-leeway"),
        pytest.param({"token_type": "Bearer"}, id="bearer-token-type"),
    ],
)
async def test_active_answers_within_the_rules_are_accepted(
    server: TestIntrospectionServer, session: aiohttp.ClientSession, fields: dict[str, Any]
) -> None:
    now = time.time()
    for name in ("exp", "nbf"):
        if name in fields:
            fields[name] += now
    server.add_token(TOKEN, sub="alice", **fields)
    assert await introspector(server.url, session).introspect(TOKEN) is not None


async def test_missing_audience_only_where_the_deployment_allows_it(
    server: TestIntrospectionServer, session: aiohttp.ClientSession
) -> None:
    server.add_token(TOKEN, sub="alice", aud=None)
    client = basic_client()
    strict = introspector(server.url, session, client)
    with pytest.raises(InvalidToken):
        await strict.introspect(TOKEN)
    lenient_config = issuer_config(client)
    lenient = Introspector(
        dataclasses.replace(
            lenient_config,
            introspection=dataclasses.replace(
                lenient_config.introspection, allow_missing_audience=True
            ),
        ),
        session,
        endpoint=server.url,
    )
    assert await lenient.introspect(TOKEN) is not None


# --- failing closed ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        pytest.param("error", "introspection_bad_answer", id="status-500"),
        pytest.param("garbage", "introspection_bad_answer", id="non-json-body"),
        pytest.param("no_active", "introspection_bad_answer", id="json-without-active"),
        pytest.param("hang", "introspection_error", id="hang-times-out"),
        pytest.param("slow", "introspection_error", id="slower-than-timeout"),
    ],
)
async def test_server_failures_are_unavailable_and_never_retried(
    server: TestIntrospectionServer, session: aiohttp.ClientSession, mode: Any, reason: str
) -> None:
    server.add_token(TOKEN, sub="alice")
    server.mode = mode
    server.delay = 1.0
    checker = introspector(server.url, session, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as raised:
        await checker.introspect(TOKEN)
    assert time.monotonic() - started < 0.5
    assert raised.value.reason == reason
    assert (server.calls, checker.calls) == (1, 1)


async def test_a_slow_answer_within_the_timeout_is_used(
    server: TestIntrospectionServer, session: aiohttp.ClientSession
) -> None:
    server.add_token(TOKEN, sub="alice")
    server.mode = "slow"
    server.delay = 0.05
    assert await introspector(server.url, session, timeout=0.5).introspect(TOKEN) is not None


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"active": "true"}, id="active-string"),
        pytest.param([{"active": True}], id="array"),
        pytest.param({"active": True, "exp": "tomorrow"}, id="exp-string"),
    ],
)
async def test_malformed_json_answers_are_unavailable(
    aiohttp_server: Any, session: aiohttp.ClientSession, answer: Any
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/introspect", handler)
    server = await aiohttp_server(app)
    with pytest.raises(ServiceUnavailable):
        await introspector(str(server.make_url("/introspect")), session).introspect(TOKEN)


async def test_redirects_are_not_followed(
    aiohttp_server: Any, session: aiohttp.ClientSession
) -> None:
    followed = []

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request)
        return web.json_response({"active": True})

    app = web.Application()
    app.router.add_post("/introspect", redirect)
    app.router.add_post("/elsewhere", elsewhere)
    server = await aiohttp_server(app)
    with pytest.raises(ServiceUnavailable):
        await introspector(str(server.make_url("/introspect")), session).introspect(TOKEN)
    assert followed == []


# --- the single retry ----------------------------------------------------------------------


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def attempt_counter(
    on_failure: Callable[[], Awaitable[None]] | None = None,
) -> tuple[aiohttp.TraceConfig, list[str]]:
    """Records every request attempt and its failures, as the client library sees them."""
    attempts: list[str] = []
    trace = aiohttp.TraceConfig()

    async def started(*_: Any) -> None:
        attempts.append("start")

    async def failed(_session: Any, _context: Any, params: SimpleNamespace) -> None:
        attempts.append(type(params.exception).__name__)
        if on_failure is not None:
            await on_failure()

    trace.on_request_start.append(started)
    trace.on_request_exception.append(failed)
    return trace, attempts


async def test_connection_refused_once_is_retried_once(make_server: ServerFactory) -> None:
    port = unused_port()
    servers: list[TestIntrospectionServer] = []

    async def come_up() -> None:  # the endpoint starts listening only after the refusal
        if not servers:
            server = await make_server(port)
            server.add_token(TOKEN, sub="alice")
            servers.append(server)

    trace, attempts = attempt_counter(come_up)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        checker = introspector(f"http://127.0.0.1:{port}/introspect", session)
        identity = await checker.introspect(TOKEN)
    assert identity is not None
    assert attempts == ["start", "ClientConnectorError", "start"]
    assert (checker.calls, servers[0].calls) == (2, 1)


async def test_connection_refused_twice_is_unavailable() -> None:
    trace, attempts = attempt_counter()
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        checker = introspector(f"http://127.0.0.1:{unused_port()}/introspect", session)
        with pytest.raises(ServiceUnavailable) as raised:
            await checker.introspect(TOKEN)
    assert raised.value.reason == "introspection_error"
    assert attempts == ["start", "ClientConnectorError"] * 2
    assert checker.calls == 2


async def test_a_dropped_connection_is_retried_once(
    server: TestIntrospectionServer, session: aiohttp.ClientSession
) -> None:
    server.mode = "drop"
    checker = introspector(server.url, session)
    with pytest.raises(ServiceUnavailable):
        await checker.introspect(TOKEN)
    assert (server.calls, checker.calls) == (2, 2)


# --- secrets stay out of logs --------------------------------------------------------------


async def test_failures_never_log_the_raw_token(
    server: TestIntrospectionServer,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    checker = introspector(server.url, session, timeout=0.2)
    for mode in ("error", "garbage", "hang", "drop"):
        server.mode = mode  # type: ignore[assignment]
        with pytest.raises(ServiceUnavailable):
            await checker.introspect(TOKEN)
    assert caplog.records, "failures should be logged"
    assert TOKEN not in caplog.text
    assert SECRET not in caplog.text


async def test_introspection_without_config_is_refused(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="no introspection"):
        Introspector(
            Issuer(issuer=ISSUER, audiences=[AUDIENCE]), session, endpoint="https://x/introspect"
        )


async def test_a_key_that_cannot_sign_with_the_alg_is_refused_at_construction(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    client = ClientAuth(
        method="private_key_jwt",
        client_id=CLIENT_ID,
        private_key_file=pem(ec.generate_private_key(ec.SECP256R1()), tmp_path / "ec.pem"),
        private_key_alg="RS256",
    )
    with pytest.raises(ValueError, match="cannot sign RS256"):
        introspector("https://as.example/introspect", session, client)


@pytest.mark.parametrize(
    ("endpoint", "insecure_http", "accepted"),
    [
        pytest.param("https://as.example/introspect", False, True, id="https"),
        pytest.param("http://127.0.0.1:9/introspect", False, True, id="http-loopback-v4"),
        pytest.param("http://[::1]:9/introspect", False, True, id="http-loopback-v6"),
        pytest.param("http://localhost/introspect", False, True, id="http-localhost"),
        pytest.param("http://as.example/introspect", False, False, id="http-remote"),
        pytest.param("http://as.example/introspect", True, True, id="http-remote-allowed"),
        pytest.param("ftp://as.example/introspect", True, False, id="not-http"),
        pytest.param("/introspect", True, False, id="relative"),
    ],
)
async def test_endpoint_must_use_tls_outside_loopback(
    session: aiohttp.ClientSession, endpoint: str, insecure_http: bool, accepted: bool
) -> None:
    config = issuer_config(basic_client(), http=IssuerHTTP(insecure_http=insecure_http))
    if accepted:
        Introspector(config, session, endpoint=endpoint)
    else:
        with pytest.raises(ValueError):
            Introspector(config, session, endpoint=endpoint)


async def test_hang_does_not_outlive_the_timeout_under_concurrency(
    server: TestIntrospectionServer, session: aiohttp.ClientSession
) -> None:
    server.mode = "hang"
    checker = introspector(server.url, session, timeout=0.2)
    started = time.monotonic()
    results = await asyncio.gather(
        *(checker.introspect(f"{TOKEN}-{i}") for i in range(20)), return_exceptions=True
    )
    assert all(isinstance(result, ServiceUnavailable) for result in results)
    assert time.monotonic() - started < 0.6
