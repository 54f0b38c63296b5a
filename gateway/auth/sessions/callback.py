"""RFC 6749 §4.1.2 and §4.1.2.1, RFC 9207 §2.4: reading the authorization response at the
callback and matching it to the login this browser started.

Anyone can send a browser to the callback with any query, so everything here is checked
before the code goes anywhere: parameters appear at most once (RFC 6749 §3.1: "Request and
response parameters MUST NOT be included more than once"), the ``state`` must name a login
pending in this browser's sealed pre-login cookie, and the issuer, when the server says it
sends one, must be the one we asked.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from gateway.auth.sessions.errors import (
    AuthorizationRefused,
    LoginExpired,
    LoginFailed,
    StateMismatch,
)
from gateway.auth.sessions.login_state import PendingLogin, PendingLogins

MAX_QUERY_BYTES: Final = 8 * 1024
MAX_CODE_BYTES: Final = 2048
_KNOWN: Final = frozenset(
    {"code", "state", "iss", "error", "error_description", "error_uri", "session_state"}
)


@dataclass(frozen=True, slots=True)
class AuthorizationResponse:
    code: str
    state: str


def parse_callback(
    query: str, *, issuer: str, issuer_parameter_required: bool
) -> AuthorizationResponse:
    """The code and state of a successful authorization response, or the ``LoginFailed``
    to render. An error answer is checked for ``state`` and ``iss`` too, but any answer that
    carries ``error`` is a refusal whatever else it says."""
    if len(query) > MAX_QUERY_BYTES:
        raise LoginFailed("The sign-in response is too large.", reason="callback_too_large")
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(
            query, keep_blank_values=True, strict_parsing=False, errors="strict", max_num_fields=32
        )
    except (ValueError, UnicodeDecodeError):
        raise LoginFailed(
            "The sign-in response is malformed.", reason="callback_malformed"
        ) from None
    for name, value in pairs:
        if name in _KNOWN and name in params:
            raise LoginFailed(
                "The sign-in response repeats a parameter.", reason="callback_repeated"
            )
        params[name] = value
    _check_issuer(params.get("iss"), issuer, issuer_parameter_required)
    if "error" in params:
        raise AuthorizationRefused(params["error"])
    code, state = params.get("code"), params.get("state")
    if not state:
        raise LoginFailed("The sign-in response has no state.", reason="callback_no_state")
    if not code:
        raise LoginFailed("The sign-in response has no code.", reason="callback_no_code")
    # RFC 6749 Appendix A.11: code = 1*VSCHAR.
    if len(code) > MAX_CODE_BYTES or not (code.isascii() and code.isprintable()):
        raise LoginFailed("The sign-in response's code is malformed.", reason="callback_bad_code")
    return AuthorizationResponse(code=code, state=state)


def match_pending(
    response_state: str, pending: PendingLogins | None, now: float, lifetime: float
) -> tuple[PendingLogin, PendingLogins]:
    """The pending login the state names, and the pending logins left after it.

    RFC 6749 §10.12: "The client MUST implement CSRF protection for its redirection URI";
    the state binds the response to this browser's cookie. No cookie at all is a login that
    expired or a browser that blocks cookies; a cookie without this state is a response
    meant for someone else (or a replay of a state already used).
    """
    if pending is None or not pending.logins:
        raise LoginExpired()
    found, rest = pending.take(response_state, now, lifetime)
    if found is None:
        raise StateMismatch()
    return found, rest


def _check_issuer(value: str | None, issuer: str, required: bool) -> None:
    """RFC 9207 §2.4: clients "MUST reject authorization responses without the iss parameter
    from authorization servers that do support the parameter"; where present, the value is
    compared by "simple string comparison" and a mismatch MUST be rejected (mix-up attacks)."""
    if value is None:
        if required:
            raise LoginFailed(
                "The sign-in response does not name its issuer.", reason="callback_no_issuer"
            )
        return
    if not hmac.compare_digest(value.encode(), issuer.encode()):
        raise LoginFailed(
            "The sign-in response comes from another issuer.", reason="callback_wrong_issuer"
        )
