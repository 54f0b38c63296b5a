"""Validation contexts: under which rules a token's identity was established.

A cached identity is only as good as the rules it was checked against. The same token can
be valid for a gateway that accepts audience A and invalid for one that accepts B; valid
when its signature was checked locally and revoked when the authorization server is asked
(RFC 7662 §4: a resource server that caches answers must not let them hide a revocation
longer than it decided to). So every cache entry is keyed by a context *and* the token's
hash, and a context names everything that decides the answer: how it was obtained (local
JWT verification, introspection, or both) and the issuer configuration that produced it.
A result obtained under one context is never served under another, and two gateways that
share a Redis with different configurations can never read each other's entries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from gateway.auth.settings import IssuerSettings

Method = Literal["jwt", "introspection", "jwt+introspection"]
_TAG_BYTES = 12


@dataclass(frozen=True, slots=True)
class ValidationContext:
    """One way of validating tokens of one issuer; ``tag`` prefixes every cache key."""

    method: Method
    issuer: IssuerSettings
    tag: bytes

    @property
    def introspects(self) -> bool:
        """Whether the authorization server is asked (its answers may be shared in Redis)."""
        return self.method != "jwt"

    @property
    def tag_hex(self) -> str:
        return self.tag.hex()

    def key(self, token_digest: bytes) -> bytes:
        """The cache key of a token (by its SHA-256) under this context."""
        return self.tag + token_digest


def _local_rules(issuer: IssuerSettings) -> dict[str, Any]:
    keys = issuer.keys
    source: Any = keys.jwks_uri or (str(keys.file) if keys.file else None)
    if keys.jwks is not None:
        source = hashlib.sha256(json.dumps(keys.jwks, sort_keys=True).encode()).hexdigest()
    secret = issuer.hmac_secret
    return {
        "algorithms": sorted(issuer.algorithms),
        # The secret itself never enters a key; a changed secret still changes the context.
        "hmac": hashlib.sha256(secret.encode()).hexdigest() if secret else None,
        "required_claims": sorted(issuer.required_claims),
        "require_at_jwt": issuer.require_at_jwt,
        "keys": [keys.discovery, source],
    }


def _introspection_rules(issuer: IssuerSettings) -> dict[str, Any]:
    settings = issuer.introspection
    if settings is None:
        raise ValueError(f"issuer {issuer.key!r} has no introspection section")
    return {
        "endpoint": settings.endpoint or "discovery",
        "client_id": settings.client.client_id,
        "client_method": settings.client.method,
        "token_type_hint": settings.token_type_hint,
        "allow_missing_audience": settings.allow_missing_audience,
    }


def context_for(issuer: IssuerSettings, method: Method) -> ValidationContext:
    """The context for validating ``issuer``'s tokens by ``method``; pure and deterministic,
    so replicas with the same configuration compute the same tag and share entries."""
    rules: dict[str, Any] = {
        "method": method,
        "issuer": issuer.issuer,
        "audiences": sorted(issuer.audiences),
        "leeway": issuer.leeway,
        "scope_claims": list(issuer.scope_claims),
    }
    if method != "introspection":
        rules["local"] = _local_rules(issuer)
    if method != "jwt":
        rules["introspection"] = _introspection_rules(issuer)
    canonical = json.dumps(rules, sort_keys=True, separators=(",", ":")).encode()
    return ValidationContext(method, issuer, hashlib.sha256(canonical).digest()[:_TAG_BYTES])
