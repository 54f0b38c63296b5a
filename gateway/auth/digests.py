"""RFC 6750 §5.3, RFC 9449 §11.1: how the gateway names a client's secret without keeping it.

A token, a proof, a session handle or any header value that may be one is never stored as
the client sent it, in memory or in Redis: the identity cache, evictions and rate-limit
buckets name it by its SHA-256. Plain, not keyed: the values that matter are credentials
an authorization server made unguessable (RFC 6749 §10.10), so a key would add nothing
against guessing them, and every replica (and an operator asking for an eviction by
``token_sha256``) must name a value the same way without sharing a secret.
"""

from __future__ import annotations

import hashlib


def token_digest(token: str) -> bytes:
    """How every cache names a token: its SHA-256, never the token (RFC 6750 §5.3).

    ``surrogatepass``: a claim decoded from JSON may hold a lone surrogate; it is hashed as
    sent rather than failing (every other string encodes exactly as with strict UTF-8)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
