"""RFC 9457 problem details and the gateway's one exception tree.

Every expected failure on the request path is a ``GatewayError`` subclass that knows its
HTTP status, its problem ``type``, a title, a short ``reason`` (used as a log field and a
metrics label) and, for authentication failures, its RFC 6750 §3 ``WWW-Authenticate``
challenge. The tree is pure data: it never imports aiohttp, so the auth pipeline can raise
these errors and the proxy edge renders them in exactly one place.

    GatewayError (500)
    ├── BadRequest (400)            malformed request line, target, framing or headers
    │   ├── BadFraming (400)        framing the gateway will not relay (closes the connection)
    │   └── InvalidPath (400)       a path the normaliser refuses
    ├── RequestTimeout (408)        a request head or body did not arrive in time
    ├── ContentTooLarge (413)       a body the gateway must read is over its bound
    ├── UriTooLong (414)            the request target is over its bound
    ├── HeadersTooLarge (431)
    ├── VersionNotSupported (505)   a request line that is not HTTP/1.0 or HTTP/1.1
    ├── NotFound (404)              no route matched
    ├── MethodNotAllowed (405)      a route's path matched, its methods did not
    ├── BadGateway (502)            upstream refused, reset or answered garbage
    ├── GatewayTimeout (504)        upstream did not answer in time
    ├── ServiceUnavailable (503)    a dependency the decision needs is down (fail closed)
    └── AuthError                   RFC 6750 §3 errors, rendered with a Bearer challenge
        ├── MissingCredentials (401, no error code: RFC 6750 §3.1)
        ├── InvalidRequest (400, error="invalid_request")
        ├── InvalidToken (401, error="invalid_token")
        └── InsufficientScope (403, error="insufficient_scope", scope="…")
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

PROBLEM_CONTENT_TYPE = "application/problem+json"
SERVER_NAME = "oauth-gateway"
"""What the gateway calls itself in ``Server``: never a library's name and version."""
_TYPE_PREFIX = "urn:oauth-gateway:problem:"


@dataclass(frozen=True, slots=True)
class Challenge:
    """What a route's ``WWW-Authenticate`` offers: its realm (RFC 6750 §3), the RFC 9728 §5.1
    metadata URL, the scopes an MCP client should ask for, and the DPoP scheme with its
    algorithms (RFC 9449 §7.1) next to, or instead of, Bearer."""

    realm: str = "gateway"
    resource_metadata: str | None = None
    scope: str | None = None  # advertised on a 401 without credentials (MCP step-up)
    dpop_algs: tuple[str, ...] = ()  # non-empty: the DPoP scheme is accepted here
    bearer: bool = True  # False: only DPoP (a route that requires it)


def as_challenge(context: Challenge | str) -> Challenge:
    return context if isinstance(context, Challenge) else Challenge(realm=context)


