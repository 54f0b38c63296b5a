"""The one identity shape every token kind becomes (RFC 9068 §2.2 claims, RFC 7662 §2.2 fields).

A JWT validated locally and an opaque token answered by introspection both end as an
``Identity``, so route policies and identity headers cannot differ by token kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

TokenKind = Literal["jwt", "opaque", "session"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling, as established by a validated token.

    ``claims`` holds every claim of the token (or introspection answer) for templates and
    claim rules; the named fields are the ones the gateway itself reasons about.
    """

    issuer: str
    subject: str | None
    client_id: str | None
    scopes: frozenset[str]
    audiences: tuple[str, ...]
    expires_at: float | None
    token_kind: TokenKind
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def scope(self) -> str:
        """The scopes as an RFC 6749 §3.3 space-delimited string, in a stable order."""
        return " ".join(sorted(self.scopes))


def scopes_from_claim(value: Any) -> frozenset[str]:
    """Read scopes from ``scope`` (RFC 8693 §4.2 space-delimited string) or ``scp`` (array)."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple):
        return frozenset(v for v in value if isinstance(v, str) and v)
    return frozenset()
