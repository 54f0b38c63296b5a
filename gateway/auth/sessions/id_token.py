"""OIDC Core §3.1.3.7 (ID token validation), §3.1.3.8 and §3.2.2.9 (``at_hash``), §12.2 (ID
tokens from a refresh): deciding who logged in.

``validate_id_token`` is pure: given the token, the issuer's keys and what the login expects
(issuer, client, nonce, access token), it returns the checked claims or raises
``IdTokenInvalid`` with a reason for every rule. The caller owns key-set refetches
(``jws.with_key_refetch``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.auth.jwks import KeySetProvider
from gateway.auth.sessions import claims as checks
from gateway.auth.sessions.errors import IdTokenInvalid
from gateway.auth.sessions.jws import (
    JwsInvalid,
    KeyLookup,
    UnknownSigningKey,
    verify_compact,
    with_key_refetch,
)
from gateway.problems import ServiceUnavailable

# OIDC Core §2: sub "MUST NOT exceed 255 ASCII characters in length".
MAX_SUBJECT_CHARS: Final = 255
# A JWT typed for another purpose must not pass as an ID token (Back-Channel Logout 1.0 §4.1,
# RFC 8725 §3.11 explicit typing).
_FOREIGN_TYPES: Final = frozenset(
    {"logout+jwt", "application/logout+jwt", "at+jwt", "application/at+jwt", "secevent+jwt"}
)
_HASHES: Final[Mapping[str, Callable[[bytes], Any]]] = {
    "RS256": hashlib.sha256,
    "PS256": hashlib.sha256,
    "ES256": hashlib.sha256,
    "RS384": hashlib.sha384,
    "PS384": hashlib.sha384,
    "ES384": hashlib.sha384,
    "RS512": hashlib.sha512,
    "PS512": hashlib.sha512,
    "ES512": hashlib.sha512,
}


@dataclass(frozen=True, slots=True)
class IdTokenRules:
    """What every ID token of one login config must satisfy."""

    issuer: str
    client_id: str
    algorithms: frozenset[str]
    trusted_audiences: frozenset[str] = frozenset()
    max_age: float = 600.0
    leeway: float = 30.0


@dataclass(frozen=True, slots=True)
class IdToken:
    subject: str
    sid: str | None
    expires_at: float
    issued_at: float
    claims: Mapping[str, Any]


def validate_id_token(
    token: str,
    *,
    keys: KeyLookup,
    rules: IdTokenRules,
    now: float,
    nonce: str | None,
    access_token: str | None,
    subject: str | None = None,
) -> IdToken:
    """The checked ID token.

    ``nonce``: the one the login sent, which OIDC Core §3.1.3.7 item 11 makes mandatory ("a
    nonce Claim MUST be present and its value checked to verify that it is the same value as
    the one that was sent"); None only for an ID token from a refresh (§12.2), which must
    then name the session's ``subject``. ``access_token``: the one issued with it, for
    ``at_hash``.
    """
    try:
        verified = verify_compact(token, keys, rules.algorithms)
    except UnknownSigningKey:
        raise  # the caller refetches the key set and tries again
    except JwsInvalid as exc:
        raise _invalid(exc) from None
    try:
        return _checked(
            verified.header,
            verified.claims,
            verified.alg,
            verified.key.key,
            rules,
            now,
            nonce,
            access_token,
            subject,
        )
    except JwsInvalid as exc:
        raise _invalid(exc) from None


async def verify_id_token(
    token: str,
    *,
    provider: KeySetProvider,
    rules: IdTokenRules,
    now: float,
    nonce: str | None,
    access_token: str | None,
    subject: str | None = None,
) -> IdToken:
    """``validate_id_token`` against an issuer's live key set, refetched once for a new kid."""
    try:
        return await with_key_refetch(
            provider,
            lambda keys: validate_id_token(
                token,
                keys=keys,
                rules=rules,
                now=now,
                nonce=nonce,
                access_token=access_token,
                subject=subject,
            ),
        )
    except UnknownSigningKey as exc:
        if not provider.ready:
            raise ServiceUnavailable(
                "The identity provider's signing keys are not available.", reason="keys_unavailable"
            ) from None
        raise _invalid(exc) from None


def _checked(
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    alg: str,
    key: Any,
    config: IdTokenRules,
    now: float,
    nonce: str | None,
    access_token: str | None,
    subject: str | None,
) -> IdToken:
    typ = header.get("typ")
    if isinstance(typ, str) and typ.lower() in _FOREIGN_TYPES:
        raise JwsInvalid("The token is typed for another purpose.", "wrong_type")
    checks.check_issuer(claims, config.issuer)
    checks.check_audience(claims, config.client_id, config.trusted_audiences)
    exp, iat = checks.check_times(
        claims, now, leeway=config.leeway, max_age=config.max_age, exp_required=True
    )
    assert exp is not None
    sub = checks.string(claims, "sub", required=True, max_length=MAX_SUBJECT_CHARS)
    assert sub is not None
    if not sub.isascii():
        raise JwsInvalid("The token's sub is not ASCII.", "malformed")
    if subject is not None and sub != subject:
        # OIDC Core §12.2: a refreshed ID token's "sub Claim Value MUST be the same as in the
        # ID Token issued when the original authentication occurred".
        raise JwsInvalid("The refreshed token names another user.", "subject_changed")
    token_nonce = checks.string(claims, "nonce", required=nonce is not None)
    if nonce is not None and (token_nonce is None or not checks.same(token_nonce, nonce)):
        raise JwsInvalid("The token's nonce is not the one this login sent.", "bad_nonce")
    at_hash = checks.string(claims, "at_hash", required=False)
    if at_hash is not None and access_token is not None:
        expected = token_hash(access_token, alg, key)
        if expected is None or not checks.same(at_hash, expected):
            raise JwsInvalid("The token's at_hash does not match the access token.", "bad_at_hash")
    sid = checks.string(claims, "sid", required=False)
    return IdToken(
        subject=sub, sid=sid, expires_at=exp, issued_at=iat, claims=MappingProxyType(dict(claims))
    )


def token_hash(value: str, alg: str, key: Any) -> str | None:
    """OIDC Core §3.2.2.9: "Hash the octets of the ASCII representation of the access_token
    with the hash algorithm specified in JWA for the alg Header Parameter ... Take the
    left-most half of the hash and base64url-encode it." EdDSA names no hash in JWA; with
    Ed25519 it is SHA-512 (as oidc-provider and OpenID's errata use). None: not computable
    (Ed448), so an ``at_hash`` cannot be confirmed and the token is refused."""
    digest_of = _HASHES.get(alg)
    if digest_of is None and alg == "EdDSA" and isinstance(key, Ed25519PublicKey):
        digest_of = hashlib.sha512
    if digest_of is None:
        return None
    digest: bytes = digest_of(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


def _invalid(exc: JwsInvalid) -> IdTokenInvalid:
    return IdTokenInvalid(
        f"The identity provider's ID token was refused: {exc.detail}",
        reason=f"id_token_{exc.reason}",
    )
