"""RFC 9110 §5.5 (field values): identity headers rendered from templates, safe to forward.

A template such as ``"{client_id|azp}"`` is parsed once at load into literal text and lists of
source functions; rendering is then a lookup and a join per header. Every value taken from a
token is percent-encoded where it could end a header line or carry bytes a parser might
misread, so no claim can inject a header into the upstream request.

An array claim renders as its members joined with ``,`` (with a space for ``scope`` and
``scp``). Inside a member the separator is percent-encoded too, so ``["users,admins"]`` is
``users%2Cadmins`` and never reads as two groups: an upstream splits on the separator, then
percent-decodes each piece, and gets the members back.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, unquote

from gateway.auth.identity import Identity

MAX_VALUE_BYTES = 8192

Source = Callable[[Identity], str]
Part = str | tuple[Source, ...]

# RFC 9110 §5.6.2: field-name = token.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CLAIM_NAME = re.compile(r"[A-Za-z0-9_:.\-]+")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
# Everything printable in ASCII except '%' passes; the rest becomes %XX of its UTF-8 bytes.
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)
# An array member also has its separator encoded, so that no member can read as two.
_MEMBER_SAFE = {separator: _SAFE.replace(separator, "") for separator in (",", " ")}
_SPACE_JOINED = frozenset({"scope", "scp"})
_CLAIM_PREFIX = "claims."
_ALL_CLAIMS = "@claims"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return _json(value)


def _text(value: Any, separator: str) -> str:
    """A claim as encoded header text; "" means nothing to render (absent, null or empty)."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return _joined([_scalar(item) for item in value], separator)
    return _escape(_scalar(value))


def _joined(members: list[str], separator: str) -> str:
    """The members joined with ``separator``, each encoded so that none contains it."""
    joined = separator.join(members)
    if (
        joined.isascii()
        and joined.isprintable()
        and "%" not in joined
        and joined.count(separator) == len(members) - 1  # no member holds the separator
        and (
            separator == " "  # then no member holds a space at all
            or not (joined[:1] == " " or joined[-1:] == " " or ", " in joined or " ," in joined)
        )
    ):
        return joined  # the common case: no member needs encoding
    return separator.join(_escape(member, separator) for member in members)


def _escape(text: str, separator: str | None = None) -> str:
    """``text`` as printable ASCII; with a ``separator``, one array member not containing it."""
    if not (text.isascii() and text.isprintable() and "%" not in text) or (
        separator is not None and separator in text
    ):
        # RFC 9110 §5.5: "a recipient of CR, LF, or NUL within a field value MUST either
        # reject the message or replace each of those characters with SP" - so none may
        # leave the gateway.
        safe = _SAFE if separator is None else _MEMBER_SAFE[separator]
        text = quote(text, safe=safe, encoding="utf-8", errors="replace")
    if text[:1] == " " or text[-1:] == " ":
        # Parsers strip a field value's outer whitespace (RFC 9110 §5.5), and list members'
        # (§5.6.1), so " admin" would arrive as "admin": encode it, keeping claims distinct.
        core = text.strip(" ")
        if not core:
            return "%20" * len(text)
        lead = len(text) - len(text.lstrip(" "))
        trail = len(text) - len(text.rstrip(" "))
        text = "%20" * lead + core + "%20" * trail
    return text


def _as_encoded(text: str) -> str:
    return text


def _field(read: Callable[[Identity], str | None]) -> Source:
    """An Identity field: always one string or None, never an array, so no separator."""
    return lambda identity: _escape(value) if (value := read(identity)) else ""


def _claim(name: str) -> Source:
    separator = " " if name in _SPACE_JOINED else ","
    return lambda identity: _text(identity.claims.get(name), separator)


def _all_claims(identity: Identity) -> str:
    encoded = base64.urlsafe_b64encode(_json(dict(identity.claims)).encode("utf-8", "replace"))
    return encoded.rstrip(b"=").decode("ascii")


def _confirmation(member: str) -> Source:
    """RFC 7800 §3.1 ``cnf`` members: the key a token is bound to (RFC 9449 §6.1 ``jkt``,
    RFC 8705 §3.1 ``x5t#S256``), so an upstream can tell a sender-constrained call."""

    def read(identity: Identity) -> str:
        cnf = identity.claims.get("cnf")
        value = cnf.get(member) if isinstance(cnf, Mapping) else None
        return value if isinstance(value, str) else ""

    return read


def _scope(identity: Identity) -> str:
    return _text(sorted(identity.scopes), " ")


# Each source is built when a template is compiled, not at import (a source built at import
# would also escape mutation testing: tests/mutation/README.md).
_FIELD_SOURCES: dict[str, Callable[[], Source]] = {
    "cnf_jkt": lambda: _confirmation("jkt"),
    "cnf_x5t": lambda: _confirmation("x5t#S256"),
    "sub": lambda: _field(lambda i: i.subject),
    "client_id": lambda: _field(lambda i: i.client_id),
    "iss": lambda: _field(lambda i: i.issuer),
    "scope": lambda: _scope,
    "token_kind": lambda: _field(lambda i: i.token_kind),
}
_CLAIM_SOURCES = ("azp", "scp", "aud", "exp", "iat", "nbf", "jti", "email", "name",
                  "preferred_username", "groups", "roles")  # fmt: skip
