"""RFC 6749 §5.1 (successful token response), §5.2 (error response) and §6 (refresh), with
OIDC Core §3.1.3.3: turning a token endpoint's answer into a value, or a precise error.

The answer comes from outside the process: it is parsed within bounds (``boundedjson``), each
member is type-checked, and anything that is neither a usable §5.1 answer nor a §5.2 error is
``TokenEndpointUnavailable`` - the server could not tell us, so nothing is issued.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from gateway import boundedjson
from gateway.auth.sessions.errors import TokenEndpointRefused, TokenEndpointUnavailable

MAX_RESPONSE_BYTES: Final = 64 * 1024
MAX_TOKEN_BYTES: Final = 16 * 1024
MAX_EXPIRES_IN: Final = 366 * 86400
# RFC 6749 Appendix A.12-A.17: tokens are 1*VSCHAR; a JWS compact ID token is base64url parts.
_VSCHARS: Final = re.compile(r"[\x20-\x7e]+")
_COMPACT: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*){2,4}")
_TOKEN_TYPES: Final = {"bearer": "Bearer", "dpop": "DPoP"}


@dataclass(frozen=True, slots=True)
class TokenResponse:
    access_token: str
    token_type: str  # "Bearer" or "DPoP", canonical case
    expires_in: int | None
    refresh_token: str | None
    id_token: str | None
    scope: str | None

    def __repr__(self) -> str:  # never a token in a log line or a traceback
        return (
            f"TokenResponse(token_type={self.token_type!r}, expires_in={self.expires_in!r},"
            f" refresh_token={'…' if self.refresh_token else None},"
            f" id_token={'…' if self.id_token else None}, scope={self.scope!r})"
        )

    def require_bearer(self) -> TokenResponse:
        """A DPoP-bound token (RFC 9449 §5) is useless without proofs from a key the gateway
        does not hold: the authorization server is configured for another kind of client."""
        if self.token_type != "Bearer":  # noqa: S105 - a token type, not a secret
            raise TokenEndpointUnavailable(
                "The identity provider issued a sender-constrained token this gateway cannot use.",
                reason="token_not_bearer",
            )
        return self


def parse_token_response(status: int, body: bytes) -> TokenResponse:
    """A §5.1 answer, or ``TokenEndpointRefused`` (§5.2), or ``TokenEndpointUnavailable``."""
    document: Any = None
    try:
        document = boundedjson.loads(body, max_bytes=MAX_RESPONSE_BYTES, unique_members=True)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise TokenEndpointUnavailable(
            "The identity provider's token endpoint answered something unusable.",
            reason=f"token_http_{status}" if status != 200 else "token_not_json",
        )
    if status != 200:
        # RFC 6749 §5.2: "The authorization server responds with an HTTP 400 (Bad Request)
        # status code (unless specified otherwise)"; 401 for client authentication failures.
        error = document.get("error")
        if status in (400, 401) and isinstance(error, str):
            raise TokenEndpointRefused(error)
        raise TokenEndpointUnavailable(
            "The identity provider's token endpoint failed.", reason=f"token_http_{status}"
        )
    return _success(document)


def _success(document: dict[str, Any]) -> TokenResponse:
    # RFC 6749 §5.1: access_token and token_type are REQUIRED.
    access_token = _token(document, "access_token", required=True)
    assert access_token is not None
    token_type = document.get("token_type")
    # RFC 6749 §5.1: "The value is case insensitive"; RFC 9449 §5 adds DPoP.
    canonical = _TOKEN_TYPES.get(token_type.lower()) if isinstance(token_type, str) else None
    if canonical is None:
        raise _unusable("token_type")
    id_token = document.get("id_token")
    if id_token is not None and (
        not isinstance(id_token, str)
        or len(id_token) > MAX_TOKEN_BYTES
        or _COMPACT.fullmatch(id_token) is None
    ):
        raise _unusable("id_token")
    scope = document.get("scope")
    if scope is not None and (not isinstance(scope, str) or _VSCHARS.fullmatch(scope) is None):
        raise _unusable("scope")
    return TokenResponse(
        access_token=access_token,
        token_type=canonical,
        expires_in=_expires_in(document.get("expires_in")),
        refresh_token=_token(document, "refresh_token", required=False),
        id_token=id_token,
        scope=scope,
    )


def _token(document: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = document.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TOKEN_BYTES:
        raise _unusable(name)
    if _VSCHARS.fullmatch(value) is None:
        raise _unusable(name)
    return value


def _expires_in(value: Any) -> int | None:
    """RFC 6749 §5.1: "The lifetime in seconds of the access token" - a JSON number. Held to a
    year, so a hostile answer cannot make a session keep a token forever."""
    if value is None:
        return None
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int or value < 0:
        raise _unusable("expires_in")
    return min(value, MAX_EXPIRES_IN)


def _unusable(member: str) -> TokenEndpointUnavailable:
    return TokenEndpointUnavailable(
        f"The identity provider's token response has an unusable {member}.",
        reason="token_bad_response",
    )
