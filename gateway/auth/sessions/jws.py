"""RFC 7515 §5.2 (JWS validation) and RFC 8725 §3.1-3.2: checking the signature of a JWT the
authorization server sent us directly (an ID token) or pushed to us (a logout token).

The rules are jwt.py's for access tokens: a compact JWS only (no JWE, no JSON
serialization), parsed once with duplicate members refused, the algorithm from a configured
list and never ``none`` or HMAC, no ``crit``, and the key found in the issuer's ``KeySet``
by ``kid`` and algorithm so a key serves only the family its JWK declares. The signature is
checked by PyJWT's algorithm objects over the key the key set prepared: no cryptography here.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from jwt.algorithms import Algorithm, get_default_algorithms

from gateway import boundedjson
from gateway.auth.jwks import KeySetProvider, VerificationKey

MAX_JWT_BYTES: Final = 16 * 1024
_COMPACT: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_PADDING: Final = (b"", b"===", b"==", b"=")
_HMAC: Final = frozenset({"HS256", "HS384", "HS512"})
_ALGORITHMS: Final[Mapping[str, Algorithm]] = get_default_algorithms()
T = TypeVar("T")


class JwsInvalid(ValueError):
    """Why a JWS is refused; ``reason`` is a short label for logs and metrics."""

    def __init__(self, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


class UnknownSigningKey(JwsInvalid):
    """No key of the set fits the header: worth one key-set refetch, then a refusal."""


class KeyLookup(Protocol):
    def find(self, kid: str | None, alg: str) -> VerificationKey | None: ...


@dataclass(frozen=True, slots=True)
class VerifiedJwt:
    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    alg: str
    key: VerificationKey


def verify_compact(token: str, keys: KeyLookup, algorithms: frozenset[str]) -> VerifiedJwt:
    """The header and claims of ``token`` once its signature checks out."""
    if len(token) > MAX_JWT_BYTES or _COMPACT.fullmatch(token) is None:
        # Five parts would be a JWE: RFC 7516 encryption is not supported here.
        raise JwsInvalid("The token is not a signed JWT (JWS compact serialization).", "malformed")
    head, body, signature = token.split(".")
    try:
        header = _object(head)
        claims = _object(body)
        raw_signature = _b64decode(signature)
    except ValueError:
        raise JwsInvalid("The token's parts are not base64url JSON objects.", "malformed") from None
    alg = header.get("alg")
    # RFC 8725 §3.1: use only the algorithms configured; never "none"; HMAC keys never come
    # from a key set (RFC 8725 §2.1 "substitution" of a public key as an HMAC secret).
    if not isinstance(alg, str) or alg not in algorithms or alg in _HMAC or alg not in _ALGORITHMS:
        raise JwsInvalid("The token's signing algorithm is not accepted.", "bad_algorithm")
    # RFC 7515 §4.1.11: a "crit" extension the recipient does not understand makes the JWS
    # invalid; we understand none.
    if "crit" in header:
        raise JwsInvalid("The token lists critical header extensions.", "malformed")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwsInvalid("The token's key id is not a string.", "malformed")
    key = keys.find(kid, alg)
    if key is None:
        raise UnknownSigningKey(
            "The token is signed with a key the issuer does not publish.", "unknown_key"
        )
    signing_input = f"{head}.{body}".encode("ascii")
    if not _ALGORITHMS[alg].verify(signing_input, key.key, raw_signature):
        raise JwsInvalid("The token's signature is not valid.", "bad_signature")
    return VerifiedJwt(header=header, claims=claims, alg=alg, key=key)


async def with_key_refetch(provider: KeySetProvider, check: Callable[[KeyLookup], T]) -> T:
    """``check(provider)``, and once more after a key-set refetch if it named an unknown key
    (the issuer rotated); the provider rate-limits refetches, so a flood of unknown kids costs
    the issuer at most one fetch per interval."""
    try:
        return check(provider)
    except UnknownSigningKey:
        if not await provider.refetch_for_unknown_kid():
            raise
    return check(provider)


def _b64decode(segment: str) -> bytes:
    data = segment.encode("ascii")
    if len(data) % 4 == 1:
        raise ValueError("impossible base64url length")
    try:
        return base64.urlsafe_b64decode(data + _PADDING[len(data) % 4])
    except binascii.Error:
        raise ValueError("not base64url") from None


def _object(segment: str) -> dict[str, Any]:
    # RFC 7515 §5.2 step 4 / RFC 7519 §7.2 step 4: duplicate member names are rejected.
    value = boundedjson.loads(
        _b64decode(segment), max_bytes=MAX_JWT_BYTES, max_depth=16, unique_members=True
    )
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
