"""Linear-time regular expressions for route patterns (RE2 syntax, via google-re2).

Route patterns are written by the operator but matched against paths an attacker chooses.
Python's ``re`` backtracks: ``/(a+)+b`` against thirty ``a`` takes minutes, during which the
event loop serves no one. RE2 runs in time linear in the input for every pattern it accepts,
and it refuses the constructs that cannot be matched that way (backreferences, lookaround),
so an accepted pattern can never stall the gateway. Globs compile to RE2 too: ``*-*-*.pdf``
backtracks polynomially in ``re``.

RE2 also reports the range of strings a pattern can match (``PossibleMatchRange``); their
common prefix is a literal every match starts with, computed by the engine itself rather
than by a hand-written scan of the pattern's syntax.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import re2  # google-re2 ships no type information (pyproject: ignore_missing_imports)

# Bytes of possible-match bounds to compute; longer literal prefixes are cut (erring short).
_RANGE_LENGTH = 256
# RE2's words for what Python's re accepts and RE2 refuses by design (it would backtrack).
_UNSUPPORTED = ("invalid perl operator", "invalid escape sequence", "bad repetition operator")


class LinearRegex:
    """A compiled RE2 pattern; ``fullmatch`` costs time linear in the text."""

    __slots__ = ("_compiled",)

    def __init__(self, pattern: str, *, case_insensitive: bool = False) -> None:
        options: Any = re2.Options()
        options.log_errors = False  # RE2 would print every refused pattern to stderr
        options.never_capture = True  # routes use no groups; lets RE2 stay on its DFA
        options.case_sensitive = not case_insensitive
        try:
            self._compiled: Any = re2.compile(pattern, options)
        except re2.error as exc:
            raise ValueError(_reason(exc)) from None

    def fullmatch(self, text: str) -> bool:
        return self._compiled.fullmatch(text.encode()) is not None

    def literal_prefix(self) -> str:
        """An ASCII string every full match starts with ("" when there is none).

        RE2 guarantees ``low <= s <= high`` for every string ``s`` the pattern matches
        from its start; a string between two bounds starts with their common prefix.
        Normalised paths are ASCII, so the prefix stops at the first non-ASCII byte: a
        character that is not ASCII, or the U+FFFD of a sequence the common part cuts.
        """
        try:
            low, high = self._compiled.possiblematchrange(_RANGE_LENGTH)
        except re2.error:
            return ""  # e.g. a pattern that starts with \C*: no usable bounds
        # Bytes, not paths: the byte-by-byte common prefix is the one wanted.
        common = os.path.commonprefix([low, high]).decode(errors="replace")  # noqa: RUF071
        return "".join(itertools.takewhile(str.isascii, common))


def _reason(exc: Exception) -> str:
    """A refused pattern's message, from whatever ``re2.error`` carries: the engine's bytes
    (UTF-8, the pattern's encoding), the wrapper's own str, or nothing."""
    detail = exc.args[0] if exc.args else ""
    if isinstance(detail, bytes):
        detail = detail.decode(errors="replace")
    if str(detail).startswith(_UNSUPPORTED):
        return f"{detail} (RE2 syntax: no backreferences, lookaround or possessive quantifiers)"
    return str(detail)