_KNOWN = ", ".join(
    ("sub", "client_id", "azp", "scope", "scp", "iss", "aud", "exp", "iat", "nbf", "jti",
     "email", "name", "preferred_username", "groups", "roles", "token_kind",
     "cnf_jkt", "cnf_x5t",
     "claims.NAME", _ALL_CLAIMS)
)  # fmt: skip


def _source(name: str) -> Source:
    if name in _FIELD_SOURCES:
        return _FIELD_SOURCES[name]()
    if name in _CLAIM_SOURCES:
        return _claim(name)
    if name == _ALL_CLAIMS:
        return _all_claims
    if name.startswith(_CLAIM_PREFIX):
        claim = name.removeprefix(_CLAIM_PREFIX)
        if _CLAIM_NAME.fullmatch(claim) is None:
            raise ValueError(f"'{{{name}}}': a claim name is made of A-Z a-z 0-9 _ : . -")
        return _claim(claim)
    raise ValueError(f"unknown placeholder '{{{name}}}' (known: {_KNOWN})")


def _placeholder(body: str) -> tuple[Source, ...]:
    names = [name.strip() for name in body.split("|")]
    if "" in names:
        raise ValueError(f"empty source in placeholder '{{{body}}}'")
    return tuple(_source(name) for name in names)


def _literal(text: str) -> str:
    if _PRINTABLE.fullmatch(text) is None:
        raise ValueError(f"literal text {text!r} may hold only printable ASCII")
    return text


def _parse(template: str) -> tuple[Part, ...]:
    parts: list[Part] = []
    literal: list[str] = []
    i = 0
    while i < len(template):
        char = template[i]
        if template.startswith(("{{", "}}"), i):
            literal.append(char)
            i += 2
        elif char == "{":
            end = template.find("}", i + 1)
            if end < 0:
                raise ValueError(f"unclosed '{{' at position {i}")
            body = template[i + 1 : end]
            if "{" in body:
                raise ValueError(f"'{{' inside a placeholder at position {i + 1 + body.index('{')}")
            if literal:
                parts.append(_literal("".join(literal)))
                literal.clear()
            parts.append(_placeholder(body))
            i = end + 1
        elif char == "}":
            raise ValueError(f"unmatched '}}' at position {i} (write '}}}}' for a literal brace)")
        else:
            literal.append(char)
            i += 1
    if literal:
        parts.append(_literal("".join(literal)))
    return tuple(parts)


class HeaderTemplate:
    """One header value: literal text and placeholders, each a chain of fallback sources."""

    __slots__ = ("_parts", "template")

    def __init__(self, template: str, parts: tuple[Part, ...]) -> None:
        self.template = template
        self._parts = parts

    @classmethod
    def compile(cls, template: str) -> HeaderTemplate:
        if not template:
            raise ValueError("the template is empty")
        return cls(template, _parse(template))

    def render(self, identity: Identity) -> str | None:
        """The value, or None (header omitted) when a placeholder found nothing in any source
        or the value would exceed MAX_VALUE_BYTES: a half-filled header misleads the upstream."""
        value = self._join(identity, _as_encoded)
        # Encoded values are ASCII, so characters are bytes.
        return value if value is not None and len(value) <= MAX_VALUE_BYTES else None

    def render_text(self, identity: Identity) -> str | None:
        """The value unescaped, for a JSON string (a signed token's claim) rather than a
        header line; None as for ``render``, the bound counted in UTF-8 bytes."""
        value = self._join(identity, unquote)
        if value is None or len(value.encode("utf-8", "replace")) > MAX_VALUE_BYTES:
            return None
        return value

    def _join(self, identity: Identity, finish: Callable[[str], str]) -> str | None:
        pieces: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                pieces.append(part)
                continue
            for source in part:
                text = source(identity)  # already encoded
                if text:
                    pieces.append(finish(text))
                    break
            else:
                return None
        return "".join(pieces)

    def __repr__(self) -> str:
        return f"HeaderTemplate({self.template!r})"


class IdentityHeaders:
    """The identity headers of one route, compiled from its ``identity_headers`` mapping."""

    __slots__ = ("_headers", "names")

    def __init__(self, headers: tuple[tuple[str, HeaderTemplate], ...]) -> None:
        self._headers = headers
        self.names: frozenset[str] = frozenset(name.lower() for name, _ in headers)

    @classmethod
    def compile(cls, mapping: Mapping[str, str]) -> IdentityHeaders:
        headers: list[tuple[str, HeaderTemplate]] = []
        seen: set[str] = set()
        for name, template in mapping.items():
            if _FIELD_NAME.fullmatch(name) is None:
                raise ValueError(f"{name}: not an RFC 9110 field name")
            if name.lower() in seen:
                raise ValueError(f"{name}: set twice (header names ignore case)")
            seen.add(name.lower())
            try:
                headers.append((name, HeaderTemplate.compile(template)))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return cls(tuple(headers))

    def render(self, identity: Identity) -> list[tuple[str, str]]:
        rendered = []
        for name, template in self._headers:
            value = template.render(identity)
            if value is not None:
                rendered.append((name, value))
        return rendered
