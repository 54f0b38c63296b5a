"""RFC 6749 §4.1.3 (code exchange, with RFC 7636 §4.5's ``code_verifier``) and §6 (refresh):
the gateway's calls to the token endpoint, authenticated as in ``client_auth``.

The edge where a login touches the network. One long-lived control-plane ``ClientSession``
(never one per request, never the proxy's), no redirects, a total timeout, a bounded body.
Neither call is retried: a code is single-use (RFC 6749 §4.1.2: "If an authorization code is
used more than once, the authorization server MUST deny the request"), and with rotating
refresh tokens a repeated refresh would be taken for a replay and revoke the grant.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from gateway.auth.client_auth import ClientAuthenticator
from gateway.auth.discovery import is_loopback
from gateway.auth.sessions.errors import TokenEndpointUnavailable
from gateway.auth.sessions.token_response import (
    MAX_RESPONSE_BYTES,
    TokenResponse,
    parse_token_response,
)
from gateway.auth.settings import ClientCredentials

log = logging.getLogger(__name__)
_READ_CHUNK: Final = 16 * 1024


class TokenEndpoint:
    """One login config's token endpoint."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: str,
        client: ClientCredentials,
        *,
        timeout: float,
        allow_http: bool = False,
        ssl: ssl_module.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(endpoint)
        # RFC 6749 §3.2: "the authorization server MUST require the use of TLS ... when
        # sending requests to the token endpoint"; plain http only to loopback or when asked.
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"token endpoint {endpoint} is not an http(s) URL")
        if parts.scheme == "http" and not (allow_http or is_loopback(parts.hostname)):
            raise ValueError(f"token endpoint {endpoint} must use https (or insecure_http)")
        self._session = session
        self._endpoint = endpoint
        self._auth = ClientAuthenticator(client, endpoint, clock)
        self._timeout = timeout
        self._ssl: ssl_module.SSLContext | bool = True if ssl is None else ssl
        self.calls = 0

    async def exchange_code(self, code: str, *, redirect_uri: str, verifier: str) -> TokenResponse:
        """RFC 6749 §4.1.3: ``redirect_uri`` is REQUIRED when the authorization request had
        one ("their values MUST be identical"); ``client_id`` too unless the client
        authenticates (ClientAuthenticator adds it where its method wants it)."""
        return await self._post(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            }
        )

    async def refresh(self, refresh_token: str) -> TokenResponse:
        """RFC 6749 §6; the scope is left out, so it stays what was granted."""
        return await self._post({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def _post(self, form: dict[str, str]) -> TokenResponse:
        headers, fields = self._auth.apply(form)
        self.calls += 1
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session.post(
                    self._endpoint,
                    data=fields,
                    headers=headers,
                    allow_redirects=False,
                    ssl=self._ssl,
                ) as response:
                    status = response.status
                    body = await _read_bounded(response)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("token endpoint %s failed: %s", self._endpoint, type(exc).__name__)
            raise TokenEndpointUnavailable(
                "The identity provider's token endpoint could not be reached.",
                reason="token_endpoint_unreachable",
            ) from None
        if body is None:
            raise TokenEndpointUnavailable(
                "The identity provider's token response is too large.",
                reason="token_response_too_large",
            )
        return parse_token_response(status, body)


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes | None:
    """The whole body, or None past ``MAX_RESPONSE_BYTES`` (never buffered beyond it)."""
    if (response.content_length or 0) > MAX_RESPONSE_BYTES:
        return None
    body = bytearray()
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            return None
    return bytes(body)
