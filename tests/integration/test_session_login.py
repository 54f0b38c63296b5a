"""A login end to end against a real token endpoint over loopback: the authorization URL, the
callback, the code exchange with PKCE and client authentication, ID token validation with
the issuer's live key set, and every way the token endpoint can fail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth.jwks import KeySetProvider
from gateway.auth.sessions.callback import match_pending, parse_callback
from gateway.auth.sessions.errors import (
    IdTokenInvalid,
    TokenEndpointRefused,
    TokenEndpointUnavailable,
)
from gateway.auth.sessions.id_token import IdTokenRules
from gateway.auth.sessions.login import LoginClient, complete_login, start_login
from gateway.auth.sessions.login_state import PendingLogins
from gateway.auth.sessions.refresh import refresh_tokens
from gateway.auth.sessions.session import Session
from gateway.auth.sessions.token_endpoint import TokenEndpoint
from gateway.auth.settings import ClientCredentials
from gateway.compiler.auth import client_credentials
from gateway.config.models import ClientAuth
from tests.support.issuer import TestIssuer
from tests.support.token_server import TokenServer

REDIRECT = "https://app.example/oauth2/callback"
NOW_LIFETIME = 600.0


class Login:
    """One issuer with a token endpoint, and the gateway's pieces pointed at it."""

    def __init__(
        self,
        issuer: TestIssuer,
        server: TokenServer,
        http: aiohttp.ClientSession,
        provider: KeySetProvider,
        client: ClientCredentials,
    ) -> None:
        self.issuer, self.server, self.http, self.provider = issuer, server, http, provider
        self.endpoint = TokenEndpoint(http, server.endpoint, client, timeout=2.0)
        self.client = LoginClient(
            name="web",
            issuer=issuer.url,
            client_id="web-app",
            redirect_uri=REDIRECT,
            scopes=("openid", "email"),
            extra_parameters={},
            keep_id_token=True,
        )
        self.rules = IdTokenRules(
            issuer=issuer.url, client_id="web-app", algorithms=frozenset({"RS256"})
        )

    def begin(self, return_to: str = "/orders") -> tuple[PendingLogins, dict[str, str]]:
        pending, url = start_login(self.client, self.issuer.url + "/authorize", return_to, 0.0)
        params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        return PendingLogins((pending,)), params

    def callback(self, params: dict[str, str], **overrides: str) -> str:
        return self.server.authorize(
            state=overrides.get("state", params["state"]),
            nonce=overrides.get("nonce", params["nonce"]),
            challenge=params["code_challenge"],
            redirect_uri=params["redirect_uri"],
        )

    async def finish(self, cookie: PendingLogins, query: str) -> Session:
        response = parse_callback(query, issuer=self.issuer.url, issuer_parameter_required=True)
        pending, _ = match_pending(response.state, cookie, 1.0, NOW_LIFETIME)
        return await complete_login(
            self.client,
            response,
            pending,
            endpoint=self.endpoint,
            keys=self.provider,
            rules=self.rules,
        )


@pytest.fixture
async def login(issuer: TestIssuer) -> AsyncIterator[Login]:
    async with aiohttp.ClientSession() as http:
        server = TokenServer(issuer)
        await issuer.start()
        server.advertise()
        provider = KeySetProvider(issuer.config(), http)
        await provider.start()
        client = client_credentials(ClientAuth(client_id="web-app", client_secret="web-secret"))
        yield Login(issuer, server, http, provider, client)
        await provider.close()


@pytest.fixture
async def issuer() -> AsyncIterator[TestIssuer]:
    """Not conftest's: routes must be added before the issuer starts."""
    server = TestIssuer()
    yield server
    await server.close()


