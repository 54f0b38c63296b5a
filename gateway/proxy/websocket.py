"""The WebSocket opening handshake, both legs (RFC 6455 §4.1, §4.2): pure checks over fields.

The gateway relays a WebSocket as bytes after both sides agreed, so the only WebSocket rules
it applies are the handshake's: the client's request must be a valid opening handshake before
the upstream is asked anything, and the upstream's ``101`` must really accept that client's
key before the client is told "101 Switching Protocols". Everything the two ends negotiate
(subprotocol, extensions) passes between them unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.problems import BadGateway, BadRequest

# RFC 6455 §1.3: the GUID the server appends to the client's key.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

Header = tuple[str, str]


@dataclass(frozen=True, slots=True)
class WebSocketRoute:
    """A route that may open WebSockets, compiled: at most ``max_connections`` open at once
    (per process), the rest answered 503."""

    max_connections: int


def _tokens(values: Sequence[str]) -> set[str]:
    return {part.strip(" \t").lower() for value in values for part in value.split(",")}


def _values(headers: Sequence[Header], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


def client_key(headers: Sequence[Header]) -> str:
    """The client's ``Sec-WebSocket-Key`` once its handshake is valid (RFC 6455 §4.2.1:
    ``Upgrade`` has ``websocket``, ``Connection`` has ``Upgrade``, one key of 16 bytes in
    base64, version 13); ``BadRequest`` otherwise."""
    invalid = "The request is not a valid WebSocket handshake (RFC 6455 §4.1)."
    if "websocket" not in _tokens(_values(headers, "upgrade")):
        raise BadRequest(invalid)
    if "upgrade" not in _tokens(_values(headers, "connection")):
        raise BadRequest(invalid)
    if _values(headers, "sec-websocket-version") != ["13"]:
        raise BadRequest(invalid)
    keys = _values(headers, "sec-websocket-key")
    if len(keys) != 1:
        raise BadRequest(invalid)
    key = keys[0].strip()
    try:
        decoded = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise BadRequest(invalid) from None
    if len(decoded) != 16:
        raise BadRequest(invalid)
    return key


def accept_value(key: str) -> str:
    """RFC 6455 §4.2.2: base64 of the SHA-1 of the key and the GUID."""
    digest = hashlib.sha1(key.encode("ascii") + _GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def check_upstream_accept(status: int, headers: Sequence[Header], key: str) -> None:
    """RFC 6455 §4.1: the client side "MUST _Fail the WebSocket Connection_" unless the
    answer is a 101 with ``Upgrade: websocket``, ``Connection: Upgrade`` and the right
    ``Sec-WebSocket-Accept``. The gateway is that client towards the upstream: anything else
    is a 502, and the real client is never switched."""
    if status != 101:
        raise BadGateway(f"The upstream answered {status} instead of accepting the WebSocket.")
    if "websocket" not in _tokens(_values(headers, "upgrade")):
        raise BadGateway("The upstream's WebSocket answer has no Upgrade: websocket.")
    if "upgrade" not in _tokens(_values(headers, "connection")):
        raise BadGateway("The upstream's WebSocket answer has no Connection: Upgrade.")
    if [value.strip() for value in _values(headers, "sec-websocket-accept")] != [accept_value(key)]:
        raise BadGateway("The upstream's Sec-WebSocket-Accept does not match the key.")
