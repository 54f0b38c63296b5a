"""Request-target normalisation (RFC 9112 §3.2.1, RFC 3986 §2.1, §2.3, §3.3, §5.2.4, §6.2.2).

The route decision and the upstream must see the same path, or a request can be judged by
one route's policy and served as another route's resource. So the raw origin-form target is
normalised exactly once, here, and the result is both what routes match and what the
upstream receives. Anything an upstream might read differently from us (encoded slashes,
``..;`` path parameters, double or overlong encodings, compatibility characters that fold to
``.`` or ``/``) is refused with ``InvalidPath`` rather than guessed at. Every character
refused raw for what it means in a path is refused in every encoding of it as well.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from gateway.problems import InvalidPath
from gateway.routing.semantics import STRICT, PathSemantics

# Plain ASCII names with no dot-led segment and no empty segment: most real traffic, and
# already normal. One fullmatch decides; segments are "/"-delimited so it cannot backtrack.
_FAST_PATH = re.compile(r"(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*/?")

# RFC 3986 §3.3: pchar = unreserved / pct-encoded / sub-delims / ":" / "@"; segments by "/".
_NOT_PCHAR = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]|%(?![0-9A-Fa-f]{2})")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_DOUBLE_ENCODED = re.compile(r"%25[0-9A-Fa-f]{2}")

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Octets that, once decoded by an upstream, would split or end a segment: "/" and "\" (IIS),
# ";" (servlet stacks that decode first and then cut ";params" read "..%3B" as ".."), NUL
# and the other C0 controls, DEL.
_FORBIDDEN_OCTETS = frozenset([*range(0x20), 0x7F, 0x2F, 0x3B, 0x5C])
# Characters an upstream that applies NFKC (or a "best fit" code page) could conjure.
_FOLD_TARGETS = "./\\%;"
_DOT_SEGMENTS = frozenset({".", ".."})


@dataclass(frozen=True, slots=True)
class Target:
    """A normalised origin-form target.

    ``query`` is kept byte-for-byte as the client sent it: re-encoding it would change what
    signed URLs and upstream parsers see, and no route decision depends on it.
    """

    path: str
    query: str | None


def normalise_target(raw: str) -> Target:
    """Normalise an origin-form request target, or raise ``InvalidPath``.

    Idempotent: ``normalise_target(t.path).path == t.path`` for every accepted target, so a
    path can be re-checked anywhere without drifting.
    """
    # RFC 9112 §3.2.1: origin-form = absolute-path [ "?" query ]. The other forms are
    # handled (or refused) by the caller before we get here.
    if not raw.startswith("/"):
        raise InvalidPath("The request target must be an absolute path.")
    path, sep, query = raw.partition("?")
    if _FAST_PATH.fullmatch(path) is None:
        path = _normalise_path(path)
    return Target(path, query if sep else None)


def escapes_normalised(path: str) -> str:
    """``path`` with only its percent-escapes normalised: unreserved octets decoded, the
    others' hex uppercased (RFC 3986 §6.2.2.1-2, forms every reader takes as the same).

    Where the gateway only judges a request and the host proxy forwards it as the client
    sent it (forward auth), a path whose normal form differs from this one in more (dot or
    empty segments, an encoded dot) reaches the upstream as a path the gateway did not
    judge, which the upstream may resolve differently."""
    return _PCT.sub(_equivalent_escape, path)


def _equivalent_escape(match: re.Match[str]) -> str:
    char = chr(int(match[1], 16))
    return char if char in _UNRESERVED else "%" + match[1].upper()


def without_path_parameters(path: str) -> str:
    """``/a;x=1/b;y`` → ``/a/b``: the path a servlet container routes on (RFC 3986 §3.3)."""
    return "/".join(segment.partition(";")[0] for segment in path.split("/"))


def rewrite_path(
    path: str,
    strip_prefix: str | None,
    add_prefix: str | None,
    semantics: PathSemantics = STRICT,
) -> str:
    """Strip a prefix (whole segments only), then add one, without creating "//".

    Segment-aware so that stripping "/api" never turns "/apix" into "x". Segments are
    compared as the route matched them: without their ";parameters" (RFC 3986 §3.3), and
    as the upstream reads them (``semantics``). A stripped segment goes with its
    parameters: "/public;x/a" stripped of "/public" is "/a", the path the route chose by.
    """
    if strip_prefix:
        below = _below(path, strip_prefix.rstrip("/"), semantics)
        if below is not None:
            path = below
    return (add_prefix or "").rstrip("/") + path


def _below(path: str, prefix: str, semantics: PathSemantics) -> str | None:
    """What follows ``prefix``'s segments in ``path``, or None if it does not start so."""
    wanted = prefix.split("/")[1:]
    segments = path.split("/")[1:]
    if len(segments) < len(wanted):
        return None
    for want, have in zip(wanted, segments, strict=False):
        name = have.partition(";")[0]
        if name != want and semantics.segment_key(name) != semantics.segment_key(want):
            return None
    return "/" + "/".join(segments[len(wanted) :])