async def test_a_login_completes_into_a_session(login: Login) -> None:
    cookie, params = login.begin()
    assert params["code_challenge_method"] == "S256" and params["scope"] == "openid email"
    session = await login.finish(cookie, login.callback(params))
    assert (session.subject, session.sid, session.issuer) == (
        "alice",
        "op-session-1",
        login.issuer.url,
    )
    assert session.claims["email"] == "alice@example.com"
    assert session.refresh_token and session.id_token and session.access_token
    sent = login.server.requests[-1]
    assert sent["form"]["grant_type"] == "authorization_code"
    assert sent["form"]["redirect_uri"] == REDIRECT
    assert sent["form"]["code_verifier"] == cookie.logins[0].verifier
    assert sent["headers"]["Authorization"].startswith("Basic ")
    assert "client_secret" not in sent["form"]


async def test_a_code_is_good_once(login: Login) -> None:
    cookie, params = login.begin()
    query = login.callback(params)
    await login.finish(cookie, query)
    with pytest.raises(TokenEndpointRefused) as caught:
        await login.finish(cookie, query)
    assert caught.value.error == "invalid_grant" and caught.value.status == 400


async def test_a_stolen_code_is_useless_without_this_browsers_verifier(login: Login) -> None:
    """An attacker's own pending login (another verifier) with the victim's code: PKCE."""
    victim_cookie, victim = login.begin()
    attacker_cookie, _ = login.begin()
    stolen = login.callback(victim).replace(victim["state"], attacker_cookie.logins[0].state)
    with pytest.raises(TokenEndpointRefused):
        await login.finish(attacker_cookie, stolen)
    assert victim_cookie  # the victim's login is unaffected


async def test_an_id_token_with_another_nonce_is_refused(login: Login) -> None:
    cookie, params = login.begin()
    with pytest.raises(IdTokenInvalid) as caught:
        await login.finish(cookie, login.callback(params, nonce="replayed-nonce"))
    assert caught.value.reason == "id_token_bad_nonce"


async def test_an_id_token_from_a_rotated_key_is_accepted_after_one_refetch(login: Login) -> None:
    fetches = login.issuer.jwks_fetches
    login.issuer.rotate("RS256")
    cookie, params = login.begin()
    await login.finish(cookie, login.callback(params))
    assert login.issuer.jwks_fetches == fetches + 1


async def test_an_id_token_signed_by_a_key_never_published_is_refused(login: Login) -> None:
    login.server.id_token_claims = {}
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    original = login.issuer.mint
    login.issuer.mint = lambda claims, **kw: original(claims, key=stranger, kid="nobody", **kw)  # type: ignore[method-assign]
    cookie, params = login.begin()
    with pytest.raises(IdTokenInvalid) as caught:
        await login.finish(cookie, login.callback(params))
    assert caught.value.reason == "id_token_unknown_key"


async def test_a_missing_id_token_is_refused(login: Login) -> None:
    cookie, params = login.begin()
    query = login.callback(params)
    login.server.status = 200
    login.server.body = json.dumps({"access_token": "a", "token_type": "Bearer"}).encode()
    with pytest.raises(IdTokenInvalid) as caught:
        await login.finish(cookie, query)
    assert caught.value.reason == "id_token_missing"


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        pytest.param(500, b'{"error":"server_error"}', "token_http_500", id="server-error"),
        pytest.param(302, b"{}", "token_http_302", id="redirect-not-followed"),
        pytest.param(200, b"<html>", "token_not_json", id="not-json"),
        pytest.param(200, b" " * (70 * 1024), "token_response_too_large", id="oversized"),
    ],
)
async def test_token_endpoint_failures_are_503s(
    login: Login, status: int, body: bytes, reason: str
) -> None:
    cookie, params = login.begin()
    query = login.callback(params)
    login.server.status, login.server.body = status, body
    with pytest.raises(TokenEndpointUnavailable) as caught:
        await login.finish(cookie, query)
    assert caught.value.reason == reason and caught.value.status == 503


