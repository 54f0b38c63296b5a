"""Where a relayed WebSocket stream stands between frames, and the Close frame the gateway
sends when it ends a tunnel itself (RFC 6455 §5.2, §5.5.1, §7.4.1).

The tunnel relays bytes without re-framing them, so a frame of the gateway's own can be
written only where one relayed frame ended and the next has not begun: ``FrameTracker``
follows the frame headers of what is written to one side (payloads are skipped unread).
When the gateway ends a tunnel (its token expired or was revoked, the gateway stops), each
side at a frame boundary is sent a Close frame with a status code first, so a client learns
why (1008, policy violation) instead of seeing the connection drop (1006 to its API); a side
in the middle of a frame, or already sent a Close, only has its connection closed.
"""

from __future__ import annotations

import os
import struct

# RFC 6455 §7.4.1 status codes the gateway sends.
POLICY_VIOLATION = 1008  # the token that opened the tunnel expired or was revoked
GOING_AWAY = 1001  # the gateway is stopping
_CLOSE_OPCODE = 0x8
_MAX_REASON = 123  # §5.5: a control frame's payload is at most 125 bytes, 2 of them the code
# Frames per byte fed a tracker follows: past it (a stream of tiny frames, which costs a
# Python step each where relaying costs nothing per frame) it stops following, for good.
_BYTES_PER_FRAME = 32


class FrameTracker:
    """Follows the frames of one direction of a WebSocket stream, header by header.

    Its work is bounded: a feed of ``n`` bytes reads at most ``n / 32 + 2`` headers. A
    stream denser in frames than that would make it cost the event loop more than the
    relaying does, so it gives up (``lost``): never again at a boundary, each feed O(1),
    and the tunnel is then only closed, as one mid-frame is.
    """

    __slots__ = ("_header", "_remaining", "closed", "lost")

    def __init__(self) -> None:
        self._header = b""  # an incomplete frame header
        self._remaining = 0  # payload bytes of the current frame still to come
        self.closed = False  # a Close frame passed: nothing may follow it (§5.5.1)
        self.lost = False

    @property
    def at_boundary(self) -> bool:
        return self._remaining == 0 and not self._header and not self.lost

    def feed(self, data: bytes) -> None:
        if self.lost:
            return
        position, size = 0, len(data)
        budget = size // _BYTES_PER_FRAME + 2
        while position < size:
            if self._remaining:
                step = min(self._remaining, size - position)
                self._remaining -= step
                position += step
                continue
            header = self._header + data[position : position + 14]
            length = _header_length(header)
            if length is None or len(header) < length:
                self._header = header  # at most 13 bytes: the rest of a header is still to come
                return
            budget -= 1
            if budget < 0:
                self.lost = True
                return
            position += length - len(self._header)
            self._header = b""
            self._remaining = _payload_length(header)
            if header[0] & 0x0F == _CLOSE_OPCODE:
                self.closed = True


def _header_length(header: bytes) -> int | None:
    """§5.2: 2 bytes, then 2 or 8 of extended length, then 4 of masking key when masked."""
    if len(header) < 2:
        return None
    size = header[1] & 0x7F
    extended = 2 if size == 126 else 8 if size == 127 else 0
    return 2 + extended + (4 if header[1] & 0x80 else 0)


def _payload_length(header: bytes) -> int:
    size = header[1] & 0x7F
    if size == 126:
        return int(struct.unpack_from("!H", header, 2)[0])
    if size == 127:
        return int(struct.unpack_from("!Q", header, 2)[0])
    return size


def close_frame(code: int, reason: str, *, mask: bytes | None = None) -> bytes:
    """A Close frame (§5.5.1) with ``code`` and ``reason``; masked with ``mask`` (4 bytes)
    when it goes to the upstream, since every frame a client sends is masked (§5.3)."""
    payload = struct.pack("!H", code) + reason.encode("ascii")[:_MAX_REASON]
    if mask is None:
        return bytes((0x80 | _CLOSE_OPCODE, len(payload))) + payload
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes((0x80 | _CLOSE_OPCODE, 0x80 | len(payload))) + mask + masked


def new_mask() -> bytes:
    """§5.3: the masking key "MUST be derived from a strong source of entropy"."""
    return os.urandom(4)
