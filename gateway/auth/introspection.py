"""RFC 7662 token introspection, authenticated per RFC 6749 §2.3 or RFC 7523 §2.2.

An opaque token is only as good as the authorization server's answer about it, and the
answer is read by its meaning (RFC 7662 §2.2, §2.3; RFC 6749 §5.2):

* 200 with ``active: true`` and fields that fit this issuer: an identity;
* 200 with ``active: false``, or 400 with ``invalid_request``, ``invalid_token`` or
  ``unsupported_token_type`` (the server's way of saying it does not know this token):
  not active, a 401 for the client, cached briefly;
* 401 or 403: the server refused *our* client credentials — an outage of ours, not the
  client's fault: 503, an error log naming the issuer and a ``/readyz`` note;
* anything else (5xx, a timeout, garbage, a redirect): 503, the token is neither
  accepted nor declared invalid.

An active answer that contradicts this issuer's configuration is ``InvalidToken``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import ssl as ssl_module
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from gateway import boundedjson
from gateway.auth.breaker import Breaker
from gateway.auth.client_auth import ClientAuthenticator
from gateway.auth.discovery import is_loopback
from gateway.auth.identity import Identity, scopes_from_claim
from gateway.auth.settings import IssuerSettings
from gateway.problems import InvalidToken, ServiceUnavailable

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES: Final = 256 * 1024
RETRY_JITTER: Final = (0.05, 0.15)
_UNAVAILABLE_DETAIL: Final = "The access token could not be checked with its issuer."
_NOT_ACTIVE: Final = frozenset({"invalid_request", "invalid_token", "unsupported_token_type"})


class Introspector:
    """Asks one issuer's introspection endpoint about opaque tokens."""

    def __init__(
        self,
        issuer: IssuerSettings,
        session: aiohttp.ClientSession,
        *,
        endpoint: str,
        ssl: ssl_module.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if issuer.introspection is None:
            raise ValueError(f"issuer {issuer.issuer} has no introspection section")
        _check_transport(endpoint, allow_http=issuer.http.insecure_http)
        config = issuer.introspection
        self._issuer = issuer.issuer
        self._issuer_key = issuer.key
        self._audiences = frozenset(issuer.audiences)
        self._allow_missing_audience = config.allow_missing_audience
        self._scope_claims = tuple(issuer.scope_claims)
        self._leeway = issuer.leeway
        self._session = session
        self._endpoint = endpoint
        self._ssl: ssl_module.SSLContext | bool = True if ssl is None else ssl
        self._clock = clock
        self._timeout = config.timeout
        self._client_timeout = aiohttp.ClientTimeout(total=config.timeout)
        self._hint = config.token_type_hint
        self._auth = ClientAuthenticator(config.client, endpoint, clock)
        self.calls = 0
        self.credentials_refused = False

    async def introspect(self, token: str) -> Identity | None:
        """The token's identity, or None when the server says it is not active."""
        form = {"token": token}
        if self._hint:
            form["token_type_hint"] = self._hint
        try:
            async with asyncio.timeout(self._timeout):
                status, body = await self._post_with_retry(form)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning(
                "introspection failed for token %s: %s", _token_ref(token), type(exc).__name__
            )
            raise ServiceUnavailable(_UNAVAILABLE_DETAIL, reason="introspection_error") from None
        answer = self._parse_answer(status, body, token)
        if answer is None:
            return None
        # RFC 7662 §2.2: "active  REQUIRED. Boolean indicator of whether or not the
        # presented token is currently active."
        if not answer["active"]:
            return None
        return self._identity(answer)

    def _parse_answer(self, status: int, body: bytes, token: str) -> dict[str, Any] | None:
        """The answer by its meaning (see the module docstring); None: not active."""
        answer: Any = None
        try:
            answer = boundedjson.loads(body, max_bytes=MAX_ANSWER_BYTES)
        except ValueError:
            answer = None
        if status == 200 and isinstance(answer, dict) and isinstance(answer.get("active"), bool):
            self.credentials_refused = False
            return answer
        if status == 400 and isinstance(answer, dict) and answer.get("error") in _NOT_ACTIVE:
            # RFC 6749 §5.2 errors about the token itself: the server does not know it (an
            # oidc-provider answers unsupported_token_type for another resource's JWT).
            self.credentials_refused = False
            return None
        if status in (401, 403):
            self.credentials_refused = True
            log.error(
                "introspection at issuer %s refused the gateway's client credentials "
                "(status %d): check issuers[].introspection.client",
                self._issuer_key,
                status,
            )
            raise ServiceUnavailable(_UNAVAILABLE_DETAIL, reason="introspection_unauthorized")
        log.warning(
            "unusable introspection answer for token %s (status %d)", _token_ref(token), status
        )
        raise ServiceUnavailable(_UNAVAILABLE_DETAIL, reason="introspection_bad_answer")

    async def _post_with_retry(self, form: dict[str, str]) -> tuple[int, bytes]:
        """One retry after a connection failure (refused, reset, a pooled connection the
        server had closed); never after an HTTP answer or a timeout. Introspection changes
        nothing on the server, so a repeat is safe."""
        try:
            return await self._post(form)
        except (aiohttp.ClientConnectionError, OSError) as exc:
            if isinstance(exc, TimeoutError | aiohttp.ClientSSLError):
                raise
            await asyncio.sleep(random.uniform(*RETRY_JITTER))
        return await self._post(form)

    async def _post(self, form: dict[str, str]) -> tuple[int, bytes]:
        headers, form = self._auth.apply(form)
        self.calls += 1
        async with self._session.post(
            self._endpoint,
            data=form,
            headers=headers,
            timeout=self._client_timeout,
            allow_redirects=False,
            ssl=self._ssl,
        ) as response:
            return response.status, await _read_bounded(response)

    def _identity(self, answer: dict[str, Any]) -> Identity:
        """Check an active answer against this issuer, then reshape it (RFC 7662 §2.2)."""
        now = self._clock()
        # Parse first: a malformed answer is the server's fault (503), whatever else it says.
        expires_at = _timestamp(answer, "exp")
        not_before = _timestamp(answer, "nbf")
        issuer = answer.get("iss")
        if issuer is not None and issuer != self._issuer:
            raise InvalidToken("The access token was issued by another issuer.", reason="issuer")
        audiences = _audiences(answer.get("aud"))
        # "aud" is OPTIONAL in RFC 7662 §2.2, but an active answer without it says nothing
        # about who the token is for: a refresh token, or an access token minted for no
        # resource, introspects as active too. So the answer must name one of our audiences,
        # as a JWT must (RFC 9068 §4), unless the deployment says its server never sends aud.
        if not audiences and self._allow_missing_audience:
            pass
        elif self._audiences.isdisjoint(audiences):
            raise InvalidToken("The access token is not meant for us.", reason="audience")
        if expires_at is not None and expires_at <= now - self._leeway:
            raise InvalidToken("The access token has expired.", reason="expired")
        if not_before is not None and not_before > now + self._leeway:
            raise InvalidToken("The access token is not valid yet.", reason="not_yet_valid")
        # token_type (RFC 7662 §2.2) or Ory Hydra's token_use: refresh tokens are "never sent
        # to resource servers" (RFC 6749 §1.5).
        for field in ("token_type", "token_use"):
            kind = answer.get(field)
            if isinstance(kind, str) and kind.lower() == "refresh_token":
                raise InvalidToken("A refresh token is not an access token.", reason="token_type")
        claims = {name: value for name, value in answer.items() if name != "active"}
        return Identity(
            issuer=self._issuer,
            subject=_string(answer.get("sub")),
            client_id=_string(answer.get("client_id")),
            scopes=scopes_from_claim(_first_present(answer, self._scope_claims)),
            audiences=audiences,
            expires_at=expires_at,
            token_kind="opaque",  # noqa: S106 - a kind, not a secret
            claims=MappingProxyType(claims),
        )


def _check_transport(endpoint: str, *, allow_http: bool) -> None:
    """RFC 7662 §2: "The introspection endpoint MUST be protected by a transport-layer
    security mechanism". Plain http is allowed to loopback (a sidecar), or when configured."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"introspection endpoint {endpoint} is not an http(s) URL")
    if parts.scheme == "http" and not (allow_http or is_loopback(parts.hostname)):
        raise ValueError(f"introspection endpoint {endpoint} must use https (or insecure_http)")


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, or nothing (an unusable answer) when it passes ``MAX_ANSWER_BYTES``."""
    if (response.content_length or 0) > MAX_ANSWER_BYTES:
        return b""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            return b""
        chunks.append(chunk)
    return b"".join(chunks)


def _audiences(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str))
    return ()