def _normalise_path(path: str) -> str:
    # A "#" (RFC 9112 §3.2: never part of a request target) is not a pchar: refused here.
    bad = _NOT_PCHAR.search(path)
    if bad is not None:
        raise InvalidPath(f"The path has a character that must be percent-encoded: {bad[0]!r}.")
    path = _PCT.sub(_decode_unreserved, path)
    # RFC 3986 §2.4: "implementations must not percent-encode or decode the same string more
    # than once"; an upstream that does would read "%252e" as ".". Checked after unreserved
    # decoding so "%25%34%31" cannot become "%2541" on a second pass.
    if _DOUBLE_ENCODED.search(path):
        raise InvalidPath("The path is percent-encoded twice.")
    if "%" in path:
        _check_encoded_text(path)
    return _resolve_segments(path)


def _decode_unreserved(match: re.Match[str]) -> str:
    """RFC 3986 §6.2.2.2: decode unreserved octets; §6.2.2.1: uppercase the other escapes."""
    hex_digits = match[1]
    octet = int(hex_digits, 16)
    char = chr(octet)
    if char in _UNRESERVED:
        return char
    if octet in _FORBIDDEN_OCTETS:
        raise InvalidPath(f"The path encodes a forbidden character: %{hex_digits.upper()}.")
    return "%" + hex_digits.upper()


def _check_encoded_text(path: str) -> None:
    """Refuse escapes that are not UTF-8, or that fold into path syntax.

    Strict UTF-8 decoding rejects overlong forms (``%C0%AE`` for ".") and surrogates, which
    lenient decoders turn into the very characters we refused in their plain form.
    """
    try:
        text = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidPath("The path's percent-encoded bytes are not valid UTF-8.") from None
    if text.isascii():
        return
    folded = unicodedata.normalize("NFKC", text)
    for char in _FOLD_TARGETS:
        if folded.count(char) > text.count(char):
            raise InvalidPath(f"The path has a character that folds to {char!r}.")


def _resolve_segments(path: str) -> str:
    """RFC 3986 §5.2.4 dot-segment removal, plus collapsing empty segments.

    A ".." that would climb above the root is refused rather than clamped: clamping is one
    more place where we and the upstream could disagree.
    """
    parts = path.split("/")[1:]
    kept: list[str] = []
    for segment in parts:
        if segment == "" or segment == ".":
            continue
        if segment == "..":
            if not kept:
                raise InvalidPath("The path climbs above the root.")
            kept.pop()
            continue
        if ";" in segment and segment.partition(";")[0] in ("", *_DOT_SEGMENTS):
            # Servlet containers strip ";params" before resolving, so "..;" is ".." to them.
            raise InvalidPath("The path has a dot or empty segment with parameters.")
        kept.append(segment)
    if not kept:
        return "/"
    trailing = "/" if parts[-1] in ("", *_DOT_SEGMENTS) else ""
    return "/" + "/".join(kept) + trailing
