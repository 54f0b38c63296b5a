"""Browser login against a running gateway, without a browser: a gateway config with a login
over a ``TestIssuer`` + ``TokenServer``, the whole setup started (``login_world``), and a
client that keeps cookies as RFC 6265 §5.3 says (``Browser``) and walks the authorization
code flow the way a browser's redirects do. The real-browser tests are in
tests/e2e/test_browser_login.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from gateway.app import Gateway
from tests.support.gateway import running_gateway, wait_ready
from tests.support.issuer import TestIssuer
from tests.support.sessions import Browser
from tests.support.token_server import TokenServer

EXTERNAL = "https://app.example"
SECRET = "login-secret-" + "x" * 32
NAVIGATE = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8", "Sec-Fetch-Mode": "navigate"}
SESSION_COOKIE = "__Host-gw_session"
LOGIN_COOKIE = "__Host-gw_session_login"


def login_config(
    upstream_url: str,
    issuer: TestIssuer,
    *,
    login: dict[str, Any] | None = None,
    cache: dict[str, Any] | None = None,
    routes: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One login ("main") over ``issuer``; session routes under /app (redirects), /api (no
    redirects), /strict (bearer: never), a bearer route /bearer and an anonymous /public."""
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"url": upstream_url, "timeouts": {"connect": "1s", "read": "5s"}}},
        "issuers": [{"name": "main", "issuer": issuer.url, "keys": {"discovery": True},
                     "audiences": ["api://default"], "leeway": "1s"}],
        "logins": [{"issuer": "main", "external_url": EXTERNAL, "secrets": [SECRET],
                    "client": {"client_id": "web-app", "client_secret": "web-secret"},
                    "scopes": ["openid", "email"], "backchannel_logout_path": "/oauth2/backchannel",
                    **(login or {})}],
        "routes": routes or [
            {"name": "app", "match": {"path": {"prefix": "/app"}}, "upstream": "app",
             "auth": "session"},
            {"name": "api", "match": {"path": {"prefix": "/api"}}, "upstream": "app",
             "auth": "session", "session": {"redirect": False}},
            {"name": "strict", "match": {"path": {"prefix": "/strict"}}, "upstream": "app",
             "auth": "session", "session": {"bearer": "never"}},
            {"name": "bearer", "match": {"path": {"prefix": "/bearer"}}, "upstream": "app"},
            {"name": "public", "match": {"path": {"prefix": "/public"}}, "upstream": "app",
             "auth": "anonymous"},
        ],
    }  # fmt: skip
    if cache is not None:
        config["cache"] = cache
    config.update(extra)
    return config


def redis_cache(url: str) -> dict[str, Any]:
    from tests.support.redis import TEST_CACHE_KEY

    return {"redis": {"url": url, "key": TEST_CACHE_KEY, "timeout": "500ms"},
            "key_prefix": f"t:{uuid.uuid4().hex[:8]}:"}  # fmt: skip


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def location(self) -> str:
        return self.headers["Location"]

    def set_cookies(self) -> list[str]:
        return self.headers.getall("Set-Cookie", [])


