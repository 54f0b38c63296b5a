"""AEAD sealing (RFC 5116, AES-256-GCM): round trips, and every way a sealed value can be
forged, moved, replayed late or opened with the wrong keys."""

from __future__ import annotations

import base64

import pytest

from gateway.auth.sessions.sealing import Sealer, SealError, sealed_length

NOW = 1_700_000_000.0
OLD = b"o" * 32
NEW = b"n" * 32
FOREIGN = b"f" * 32
MAX = 64 * 1024


def raw(value: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))


def text(data: bytes) -> str:
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode()


def reason(sealer: Sealer, purpose: str, value: str, now: float = NOW) -> str:
    with pytest.raises(SealError) as caught:
        sealer.open(purpose, value, now, max_bytes=MAX)
    return caught.value.reason


def test_a_sealed_value_opens_to_its_payload_and_hides_it() -> None:
    sealer = Sealer([NEW])
    value = sealer.seal("session", b"alice's tokens", NOW + 60)
    assert b"alice" not in raw(value)
    assert sealer.open("session", value, NOW, max_bytes=MAX) == b"alice's tokens"
    assert len(value) == sealed_length(len(b"alice's tokens"))


def test_two_seals_of_one_payload_differ() -> None:
    sealer = Sealer([NEW])
    assert sealer.seal("s", b"x", NOW + 1) != sealer.seal("s", b"x", NOW + 1)


def test_the_value_is_compact_base64url() -> None:
    value = Sealer([NEW]).seal("s", b"payload", NOW + 1)
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_every_flipped_byte_is_refused() -> None:
    sealer = Sealer([NEW])
    value = sealer.seal("session", b"payload", NOW + 60)
    data = raw(value)
    for index in range(len(data)):
        tampered = bytearray(data)
        tampered[index] ^= 0x01
        assert reason(sealer, "session", text(tampered)) in {
            "tampered",
            "unknown_key",
            "unknown_version",
        }, index


def test_truncated_and_extended_values_are_refused() -> None:
    sealer = Sealer([NEW])
    value = sealer.seal("session", b"payload", NOW + 60)
    assert reason(sealer, "session", value[:-4]) == "tampered"
    assert reason(sealer, "session", value + "AAAA") == "tampered"
    assert reason(sealer, "session", value[:20]) == "malformed"


def test_a_value_sealed_for_one_cookie_does_not_open_as_another() -> None:
    sealer = Sealer([NEW])
    value = sealer.seal("__Host-gw_login", b"payload", NOW + 60)
    assert reason(sealer, "__Host-gw_session", value) == "tampered"


def test_an_expired_value_is_refused_even_with_the_right_key() -> None:
    sealer = Sealer([NEW])
    value = sealer.seal("s", b"payload", NOW + 60)
    assert sealer.open("s", value, NOW + 59, max_bytes=MAX) == b"payload"
    assert reason(sealer, "s", value, NOW + 60) == "expired"


def test_the_expiry_cannot_be_moved_without_the_key() -> None:
    sealer = Sealer([NEW])
    data = raw(sealer.seal("s", b"payload", NOW + 60))
    # The expiry sits encrypted right after the 17-byte header: flipping bits there is
    # tampering like anywhere else (GCM is malleable, the tag is not).
    data[17 + 7] ^= 0xFF
    assert reason(sealer, "s", text(data)) == "tampered"


def test_keys_rotate_the_first_seals_and_all_open() -> None:
    before = Sealer([OLD])
    during = Sealer([NEW, OLD])
    after = Sealer([NEW])
    old_value = before.seal("s", b"old", NOW + 60)
    new_value = during.seal("s", b"new", NOW + 60)
    assert during.open("s", old_value, NOW, max_bytes=MAX) == b"old"
    assert during.open("s", new_value, NOW, max_bytes=MAX) == b"new"
    assert after.open("s", new_value, NOW, max_bytes=MAX) == b"new"
    assert reason(after, "s", old_value) == "unknown_key"
    assert during.is_current(new_value) and not during.is_current(old_value)


def test_a_foreign_key_never_opens_a_value() -> None:
    value = Sealer([FOREIGN]).seal("s", b"x", NOW + 60)
    assert reason(Sealer([NEW, OLD]), "s", value) == "unknown_key"


def test_a_forged_key_id_does_not_help() -> None:
    """An attacker who copies our key id into a value sealed with their key still fails."""
    ours = Sealer([NEW])
    data = raw(Sealer([FOREIGN]).seal("s", b"x", NOW + 60))
    data[1:5] = raw(ours.seal("s", b"y", NOW + 60))[1:5]
    assert reason(ours, "s", text(data)) == "tampered"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("not base64!", id="bad-characters"),
        pytest.param("AAAAA", id="impossible-length"),
        pytest.param("é" * 40, id="non-ascii"),
        pytest.param("A" * (MAX + 1), id="oversized"),
        pytest.param(text(b"\x02" + b"\x00" * 60), id="unknown-version"),
        pytest.param(text(b"\x01" + b"\xfb" * 60).replace("-", "+"), id="standard-alphabet"),
        pytest.param("AAAA==" + "A" * 80, id="padding-inside"),
    ],
)
def test_malformed_values_are_refused_without_a_crash(value: str) -> None:
    assert reason(Sealer([NEW]), "s", value) in {"malformed", "unknown_version"}


def test_weak_or_repeated_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        Sealer([b"short"])
    with pytest.raises(ValueError, match="the same"):
        Sealer([NEW, NEW])
    with pytest.raises(ValueError, match="at least one"):
        Sealer([])
