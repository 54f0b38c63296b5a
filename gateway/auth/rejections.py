"""What a cache remembers of a refused token: a reason code and a description, nothing else.

A cached rejection must cost a few bytes, not a request. Holding the exception instead
kept its traceback alive, and with it the frames of the request that raised it and all of
that request's headers: 200 junk tokens with large headers pinned 400 MB. A ``Rejection``
holds two short strings, interned so that a flood of distinct junk tokens shares one
instance per reason, and makes a fresh ``InvalidToken`` each time it is raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway.problems import InvalidToken

_MAX_DETAIL: Final = 200
_MAX_INTERNED: Final = 512
_interned: dict[tuple[str, str], Rejection] = {}


@dataclass(frozen=True, slots=True)
class Rejection:
    """A token refused for a reason of its own (RFC 6750 §3.1 ``invalid_token``)."""

    reason: str
    detail: str

    @staticmethod
    def of(reason: str, detail: str) -> Rejection:
        """The shared instance for (reason, detail); details are short, fixed sentences."""
        key = (reason[:64], detail[:_MAX_DETAIL])
        found = _interned.get(key)
        if found is None:
            found = Rejection(*key)
            if len(_interned) < _MAX_INTERNED:
                _interned[key] = found
        return found

    @staticmethod
    def from_error(error: InvalidToken) -> Rejection:
        return Rejection.of(error.reason, error.detail)

    def error(self) -> InvalidToken:
        """A new exception to raise: nothing is shared between requests."""
        return InvalidToken(self.detail, reason=self.reason)