class LoginClient:
    """A browser's cookie jar in front of one or more gateways (replicas share cookies, as
    they would behind one origin)."""

    def __init__(self, http: aiohttp.ClientSession, browser: Browser | None = None) -> None:
        self.http = http
        self.browser = browser or Browser()

    async def get(
        self,
        gateway: Gateway,
        target: str,
        headers: dict[str, str] | None = None,
        *,
        method: str = "GET",
        data: Any = None,
        cookies: bool = True,
    ) -> Answer:
        sent = dict(headers if headers is not None else NAVIGATE)
        jar = self.browser.cookie_header() if cookies else []
        if jar:
            extra = sent.pop("Cookie", None)
            sent["Cookie"] = jar[0] + (f"; {extra}" if extra else "")
        url = f"http://127.0.0.1:{gateway.proxy_port}{target}"
        async with self.http.request(
            method, url, headers=sent, data=data, allow_redirects=False
        ) as response:
            body = await response.read()
            answer = Answer(response.status, response.headers, body)
        self.browser.receive(answer.set_cookies())
        return answer

    async def start_login(self, gateway: Gateway, target: str = "/app/orders") -> dict[str, str]:
        """The redirect to the authorization endpoint: its parameters."""
        answer = await self.get(gateway, target)
        assert answer.status == 302, (answer.status, answer.body)
        return {k: v[0] for k, v in parse_qs(urlsplit(answer.location).query).items()}

    async def log_in(
        self,
        gateway: Gateway,
        server: TokenServer,
        target: str = "/app/orders",
        *,
        subject: str = "alice",
        sid: str = "op-session-1",
    ) -> Answer:
        """The whole flow, the authorization server's login form standing in for a person."""
        params = await self.start_login(gateway, target)
        query = authorization_answer(server, params, subject=subject, sid=sid)
        return await self.get(gateway, "/oauth2/callback?" + query)


def authorization_answer(server: TokenServer, params: dict[str, str], **changes: str) -> str:
    """The callback query the authorization server answers the request ``params`` with (as
    ``start_login`` returned them); ``changes`` alter what it answers (subject, sid, nonce)."""
    values = {"state": params["state"], "nonce": params["nonce"],
              "challenge": params["code_challenge"], "redirect_uri": params["redirect_uri"],
              **changes}  # fmt: skip
    return server.authorize(**values)


class Served(Protocol):
    """An upstream a test starts and closes: ``RecordingUpstream`` or one of its own."""

    url: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...


U = TypeVar("U", bound=Served)


@dataclass
class LoginSetup(Generic[U]):
    """A ready gateway with a login, the issuer and token endpoint behind it, the upstream,
    and an HTTP session that keeps no cookies itself (each ``LoginClient`` has its jar)."""

    gateway: Gateway
    issuer: TestIssuer
    server: TokenServer
    upstream: U
    http: aiohttp.ClientSession

    def client(self) -> LoginClient:
        return LoginClient(self.http)

    def authorized(self, params: dict[str, str], **changes: str) -> str:
        return authorization_answer(self.server, params, **changes)


@asynccontextmanager
async def login_world(
    directory: Path,
    upstream: U,
    *,
    metadata: dict[str, Any] | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
    **config: Any,
) -> AsyncIterator[LoginSetup[U]]:
    """Issuer (with ``metadata`` in its discovery document), token endpoint, ``upstream``
    and a gateway configured by ``login_config(upstream.url, issuer, **config)`` - then
    ``edit``, for what needs more than its keywords - ready."""
    issuer = TestIssuer()
    server = TokenServer(issuer)
    await issuer.start()
    server.advertise()
    issuer.metadata_overrides.update(metadata or {})
    await upstream.start()
    try:
        settings = login_config(upstream.url, issuer, **config)
        if edit is not None:
            edit(settings)
        async with (
            running_gateway(directory, settings) as gateway,
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        ):
            await wait_ready(gateway)
            yield LoginSetup(gateway, issuer, server, upstream, http)
    finally:
        await upstream.close()
        await issuer.close()


def logout_token(issuer: TestIssuer, **claims: Any) -> str:
    """Back-Channel Logout 1.0 §2.4: a logout token for the "web-app" client."""
    now = int(time.time())
    body: dict[str, Any] = {
        "aud": "web-app", "iat": now, "exp": now + 120, "jti": uuid.uuid4().hex,
        "sid": "op-session-1", "sub": "alice", "client_id": None, "scope": None,
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    }  # fmt: skip
    body.update(claims)
    return issuer.mint(body, headers={"typ": "logout+jwt"})


async def metric(gateway: Gateway, http: aiohttp.ClientSession, prefix: str) -> dict[str, float]:
    """The /metrics samples whose line starts with ``prefix``."""
    async with http.get(f"http://127.0.0.1:{gateway.admin_port}/metrics") as response:
        text = await response.text()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }
