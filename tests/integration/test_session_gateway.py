"""Browser login through the running gateway (issue 18): the redirect to the authorization
server, the callback, the session cookie and what the upstream receives, the 401-not-302
rule for API calls, every refused callback, the origin-bound return URL, RP-initiated and
back-channel logout, and the metrics - over loopback against a real token endpoint."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.login import (
    EXTERNAL,
    LOGIN_COOKIE,
    NAVIGATE,
    SESSION_COOKIE,
    LoginClient,
    LoginSetup,
    login_world,
    logout_token,
    metric,
)
from tests.support.upstream import RecordingUpstream

API = {"Accept": "application/json"}
# RFC 9207: the issuer says it sends ``iss`` with the authorization response.
ISS_PARAMETER = {"authorization_response_iss_parameter_supported": True}

Setup = LoginSetup[RecordingUpstream]


async def started(tmp_path: Path, **config: Any) -> AsyncIterator[Setup]:
    upstream = RecordingUpstream(name="app")
    async with login_world(tmp_path, upstream, metadata=ISS_PARAMETER, **config) as setup:
        yield setup


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async for value in started(tmp_path):
        yield value


# --- the login ---------------------------------------------------------------------------


async def test_a_navigation_is_sent_to_the_authorization_endpoint_with_pkce(setup: Setup) -> None:
    client = setup.client()
    answer = await client.get(setup.gateway, "/app/orders?page=2")
    assert answer.status == 302
    url = urlsplit(answer.location)
    assert f"{url.scheme}://{url.netloc}{url.path}" == setup.issuer.url + "/authorize"
    params = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert params["response_type"] == "code" and params["client_id"] == "web-app"
    assert params["redirect_uri"] == EXTERNAL + "/oauth2/callback"
    assert params["scope"] == "openid email" and params["code_challenge_method"] == "S256"
    assert len(params["state"]) == len(params["nonce"]) == len(params["code_challenge"]) == 43
    assert answer.headers["Cache-Control"] == "no-store"
    assert "WWW-Authenticate" not in answer.headers
    (cookie,) = answer.set_cookies()
    assert cookie.startswith(LOGIN_COOKIE + "=")
    attributes = cookie.split("; ")[1:]
    assert attributes == ["Path=/", "Max-Age=600", "Secure", "HttpOnly", "SameSite=Lax"]
    # The state, nonce and verifier are sealed: none of them appears in the cookie.
    for value in (params["state"], params["nonce"]):
        assert value not in cookie
    assert setup.upstream.received == []


async def test_a_login_lands_on_the_original_page_and_the_upstream_gets_the_identity(
    setup: Setup,
) -> None:
    client = setup.client()
    landed = await client.log_in(setup.gateway, setup.server, "/app/orders?page=2")
    assert landed.status == 302 and landed.location == EXTERNAL + "/app/orders?page=2"
    assert landed.headers["Referrer-Policy"] == "no-referrer"
    cookies = {c.split("=", 1)[0]: c for c in landed.set_cookies()}
    assert cookies[LOGIN_COOKIE].endswith("Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; "
                                          "Secure; HttpOnly; SameSite=Lax")  # fmt: skip
    session = cookies[SESSION_COOKIE].split("; ")
    assert session[1:] == ["Path=/", "Max-Age=43200", "Secure", "HttpOnly", "SameSite=Lax"]
    assert len(session[0]) < 4096
    assert setup.server.code_calls == 1

    headers = {**NAVIGATE, "Cookie": "theme=dark"}
    page = await client.get(setup.gateway, "/app/orders?page=2", headers)
    assert page.status == 200
    received = setup.upstream.last
    assert received.header("X-Auth-Subject") == "alice"
    assert received.header("X-Auth-Client-Id") == "web-app"
    assert set((received.header("X-Auth-Scopes") or "").split()) == {"openid", "email"}
    # The session cookie never reaches the upstream; the site's own cookies do.
    assert received.headers_named("Cookie") == ["theme=dark"]
    assert received.header("Authorization") is None  # forward_access_token is off
    # A second tab: the same cookie, the same session, no second login.
    again = await client.get(setup.gateway, "/app/invoices", API)
    assert again.status == 200 and setup.server.code_calls == 1


async def test_only_gateway_cookies_leave_the_cookie_header_on_every_route(setup: Setup) -> None:
    client = setup.client()
    await client.log_in(setup.gateway, setup.server)
    answer = await client.get(setup.gateway, "/public/x", API)
    assert answer.status == 200
    assert setup.upstream.last.headers_named("Cookie") == []


async def test_the_access_token_goes_upstream_when_asked(tmp_path: Path) -> None:
    async for setup in started(tmp_path, login={"forward_access_token": True}):
        client = setup.client()
        await client.log_in(setup.gateway, setup.server)
        assert (await client.get(setup.gateway, "/app/x", API)).status == 200
        scheme, _, token = (setup.upstream.last.header("Authorization") or "").partition(" ")
        assert scheme == "Bearer" and len(token) > 20


async def test_a_session_route_sends_the_signed_identity_token_when_asked(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "id.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))  # fmt: skip
    signing = {"issuer": "https://gateway.example",
               "keys": [{"file": str(pem), "kid": "gw-1", "alg": "ES256"}]}  # fmt: skip
    routes = [{"name": "app", "match": {"path": {"prefix": "/app"}}, "upstream": "app",
               "auth": "session", "identity_token": {}}]  # fmt: skip
    (tmp_path / "gw").mkdir()
    async for setup in started(tmp_path / "gw", routes=routes, token_signing=signing):
        client = setup.client()
        await client.log_in(setup.gateway, setup.server)
        assert (await client.get(setup.gateway, "/app/x", API)).status == 200
        signed = setup.upstream.last.header("X-Identity-Token")
        assert signed is not None
        claims = jwt.decode(signed, key.public_key(), algorithms=["ES256"], audience="app",
                            issuer="https://gateway.example")  # fmt: skip
        assert claims["sub"] == "alice" and claims["htu"].endswith("/app/x")


async def test_a_login_rotates_the_session(setup: Setup) -> None:
    client = setup.client()
    await client.log_in(setup.gateway, setup.server)
    first = client.browser.jar.pop(SESSION_COOKIE)
    params = await client.start_login(setup.gateway)
    client.browser.jar[SESSION_COOKIE] = first  # carried into the callback (or planted)
    query = setup.authorized(params, subject="bob")
    assert (await client.get(setup.gateway, "/oauth2/callback?" + query)).status == 302
    assert client.browser.jar[SESSION_COOKIE] != first
    assert (await client.get(setup.gateway, "/app/x", API)).status == 200
    assert setup.upstream.last.header("X-Auth-Subject") == "bob"


# --- API requests get 401, never a redirect ----------------------------------------------


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", API),
        ("GET", {"Accept": "*/*"}),
        ("GET", {}),
        ("GET", {**NAVIGATE, "X-Requested-With": "XMLHttpRequest"}),
        ("GET", {**NAVIGATE, "Sec-Fetch-Mode": "cors"}),
        ("POST", NAVIGATE),
        ("HEAD", NAVIGATE),
    ],
    ids=["json", "any", "no-accept", "xhr", "fetch", "post", "head"],
)
async def test_api_style_requests_get_401_with_the_challenge(
    setup: Setup, method: str, headers: dict[str, str]
) -> None:
    answer = await setup.client().get(setup.gateway, "/app/orders", headers, method=method)
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert "Location" not in answer.headers and answer.set_cookies() == []


async def test_a_bad_bearer_token_is_a_401_even_from_a_browser(setup: Setup) -> None:
    headers = {**NAVIGATE, "Authorization": "Bearer not-a-token"}
    answer = await setup.client().get(setup.gateway, "/app/orders", headers)
    assert answer.status == 401 and "Location" not in answer.headers
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]


async def test_a_valid_bearer_token_is_judged_as_on_a_bearer_route(setup: Setup) -> None:
    token = setup.issuer.mint({"sub": "service-7"})
    answer = await setup.client().get(
        setup.gateway, "/app/orders", {"Authorization": f"Bearer {token}"}
    )
    assert answer.status == 200
    assert setup.upstream.last.header("X-Auth-Subject") == "service-7"


async def test_a_route_without_redirects_answers_navigations_with_401(setup: Setup) -> None:
    answer = await setup.client().get(setup.gateway, "/api/orders")
    assert answer.status == 401 and "Location" not in answer.headers


async def test_bearer_never_refuses_an_authorization_header(setup: Setup) -> None:
    client = setup.client()
    await client.log_in(setup.gateway, setup.server)
    token = setup.issuer.mint({"sub": "service-7"})
    answer = await client.get(setup.gateway, "/strict/x", {"Authorization": f"Bearer {token}"})
    assert answer.status == 400 and 'error="invalid_request"' in answer.headers["WWW-Authenticate"]
    assert (await client.get(setup.gateway, "/strict/x", API)).status == 200


async def test_a_tampered_session_cookie_is_no_session(setup: Setup) -> None:
    client = setup.client()
    await client.log_in(setup.gateway, setup.server)
    value = client.browser.jar[SESSION_COOKIE]
    client.browser.jar[SESSION_COOKIE] = value[:-4] + ("AAAA" if value[-4:] != "AAAA" else "BBBB")
    answer = await client.get(setup.gateway, "/app/x", API)
    assert answer.status == 401
    # The unusable cookie is deleted.
    assert any(c.startswith(SESSION_COOKIE + "=; ") for c in answer.set_cookies())


# --- refused callbacks -------------------------------------------------------------------


async def refused(client: LoginClient, setup: Setup, query: str) -> tuple[int, dict[str, Any]]:
    answer = await client.get(setup.gateway, "/oauth2/callback?" + query, API)
    assert "Location" not in answer.headers  # never a redirect: no loop
    assert not any(c.startswith(SESSION_COOKIE + "=") for c in answer.set_cookies())
    assert answer.headers["Cache-Control"] == "no-store"
    return answer.status, json.loads(answer.body)


async def test_a_callback_with_another_state_is_refused(setup: Setup) -> None:
    client = setup.client()
    params = await client.start_login(setup.gateway)
    query = setup.authorized(params).replace(params["state"], "forged-state-" + "x" * 30)
    status, body = await refused(client, setup, query)
    assert status == 400 and body["type"].endswith("login-state-mismatch")
    assert setup.server.code_calls == 0  # the code never left the gateway


async def test_a_callback_without_the_pre_login_cookie_is_refused(setup: Setup) -> None:
    client = setup.client()
    params = await client.start_login(setup.gateway)
    client.browser.jar.clear()  # another browser, or cookies blocked
    status, body = await refused(client, setup, setup.authorized(params))
    assert status == 400 and body["type"].endswith("login-expired")


async def test_a_replayed_callback_is_refused(setup: Setup) -> None:
    client = setup.client()
    params = await client.start_login(setup.gateway)
    query = setup.authorized(params)
    assert (await client.get(setup.gateway, "/oauth2/callback?" + query)).status == 302
    status, body = await refused(client, setup, query)
    assert status == 400 and body["type"].endswith(("login-expired", "login-state-mismatch"))
    assert setup.server.code_calls == 1


async def test_a_reused_code_is_refused_by_the_authorization_server(setup: Setup) -> None:
    client = setup.client()
    first = await client.start_login(setup.gateway)
    query = setup.authorized(first)
    assert (await client.get(setup.gateway, "/oauth2/callback?" + query)).status == 302
    # A new login in this browser, answered with the old (spent) code.
    client.browser.jar.pop(SESSION_COOKIE)
    second = await client.start_login(setup.gateway)
    replay = query.replace(first["state"], second["state"])
    status, body = await refused(client, setup, replay)
    assert status == 400 and body["type"].endswith("token-endpoint-refused")


async def test_an_id_token_with_another_nonce_is_refused(setup: Setup) -> None:
    client = setup.client()
    params = await client.start_login(setup.gateway)
    status, body = await refused(client, setup, setup.authorized(params, nonce="replayed"))
    assert status == 502 and body["type"].endswith("id-token-invalid")
    assert "nonce" in body["detail"]


async def test_an_id_token_whose_at_hash_does_not_match_is_refused(setup: Setup) -> None:
    client = setup.client()
    params = await client.start_login(setup.gateway)
    setup.server.id_token_claims = {"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}
    status, body = await refused(client, setup, setup.authorized(params))
    assert status == 502 and "at_hash" in body["detail"]


async def test_a_response_from_another_issuer_is_refused(setup: Setup) -> None:
    client = setup.client()
    params = await client.start_login(setup.gateway)
    query = setup.authorized(params).replace(setup.issuer.url, "https://evil.example")
    status, body = await refused(client, setup, query)
    assert status == 400 and "another issuer" in body["detail"]


async def test_an_authorization_error_is_a_page_not_a_loop(setup: Setup) -> None:
    client = setup.client()
    params = await client.start_login(setup.gateway)
    query = f"error=access_denied&state={params['state']}&iss={setup.issuer.url}"
    answer = await client.get(setup.gateway, "/oauth2/callback?" + query)
    assert answer.status == 403 and "Location" not in answer.headers
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"Sign-in was refused or cancelled" in answer.body
    assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'")
    hostile = f"error=%3Cscript%3E&state={params['state']}&iss={setup.issuer.url}"
    answer = await client.get(setup.gateway, "/oauth2/callback?" + hostile)
    assert answer.status == 400 and b"<script>" not in answer.body


# --- the return URL stays on the origin ---------------------------------------------------


@pytest.mark.parametrize(
    ("target", "lands"),
    [
        ("//evil.example/x", "/evil.example/x"),
        ("/app//evil.example", "/app/evil.example"),
        ("/app/x?next=//evil.example", "/app/x?next=//evil.example"),
        ("/oauth2/callback", None),
    ],
)
async def test_the_return_url_cannot_leave_the_origin(
    tmp_path: Path, target: str, lands: str | None
) -> None:
    routes = [{"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "app",
               "auth": "session"}]  # fmt: skip
    async for setup in started(tmp_path, routes=routes):
        client = setup.client()
        if lands is None:  # the callback itself is never protected, so never a return
            assert (await client.get(setup.gateway, target)).status == 400
            continue
        answer = await client.log_in(setup.gateway, setup.server, target)
        assert answer.location == EXTERNAL + lands


# --- logout ------------------------------------------------------------------------------


async def test_rp_initiated_logout_ends_the_session_here_and_at_the_op(setup: Setup) -> None:
    client = setup.client()
    await client.log_in(setup.gateway, setup.server)
    copy = dict(client.browser.jar)  # a stolen or second copy of the cookie
    answer = await client.get(setup.gateway, "/oauth2/logout")
    assert answer.status == 302
    url = urlsplit(answer.location)
    assert f"{url.scheme}://{url.netloc}{url.path}" == setup.issuer.url + "/logout"
    params = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert params["client_id"] == "web-app"
    assert params["post_logout_redirect_uri"] == EXTERNAL + "/"
    assert params["id_token_hint"].count(".") == 2
    assert SESSION_COOKIE not in client.browser.jar
    stolen = LoginClient(setup.http)
    stolen.browser.jar.update(copy)
    assert (await stolen.get(setup.gateway, "/app/x", API)).status == 401


async def test_a_cross_site_logout_is_refused(setup: Setup) -> None:
    client = setup.client()
    await client.log_in(setup.gateway, setup.server)
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        answer = await client.get(setup.gateway, "/oauth2/logout", headers, method="POST")
        assert answer.status == 403
    assert (await client.get(setup.gateway, "/app/x", API)).status == 200
    answer = await client.get(setup.gateway, "/oauth2/logout", {"Origin": EXTERNAL}, method="POST")
    assert answer.status == 303


async def post_logout(
    setup: Setup, token: str | None, body: str | None = None
) -> aiohttp.ClientResponse:
    url = f"http://127.0.0.1:{setup.gateway.proxy_port}/oauth2/backchannel"
    data = body if body is not None else f"logout_token={token}"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with setup.http.post(url, data=data, headers=headers) as response:
        await response.read()
        return response


async def test_back_channel_logout_ends_the_sessions_it_names(setup: Setup) -> None:
    alice, other = setup.client(), setup.client()
    await alice.log_in(setup.gateway, setup.server, sid="op-A")
    await other.log_in(setup.gateway, setup.server, subject="carol", sid="op-C")
    token = logout_token(setup.issuer, sid="op-A")
    answer = await post_logout(setup, token)
    assert answer.status == 200 and answer.headers["Cache-Control"] == "no-store"
    assert (await alice.get(setup.gateway, "/app/x", API)).status == 401
    assert (await other.get(setup.gateway, "/app/x", API)).status == 200
    # §2.6 step 8: the same token again is refused.
    assert (await post_logout(setup, token)).status == 400
    # A later login under the same OP session is a new session, not a revoked one.
    await alice.log_in(setup.gateway, setup.server, sid="op-A")
    assert (await alice.get(setup.gateway, "/app/x", API)).status == 200


@pytest.mark.parametrize(
    "claims",
    [
        {"events": None},
        {"nonce": "n"},
        {"aud": "someone-else"},
        {"sid": None, "sub": None},
        {"iat": 1_000_000},
    ],
    ids=["no-event", "nonce", "audience", "nobody", "old"],
)
async def test_invalid_logout_tokens_are_refused(setup: Setup, claims: dict[str, Any]) -> None:
    client = setup.client()
    await client.log_in(setup.gateway, setup.server)
    answer = await post_logout(setup, logout_token(setup.issuer, **claims))
    assert answer.status == 400
    assert (await client.get(setup.gateway, "/app/x", API)).status == 200


async def test_the_callback_reads_only_a_get(setup: Setup) -> None:
    client = setup.client()
    params = await client.start_login(setup.gateway)
    query = setup.authorized(params)
    answer = await client.get(setup.gateway, "/oauth2/callback?" + query, API, method="POST")
    assert answer.status == 405 and answer.headers["Allow"] == "GET"
    assert setup.server.code_calls == 0
    assert (await client.get(setup.gateway, "/oauth2/callback?" + query)).status == 302


async def test_back_channel_requests_must_be_one_form_post(setup: Setup) -> None:
    assert (await post_logout(setup, None, "logout_token=a&logout_token=b")).status == 400
    assert (await post_logout(setup, None, "x" * (70 * 1024))).status == 413
    answer = await setup.client().get(setup.gateway, "/oauth2/backchannel", API)
    assert answer.status == 405 and answer.headers["Allow"] == "POST"


# --- observability -----------------------------------------------------------------------


async def test_metrics_count_and_logs_never_name_a_secret(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = setup.client()
    params = await client.start_login(setup.gateway)
    query = setup.authorized(params)
    await client.get(setup.gateway, "/oauth2/callback?" + query)
    await client.get(setup.gateway, "/oauth2/callback?" + query)  # refused: state spent
    await client.get(setup.gateway, "/oauth2/logout")
    code = parse_qs(query)["code"][0]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in (code, params["state"], params["nonce"], *client.browser.jar.values()):
        assert secret not in logged
    samples = await metric(setup.gateway, setup.http, "gateway_log")
    assert samples['gateway_login_redirects_total{login="main"}'] == 1
    assert samples['gateway_login_callbacks_total{login="main",outcome="ok"}'] == 1
    assert samples['gateway_logouts_total{kind="rp",login="main"}'] == 1
    refusals = {k: v for k, v in samples.items() if "callbacks" in k and "ok" not in k}
    assert sum(refusals.values()) == 1
