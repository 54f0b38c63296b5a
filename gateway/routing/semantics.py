"""How an upstream reads a path, and the path as it reads it (RFC 3986 §6.2.2.1, §6.2.3).

RFC 3986 leaves case in the path significant and says a trailing "/" and a trailing "." are
part of it, but frameworks differ: Express and ASP.NET Core route case-insensitively and
ignore one trailing "/", older Spring serves ``/x.`` and ``/x/`` as ``/x``, and IIS (Windows
file names) drops trailing dots and spaces. If a route's pattern is tested on the path as
sent while its upstream reads a folded form, ``/ADMIN/x`` is judged by a catch-all route and
served by the upstream as ``/admin/x``. So each route is matched on its upstream's *view*
of the normalised path; what is forwarded stays the normalised path as sent.

Anything we cannot fold the way every such upstream would is refused (``InvalidPath``):
a non-ASCII character with an ASCII case mapping (U+017F long s, U+0131 dotless i, U+212A
Kelvin sign: Java folds them into s, i, k; JavaScript and .NET do not) on a case-insensitive
upstream, and a segment made only of trimmable dots or spaces on a trimming one.
See deploy/PATHS.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, unquote

from gateway.problems import InvalidPath

# A run of percent-encoded non-ASCII bytes: whole UTF-8 sequences once the path is normal.
_ENCODED_NON_ASCII = re.compile(r"(?:%[89A-Fa-f][0-9A-Fa-f])+")
_SPACE = "%20"


class PathRulesLike(Protocol):
    """The ``paths`` section of the config: each key a word, or None to inherit."""

    @property
    def case(self) -> str | None: ...
    @property
    def trailing_slash(self) -> str | None: ...
    @property
    def trailing_dot(self) -> str | None: ...
    @property
    def trailing_space(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class PathSemantics:
    """Which differences between two normalised paths an upstream does not see."""

    case_insensitive: bool = False
    trailing_slash_ignored: bool = False
    trailing_dot_ignored: bool = False
    trailing_space_ignored: bool = False

    @property
    def strict(self) -> bool:
        """RFC 3986's reading: the view of a path is the path itself."""
        return self == STRICT

    def view(self, path: str) -> str:
        """The normalised (parameter-free) path as this upstream reads it, or InvalidPath."""
        if self._trims(path):
            path = "/".join(self._trimmed(segment) for segment in path.split("/"))
        if self.case_insensitive:
            path = _folded(path)
        if self.trailing_slash_ignored and path != "/" and path.endswith("/"):
            path = path[:-1]
        return path

    def segment_key(self, segment: str) -> str:
        """One segment as this upstream compares it (no "/" handling: see ``view``)."""
        segment = self._trimmed(segment)
        return _folded(segment) if self.case_insensitive else segment

    def _trims(self, path: str) -> bool:
        """Whether some segment of ``path`` ends in what this upstream trims (cheap test)."""
        dot = self.trailing_dot_ignored and ("./" in path or path.endswith("."))
        space = self.trailing_space_ignored and (f"{_SPACE}/" in path or path.endswith(_SPACE))
        return dot or space

    def _trimmed(self, segment: str) -> str:
        original = segment
        while True:
            if self.trailing_dot_ignored and segment.endswith("."):
                segment = segment[:-1]
            elif self.trailing_space_ignored and segment.endswith(_SPACE):
                segment = segment[: -len(_SPACE)]
            else:
                break
        if original and not segment:
            raise InvalidPath(
                "A path segment of only dots or spaces is read differently by upstreams "
                "that trim them."
            )
        return segment


STRICT = PathSemantics()


def path_semantics(*layers: PathRulesLike) -> PathSemantics:
    """The semantics the first layer that sets each key says (an upstream, then defaults)."""

    def chosen(key: str, loose: str) -> bool:
        for layer in layers:
            value: str | None = getattr(layer, key)
            if value is not None:
                return value == loose
        return False

    return PathSemantics(
        case_insensitive=chosen("case", "insensitive"),
        trailing_slash_ignored=chosen("trailing_slash", "ignored"),
        trailing_dot_ignored=chosen("trailing_dot", "ignored"),
        trailing_space_ignored=chosen("trailing_space", "ignored"),
    )


def _folded(path: str) -> str:
    """Case-fold a normalised path: ASCII letters, and the characters behind UTF-8 escapes.

    Hex digits are lowered with everything else; every view is produced by this function,
    so views stay comparable with each other.
    """
    if "%" in path:
        path = _ENCODED_NON_ASCII.sub(_fold_encoded, path)
    return path.lower()


def _fold_encoded(match: re.Match[str]) -> str:
    try:
        text = unquote(match[0], errors="strict")
    except UnicodeDecodeError:
        raise InvalidPath("The path's percent-encoded bytes are not valid UTF-8.") from None
    for char in text:
        if any(mapped.isascii() for mapped in char.lower() + char.upper() + char.casefold()):
            raise InvalidPath(
                f"The path has a character that some case-insensitive upstreams fold into "
                f"ASCII: U+{ord(char):04X}."
            )
    return quote(text.casefold(), safe="")
