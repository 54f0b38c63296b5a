"""OIDC Core §3.1 (authorization code flow): the two ends of a login, composed from the pure
parts - starting one (a pending login and the URL to send the browser to) and completing
one (exchange the code with the PKCE verifier, validate the ID token, make a session).

The HTTP endpoints (phase 2) only move values between requests and these functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.auth.jwks import KeySetProvider
from gateway.auth.sessions.authorize import authorization_url
from gateway.auth.sessions.callback import AuthorizationResponse
from gateway.auth.sessions.errors import IdTokenInvalid
from gateway.auth.sessions.id_token import IdTokenRules, verify_id_token
from gateway.auth.sessions.login_state import PendingLogin, code_challenge
from gateway.auth.sessions.session import Session
from gateway.auth.sessions.token_endpoint import TokenEndpoint


@dataclass(frozen=True, slots=True)
class LoginClient:
    """One login config's fixed parameters, compiled once."""

    name: str
    issuer: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    extra_parameters: Mapping[str, str]
    keep_id_token: bool


def start_login(
    client: LoginClient, authorization_endpoint: str, return_to: str, now: float
) -> tuple[PendingLogin, str]:
    """A new pending login (fresh state, nonce and verifier) and the authorization URL."""
    pending = PendingLogin.start(return_to, now)
    url = authorization_url(
        authorization_endpoint,
        client_id=client.client_id,
        redirect_uri=client.redirect_uri,
        scopes=client.scopes,
        state=pending.state,
        nonce=pending.nonce,
        code_challenge=code_challenge(pending.verifier),
        extra=client.extra_parameters,
    )
    return pending, url


async def complete_login(
    client: LoginClient,
    response: AuthorizationResponse,
    pending: PendingLogin,
    *,
    endpoint: TokenEndpoint,
    keys: KeySetProvider,
    rules: IdTokenRules,
    clock: Callable[[], float] = time.time,
) -> Session:
    """The session a successful callback creates (``response`` already matched ``pending``
    through ``callback.match_pending``). RFC 7636 §4.5: the verifier goes with the code, so
    a code stolen from the redirect is useless without this browser's pre-login cookie."""
    tokens = await endpoint.exchange_code(
        response.code, redirect_uri=client.redirect_uri, verifier=pending.verifier
    )
    tokens = tokens.require_bearer()
    # OIDC Core §3.1.3.3: the token response of an OpenID request carries "id_token" (the
    # "openid" scope is always requested).
    if tokens.id_token is None:
        raise IdTokenInvalid("The identity provider sent no ID token.", reason="id_token_missing")
    now = clock()
    id_token = await verify_id_token(
        tokens.id_token,
        provider=keys,
        rules=rules,
        now=now,
        nonce=pending.nonce,
        access_token=tokens.access_token,
    )
    return Session.from_login(
        login=client.name,
        issuer=client.issuer,
        id_token=id_token,
        tokens=tokens,
        now=now,
        keep_id_token=client.keep_id_token,
        raw_id_token=tokens.id_token,
    )
