"""How cached answers live in the shared tiers, and why a value read back is believed.

An ``EntryPolicy`` (``gateway.cache.tiered``) for the identity cache's introspection tiers:
lifetimes capped by the token's ``exp`` and the configured TTLs (RFC 7662 §4), rejections
kept as briefly as ``negative_ttl``, subject groups for evictions, and — for a value read
from Redis, outside the trust boundary — a re-check against the live context's issuer,
audiences and lifetime before it is an identity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from gateway.auth import identity_codec
from gateway.auth.contexts import ValidationContext
from gateway.auth.identity import Identity
from gateway.auth.rejections import Rejection
from gateway.auth.settings import CacheSettings

Value = Identity | Rejection


def subject_hash(subject: str) -> str:
    """How caches, indexes and messages name a subject: never the subject itself."""
    return hashlib.sha256(subject.encode()).hexdigest()


class IntrospectedPolicy:
    """How answers of one introspection context live in the tiers, and how an L2 value is
    re-checked against the live configuration before it is believed."""

    __slots__ = ("_context", "_settings", "_wall")

    def __init__(
        self, context: ValidationContext, settings: CacheSettings, wall: Callable[[], float]
    ) -> None:
        self._context = context
        self._settings = settings
        self._wall = wall

    def encode(self, value: Value) -> bytes:
        return identity_codec.encode(value)

    def decode(self, data: bytes) -> Value | None:
        try:
            value = identity_codec.decode(data)
        except ValueError:
            return None
        if isinstance(value, Identity) and not still_valid(value, self._context, self._wall()):
            return None
        return value

    def ttl(self, value: Value) -> float:
        if isinstance(value, Rejection):
            return self._settings.negative_ttl
        return until_exp(value, self._settings.max_ttl, self._wall())

    def l1_ttl(self, value: Value) -> float:
        return self._settings.l1_ttl

    def negative(self, value: Value) -> bool:
        return isinstance(value, Rejection)

    def group(self, value: Value) -> str | None:
        if isinstance(value, Identity) and value.subject is not None:
            return self._context_group(value.subject)
        return None

    def _context_group(self, subject: str) -> str:
        return f"{self._settings.key_prefix}sub:{subject_hash(subject)}"


def still_valid(identity: Identity, context: ValidationContext, now: float) -> bool:
    """Re-check a shared value against the context's issuer, audiences and lifetime: Redis
    is outside the trust boundary, and another gateway's rules may differ from ours."""
    issuer = context.issuer
    if identity.issuer != issuer.issuer:
        return False
    allow_missing = issuer.introspection is not None and issuer.introspection.allow_missing_audience
    if not (allow_missing and not identity.audiences) and set(issuer.audiences).isdisjoint(
        identity.audiences
    ):
        return False
    if identity.expires_at is not None and identity.expires_at <= now - issuer.leeway:
        return False
    nbf = identity.claims.get("nbf")
    return not (isinstance(nbf, int | float) and nbf > now + issuer.leeway)


def until_exp(identity: Identity, cap: float, now: float) -> float:
    """RFC 7519 §4.1.4 / RFC 7662 §4: nothing is served on or after the token's exp."""
    if identity.expires_at is None:
        return cap
    return min(cap, identity.expires_at - now)
