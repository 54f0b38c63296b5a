"""The listener's bounds, as plain compiled values (RFC 9112 §3, §9.3; RFC 6585 §5).

Every buffer the listener keeps for a client is bounded by one of these: the request line,
each header field, the number of fields, the request body held before reading pauses, and
the number of pipelined requests parsed ahead of the one being answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.models.listeners import Limits


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """What a client may send before it is refused, and how long it may take.

    ``max_request_line`` bounds the request target (414 beyond); ``max_header_size`` a
    field's name plus value (431 beyond); ``max_headers`` the number of fields (431).
    ``header_timeout`` is how long a request head may take, counted from the accept for a
    connection's first request and from the head's first byte after that (408), and also
    how long a body read whole may take (``body_timeout``); ``keepalive_timeout`` how long
    an idle connection is kept between requests.
    """

    max_request_line: int = 8190
    max_header_size: int = 8190
    max_headers: int = 100
    keepalive_timeout: float = 75.0
    header_timeout: float = 10.0
    # Request body bytes buffered (for the request being answered and the ones pipelined
    # behind it) before the listener stops reading from the socket, and where it resumes.
    body_high_water: int = 256 * 1024
    body_low_water: int = 64 * 1024
    # Requests parsed ahead of the one being answered; more in one read close the
    # connection after the queued ones are answered (RFC 9112 §9.3.2 lets a client retry).
    max_pipeline: int = 32
    # After a refusal, or a response sent before the request body was read: how long the
    # listener keeps reading (and discarding) so the client sees the answer, not a reset.
    linger_timeout: float = 2.0

    @property
    def head_timeout(self) -> float:
        """A head never takes longer than an idle connection would be kept."""
        return min(self.header_timeout, self.keepalive_timeout)

    @property
    def body_timeout(self) -> float:
        """How long a body the application reads whole before it can answer may take,
        counted from when it is asked for (408 beyond, RFC 9110 §15.5.9). Like a head it is
        bounded in size and nothing is decided before all of it is there, so it gets the
        head's time: a client cannot hold a request by trickling it, or by never sending it."""
        return self.header_timeout

    @property
    def max_line(self) -> int:
        """The longest unfinished header line held while its end has not arrived: a field
        (name and value within ``max_header_size``) with room for the colon and spaces."""
        return self.max_header_size + 256

    @classmethod
    def from_config(cls, limits: Limits) -> ListenerLimits:
        return cls(
            max_request_line=limits.max_request_line,
            max_header_size=limits.max_header_size,
            max_headers=limits.max_headers,
            keepalive_timeout=limits.keepalive_timeout,
            header_timeout=limits.header_timeout,
        )
