"""A real RFC 7662 introspection endpoint on 127.0.0.1 for tests and benchmarks.

It authenticates its client the way an authorization server does (RFC 6749 §2.3.1 Basic
with form-encoded credentials, client_secret_post, or an RFC 7523 assertion verified with
a public key), answers from a registry of tokens, counts calls and records what it got.
``mode`` switches it into a failure: ``"error"`` (HTTP 500), ``"hang"`` (never answers),
``"slow"`` (answers after ``delay`` seconds), ``"garbage"`` (200 with a non-JSON body),
``"no_active"`` (JSON without "active"), ``"drop"`` (closes the connection unanswered).
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any, Literal
from urllib.parse import unquote_plus

import jwt
from aiohttp import web

from gateway.auth.client_auth import JWT_BEARER_ASSERTION

Mode = Literal[
    "ok", "error", "hang", "slow", "garbage", "no_active", "drop", "unsupported", "forbidden"
]
AuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]


class TestIntrospectionServer:
    """``add_token(token, sub=..., scope=..., exp=...)`` registers an answer; unknown tokens
    are inactive. ``add_token(token, active=False)`` registers an explicitly inactive one."""

    __test__ = False  # a helper, not a pytest test class

    def __init__(
        self,
        *,
        client_id: str = "gateway",
        client_secret: str | None = "gateway-secret",  # noqa: S107 - a test fixture
        auth_method: AuthMethod = "client_secret_basic",
        public_key: Any = None,
        path: str = "/introspect",
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.auth_method = auth_method
        self.public_key = public_key
        self.path = path
        self.mode: Mode = "ok"
        self.default_fields: dict[str, Any] = {}
        self.delay = 0.0
        self.calls = 0
        self.auth_failures = 0
        self.requests: list[dict[str, Any]] = []
        self._tokens: dict[str, dict[str, Any]] = {}
        self._seen_jti: set[str] = set()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def add_token(self, token: str, **fields: Any) -> None:
        """Register an answer: ``default_fields`` under ``fields``; a None value drops one."""
        answer = {"active": True, **self.default_fields, **fields}
        self._tokens[token] = {k: v for k, v in answer.items() if v is not None}

    def remove_token(self, token: str) -> None:
        self._tokens.pop(token, None)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post(self.path, self._introspect)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _introspect(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        form = dict(await request.post())
        self.requests.append({"headers": dict(request.headers), "form": form})
        if self.mode == "drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if self.mode == "hang":
            await self._release.wait()
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        if self.mode == "error":
            return web.json_response({"error": "server_error"}, status=500)
        if self.mode == "garbage":
            return web.Response(body=b"<html>not json</html>", content_type="text/html")
        if self.mode == "no_active":
            return web.json_response({"sub": "alice"})
        if self.mode == "unsupported":  # oidc-provider, for another resource's JWT
            return web.json_response({"error": "unsupported_token_type"}, status=400)
        if self.mode == "forbidden":  # the gateway's own client is not allowed to introspect
            return web.json_response({"error": "access_denied"}, status=403)
        if not self._client_authenticated(request, form):
            self.auth_failures += 1
            return web.json_response({"error": "invalid_client"}, status=401)
        token = str(form.get("token", ""))
        return web.json_response(self._tokens.get(token, {"active": False}))

    def _client_authenticated(self, request: web.Request, form: dict[str, Any]) -> bool:
        if self.auth_method == "client_secret_basic":
            return self._basic_ok(request.headers.get("Authorization", ""))
        if self.auth_method == "client_secret_post":
            return (form.get("client_id"), form.get("client_secret")) == (
                self.client_id,
                self.client_secret,
            )
        return self._assertion_ok(form)

    def _basic_ok(self, header: str) -> bool:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except ValueError:
            return False
        user, sep, password = decoded.partition(":")
        # RFC 6749 §2.3.1: both halves are form-urlencoded before Base64.
        return bool(sep) and (unquote_plus(user), unquote_plus(password)) == (
            self.client_id,
            self.client_secret,
        )

    def _assertion_ok(self, form: dict[str, Any]) -> bool:
        if form.get("client_assertion_type") != JWT_BEARER_ASSERTION:
            return False
        try:
            claims = jwt.decode(
                str(form.get("client_assertion", "")),
                self.public_key,
                algorithms=["RS256", "ES256", "PS256", "EdDSA"],
                audience=self.url,
                issuer=self.client_id,
                options={"require": ["exp", "iat", "jti", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError:
            return False
        jti = claims["jti"]
        fresh = claims["exp"] <= time.time() + 300 and jti not in self._seen_jti
        self._seen_jti.add(jti)
        return fresh and claims["sub"] == self.client_id
