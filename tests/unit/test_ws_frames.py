"""Frame boundaries of a relayed WebSocket stream, and the gateway's own Close frame."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.proxy.ws_frames import (
    GOING_AWAY,
    POLICY_VIOLATION,
    FrameTracker,
    close_frame,
    new_mask,
)
from tests.support.ws_upstream import masked_frame


def frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A server frame (unmasked), in the shortest length encoding."""
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x80 | opcode, size) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, size) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, size) + payload


def test_the_status_codes() -> None:
    assert (POLICY_VIOLATION, GOING_AWAY) == (1008, 1001)


def test_a_new_tracker_is_between_frames_and_not_closed() -> None:
    tracker = FrameTracker()
    assert tracker.at_boundary and tracker.closed is False and tracker.lost is False


def test_a_length_with_its_top_bit_set_is_read_unsigned() -> None:
    """§5.2 asks the most significant bit to be 0; a sender that sets it still declares
    more than 2^63 bytes, never a negative length."""
    tracker = FrameTracker()
    tracker.feed(struct.pack("!BBQ", 0x82, 127, (1 << 63) + 5) + b"x" * 100)
    assert not tracker.at_boundary


def test_masks_are_four_random_bytes() -> None:
    masks = {new_mask() for _ in range(8)}
    assert len(masks) > 1 and {len(mask) for mask in masks} == {4}


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
@pytest.mark.parametrize("masked", [False, True], ids=["server", "client"])
def test_a_whole_frame_ends_at_a_boundary_and_a_part_of_it_does_not(
    size: int, masked: bool
) -> None:
    data = masked_frame(b"x" * size) if masked else frame(b"x" * size)
    for cut in sorted({1, len(data) // 2, len(data) - 1} - {0}):
        tracker = FrameTracker()
        tracker.feed(data[:cut])
        assert not tracker.at_boundary, cut
        tracker.feed(data[cut:])
        assert tracker.at_boundary and not tracker.closed


@given(
    payloads=st.lists(st.binary(min_size=62, max_size=300), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
)
def test_boundaries_are_found_however_the_stream_is_split(
    payloads: list[bytes], cuts: list[int]
) -> None:
    frames = [frame(payload) for payload in payloads]
    stream = b"".join(frames)
    ends = {sum(len(f) for f in frames[: i + 1]) for i in range(len(frames))}
    points = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    tracker = FrameTracker()
    for start, stop in itertools.pairwise(points):
        tracker.feed(stream[start:stop])
        assert tracker.at_boundary == (stop in ends), stop


def test_a_close_frame_passing_is_remembered() -> None:
    tracker = FrameTracker()
    tracker.feed(frame(b"hi") + frame(struct.pack("!H", 1000), opcode=0x8))
    assert tracker.at_boundary and tracker.closed


def test_the_close_frame_to_a_client_is_unmasked() -> None:
    assert close_frame(1008, "the token expired") == b"\x88\x13\x03\xf0the token expired"


def test_the_close_frame_to_an_upstream_is_masked() -> None:
    mask = b"\x01\x02\x03\x04"
    for reason, length in (("bye", b"\x85"), ("ok", b"\x84")):
        data = close_frame(1001, reason, mask=mask)
        assert data[:2] == b"\x88" + length and data[2:6] == mask
        payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(data[6:]))
        assert payload == b"\x03\xe9" + reason.encode()


def test_a_long_reason_is_cut_to_what_a_control_frame_holds() -> None:
    data = close_frame(1008, "r" * 200)
    assert data[1] == 125 and len(data) == 127


def test_a_stream_denser_in_frames_than_the_budget_is_given_up_for_good() -> None:
    """Megabytes of 2-byte frames would cost a Python step per frame: the tracker stops
    following (the tunnel is then only closed), and what follows costs nothing."""
    tracker = FrameTracker()
    tracker.feed(frame(b"x" * 100) + frame(b"") * 3)  # a few small frames are fine
    assert tracker.at_boundary and not tracker.lost
    tracker.feed(frame(b"") * 1000)
    assert tracker.lost and not tracker.at_boundary
    tracker.feed(frame(b"x" * 100))
    assert not tracker.at_boundary


def test_the_budget_is_two_headers_plus_one_per_32_bytes_fed() -> None:
    within, beyond = FrameTracker(), FrameTracker()
    within.feed(frame(b"") * 2)  # 4 bytes: 4 // 32 + 2 = 2 headers
    beyond.feed(frame(b"") * 3)  # 6 bytes: still 2
    assert within.at_boundary and not within.lost
    assert beyond.lost
