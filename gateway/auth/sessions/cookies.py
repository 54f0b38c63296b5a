"""RFC 6265 §4.1 (Set-Cookie), §4.2 and §5.4 (Cookie), and RFC 6265bis §4.1.3 (``__Host-``):
the gateway's own cookies, rendered and read as pure functions.

Reading is strict for our names and indifferent to everyone else's: other applications on the
same host may set cookies that break the grammar, and a browser sends them all, so a malformed
pair of someone else's is skipped, never a reason to refuse the request. A name of ours that
appears twice is refused (``AmbiguousCookie``): without the ``__Host-`` prefix a sibling
subdomain can plant a second cookie of the same name on another path ("cookie tossing"), and
picking either one would let it choose the session.

Values larger than one cookie can hold (RFC 6265 §6.1: user agents should allow at least 4096
bytes per cookie, name and attributes included) are split into chunks ``NAME.0``, ``NAME.1``…,
each carrying the number of chunks and a random set id, so a reader refuses gaps, extras and
chunks from two different writes before it even tries to open the value.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.problems import BadRequest

HOST_PREFIX: Final = "__Host-"
MAX_COOKIE_HEADER_BYTES: Final = 32 * 1024
MAX_COOKIE_PAIRS: Final = 200
_EXPIRED: Final = "Thu, 01 Jan 1970 00:00:00 GMT"
# RFC 6265 §4.1.1: cookie-name = token (RFC 2616 §2.2); cookie-octet excludes CTLs, whitespace,
# DQUOTE, comma, semicolon and backslash.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_OCTETS: Final = bytes(
    [0x21, *range(0x23, 0x2C), *range(0x2D, 0x3B), *range(0x3C, 0x5C), *range(0x5D, 0x7F)]
)
_CHUNK_INDEX: Final = re.compile(r"0|[1-9][0-9]{0,2}")
_SET_ID_CHARS: Final = 6
_CHUNK_HEADER: Final = re.compile(r"([1-9][0-9]?)\.([A-Za-z0-9_-]{6})\.")


class AmbiguousCookie(BadRequest):
    """One of the gateway's cookies was sent twice: refuse rather than pick one."""

    slug = "ambiguous-cookie"
    reason = "ambiguous_cookie"

    def __init__(self) -> None:
        super().__init__(
            "The request carries the gateway's session cookie more than once; clear this "
            "site's cookies and try again."
        )


class CookieTooLarge(BadRequest):
    slug = "cookie-too-large"
    reason = "cookie_too_large"

    def __init__(self) -> None:
        super().__init__("The request's Cookie header is larger than this gateway accepts.")


