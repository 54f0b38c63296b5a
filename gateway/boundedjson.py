"""JSON from outside the process, parsed within a size and a nesting bound (RFC 8259 §9).

RFC 8259 §9: "An implementation may set limits on the size of texts that it accepts. An
implementation may set limits on the maximum depth of nesting." Python's parser recurses
once per level, so a document of a thousand nested arrays raises ``RecursionError`` (a 500,
not a refusal) and a large one costs memory before anyone looks at it. Every JSON document
the gateway reads from a client, an authorization server, Redis or an operator's request
goes through ``loads``: an oversize, too deep or malformed document is a ``ValueError``, the
one exception its callers map to their own precise answer.

A shared leaf: it imports nothing of the gateway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final

DEFAULT_MAX_DEPTH: Final = 32

# The only characters that open or close a level, or start/affect a string.
_STRUCTURE: Final = re.compile(rb'["\\\[\]{}]')


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """RFC 7515 §5.2 step 4 / RFC 7519 §7.2 step 4: duplicate member names are refused, since
    two parsers could otherwise disagree about what a document says."""
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member name")
    return members


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_strict_decode: Final[Callable[[str], Any]] = json.JSONDecoder(
    object_pairs_hook=_unique_members, parse_constant=_no_constant
).decode
_plain_decode: Final[Callable[[str], Any]] = json.JSONDecoder(parse_constant=_no_constant).decode


def check_depth(data: bytes, max_depth: int) -> None:
    """``ValueError`` when arrays and objects nest deeper than ``max_depth``.

    A scan over the structural characters only (found by one C-level regex), skipping the
    contents of strings: linear in the size, and independent of how Python recurses.
    """
    # Nesting never exceeds the number of openers (those inside strings only add to the
    # count), so a document with few of them needs no scan: two C-level counts.
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return
    depth = 0
    in_string = False
    escaped_at = -1
    for match in _STRUCTURE.finditer(data):
        char = match.group()
        at = match.start()
        if in_string:
            if char == b"\\":
                if escaped_at != at:  # a backslash that is not itself escaped
                    escaped_at = at + 1
            elif char == b'"' and escaped_at != at:
                in_string = False
            continue
        if char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise ValueError(f"JSON nested deeper than {max_depth} levels")
        elif char in (b"]", b"}"):
            depth -= 1


def loads(
    data: bytes | str,
    *,
    max_bytes: int,
    max_depth: int = DEFAULT_MAX_DEPTH,
    unique_members: bool = False,
) -> Any:
    """Parse one JSON text (UTF-8) within the bounds; ``ValueError`` for anything else.

    ``NaN`` and ``Infinity`` are refused (they are not JSON); ``unique_members`` also refuses
    an object that names a member twice (JOSE headers and claim sets must).
    """
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise ValueError(f"JSON text larger than {max_bytes} bytes")
    check_depth(raw, max_depth)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ValueError("JSON text is not UTF-8") from None
    decode = _strict_decode if unique_members else _plain_decode
    try:
        return decode(text)
    except RecursionError:  # defence in depth; check_depth already bounds nesting
        raise ValueError("JSON nested too deeply") from None
