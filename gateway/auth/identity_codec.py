"""The cached form of what validation concluded: a compact, versioned ``Identity`` or
``Rejection`` (RFC 7662 §2.2 answers and verified JWTs alike).

Caches hold what the gateway derived, never the raw answer and never the token, so a
Redis dump reveals no credential. Every stored value is tagged with a version: replicas of
different releases share one Redis during a rolling upgrade, and a value this release
cannot read must become a miss (``ValueError``), never a crash or a wrong grant. Values
from Redis are read as untrusted input: bounded in size and depth, every field type-checked.
"""

from __future__ import annotations

import json
import math
from types import MappingProxyType
from typing import Any, Final

from gateway import boundedjson
from gateway.auth.identity import Identity, TokenKind
from gateway.auth.rejections import Rejection

VERSION: Final = 2
MAX_BYTES: Final = 256 * 1024
# An answer parsed at the bound sits one level deeper here (inside the cached array).
MAX_DEPTH: Final = boundedjson.DEFAULT_MAX_DEPTH + 1
_TOKEN_KINDS: Final[frozenset[TokenKind]] = frozenset({"jwt", "opaque"})
_REJECTED: Final = "-"


def encode_identity(identity: Identity) -> bytes:
    """A JSON array rather than an object: no key names repeated in every cached value."""
    fields = [
        VERSION,
        identity.issuer,
        identity.subject,
        identity.client_id,
        sorted(identity.scopes),
        list(identity.audiences),
        identity.expires_at,
        identity.token_kind,
        dict(identity.claims),
    ]
    # ASCII escapes: a claim may hold a lone surrogate ("\ud800" is valid JSON), which has no
    # UTF-8 encoding; escaped, it round-trips like any other string.
    return json.dumps(fields, separators=(",", ":")).encode()


def encode(value: Identity | Rejection) -> bytes:
    if isinstance(value, Rejection):
        return json.dumps([VERSION, _REJECTED, value.reason, value.detail]).encode()
    return encode_identity(value)


def decode(data: bytes) -> Identity | Rejection:
    """Rebuild a cached value; anything but a well-formed value of this version is refused."""
    try:
        fields = boundedjson.loads(data, max_bytes=MAX_BYTES, max_depth=MAX_DEPTH)
    except ValueError:
        raise ValueError("not a cached identity") from None
    if not isinstance(fields, list) or not fields or fields[0] != VERSION:
        raise ValueError("not a cached value of this version")
    if len(fields) == 4 and fields[1] == _REJECTED:
        _, _, reason, detail = fields
        if not (isinstance(reason, str) and isinstance(detail, str)):
            raise ValueError("a cached rejection field has the wrong type")
        return Rejection.of(reason, detail)
    return _identity(fields)


def _identity(fields: list[Any]) -> Identity:
    if len(fields) != 9:
        raise ValueError("not a cached identity of this version")
    _, issuer, subject, client_id, scopes, audiences, expires_at, kind, claims = fields
    if not (
        isinstance(issuer, str)
        and _optional_str(subject)
        and _optional_str(client_id)
        and _str_list(scopes)
        and _str_list(audiences)
        and (expires_at is None or _number(expires_at))
        and kind in _TOKEN_KINDS
        and isinstance(claims, dict)
    ):
        raise ValueError("a cached identity field has the wrong type")
    return Identity(
        issuer=issuer,
        subject=subject,
        client_id=client_id,
        scopes=frozenset(scopes),
        audiences=tuple(audiences),
        expires_at=None if expires_at is None else float(expires_at),
        token_kind=kind,
        claims=MappingProxyType(claims),
    )


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