async def test_a_token_endpoint_that_does_not_answer_is_bounded(login: Login) -> None:
    login.endpoint = TokenEndpoint(
        login.http,
        login.server.endpoint,
        client_credentials(ClientAuth(client_id="web-app", client_secret="web-secret")),
        timeout=0.2,
    )
    login.server.refresh_delay = 5.0
    started = asyncio.get_running_loop().time()
    with pytest.raises(TokenEndpointUnavailable) as caught:
        await login.endpoint.refresh(login.server.issue_refresh_token())
    assert caught.value.reason == "token_endpoint_unreachable"
    assert asyncio.get_running_loop().time() - started < 2


async def test_an_unreachable_token_endpoint_is_a_503(login: Login) -> None:
    endpoint = TokenEndpoint(
        login.http,
        "http://127.0.0.1:9/token",
        client_credentials(ClientAuth(client_id="web-app", client_secret="web-secret")),
        timeout=1.0,
    )
    with pytest.raises(TokenEndpointUnavailable):
        await endpoint.refresh("rt")


def test_a_token_endpoint_over_plain_http_off_loopback_is_refused() -> None:
    client = client_credentials(ClientAuth(client_id="web-app", client_secret="web-secret"))
    with pytest.raises(ValueError, match="https"):
        TokenEndpoint(None, "http://as.example/token", client, timeout=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["client_secret_post", "private_key_jwt"])
async def test_every_client_authentication_method_is_accepted(
    login: Login, method: str, tmp_path: Path
) -> None:
    settings: dict[str, Any] = {"client_id": "web-app", "method": method}
    if method == "client_secret_post":
        settings["client_secret"] = "web-secret"
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = tmp_path / "client.pem"
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        settings["private_key_file"] = str(pem)
        login.server.public_key = key.public_key()
    login.server.auth_method = method
    login.endpoint = TokenEndpoint(
        login.http,
        login.server.endpoint,
        client_credentials(ClientAuth.model_validate(settings)),
        timeout=2.0,
    )
    cookie, params = login.begin()
    await login.finish(cookie, login.callback(params))
    form = login.server.requests[-1]["form"]
    assert form["client_id"] == "web-app"
    assert ("client_assertion" in form) == (method == "private_key_jwt")


async def test_a_wrong_client_secret_is_a_refusal_not_a_session(login: Login) -> None:
    login.endpoint = TokenEndpoint(
        login.http,
        login.server.endpoint,
        client_credentials(ClientAuth(client_id="web-app", client_secret="wrong")),
        timeout=2.0,
    )
    cookie, params = login.begin()
    with pytest.raises(TokenEndpointRefused) as caught:
        await login.finish(cookie, login.callback(params))
    assert caught.value.error == "invalid_client" and caught.value.status == 502


async def test_a_refresh_rotates_and_checks_the_new_id_token(login: Login) -> None:
    cookie, params = login.begin()
    session = await login.finish(cookie, login.callback(params))
    refreshed = await refresh_tokens(
        session, endpoint=login.endpoint, keys=login.provider, rules=login.rules
    )
    assert refreshed.refresh_token != session.refresh_token
    assert refreshed.access_token != session.access_token
    assert refreshed.handle == session.handle and refreshed.created_at == session.created_at
    with pytest.raises(TokenEndpointRefused) as caught:  # the old one is spent
        await refresh_tokens(
            session, endpoint=login.endpoint, keys=login.provider, rules=login.rules
        )
    assert caught.value.error == "invalid_grant"


async def test_a_refresh_that_changes_the_user_is_refused(login: Login) -> None:
    cookie, params = login.begin()
    session = await login.finish(cookie, login.callback(params))
    login.server.id_token_claims = {"sub": "mallory"}
    with pytest.raises(IdTokenInvalid) as caught:
        await refresh_tokens(
            session, endpoint=login.endpoint, keys=login.provider, rules=login.rules
        )
    assert caught.value.reason == "id_token_subject_changed"
