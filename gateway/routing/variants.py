"""Paths a route matches, and their near spellings: the probes of ``gateway check``'s audit.

Two spellings that differ only by case, or by a trailing "/", "." or space, are one path to
many upstreams (deploy/PATHS.md). If a weaker route receives a near spelling of what a
stronger route protects, an upstream that reads them as one path serves the protected
resource through the weaker route. The audit finds such pairs by probing the route table
with these spellings; this module only makes them (pure, no routes involved).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from gateway.problems import InvalidPath
from gateway.routing.paths import normalise_target

Difference = Literal["case", "trailing_slash", "trailing_dot", "trailing_space"]

# What a sample puts where a pattern leaves a segment (or the rest of a literal) open.
_FILLERS = ("x", "/x", "0", "1")
_SUFFIXES: tuple[tuple[Difference, str], ...] = (("trailing_dot", "."), ("trailing_space", "%20"))


def sample_paths(kind: str, pattern: str, literal_prefix: str) -> tuple[str, ...]:
    """Normalised paths the pattern may match, in order; the caller keeps those it does."""
    if kind == "exact":
        candidates = [pattern]
    elif kind == "prefix":
        candidates = [pattern, pattern.rstrip("/") + "/x"]
    elif kind == "glob":
        segments = pattern.split("/")
        filled = "/".join("x" if s == "**" else s.replace("*", "x") for s in segments)
        bare = "/".join(s.replace("*", "x") for s in segments if s != "**") or "/"
        candidates = [filled, bare]
    else:
        candidates = [literal_prefix] + [literal_prefix + filler for filler in _FILLERS]
    return tuple(dict.fromkeys(path for path in candidates if _is_normal(path)))


def near_spellings(path: str) -> Iterator[tuple[Difference, str]]:
    """Normalised paths that differ from the normal ``path`` (one ``sample_paths`` gave)
    only by case or a trailing "/", "." or space (on the whole path, or on one of its
    segments).

    Each is yielded once without keeping a set: for a normal path no two spellings
    normalise alike. The case ones keep its length and slashes, the trailing-slash one
    toggles its last "/", the others lengthen one segment. Only a spelling that normalises
    back to ``path`` itself (a lowered escape, "//" for "/") is dropped."""
    spellings: list[tuple[Difference, str]] = [
        ("case", path.upper()),
        ("case", path.lower()),
        ("trailing_slash", path[:-1] if path.endswith("/") else path + "/"),
    ]
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if segment:
            for difference, suffix in _SUFFIXES:
                changed = [*segments[:index], segment + suffix, *segments[index + 1 :]]
                spellings.append((difference, "/".join(changed)))
    for difference, spelling in spellings:
        normal = _normal(spelling)
        if normal is not None and normal != path:
            yield difference, normal


def _normal(path: str) -> str | None:
    """The path ``normalise_target`` makes of ``path``, or None if it refuses it. A "?"
    needs no check: no spelling of a normal path holds one, and the path made of "/a?b"
    is "/a", so a path with a query is never its own normal form."""
    try:
        return normalise_target(path).path
    except InvalidPath:
        return None


def _is_normal(path: str) -> bool:
    """``normalise_target`` refuses what does not start with "/": no check of our own."""
    return _normal(path) == path
