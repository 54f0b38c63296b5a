"""The cached form of an RFC 7662 §2.2 answer: a compact, version-tagged ``Identity``.

Caches hold what the gateway derived from an answer, never the raw answer and never the
token, so a Redis dump reveals no credential. Every stored value is tagged with a version:
replicas running different releases share one Redis during a rolling upgrade, and a value
this release cannot read must become a miss (``ValueError``), not a crash or a wrong grant.
"""

from __future__ import annotations

import json
import math
from types import MappingProxyType
from typing import Any, Final

from gateway.auth.identity import Identity, TokenKind

VERSION: Final = 1
INACTIVE: Final = b"-"
"""A cached negative answer: one byte no encoded identity can equal (those are JSON arrays)."""

_TOKEN_KINDS: Final[frozenset[TokenKind]] = frozenset({"jwt", "opaque"})
_ENTRY_SEPARATOR: Final = b" "


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
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def decode_identity(data: bytes) -> Identity:
    """Rebuild an ``Identity``; anything but a well-formed value of this version is refused."""
    try:
        fields = json.loads(data)
    except (ValueError, TypeError):
        raise ValueError("not a cached identity") from None
    if not isinstance(fields, list) or len(fields) != 9 or fields[0] != VERSION:
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


def encode_entry(identity: Identity | None, fresh_until: float) -> bytes:
    """A shared-cache value: when it stops being fresh (wall clock, ms), then the payload.

    Redis is asked to keep an entry past that instant when stale serving is on, and a
    replica that reads it later must still know how much of its freshness is left.
    """
    payload = INACTIVE if identity is None else encode_identity(identity)
    return b"%d" % round(fresh_until * 1000) + _ENTRY_SEPARATOR + payload


def decode_entry(data: bytes) -> tuple[Identity | None, float]:
    """The inverse of ``encode_entry``; ``None`` stands for a cached inactive answer."""
    stamp, separator, payload = data.partition(_ENTRY_SEPARATOR)
    if not separator or not stamp.isdigit():
        raise ValueError("not a cache entry")
    fresh_until = int(stamp) / 1000
    if payload == INACTIVE:
        return None, fresh_until
    return decode_identity(payload), fresh_until


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
