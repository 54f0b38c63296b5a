"""RFC 7519 §4.1 registered claims, checked the same way for ID tokens (OIDC Core §3.1.3.7) and
logout tokens (Back-Channel Logout 1.0 §2.6 step 4: "in the same way they are validated in
ID Tokens"). Pure functions over a claims mapping; each failure is a ``JwsInvalid`` with a
reason label."""

from __future__ import annotations

import hmac
import math
from collections.abc import Mapping
from typing import Any

from gateway.auth.sessions.jws import JwsInvalid


def number(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    """RFC 7519 §2 NumericDate: a JSON number (a string or a boolean is no date)."""
    value = claims.get(name)
    if value is None:
        if required:
            raise JwsInvalid(f"The token lacks the {name} claim.", f"missing_{name}")
        return None
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            raise JwsInvalid(f"The token's {name} is out of range.", "malformed") from None
    if type(value) is float and math.isfinite(value):
        return value
    raise JwsInvalid(f"The token's {name} is not a number.", "malformed")


def string(
    claims: Mapping[str, Any], name: str, *, required: bool, max_length: int = 1024
) -> str | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise JwsInvalid(f"The token lacks the {name} claim.", f"missing_{name}")
        return None
    if type(value) is not str or not value or len(value) > max_length:
        raise JwsInvalid(f"The token's {name} is not a usable string.", "malformed")
    return value


def check_issuer(claims: Mapping[str, Any], issuer: str) -> None:
    # OIDC Core §3.1.3.7 item 2: the issuer identifier "MUST exactly match the value of the iss
    # (issuer) Claim".
    if string(claims, "iss", required=True) != issuer:
        raise JwsInvalid("The token comes from another issuer.", "bad_issuer")


def check_audience(
    claims: Mapping[str, Any], client_id: str, trusted: frozenset[str]
) -> tuple[str, ...]:
    """OIDC Core §3.1.3.7 item 3: "The ID Token MUST be rejected if the ID Token does not list
    the Client as a valid audience, or if it contains additional audiences not trusted by the
    Client." Items 4-5: with several audiences the ``azp`` must be there, and when present it
    must be our client_id."""
    value = claims.get("aud")
    if type(value) is str:
        audiences: tuple[str, ...] = (value,)
    elif type(value) is list and value and all(type(item) is str for item in value):
        audiences = tuple(value)
    else:
        raise JwsInvalid("The token's aud is missing or malformed.", "bad_audience")
    if client_id not in audiences:
        raise JwsInvalid("The token is not meant for this client.", "bad_audience")
    if any(aud != client_id and aud not in trusted for aud in audiences):
        raise JwsInvalid(
            "The token is also meant for an audience not trusted here.", "untrusted_audience"
        )
    azp = string(claims, "azp", required=len(set(audiences)) > 1)
    if azp is not None and azp != client_id:
        raise JwsInvalid("The token was issued to another party (azp).", "bad_azp")
    return audiences


def check_times(
    claims: Mapping[str, Any], now: float, *, leeway: float, max_age: float, exp_required: bool
) -> tuple[float | None, float]:
    """``exp`` (OIDC Core §3.1.3.7 item 9: "The current time MUST be before the time
    represented by the exp Claim"), ``iat`` (item 10: it "can be used to reject tokens that
    were issued too far away from the current time"; here, older than ``max_age`` or in the
    future), and ``nbf`` when present (RFC 7519 §4.1.5)."""
    exp = number(claims, "exp", required=exp_required)
    iat = number(claims, "iat", required=True)
    nbf = number(claims, "nbf", required=False)
    assert iat is not None
    if exp is not None and now - leeway >= exp:
        raise JwsInvalid("The token has expired.", "expired")
    if iat > now + leeway or (nbf is not None and nbf > now + leeway):
        raise JwsInvalid("The token is not valid yet.", "not_yet_valid")
    if now - iat > max_age + leeway:
        raise JwsInvalid("The token was issued too long ago.", "too_old")
    return exp, iat


def same(value: str, expected: str) -> bool:
    """Constant-time equality for values an attacker may probe (nonces, hashes)."""
    return hmac.compare_digest(value.encode(), expected.encode())
