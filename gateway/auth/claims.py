"""RFC 7519 §4.1, RFC 9068 §2.2: the JSON types of registered claims, and the time checks.

A registered claim of the wrong JSON type makes the token malformed, never absent:
``"exp": null``, ``"exp": true`` or ``"exp": "4102444800"`` is no expiry a verifier may skip,
and ``"sub": ["alice"]`` is no subject. Reading every claim the gateway reasons about through
one function keeps the checks in one place for JWTs (and for introspection answers, which
carry the same names, RFC 7662 §2.2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.problems import InvalidToken

# RFC 7519 §4.1.1, §4.1.2, §4.1.7 (StringOrURI / case-sensitive strings), RFC 9068 §2.2
# (client_id) and OpenID Connect Core §2 (azp, the client id of tokens that lack client_id).
STRING_CLAIMS = ("iss", "sub", "jti", "client_id", "azp")
# RFC 7519 §4.1.4-§4.1.6: NumericDate values.
DATE_CLAIMS = ("exp", "nbf", "iat")


@dataclass(frozen=True, slots=True)
class RegisteredClaims:
    """The registered claims of one token, each of its RFC type or None when absent."""

    subject: str | None
    client_id: str | None
    audiences: tuple[str, ...]
    expires_at: float | None
    not_before: float | None
    issued_at: float | None
    scopes: frozenset[str]


def _malformed(detail: str) -> InvalidToken:
    return InvalidToken(detail, reason="malformed")


def _numeric_date(value: Any, name: str) -> float:
    """RFC 7519 §2 NumericDate: "A JSON numeric value"; a bool, null or string is none."""
    kind = type(value)
    if kind is int:
        try:
            return float(value)  # JSON allows integers no float can hold
        except OverflowError:
            raise _malformed(f"The token's {name} claim is out of range.") from None
    if kind is float and math.isfinite(value):  # 1e400 parses as inf
        return float(value)
    raise _malformed(f"The token's {name} claim is not a number.")


def _audiences(value: Any) -> tuple[str, ...]:
    # RFC 7519 §4.1.3: "the "aud" value is an array of case-sensitive strings, each containing
    # a StringOrURI value", or a single such string.
    if type(value) is str:
        return (value,)
    if type(value) is list and all(type(item) is str for item in value):
        return tuple(value)
    raise _malformed("The token's aud claim is neither a string nor an array of strings.")


def _scopes(value: Any, name: str) -> frozenset[str]:
    """RFC 8693 §4.2 (via RFC 9068 §2.2.3): "a JSON string containing a space-separated list
    of scopes". An array of scope strings is accepted too: Spring Authorization Server and
    IdentityServer write ``scope`` that way and Okta writes ``scp`` so; a member must then be
    one RFC 6749 §3.3 scope-token, so that no member reads as two once the scopes are joined."""
    if type(value) is str:
        return frozenset(value.split())
    if type(value) is list and all(type(item) is str and item.split() == [item] for item in value):
        return frozenset(value)
    raise _malformed(f"The token's {name} claim is neither a scope string nor an array of scopes.")


def read_registered(claims: Mapping[str, Any], scope_claims: Sequence[str]) -> RegisteredClaims:
    """The typed registered claims; raises ``InvalidToken`` (malformed) for a wrong type.

    An absent claim is None; a present one must have its type, null included: RFC 7519 gives
    none of these claims a null value. Scopes come from the first of ``scope_claims`` present,
    and every one present is type-checked.
    """
    for name in STRING_CLAIMS:
        if name in claims and type(claims[name]) is not str:
            raise _malformed(f"The token's {name} claim is not a string.")
    dates = [_numeric_date(claims[name], name) if name in claims else None for name in DATE_CLAIMS]
    scopes: frozenset[str] | None = None
    for name in scope_claims:
        if name in claims:
            found = _scopes(claims[name], name)
            scopes = found if scopes is None else scopes
    return RegisteredClaims(
        subject=claims.get("sub"),
        client_id=claims.get("client_id") or claims.get("azp"),
        audiences=_audiences(claims["aud"]) if "aud" in claims else (),
        expires_at=dates[0],
        not_before=dates[1],
        issued_at=dates[2],
        scopes=scopes or frozenset(),
    )


def check_required(claims: Mapping[str, Any], required: Sequence[str]) -> None:
    """Each configured claim must be present with a value: ``"tenant": null`` is no tenant."""
    for name in required:
        if claims.get(name) is None:
            detail = f"The token lacks the required {name} claim."
            raise InvalidToken(detail, reason="missing_claim")


def check_times(claims: RegisteredClaims, now: float, leeway: float) -> None:
    """``exp``, ``nbf`` and ``iat`` against the clock, each allowing ``leeway`` seconds of skew."""
    exp = claims.expires_at
    # RFC 7519 §4.1.4: "the current date/time MUST be before the expiration date/time listed
    # in the "exp" claim", so a token is refused from the second of exp on ("on or after").
    if exp is not None and now - leeway >= exp:
        raise InvalidToken("The token has expired.", reason="expired")
    # RFC 7519 §4.1.5: the JWT "MUST NOT be accepted for processing" before "nbf"; at nbf it is.
    nbf = claims.not_before
    if nbf is not None and now + leeway < nbf:
        raise InvalidToken("The token is not valid yet.", reason="not_yet_valid")
    # RFC 7519 §4.1.6 sets no rule for iat; a token issued in the future beyond the skew we
    # allow is refused all the same: its issuer's clock or the token is wrong.
    iat = claims.issued_at
    if iat is not None and now + leeway < iat:
        raise InvalidToken("The token claims to be issued in the future.", reason="not_yet_valid")