class GatewayError(Exception):
    """Base of every error the gateway answers on purpose."""

    status: int = 500
    title: str = "Internal Server Error"
    slug: str = "internal-error"
    reason: str = "internal_error"
    # Set-Cookie values the refusal still carries: a browser session the request refreshed
    # before a later check said no (losing it would lose the refreshed tokens).
    set_cookies: tuple[str, ...] = ()

    def __init__(self, detail: str | None = None, *, reason: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if reason is not None:
            self.reason = reason

    def challenge(self, context: Challenge | str) -> str | None:
        """The ``WWW-Authenticate`` value to send, or None where none applies; ``context`` is
        the route's ``Challenge`` (or just a realm)."""
        return None

    def extra_headers(self) -> dict[str, str]:
        """Headers beyond the challenge that this status requires (e.g. ``Allow``)."""
        return {}

    def carry_cookies(self, headers: Iterable[tuple[str, str]]) -> None:
        """Keep the ``Set-Cookie`` fields among ``headers`` (an allowed decision's response
        fields) in this refusal of the same request."""
        self.set_cookies = (
            *self.set_cookies,
            *(value for name, value in headers if name.lower() == "set-cookie"),
        )

    def response_headers(self) -> list[tuple[str, str]]:
        """``extra_headers`` as a list, which may repeat a name (several ``Set-Cookie``, RFC
        6265 §3: "Origin servers SHOULD NOT fold multiple Set-Cookie header fields into a
        single header field"). Renderers read this one."""
        return [*self.extra_headers().items(), *(("Set-Cookie", c) for c in self.set_cookies)]

    def problem(self, request_id: str | None = None) -> dict[str, object]:
        """The RFC 9457 body. ``detail`` is written for the client and never holds secrets."""
        body: dict[str, object] = {
            "type": _TYPE_PREFIX + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if request_id:
            body["request_id"] = request_id
        return body

    def problem_bytes(self, request_id: str | None = None) -> bytes:
        return json.dumps(self.problem(request_id), separators=(",", ":")).encode()


class BadRequest(GatewayError):
    status = 400
    title = "Bad Request"
    slug = "bad-request"
    reason = "bad_request"


class BadFraming(BadRequest):
    """Message framing the gateway will not relay; the connection is closed after it."""

    slug = "bad-framing"
    reason = "bad_framing"


class InvalidPath(BadRequest):
    slug = "invalid-path"
    reason = "invalid_path"


class RequestTimeout(GatewayError):
    """RFC 9110 §15.5.9: the server "did not receive a complete request message within the
    time that it was prepared to wait"."""

    status = 408
    title = "Request Timeout"
    slug = "request-timeout"
    reason = "request_timeout"


class ContentTooLarge(GatewayError):
    """RFC 9110 §15.5.14: a body the gateway must read whole is over its limit."""

    status = 413
    title = "Content Too Large"
    slug = "content-too-large"
    reason = "content_too_large"


class UriTooLong(GatewayError):
    """RFC 9112 §3: a server that receives a request-target longer than it wishes to parse
    "MUST respond with a 414 (URI Too Long) status code"."""

    status = 414
    title = "URI Too Long"
    slug = "uri-too-long"
    reason = "uri_too_long"


class HeadersTooLarge(GatewayError):
    status = 431
    title = "Request Header Fields Too Large"
    slug = "headers-too-large"
    reason = "headers_too_large"


class VersionNotSupported(GatewayError):
    """RFC 9110 §15.6.6: this gateway speaks HTTP/1.0 and HTTP/1.1 on its listener."""

    status = 505
    title = "HTTP Version Not Supported"
    slug = "version-not-supported"
    reason = "bad_version"


class NotFound(GatewayError):
    status = 404
    title = "Not Found"
    slug = "no-route"
    reason = "no_route"


class MethodNotAllowed(GatewayError):
    status = 405
    title = "Method Not Allowed"
    slug = "method-not-allowed"
    reason = "method_not_allowed"

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = tuple(sorted(set(allowed)))
        super().__init__("This path does not accept that method.")

    def extra_headers(self) -> dict[str, str]:
        # RFC 9110 §15.5.6: the origin server MUST generate an Allow header field in a 405.
        return {"Allow": ", ".join(self.allowed)}


class BadGateway(GatewayError):
    status = 502
    title = "Bad Gateway"
    slug = "upstream-unavailable"
    reason = "upstream_error"


class GatewayTimeout(GatewayError):
    status = 504
    title = "Gateway Timeout"
    slug = "upstream-timeout"
    reason = "upstream_timeout"


class ServiceUnavailable(GatewayError):
    status = 503
    title = "Service Unavailable"
    slug = "dependency-unavailable"
    reason = "unavailable"


def quoted(value: str) -> str:
    """An RFC 9110 §5.6.4 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def error_description(detail: str) -> str:
    """``detail`` as an ``error_description`` may carry it. RFC 6750 §3 (and RFC 9449 §7.1,
    which reuses it): values "MUST NOT include characters outside the set %x20-21 /
    %x23-5B / %x5D-7E". A detail may quote what the client sent (a DPoP proof's ``alg``),
    so this is where the rule is kept: ``"`` becomes ``'``, anything else outside the set
    ``?``. The problem body's ``detail`` (JSON) keeps the text as it is."""
    return "".join(
        char if " " <= char <= "~" and char not in '"\\' else "'" if char == '"' else "?"
        for char in detail
    )


class AuthError(GatewayError):
    """An RFC 6750 §3 error: rendered with a ``Bearer`` challenge (and, where the route
    accepts DPoP, a ``DPoP`` one: RFC 9449 §7.2 lets a resource offer both schemes)."""

    error_code: str | None = None

    def challenge(self, context: Challenge | str) -> str | None:
        ctx = as_challenge(context)
        realm = [f"realm={quoted(ctx.realm)}"]
        error = []
        if self.error_code is not None:
            error = [f"error={quoted(self.error_code)}",
                     f"error_description={quoted(error_description(self.detail))}"]  # fmt: skip
        error.extend(self._extra_params())
        if self.error_code is None and ctx.scope:
            # MCP authorization: a 401 may name the scopes the client should request.
            error.append(f"scope={quoted(ctx.scope)}")
        # RFC 9728 §5.1: where the client finds this resource's metadata.
        meta = [f"resource_metadata={quoted(m)}" for m in (ctx.resource_metadata,) if m]
        if not ctx.dpop_algs:
            return "Bearer " + ", ".join([*realm, *error, *meta])
        # RFC 9449 §7.1: "An algs parameter SHOULD be included".
        algs = [f"algs={quoted(' '.join(ctx.dpop_algs))}"]
        if not ctx.bearer:  # only DPoP here: the error travels in the DPoP challenge
            return "DPoP " + ", ".join([*realm, *error, *algs, *meta])
        bearer = "Bearer " + ", ".join([*realm, *error, *meta])
        return bearer + ", DPoP " + ", ".join([*realm, *algs, *meta])

    def _extra_params(self) -> list[str]:
        return []


class MissingCredentials(AuthError):
    """RFC 6750 §3.1: "If the request lacks any authentication information …, the resource
    server SHOULD NOT include an error code or other error information." """

    status = 401
    title = "Unauthorized"
    slug = "missing-credentials"
    reason = "missing"

    def __init__(self) -> None:
        super().__init__("This resource requires a bearer access token.")


class InvalidRequest(AuthError):
    status = 400
    title = "Bad Request"
    slug = "invalid-request"
    reason = "invalid_request"
    error_code = "invalid_request"


class InvalidToken(AuthError):
    status = 401
    title = "Unauthorized"
    slug = "invalid-token"
    reason = "invalid"
    error_code = "invalid_token"


class InsufficientScope(AuthError):
    status = 403
    title = "Forbidden"
    slug = "insufficient-scope"
    reason = "insufficient_scope"
    error_code = "insufficient_scope"

    def __init__(self, required: Iterable[str], detail: str | None = None) -> None:
        self.required = tuple(required)
        super().__init__(detail or "The access token does not grant the scope this route needs.")

    def _extra_params(self) -> list[str]:
        return [f"scope={quoted(' '.join(self.required))}"] if self.required else []


class Forbidden(AuthError):
    """A claim rule said no. RFC 6750 has no code for it; the closest is insufficient_scope
    without a ``scope`` attribute, which tells a client that another token might do."""

    status = 403
    title = "Forbidden"
    slug = "claims-rejected"
    reason = "claims_rejected"
    error_code = "insufficient_scope"


@dataclass(frozen=True, slots=True)
class RenderedProblem:
    """A problem response as status, header fields and body, for any listener to write."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def render_problem(
    error: GatewayError, challenge: Challenge | str = "gateway", request_id: str | None = None
) -> RenderedProblem:
    """The one renderer of problem responses, proxy and admin alike: the RFC 9457 body, the
    RFC 6750 challenge where one applies, and no caching of answers about credentials."""
    headers = [("Content-Type", PROBLEM_CONTENT_TYPE), ("Server", SERVER_NAME)]
    offered = error.challenge(challenge)
    if offered is not None:
        headers.append(("WWW-Authenticate", offered))
    extra = error.response_headers()
    if isinstance(error, AuthError) and all(name != "Cache-Control" for name, _ in extra):
        # RFC 6750 §5.3 / RFC 9111 §5.2.2.5: answers about credentials must not be cached.
        headers.append(("Cache-Control", "no-store"))
    headers.extend(extra)
    return RenderedProblem(error.status, tuple(headers), error.problem_bytes(request_id))
