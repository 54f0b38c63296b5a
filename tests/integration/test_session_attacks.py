"""An attacker's review of browser login (issue 18), through the running gateway: what an
upstream, a hostile page or a tampered cookie can and cannot do to a session. Each test is
the regression test of a defect found in that review, or pins a refusal it checked."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import web

from tests.support.gateway import running_gateway, wait_ready
from tests.support.issuer import TestIssuer
from tests.support.login import (
    EXTERNAL,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    LoginClient,
    LoginSetup,
    login_config,
    login_world,
    logout_token,
    metric,
)

API = {"Accept": "application/json"}
# What an application may set beside the gateway's cookies, spelled oddly on purpose: these
# must reach the browser byte for byte and in order.
THEIRS = [
    "theme=dark; Path=/; SameSite=Strict",
    "spaced =  v ;Max-Age=5",
    "__Host-gw_session_other=1; Path=/; Secure",
    "gw_session=not-ours-without-the-prefix; Path=/",
]
# Every spelling under which a browser would store (and send back) one of the gateway's
# cookies: the bare name, chunks, the pre-login cookie, whitespace around the name, and the
# nameless forms a browser sends as the bare value (RFC 6265bis §5.6, §5.8.3).
OURS = [
    f"{SESSION_COOKIE}=planted; Path=/; Secure; HttpOnly; SameSite=Lax",
    f"{SESSION_COOKIE}.0=2.abcdef.planted; Path=/; Secure",
    f"{SESSION_COOKIE}.7=x; Path=/app; Secure",
    f"{LOGIN_COOKIE}=planted; Path=/; Secure",
    f" \t{SESSION_COOKIE} =planted; Path=/",
    f"={SESSION_COOKIE}=planted; Path=/",
    f"{SESSION_COOKIE}; Path=/",
]


class CookieUpstream:
    """A real aiohttp application that sets ``cookies`` on every answer, HTTP or WebSocket."""

    def __init__(self, cookies: list[str]) -> None:
        self.cookies = cookies
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ws/{tail:.*}", self._websocket)
        app.router.add_route("*", "/{tail:.*}", self._page)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _page(self, request: web.Request) -> web.Response:
        response = web.Response(text="page\n")
        for cookie in self.cookies:
            response.headers.add("Set-Cookie", cookie)
        if request.path.endswith(".js"):  # a static asset any cache may keep
            response.headers["Cache-Control"] = "public, max-age=86400"
        return response

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        for cookie in self.cookies:
            ws.headers.add("Set-Cookie", cookie)
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws


Setup = LoginSetup[CookieUpstream]


ROUTES: list[dict[str, Any]] = [
    {"name": "app", "match": {"path": {"prefix": "/app"}}, "upstream": "app", "auth": "session"},
    {"name": "ws", "match": {"path": {"prefix": "/ws"}}, "upstream": "app", "auth": "anonymous",
     "websocket": True},
    {"name": "public", "match": {"path": {"prefix": "/public"}}, "upstream": "app",
     "auth": "anonymous"},
]  # fmt: skip


async def started(
    tmp_path: Path, cookies: list[str], down: bool = False, **config: Any
) -> AsyncIterator[Setup]:
    config.setdefault("routes", ROUTES)

    def add_down(settings: dict[str, Any]) -> None:
        # An upstream nothing listens on (port 9 on loopback: discard, never served).
        settings["upstreams"]["down"] = {
            "url": "http://127.0.0.1:9",
            "timeouts": {"connect": "1s", "read": "1s"},
        }

    upstream = CookieUpstream(cookies)
    async with login_world(tmp_path, upstream, edit=add_down if down else None, **config) as setup:
        yield setup


async def raw_set_cookies(port: int, request: bytes) -> list[bytes]:
    """The ``Set-Cookie`` field values of the answer's head, exactly as they were sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    lines = head.split(b"\r\n")[1:]
    return [line.split(b":", 1)[1].lstrip(b" ") for line in lines
            if line.split(b":", 1)[0].lower() == b"set-cookie"]  # fmt: skip


# --- an upstream must not set the gateway's cookies ---------------------------------------


