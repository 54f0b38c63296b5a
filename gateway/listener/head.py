"""Response heads as bytes: status lines, dates, chunk framing, problem bodies (RFC 9112 §4,
§7.1; RFC 9110 §6.6.1; RFC 9457).

Pure functions over bytes. A head is built with one ``bytes.join`` and leaves the process
in the same ``transport.write`` as its body, so a small response is one system call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from email.utils import formatdate
from http import HTTPStatus

from gateway.problems import PROBLEM_CONTENT_TYPE, AuthError, GatewayError

Headers = Sequence[tuple[bytes, bytes]]

CRLF = b"\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CONNECTION_CLOSE = b"Connection: close\r\n"
CONNECTION_KEEP_ALIVE = b"Connection: keep-alive\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"

# RFC 9112 §4: reason-phrase = 1*( HTAB / SP / VCHAR / obs-text ).
_REASON_BYTES = frozenset(range(0x20, 0x7F)) | frozenset(range(0x80, 0x100)) | {0x09}
# RFC 9110 §15 renamed a few phrases Python's table still has in their RFC 2616 spelling.
_PHRASES = {status.value: status.phrase for status in HTTPStatus} | {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}
_STATUS_LINES = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode("ascii"))
    for code, phrase in _PHRASES.items()
}


def status_line(status: int, reason: bytes | None = None) -> bytes:
    """``HTTP/1.1 200 OK`` and its CRLF: the standard phrase, or ``reason`` when it is a
    valid reason-phrase (an upstream's own wording, relayed as sent)."""
    if reason is not None and reason and all(byte in _REASON_BYTES for byte in reason):
        return b"HTTP/1.1 %d %s\r\n" % (status, reason)
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"{status} is not an HTTP status code")
        line = b"HTTP/1.1 %d Unknown\r\n" % status
    return line


_date_second = 0
_date_value = b""


def http_date() -> bytes:
    """Now as an RFC 9110 §5.6.7 IMF-fixdate, computed at most once a second."""
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_value = formatdate(now, usegmt=True).encode("ascii")
    return _date_value


def header_block(headers: Headers) -> bytes:
    """``name: value CRLF`` for each field, in order, bytes as given."""
    return b"".join([b"%s: %s\r\n" % field for field in headers])


def chunk(data: bytes) -> bytes:
    """One RFC 9112 §7.1 chunk: size in hex, CRLF, data, CRLF."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def problem_parts(
    error: GatewayError,
    *,
    realm: str = "gateway",
    request_id: str | None = None,
    server: bytes | None = None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An error as status, header fields and an RFC 9457 ``application/problem+json`` body.

    The one place a ``GatewayError`` becomes a response on this listener: its challenge
    (RFC 6750 §3), ``Cache-Control: no-store`` for answers about credentials (RFC 6750
    §5.3), and the headers its status requires (``Allow`` for a 405, RFC 9110 §15.5.6).
    """
    body = error.problem_bytes(request_id)
    headers = [
        (b"Content-Type", PROBLEM_CONTENT_TYPE.encode("ascii")),
        (b"Date", http_date()),
    ]
    if server is not None:
        headers.append((b"Server", server))
    challenge = error.challenge(realm)
    if challenge is not None:
        headers.append((b"WWW-Authenticate", challenge.encode("latin-1")))
    if isinstance(error, AuthError):
        headers.append((b"Cache-Control", b"no-store"))
    for name, value in error.response_headers():
        headers.append((name.encode("latin-1"), value.encode("latin-1")))
    return error.status, headers, body


def refusal_bytes(error: GatewayError, server: bytes | None) -> bytes:
    """The whole response for a request the listener refused: it always closes."""
    status, headers, body = problem_parts(error, server=server)
    return b"".join(
        (
            status_line(status),
            header_block(headers),
            b"Content-Length: %d\r\n" % len(body),
            CONNECTION_CLOSE,
            CRLF,
            body,
        )
    )
