"""RFC 8414 §3 (and OpenID Connect Discovery 1.0 §4): fetching an issuer's metadata safely.

Everything the gateway fetches from an issuer (the metadata document here, the JWK Set in
``jwks.py``) goes through ``fetch_json``: one shared ``ClientSession``, no redirects, a total
timeout, a size cap and a JSON media type, so a misbehaving or hostile endpoint can cost us
at most one bounded request. This module never imports ``aiohttp.web``.
"""

from __future__ import annotations

import ipaddress
import json
import ssl as ssl_module
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

MAX_DOCUMENT_BYTES = 1024 * 1024
_OIDC_SUFFIX = "/.well-known/openid-configuration"
_OAUTH_WELL_KNOWN = "/.well-known/oauth-authorization-server"
_JSON_MEDIA_TYPES = frozenset({"application/json", "application/jwk-set+json"})


class FetchError(Exception):
    """An issuer document could not be fetched or was not a JSON object."""


class HttpStatusError(FetchError):
    """The endpoint answered, but not with 200: another well-known location may still work."""


class DiscoveryError(Exception):
    """No usable metadata: the message says why (never a secret)."""


def check_url_allowed(url: str, allow_http: bool) -> None:
    """Keys fetched over plain http could be swapped by anyone on the path, so http is only
    accepted on loopback (a sidecar issuer) or when the operator opted in."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise ValueError("the URL has no host")
    if parts.scheme == "https":
        return
    if parts.scheme != "http":
        raise ValueError("only https (or http to loopback) URLs are fetched")
    if allow_http or is_loopback(host):
        return
    raise ValueError("plain http is allowed only to loopback hosts unless insecure_http is set")


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: where plain http cannot be intercepted off the host."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def metadata_urls(issuer: str) -> tuple[str, str]:
    """The OpenID Connect location first (most issuers serve it), then RFC 8414's."""
    # OIDC Discovery §4: "remove any terminating / and append /.well-known/openid-configuration"
    oidc = issuer.rstrip("/") + _OIDC_SUFFIX
    # RFC 8414 §3.1: "any terminating "/" MUST be removed before inserting "/.well-known/" and
    # the well-known URI suffix between the host component and the path component".
    parts = urlsplit(issuer)
    path = _OAUTH_WELL_KNOWN + parts.path.rstrip("/")
    oauth = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    return oidc, oauth


def _media_type_ok(content_type: str) -> bool:
    return content_type in _JSON_MEDIA_TYPES or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def fetch_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    timeout: float,  # noqa: ASYNC109 - bounds each HTTP request (aiohttp ClientTimeout)
    ssl: ssl_module.SSLContext | bool | None,
    allow_http: bool,
) -> tuple[dict[str, Any], str | None]:
    """GET a JSON object; returns it with the response's Cache-Control (for refresh timing)."""
    try:
        check_url_allowed(url, allow_http)
    except ValueError as exc:
        raise FetchError(f"{url}: {exc}") from None
    try:
        async with session.get(
            url,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
            ssl=True if ssl is None else ssl,
            headers={"Accept": "application/json"},
        ) as response:
            if response.status != 200:
                raise HttpStatusError(f"{url}: HTTP {response.status}")
            if not _media_type_ok(response.content_type):
                raise FetchError(f"{url}: unexpected content type {response.content_type!r}")
            if (response.content_length or 0) > MAX_DOCUMENT_BYTES:
                raise FetchError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
            body = bytearray()
            async for chunk in response.content.iter_any():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise FetchError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
            cache_control = response.headers.get("Cache-Control")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise FetchError(f"{url}: {type(exc).__name__} {exc}".rstrip()) from None
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except ValueError:
        raise FetchError(f"{url}: the body is not JSON") from None
    if not isinstance(document, dict):
        raise FetchError(f"{url}: the body is not a JSON object")
    return document, cache_control


async def fetch_metadata(
    session: aiohttp.ClientSession,
    issuer: str,
    *,
    timeout: float,  # noqa: ASYNC109 - bounds each HTTP request (aiohttp ClientTimeout)
    ssl: ssl_module.SSLContext | bool | None,
    allow_http: bool,
) -> dict[str, Any]:
    """The issuer's metadata, from whichever well-known location answers 200."""
    failures: list[str] = []
    for url in metadata_urls(issuer):
        try:
            document, _ = await fetch_json(
                session, url, timeout=timeout, ssl=ssl, allow_http=allow_http
            )
        except HttpStatusError as exc:
            failures.append(str(exc))
            continue
        except FetchError as exc:
            # A timeout or refused connection will not go better at the second location.
            raise DiscoveryError(str(exc)) from None
        # RFC 8414 §3.3: the "issuer" value returned MUST be identical to the issuer identifier
        # into which the well-known string was inserted; "If these values are not identical,
        # the data contained in the response MUST NOT be used."
        if document.get("issuer") != issuer:
            raise DiscoveryError(f"{url}: the metadata names a different issuer")
        return document
    raise DiscoveryError("no metadata: " + "; ".join(failures))