@pytest.mark.parametrize("path", ["/public/x", "/app/x"])
async def test_an_upstream_cannot_set_the_gateways_cookies(
    tmp_path: Path, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: an upstream's Set-Cookie for the session (or pre-login) cookie was relayed,
    so the upstream - or anything that can inject a header into its answers - could fixate a
    session of its choosing or log the user out, on any route of the host."""
    caplog.set_level(logging.DEBUG)
    async for setup in started(tmp_path, THEIRS + OURS + THEIRS[:1]):
        client = setup.client()
        await client.log_in(setup.gateway, setup.server)
        session = client.browser.jar[SESSION_COOKIE]
        cookie = f"{SESSION_COOKIE}={session}".encode()
        request = (
            b"GET %b HTTP/1.1\r\nHost: app.example\r\nAccept: application/json\r\n"
            % (path.encode())
            + b"Cookie: %b\r\nConnection: close\r\n\r\n" % cookie
        )
        sent = await raw_set_cookies(setup.gateway.proxy_port, request)
        # The application's cookies, byte for byte and in order; none it set for us (the
        # gateway may write its own session cookie, a touch, beside them).
        assert not any(v == c.encode() for v in sent for c in OURS)
        own = [
            v for v in sent if v.startswith(SESSION_COOKIE.encode() + b"=") and b"planted" not in v
        ]
        assert [v for v in sent if v not in own] == [c.encode() for c in THEIRS + THEIRS[:1]]
        answer = await client.get(setup.gateway, path, API)
        assert answer.status == 200
        assert client.browser.jar[SESSION_COOKIE] == session  # still the user's own session
        assert LOGIN_COOKIE not in client.browser.jar
        samples = await metric(setup.gateway, setup.http, "gateway_upstream_cookies")
        assert samples['gateway_upstream_cookies_dropped_total{upstream="app"}'] == 2 * len(OURS)
        logged = "\n".join(record.getMessage() for record in caplog.records)
        assert "planted" not in logged and "abcdef" not in logged
        assert f"upstream app set the gateway's cookie {SESSION_COOKIE}" in logged


async def test_a_websocket_upstream_cannot_set_the_gateways_cookies(tmp_path: Path) -> None:
    async for setup in started(tmp_path, OURS + THEIRS):
        request = (
            b"GET /ws/x HTTP/1.1\r\nHost: app.example\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        sent = await raw_set_cookies(setup.gateway.proxy_port, request)
        assert sent == [c.encode() for c in THEIRS]


# --- logout only from this origin ---------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"},
        {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate"},
        {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
        {"Sec-Fetch-Site": "SAME-SITE"},
        {"Sec-Fetch-Site": "same-origin", "Origin": "https://sub.app.example"},
        {"Sec-Fetch-Site": "same-origin", "Origin": "null"},
    ],
    ids=["cross-site", "sibling-link", "sibling-img", "case", "sibling-origin", "null-origin"],
)
async def test_a_logout_from_another_origin_is_refused(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    """Regression (sibling-link, sibling-img, case): a GET from a sibling subdomain
    (``Sec-Fetch-Site: same-site``, no ``Origin`` on a GET) signed the user out, while the
    same page's POST was refused by the ``Origin`` check."""
    async for setup in started(tmp_path, []):
        client = setup.client()
        await client.log_in(setup.gateway, setup.server)
        answer = await client.get(setup.gateway, "/oauth2/logout", headers)
        assert answer.status == 403 and "Location" not in answer.headers
        assert answer.set_cookies() == []
        assert (await client.get(setup.gateway, "/app/x", API)).status == 200


@pytest.mark.parametrize(
    "headers",
    [{"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {}],
    ids=["same-origin", "typed", "no-fetch-metadata"],
)
async def test_a_logout_from_this_origin_signs_out(tmp_path: Path, headers: dict[str, str]) -> None:
    async for setup in started(tmp_path, []):
        client = setup.client()
        await client.log_in(setup.gateway, setup.server)
        assert (await client.get(setup.gateway, "/oauth2/logout", headers)).status == 302
        assert (await client.get(setup.gateway, "/app/x", API)).status == 401


# --- a copy of a cookie-store session ends with it ----------------------------------------


async def test_a_copy_of_the_cookie_is_refused_after_logout_without_a_sid(tmp_path: Path) -> None:
    """Regression: with an ID token without ``sid`` (Google, many others), a logout in the
    cookie store only cleared this browser's cookies: a stolen copy stayed good for the
    whole absolute timeout."""
    async for setup in started(tmp_path, []):
        setup.server.id_token_claims = {"sid": None}
        client = setup.client()
        await client.log_in(setup.gateway, setup.server)
        copy = LoginClient(setup.http)
        copy.browser.jar.update(client.browser.jar)
        assert (await client.get(setup.gateway, "/oauth2/logout")).status == 302
        assert (await copy.get(setup.gateway, "/app/x", API)).status == 401
        # A second tab's login completing over the first one's session replaces it: the
        # replaced session's copy is refused as well.
        await client.log_in(setup.gateway, setup.server)
        old = LoginClient(setup.http)
        old.browser.jar.update(client.browser.jar)
        first = client.browser.jar.pop(SESSION_COOKIE)
        params = await client.start_login(setup.gateway)
        client.browser.jar[SESSION_COOKIE] = first
        query = setup.authorized(params, subject="alice", sid="ignored")
        assert (await client.get(setup.gateway, "/oauth2/callback?" + query)).status == 302
        assert (await old.get(setup.gateway, "/app/x", API)).status == 401
        assert (await client.get(setup.gateway, "/app/x", API)).status == 200


# --- a WebSocket on a session route keeps the session's writes ----------------------------


async def test_a_websocket_upgrade_stores_the_refreshed_session(tmp_path: Path) -> None:
    """Regression: the 101 of a WebSocket on a session route went out without the gateway's
    own Set-Cookie, so a refresh made by the upgrade was lost to the cookie store: the
    browser kept the spent refresh token, which a rotating server answers, once the grace
    minute is over, by revoking the grant (a logout)."""
    routes = [{"name": "live", "match": {"path": {"prefix": "/ws"}}, "upstream": "app",
               "auth": "session", "websocket": True}]  # fmt: skip
    # A margin longer than the access token's life: every request refreshes.
    async for setup in started(tmp_path, [], routes=routes, login={"refresh_margin": "400s"}):
        client = setup.client()
        await client.log_in(setup.gateway, setup.server, "/ws/x")
        cookie = f"{SESSION_COOKIE}={client.browser.jar[SESSION_COOKIE]}".encode()
        request = (
            b"GET /ws/x HTTP/1.1\r\nHost: app.example\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: %b\r\n\r\n" % cookie
        )
        sent = await raw_set_cookies(setup.gateway.proxy_port, request)
        assert setup.server.refresh_calls == 1
        (stored,) = [v for v in sent if v.startswith(SESSION_COOKIE.encode() + b"=")]
        assert stored.split(b";")[0] != cookie  # the refreshed session


# --- a cookie of another deployment is no session here ------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"external_url": "https://other.example"},
        {"client": {"client_id": "other-app", "client_secret": "web-secret"}},
        {"issuer": "second"},
    ],
    ids=["another-origin", "another-client", "another-issuer"],
)
async def test_a_cookie_from_a_deployment_sharing_the_secrets_is_no_session(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    """Regression: two deployments configured with the same secrets (staging copied into
    production, two applications at one provider) opened each other's cookies, so a user of
    the other client, origin or provider - one the identity provider never let in here -
    pasted their cookie and was signed in."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async for setup in started(tmp_path / "a", []):
        client, starting = setup.client(), setup.client()
        await client.log_in(setup.gateway, setup.server)
        state = (await starting.start_login(setup.gateway))["state"]
        second = TestIssuer()
        await second.start()
        config = login_config(setup.upstream.url, setup.issuer, routes=ROUTES)
        config["issuers"].append({**config["issuers"][0], "name": "second", "issuer": second.url})
        config["logins"][0].update(change)
        if "issuer" in change:
            config["logins"][0]["name"] = "main"  # the same login name, another provider
        try:
            async with running_gateway(tmp_path / "b", config) as other:
                await wait_ready(other)
                thief = LoginClient(setup.http)
                thief.browser.jar.update(client.browser.jar)
                assert (await thief.get(other, "/app/x", API)).status == 401
                # A pre-login cookie opens no pending login there either.
                thief.browser.jar = dict(starting.browser.jar)
                answer = await thief.get(other, f"/oauth2/callback?code=c&state={state}", API)
                assert answer.status == 400
                assert json.loads(answer.body)["type"].endswith("login-expired")
        finally:
            await second.close()


# --- checked and found sound: pinned -------------------------------------------------------


async def test_an_attackers_callback_in_the_victims_browser_is_refused(tmp_path: Path) -> None:
    """Login CSRF: the attacker's own code and state, delivered to the victim's browser (which
    has a sign-in of its own pending), never log the victim in as the attacker, and leave the
    victim's pending sign-in intact."""
    async for setup in started(tmp_path, []):
        victim, attacker = setup.client(), setup.client()
        mine = await victim.start_login(setup.gateway)
        theirs = await attacker.start_login(setup.gateway)
        forged = setup.authorized(theirs, subject="mallory")
        for query in (forged, forged + f"&state={mine['state']}", forged.replace(
            theirs["state"], mine["state"] + "x")):  # fmt: skip
            answer = await victim.get(setup.gateway, "/oauth2/callback?" + query, API)
            assert answer.status == 400 and SESSION_COOKIE not in victim.browser.jar
        assert setup.server.code_calls == 0
        landed = await victim.get(setup.gateway, "/oauth2/callback?" + setup.authorized(mine))
        assert landed.status == 302
        assert (await victim.get(setup.gateway, "/app/x", API)).status == 200


@pytest.mark.parametrize(
    ("claims", "detail"),
    [
        ({"aud": "someone-else"}, "not meant for this client"),
        ({"aud": ["web-app", "api://elsewhere"], "azp": "web-app"}, "not trusted"),
        ({"azp": "someone-else"}, "another party"),
        ({"iss": "https://evil.example"}, "another issuer"),
        ({"nonce": None}, "nonce"),
        ({"exp": 1_000_000}, "expired"),
    ],
    ids=["aud", "extra-aud", "azp", "iss", "no-nonce", "expired"],
)
async def test_an_id_token_that_fails_a_check_makes_no_session(
    tmp_path: Path, claims: dict[str, Any], detail: str
) -> None:
    async for setup in started(tmp_path, []):
        client = setup.client()
        params = await client.start_login(setup.gateway)
        setup.server.id_token_claims = claims
        answer = await client.get(
            setup.gateway, "/oauth2/callback?" + setup.authorized(params), API
        )
        assert answer.status == 502 and detail in json.loads(answer.body)["detail"]
        assert SESSION_COOKIE not in client.browser.jar


async def test_no_code_token_or_session_reaches_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Login, refresh, logout and back-channel logout, with every log record and the access
    log searched for the code, state, nonce, cookies, tokens and the logout token."""
    caplog.set_level(logging.DEBUG)
    async for setup in started(tmp_path, [], login={"refresh_margin": "400s"}):
        client = setup.client()
        params = await client.start_login(setup.gateway)
        query = setup.authorized(params)
        await client.get(setup.gateway, "/oauth2/callback?" + query)
        await client.get(setup.gateway, "/app/x", API)  # a refresh
        assert setup.server.refresh_calls == 1
        secrets = [parse_qs(query)["code"][0], params["state"], params["nonce"]]
        secrets += [value for value in client.browser.jar.values()]
        # The refresh token spent, and the access token and refresh token issued for it.
        secrets += [r["form"]["refresh_token"] for r in setup.server.requests
                    if "refresh_token" in r["form"]]  # fmt: skip
        assert len(secrets) == 5
        token = logout_token(setup.issuer, sid="op-session-1")
        url = f"http://127.0.0.1:{setup.gateway.proxy_port}/oauth2/backchannel"
        async with setup.http.post(url, data={"logout_token": token}) as response:
            assert response.status == 200
        await client.get(setup.gateway, "/oauth2/logout")
        logged = "\n".join(r.getMessage() for r in caplog.records) + capsys.readouterr().out
        for secret in [*secrets, token]:
            assert secret and secret not in logged


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        (["; ".join(f"{SESSION_COOKIE}.{i}=2.abcdef.x" for i in range(60))], 401),
        ([f"{SESSION_COOKIE}.0=99.abcdef.x; {SESSION_COOKIE}.1=99.abcdef.y"], 401),
        ([f"{SESSION_COOKIE}.00=2.abcdef.x; {SESSION_COOKIE}.1=2.abcdef.y"], 401),
        ([f"{SESSION_COOKIE}=a; {SESSION_COOKIE}.0=2.abcdef.x"], 401),
        ([f"{SESSION_COOKIE}=a", f"{SESSION_COOKIE}=b"], 400),
        (["; ".join([f"{SESSION_COOKIE}=x", *(f"c{i}=v" for i in range(250))])], 400),
        ([f"{SESSION_COOKIE}=x; pad=" + "p" * 7000 for _ in range(5)], 400),
    ],
    ids=["60-chunks", "count-99", "index-00", "bare-and-chunk", "twice", "250-pairs", "35kb"],
)
async def test_unreadable_session_cookies_are_refused_precisely(
    tmp_path: Path, fields: list[str], status: int
) -> None:
    """Many chunks, impossible counts and indexes, a bare cookie beside chunks: no session
    (401, the cookies deleted); our cookie twice or a Cookie header past its bounds: 400.
    Never a 500, never a session."""
    async for setup in started(tmp_path, []):
        headers = [("Accept", "application/json"), *(("Cookie", f) for f in fields)]
        url = f"http://127.0.0.1:{setup.gateway.proxy_port}/app/x"
        async with setup.http.get(url, headers=headers, allow_redirects=False) as response:
            body = await response.read()
            assert response.status == status, body
            assert response.headers["Content-Type"] == "application/problem+json"
            deleted = response.headers.getall("Set-Cookie", [])
        if status == 401:
            assert deleted and all("Max-Age=0" in cookie for cookie in deleted)


# --- a refusal after a refresh still stores the refreshed session -------------------------


@pytest.mark.parametrize("path", ["/admin/x", "/limited/x"], ids=["policy", "rate-limit"])
async def test_a_request_refused_after_a_refresh_still_stores_the_session(
    tmp_path: Path, path: str
) -> None:
    """Regression: a request whose session was refreshed and that the route's policy (403)
    or rate limit (429) then refused went out without the refreshed cookie: the cookie store
    lost the new tokens, the browser kept the spent refresh token, and the next request
    after the grace minute spent it again - a logout at a server that rotates them."""
    routes = [
        {"name": "app", "match": {"path": {"prefix": "/app"}}, "upstream": "app",
         "auth": "session"},
        {"name": "admin", "match": {"path": {"prefix": "/admin"}}, "upstream": "app",
         "auth": "session", "require": {"scopes": {"all": ["admin"]}}},
        {"name": "limited", "match": {"path": {"prefix": "/limited"}}, "upstream": "app",
         "auth": "session", "rate_limits": {"limits": [
             {"name": "per-user", "key": ["sub"], "limit": 1, "window": 60}]}},
    ]  # fmt: skip
    async for setup in started(tmp_path, [], routes=routes, login={"refresh_margin": "400s"}):
        client = setup.client()
        await client.log_in(setup.gateway, setup.server)
        if path.startswith("/limited"):
            assert (await client.get(setup.gateway, path, API)).status == 200
        before = client.browser.jar[SESSION_COOKIE]
        calls = setup.server.refresh_calls
        answer = await client.get(setup.gateway, path, API)
        assert answer.status in (403, 429)
        assert setup.server.refresh_calls == calls + 1
        assert client.browser.jar[SESSION_COOKIE] != before  # the refreshed session, stored
        # The stored session holds the new refresh token: the next refresh spends that one.
        assert (await client.get(setup.gateway, "/app/x", API)).status == 200
        assert setup.server.refresh_calls == calls + 2


async def test_a_cacheable_answer_carrying_a_refreshed_session_is_private(
    tmp_path: Path,
) -> None:
    """RFC 9111 §7.3: a shared cache may store a response with Set-Cookie. A static asset
    the upstream calls public, answered with the session the gateway refreshed on the way,
    would hand that session (its tokens, in the cookie store) to the cache's next user."""
    async for setup in started(tmp_path, [], login={"refresh_margin": "400s"}):
        client = setup.client()
        await client.log_in(setup.gateway, setup.server)
        answer = await client.get(setup.gateway, "/app/app.js", API)
        assert answer.status == 200
        assert any(c.startswith(SESSION_COOKIE + "=") for c in answer.set_cookies())
        assert answer.headers.getall("Cache-Control") == ["private, max-age=86400"]


async def test_an_upstream_failure_after_a_refresh_still_stores_the_session(
    tmp_path: Path,
) -> None:
    """Regression: as above, for a 502 from an upstream that is down."""
    routes = [
        {"name": "app", "match": {"path": {"prefix": "/app"}}, "upstream": "app",
         "auth": "session"},
        {"name": "down", "match": {"path": {"prefix": "/down"}}, "upstream": "down",
         "auth": "session"},
    ]  # fmt: skip
    login = {"refresh_margin": "400s"}
    async for setup in started(tmp_path, [], down=True, routes=routes, login=login):
        client = setup.client()
        await client.log_in(setup.gateway, setup.server)
        before = client.browser.jar[SESSION_COOKIE]
        answer = await client.get(setup.gateway, "/down/x", API)
        assert answer.status == 502 and setup.server.refresh_calls == 1
        assert client.browser.jar[SESSION_COOKIE] != before
        assert (await client.get(setup.gateway, "/app/x", API)).status == 200
        assert setup.server.refresh_calls == 2


# --- cross-site request forgery with the session cookie ---------------------------------


@pytest.mark.parametrize(
    ("method", "sent", "status"),
    [
        pytest.param("POST", {"Sec-Fetch-Site": "same-site"}, 403, id="sibling-subdomain-form"),
        pytest.param("DELETE", {"Sec-Fetch-Site": "cross-site"}, 403, id="cross-site-fetch"),
        pytest.param("POST", {"Origin": "https://evil.app.example"}, 403, id="other-origin"),
        pytest.param("PUT", {"Origin": "null"}, 403, id="opaque-origin"),
        pytest.param("POST", {"Origin": EXTERNAL, "Sec-Fetch-Site": "same-origin"}, 200,
                     id="this-origin"),
        pytest.param("POST", {}, 200, id="no-browser-signals"),
        pytest.param("GET", {"Sec-Fetch-Site": "same-site"}, 200, id="safe-method-from-a-link"),
    ],
)  # fmt: skip
async def test_a_state_changing_request_from_another_origin_is_refused(
    tmp_path: Path, method: str, sent: dict[str, str], status: int
) -> None:
    """SameSite=Lax keeps the cookie from other sites, not from a sibling subdomain (the same
    site, RFC 6265bis §5.2): its form or fetch() would act as the signed-in user."""
    async for setup in started(tmp_path, []):
        client = setup.client()
        await client.log_in(setup.gateway, setup.server)
        answer = await client.get(setup.gateway, "/app/x", {**API, **sent}, method=method)
        assert answer.status == status, answer.body
        if status == 403:
            assert b"cross-site-request" in answer.body  # the gateway's, not the upstream's
        else:
            assert answer.body == b"page\n"


async def test_a_plain_http_authorization_endpoint_beyond_loopback_is_never_used(
    tmp_path: Path,
) -> None:
    """RFC 6749 §3.1: TLS at the authorization endpoint (the user types a password there);
    the token endpoint already had the rule. Without the issuer's insecure_http the login
    is unavailable (503), never a redirect to http."""
    login = {"endpoints": {"authorization": "http://idp.example/authorize"}}
    async for setup in started(tmp_path, [], login=login):
        answer = await setup.client().get(setup.gateway, "/app/x")
        assert answer.status == 503, answer.body
        assert "Location" not in answer.headers


async def test_a_plain_http_end_session_endpoint_ends_the_session_here_and_says_503(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A logout must not look done while the provider's session lives on (the next
    navigation would sign the user in again, silently): the session ends here, the
    answer is 503, and the refused endpoint is warned of once, not per request."""
    login = {"endpoints": {"end_session": "http://idp.example/logout"}}
    caplog.set_level(logging.WARNING, logger="gateway.auth.sessions.service")
    async for setup in started(tmp_path, [], login=login):
        client = setup.client()
        await client.log_in(setup.gateway, setup.server)
        assert SESSION_COOKIE in client.browser.jar
        for _ in range(2):
            answer = await client.get(setup.gateway, "/oauth2/logout")
            assert answer.status == 503, answer.body
            assert "Location" not in answer.headers
        assert SESSION_COOKIE not in client.browser.jar
        assert (await client.get(setup.gateway, "/app/x", API)).status == 401
    warned = [r for r in caplog.records if "plain-http endpoint" in r.getMessage()]
    assert len(warned) == 1
