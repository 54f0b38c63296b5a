"""A real OAuth 2.0 token endpoint (RFC 6749 §4.1.3, §6) mounted on a ``TestIssuer``.

It behaves like a strict authorization server: client authentication (Basic, post or an
RFC 7523 assertion), single-use codes bound to their PKCE challenge (RFC 7636 §4.6),
redirect_uri and nonce, ID tokens signed with the issuer's keys (with ``at_hash``), and
refresh-token rotation with reuse detection (RFC 9700 §4.14.2): a rotated-out refresh token
presented again is ``invalid_grant`` and revokes its whole family, the way a concurrent
double refresh logs a user out. Counters and recorded requests let tests assert exactly how
often the gateway called it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import jwt
from aiohttp import web

from gateway.auth.client_auth import JWT_BEARER_ASSERTION
from tests.support.issuer import TestIssuer
from tests.support.signing import left_half_hash


@dataclass
class Grant:
    subject: str
    sid: str
    family: str = field(default_factory=lambda: secrets.token_hex(4))


@dataclass
class PendingCode:
    grant: Grant
    redirect_uri: str
    challenge: str
    nonce: str


class TokenServer:
    __test__ = False

    def __init__(
        self,
        issuer: TestIssuer,
        *,
        client_id: str = "web-app",
        client_secret: str = "web-secret",  # noqa: S107 - a test fixture
        auth_method: str = "client_secret_basic",
        public_key: Any = None,
        access_lifetime: int = 300,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.client_secret = client_secret
        self.auth_method = auth_method
        self.public_key = public_key
        self.access_lifetime = access_lifetime
        self.refresh_delay = 0.0
        self.status: int | None = None  # answer every request with this status (failures)
        self.body: bytes | None = None  # …and this body
        self.id_token_claims: dict[str, Any] = {}  # merged into every ID token (None drops)
        self.issue_id_token_on_refresh = True
        self.issue_refresh_tokens = True  # False: access tokens only (no offline access)
        self.refresh_calls = 0
        self.code_calls = 0
        self.requests: list[dict[str, Any]] = []
        self._codes: dict[str, PendingCode] = {}
        self._live_refresh: dict[str, Grant] = {}
        self._spent_refresh: dict[str, Grant] = {}
        self._revoked: set[str] = set()
        issuer.app.router.add_post("/token", self._token)
        issuer.app.router.add_get("/authorize", self._not_interactive)

    @property
    def endpoint(self) -> str:
        return self.issuer.url + "/token"

    def advertise(self) -> None:
        """Put the endpoints into the issuer's discovery document (after it started)."""
        self.issuer.metadata_overrides |= {
            "authorization_endpoint": self.issuer.url + "/authorize",
            "token_endpoint": self.endpoint,
            "end_session_endpoint": self.issuer.url + "/logout",
        }

    def authorize(
        self,
        *,
        state: str,
        nonce: str,
        challenge: str,
        redirect_uri: str,
        subject: str = "alice",
        sid: str = "op-session-1",
    ) -> str:
        """What the login form would do: issue a code for this request; returns the
        callback query the browser would carry back."""
        code = secrets.token_urlsafe(24)
        self._codes[code] = PendingCode(Grant(subject, sid), redirect_uri, challenge, nonce)
        return f"code={code}&state={state}&iss={self.issuer.url}"

    def issue_refresh_token(self, subject: str = "alice", sid: str = "op-session-1") -> str:
        token = secrets.token_urlsafe(24)
        self._live_refresh[token] = Grant(subject, sid)
        return token

    async def _not_interactive(self, request: web.Request) -> web.Response:
        return web.Response(status=400, text="tests call TokenServer.authorize instead")

    async def _token(self, request: web.Request) -> web.Response:
        form = {name: str(value) for name, value in (await request.post()).items()}
        self.requests.append({"headers": dict(request.headers), "form": form})
        if self.status is not None:
            return web.Response(
                status=self.status, body=self.body or b"{}", content_type="application/json"
            )
        if not self._client_ok(request, form):
            return _error("invalid_client", 401)
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            self.code_calls += 1
            return self._exchange(form)
        if grant_type == "refresh_token":
            self.refresh_calls += 1
            if self.refresh_delay:
                await asyncio.sleep(self.refresh_delay)
            return self._refresh(form)
        return _error("unsupported_grant_type")

    def _exchange(self, form: dict[str, str]) -> web.Response:
        pending = self._codes.pop(form.get("code", ""), None)
        if pending is None:
            return _error("invalid_grant")  # unknown or already used (RFC 6749 §4.1.2)
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if challenge != pending.challenge or form.get("redirect_uri") != pending.redirect_uri:
            return _error("invalid_grant")
        return self._tokens(pending.grant, nonce=pending.nonce, with_id_token=True)

    def _refresh(self, form: dict[str, str]) -> web.Response:
        token = form.get("refresh_token", "")
        spent = self._spent_refresh.get(token)
        if spent is not None:
            self._revoked.add(spent.family)  # reuse: assume theft, end the whole grant
            return _error("invalid_grant")
        grant = self._live_refresh.pop(token, None)
        if grant is None or grant.family in self._revoked:
            return _error("invalid_grant")
        self._spent_refresh[token] = grant
        return self._tokens(grant, nonce=None, with_id_token=self.issue_id_token_on_refresh)

    def _tokens(self, grant: Grant, *, nonce: str | None, with_id_token: bool) -> web.Response:
        access = secrets.token_urlsafe(24)
        refresh = secrets.token_urlsafe(24)
        self._live_refresh[refresh] = grant
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_lifetime,
            "refresh_token": refresh,
            "scope": "openid email",
        }
        if not self.issue_refresh_tokens:
            del body["refresh_token"]
        if with_id_token:
            claims: dict[str, Any] = {
                "sub": grant.subject,
                "aud": self.client_id,
                "sid": grant.sid,
                "at_hash": left_half_hash(access),
                "email": f"{grant.subject}@example.com",
                "jti": None,
                "client_id": None,
                "scope": None,
            }
            if nonce is not None:
                claims["nonce"] = nonce
            body["id_token"] = self.issuer.mint(claims | self.id_token_claims)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def _client_ok(self, request: web.Request, form: dict[str, str]) -> bool:
        if self.auth_method == "client_secret_basic":
            scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
            try:
                user, _, password = base64.b64decode(credentials).decode().partition(":")
            except ValueError:
                return False
            return scheme == "Basic" and (unquote_plus(user), unquote_plus(password)) == (
                self.client_id,
                self.client_secret,
            )
        if self.auth_method == "client_secret_post":
            return (form.get("client_id"), form.get("client_secret")) == (
                self.client_id,
                self.client_secret,
            )
        if form.get("client_assertion_type") != JWT_BEARER_ASSERTION:
            return False
        try:
            claims = jwt.decode(
                form.get("client_assertion", ""),
                self.public_key,
                algorithms=["RS256", "ES256"],
                audience=self.endpoint,
                issuer=self.client_id,
            )
        except jwt.PyJWTError:
            return False
        return bool(claims["sub"] == self.client_id and claims["exp"] <= time.time() + 300)


def _error(code: str, status: int = 400) -> web.Response:
    return web.json_response({"error": code}, status=status, headers={"Cache-Control": "no-store"})