class ChunkError(ValueError):
    """A chunked cookie that does not reassemble; ``reason`` for logs and metrics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CookiePolicy:
    """How one of the gateway's cookies is named and scoped.

    ``secure`` (the browser reaches the gateway over TLS) turns on the ``__Host-`` prefix,
    which RFC 6265bis §4.1.3.2 makes a browser accept only with ``Secure``, ``Path=/`` and no
    ``Domain``: no other host, not even a subdomain, can set or shadow it.
    """

    base_name: str
    secure: bool
    chunk_bytes: int = 3800
    max_chunks: int = 2

    def __post_init__(self) -> None:
        if _TOKEN.fullmatch(self.base_name) is None or "." in self.base_name:
            raise ValueError(f"{self.base_name!r} is not a cookie name (a token without '.')")
        if not 1 <= self.max_chunks <= 99 or self.chunk_bytes < 256:
            raise ValueError("max_chunks must be 1-99 and chunk_bytes at least 256")

    @property
    def name(self) -> str:
        return HOST_PREFIX + self.base_name if self.secure else self.base_name

    def owns(self, name: str) -> bool:
        """The bare name or one of its chunk names (any index, so extras are seen)."""
        full = self.name
        return name == full or (name.startswith(full) and name[len(full) : len(full) + 1] == ".")


def parse_cookie_header(fields: Sequence[str], policy: CookiePolicy) -> dict[str, str]:
    """The cookies ``policy`` owns, by name, from the request's ``Cookie`` field(s).

    RFC 6265 §5.4: a user agent sends ``cookie-pair *( ";" SP cookie-pair )`` in one field;
    HTTP/2 intermediaries may split it into several (RFC 9113 §8.2.3), which are joined here.
    Pairs are bounded in bytes and number; ours must be well formed and unique.
    """
    if not fields:
        return {}
    total = sum(len(field) for field in fields) + 2 * (len(fields) - 1)
    if total > MAX_COOKIE_HEADER_BYTES:
        raise CookieTooLarge()
    header = "; ".join(fields)
    if policy.name not in header:
        return {}
    pieces = header.split(";")
    if len(pieces) > MAX_COOKIE_PAIRS:
        raise CookieTooLarge()
    found: dict[str, str] = {}
    for piece in pieces:
        name, equals, value = piece.strip(" \t").partition("=")
        if not equals or not policy.owns(name):
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]  # RFC 6265 §4.1.1: cookie-value may be a quoted string
        if not is_cookie_value(value):
            continue  # not a value we could have written: as good as absent
        if name in found:
            raise AmbiguousCookie()
        found[name] = value
    return found


def without_owned(fields: Sequence[str], policies: Sequence[CookiePolicy]) -> str | None:
    """The ``Cookie`` field(s) joined, without the pairs any of ``policies`` owns, for the
    upstream: the gateway's cookies hold its sessions (a Redis session id is as good as the
    session), so no upstream ever sees them. None when there was nothing of ours (forward the
    field as it is); "" when nothing else is left. Everyone else's pairs pass in their order
    and spelling."""
    if not fields or not any(policy.name in field for field in fields for policy in policies):
        return None
    kept: list[str] = []
    removed = False
    for piece in "; ".join(fields).split(";"):
        name = piece.strip(" \t").partition("=")[0]
        if any(policy.owns(name) for policy in policies):
            removed = True
        elif piece.strip(" \t"):
            kept.append(piece.strip(" \t"))
    return "; ".join(kept) if removed else None


def set_cookie_name(value: str) -> str:
    """The name a ``Set-Cookie`` field value claims, as the server will read it back.

    RFC 6265bis §5.6 steps 1-5: the name-value-pair is what precedes the first ";", the name
    what precedes its first "=", both trimmed of whitespace; without a name (``=n=v``, or no
    "=" at all) the cookie is stored nameless and §5.8.3 sends it as its bare value, which a
    server parses as the cookie ``n=v``. So the name claimed is the value's own name then:
    ``=__Host-x=v`` claims ``__Host-x`` (browsers refuse that spelling for the prefixes, but
    not for a name without one)."""
    pair = value.partition(";")[0]
    name, equals, rest = pair.partition("=")
    name = name.strip(" \t")
    if equals and not name:
        return rest.strip(" \t").partition("=")[0].strip(" \t")
    return name


def is_cookie_value(value: str) -> bool:
    """Only cookie-octets (checked by deleting every allowed byte in C: a value of a few KB
    costs a microsecond, where a regular expression costs ten)."""
    return value.isascii() and not value.encode("ascii").translate(None, _COOKIE_OCTETS)


def split_chunks(policy: CookiePolicy, value: str) -> list[tuple[str, str]]:
    """``(name, value)`` pairs holding ``value``: the bare name when it fits, else chunks.

    ``ValueError`` when even ``max_chunks`` chunks cannot hold it: the caller must store less
    (or use the server-side store), never silently drop a part."""
    if len(value) <= policy.chunk_bytes:
        return [(policy.name, value)]
    set_id = secrets.token_urlsafe(8)[:_SET_ID_CHARS]
    room = policy.chunk_bytes - len(f"{policy.max_chunks}.{set_id}.")
    count = -(-len(value) // room)
    if count > policy.max_chunks:
        raise ValueError(f"the value needs {count} cookies, more than {policy.max_chunks}")
    return [
        (f"{policy.name}.{index}", f"{count}.{set_id}.{value[index * room : (index + 1) * room]}")
        for index in range(count)
    ]


def join_chunks(policy: CookiePolicy, cookies: Mapping[str, str]) -> str | None:
    """The value ``split_chunks`` wrote, from the cookies ``parse_cookie_header`` returned;
    None when there is none, ``ChunkError`` for anything a writer of ours could not have
    produced: a bare cookie next to chunks, a missing or extra chunk, a non-canonical index,
    chunks from different writes or more than ``max_chunks``."""
    if not cookies:
        return None
    bare = cookies.get(policy.name)
    if bare is not None:
        if len(cookies) > 1:
            raise ChunkError("mixed_chunks")
        return bare
    prefix = policy.name + "."
    parts: dict[int, str] = {}
    expected: tuple[str, str] | None = None
    for name, value in cookies.items():
        index = name[len(prefix) :]
        if _CHUNK_INDEX.fullmatch(index) is None:
            raise ChunkError("bad_chunk_name")
        header = _CHUNK_HEADER.match(value)
        if header is None:
            raise ChunkError("bad_chunk")
        count_text, set_id = header.groups()
        if expected is None:
            expected = (count_text, set_id)
        elif expected != (count_text, set_id):
            raise ChunkError("mismatched_chunks")
        parts[int(index)] = value[header.end() :]
    assert expected is not None
    count = int(expected[0])
    if count < 2 or count > policy.max_chunks:
        raise ChunkError("chunk_count")
    if len(parts) > count or any(index >= count for index in parts):
        raise ChunkError("extra_chunk")
    if len(parts) < count:
        raise ChunkError("missing_chunk")
    return "".join(parts[index] for index in range(count))


def set_cookie(policy: CookiePolicy, name: str, value: str, max_age: int | None) -> str:
    """One ``Set-Cookie`` value (RFC 6265 §4.1.1). ``HttpOnly``: scripts never see it;
    ``SameSite=Lax``: it rides along on top-level navigations (the authorization server's
    redirect back to the callback is one) but not on cross-site subrequests or POSTs."""
    if not is_cookie_value(value):
        raise ValueError("a cookie value must be cookie-octets")
    parts = [f"{name}={value}", "Path=/"]
    if max_age is not None:
        parts.append(f"Max-Age={max(0, int(max_age))}")
    if policy.secure:
        parts.append("Secure")
    parts += ["HttpOnly", "SameSite=Lax"]
    return "; ".join(parts)


def delete_cookie(policy: CookiePolicy, name: str) -> str:
    """RFC 6265 §3.1: a cookie is removed by setting it again, expired, with the same
    name, path and (absent) domain."""
    parts = [f"{name}=", "Path=/", "Max-Age=0", f"Expires={_EXPIRED}"]
    if policy.secure:
        parts.append("Secure")
    parts += ["HttpOnly", "SameSite=Lax"]
    return "; ".join(parts)


def render_value(
    policy: CookiePolicy, value: str, max_age: int | None, present: Collection[str]
) -> list[str]:
    """``Set-Cookie`` values that store ``value`` and delete every cookie of ours the request
    carried that the new value does not overwrite (a longer old chunk set, or the bare name
    after a switch to chunks), so no stale chunk outlives the write."""
    pairs = split_chunks(policy, value)
    written = {name for name, _ in pairs}
    headers = [set_cookie(policy, name, chunk, max_age) for name, chunk in pairs]
    headers += [delete_cookie(policy, name) for name in sorted(present) if name not in written]
    return headers


def render_deletion(policy: CookiePolicy, present: Collection[str]) -> list[str]:
    """``Set-Cookie`` values that delete every cookie of ours the request carried."""
    names = set(present) or {policy.name}
    return [delete_cookie(policy, name) for name in sorted(names)]