def _timestamp(answer: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate (RFC 7662 §2.2, "as defined in JWT"); a malformed one fails closed."""
    value = answer.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ServiceUnavailable(_UNAVAILABLE_DETAIL, reason="introspection_bad_answer")
    return float(value)


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _first_present(answer: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    return next((answer[name] for name in names if name in answer), None)


def _token_ref(token: str) -> str:
    """What logs may say about a token: a prefix of its SHA-256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class IssuerIntrospection:
    """One issuer's introspection as the authenticator calls it (the identity cache sits in
    front of it, not inside).

    The endpoint may come from discovery, which can finish after start-up; the client is
    therefore made on first use, and until the endpoint is known an uncached token gets a
    503 (fail closed), never a pass.
    """

    def __init__(
        self,
        issuer: IssuerSettings,
        session: aiohttp.ClientSession,
        metadata: Callable[[], Mapping[str, Any] | None],
        *,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self._issuer = issuer
        self._session = session
        self._metadata = metadata
        self._ssl = ssl
        self._client: Introspector | None = None
        self.breaker = Breaker(issuer.http.breaker)

    @property
    def calls(self) -> int:
        return self._client.calls if self._client is not None else 0

    @property
    def credentials_refused(self) -> bool:
        """For /readyz: the server's last word on our client credentials was 401/403."""
        return self._client is not None and self._client.credentials_refused

    async def introspect(self, token: str) -> Identity | None:
        """The token's identity, or None when it is not active. While the endpoint keeps
        failing, the breaker answers 503 at once instead of waiting on it."""
        client = self._client or self._make_client()
        breaker = self.breaker
        if not breaker.allow():
            raise ServiceUnavailable(
                "The issuer's introspection endpoint is failing; not asked.",
                reason="introspection_circuit_open",
            )
        try:
            identity = await client.introspect(token)
        except ServiceUnavailable:
            breaker.failed()
            raise
        except InvalidToken:
            breaker.succeeded()  # the server answered, about the token
            raise
        except BaseException:
            breaker.abandoned()  # cancelled: the probe, if it was one, is not spent
            raise
        breaker.succeeded()
        return identity

    def _make_client(self) -> Introspector:
        assert self._issuer.introspection is not None
        endpoint = self._issuer.introspection.endpoint
        if endpoint is None:
            found = (self._metadata() or {}).get("introspection_endpoint")
            if not isinstance(found, str):
                raise ServiceUnavailable(
                    "The issuer's introspection endpoint is not known yet.",
                    reason="introspection_error",
                )
            endpoint = found
        self._client = Introspector(self._issuer, self._session, endpoint=endpoint, ssl=self._ssl)
        return self._client
