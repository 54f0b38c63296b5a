"""Which upstream response heads the gateway relays, and how (RFC 9110 §15, §15.2; RFC 9112
§6.1, §6.3).

Pure rules the upstream connection applies as each head is parsed: a final head it cannot
relay faithfully becomes a 502; an interim (1xx) head is relayed to the client before the
final one, or consumed, or (when it claims content) a 502 as well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Header = tuple[str, str]

# An interim response for the client: status, reason phrase, fields (as received).
InterimSink = Callable[[int, str, list[Header]], None]

# How many interim responses one exchange relays; the rest are read and dropped, so an
# upstream cannot make the gateway write without bound before its final answer.
MAX_INTERIM = 8

# How large the heads up to the end of the final one may be, and a trailer section (see
# HeadBudget).
MAX_HEAD_BYTES = 64 * 1024
# What a head holds beyond its reason phrase and fields ("HTTP/1.1 200 ", the CRLFs).
HEAD_FRAME = 17


class HeadBudget:
    """What one exchange may receive that is no content: its heads (interim ones included)
    and its trailer section.

    llhttp sets no limit on either and httptools gathers a field in memory until it ends, so
    without one an upstream could grow the gateway without bound. Two counts, each held to
    MAX_HEAD_BYTES: the parsed heads (status text, fields, HEAD_FRAME each), and the raw
    bytes of consecutive reads that carried no body bytes (a head, or trailers, still being
    gathered; a read with content starts that count again, so chunk framing in a long
    stream never adds up). Beyond it the exchange is a 502, as nginx's "upstream sent too
    big header" (its default buffer is 4-8 KiB) and HAProxy's (tune.bufsize, 16 KiB).
    """

    __slots__ = ("_fields", "_unfinished")

    def __init__(self) -> None:
        self._fields = 0
        self._unfinished = 0

    def fits_parsed(self, size: int) -> bool:
        """Count parsed bytes: a status text, or a field (name ": " value CRLF)."""
        self._fields += size
        return self._fields <= MAX_HEAD_BYTES

    def fits_read(self, size: int, *, content: bool) -> bool:
        """Count a read: one that carried body bytes (``content``) starts the count again."""
        self._unfinished = 0 if content else self._unfinished + size
        return self._unfinished <= MAX_HEAD_BYTES


def framing(headers: list[Header]) -> tuple[bool, list[str]]:
    """Whether a final head frames its body (Content-Length or Transfer-Encoding), and its
    transfer codings in order, lowercased (RFC 9112 §6.1, §6.3)."""
    framed = False
    codings: list[str] = []
    for name, value in headers:
        lname = name.lower()
        if lname == "content-length" or (lname == "transfer-encoding" and value):
            framed = True
        if lname == "transfer-encoding":
            codings.extend(part.strip(" \t").lower() for part in value.split(","))
    return framed, codings


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: str
    version: tuple[int, int]
    headers: list[Header]
    # True when the whole body already arrived with the head (small responses).
    complete: bool


def unrelayable(status: int, codings: list[str]) -> str | None:
    """Why a final response head cannot be relayed as it is, or None.

    RFC 9110 §15: status codes outside 100..599 are invalid, and "a client that receives a
    response with an invalid status code SHOULD process the response as if it had a 5xx
    (Server Error) status code". RFC 9112 §6.1: the gateway removes the transfer codings
    it decodes, and llhttp decodes only chunked; a body in any other transfer coding (``gzip,
    chunked``) would reach the client still coded with nothing saying so.
    """
    if not 100 <= status <= 599:
        return "The upstream sent an invalid status code."
    if codings and codings != ["chunked"]:
        return "The upstream used a transfer coding other than chunked."
    return None


def interim_refusal(headers: list[Header]) -> str | None:
    """Why an interim head makes the exchange fail, or None.

    RFC 9112 §6.3: a 1xx response "is always terminated by the first empty line after the
    header fields, regardless of the header fields present", and a server "MUST NOT send a
    Content-Length header field in any response with a status code of 1xx" (RFC 9110 §8.6)
    nor Transfer-Encoding (RFC 9112 §6.1). llhttp reads a body after some 1xx heads that
    carry either, which would put bytes of no response at the front of the final one.
    """
    for name, _ in headers:
        if name.lower() in ("content-length", "transfer-encoding"):
            return "The upstream framed content in an interim (1xx) response."
    return None


def relays_interim(status: int) -> bool:
    """Whether an interim response goes on to the client (RFC 9110 §15.2: "A proxy MUST
    forward 1xx responses unless the proxy itself requested the generation of the 1xx
    response").

    Not 100: the gateway never forwards ``Expect`` (``headers._FRAMING``), it answers the
    client's 100-continue itself once the request is authorised (``send_continue``), so a
    100 from the upstream concerns only the gateway's own leg, and the client was already
    told to send its body. Not 101: a switch the gateway did not ask for fails the exchange
    (the WebSocket path asks for its own, ``tunnel``). Every other 1xx (102, 103 Early
    Hints, codes not yet defined) is relayed.
    """
    return status not in (100, 101)
