"""RFC 5116 AEAD (AES-256-GCM, NIST SP 800-38D) sealing of values the gateway hands to browsers
and Redis: confidentiality *and* integrity, with key rotation and an expiry inside.

A cookie or Redis value leaves the process, so it comes back untrusted. Encryption without
integrity is how a padding oracle turned Envoy's OAuth cookies into a CVE; an AEAD refuses any
changed byte before anything is decrypted. A sealed value is one base64url string (RFC 4648 §5,
no padding) of::

    version (1 byte) | key id (4 bytes) | nonce (12 bytes) | ciphertext | tag (16 bytes)

and the plaintext is ``expires_at`` (8 bytes, big-endian Unix seconds) followed by the payload.
The associated data binds the version, the key id and the *purpose* (a cookie's name, or the
Redis key a value is stored under), so a value sealed for one cookie or key opens for no other.

Keys rotate as a list: the first seals, every one opens, so a new key is added in front and
an old one is dropped once no live value can still use it (the longest timeout). Each
configured secret is stretched by HKDF-SHA256 (RFC 5869) into the AES key; the key id is a
hash of that key, so the config is only a list of secrets.

Nonces are 96 random bits, the construction SP 800-38D §8.2.2 bounds at 2^32 seals per key:
at a thousand seals a second that is over a century; rotate keys long before it matters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION: Final = 1
KEY_ID_BYTES: Final = 4
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
MIN_SECRET_BYTES: Final = 32
_HEADER: Final = 1 + KEY_ID_BYTES + NONCE_BYTES
_EXPIRY: Final = struct.Struct(">Q")
_OVERHEAD: Final = _HEADER + TAG_BYTES + _EXPIRY.size
_HKDF_INFO: Final = b"oauth-gateway seal v1 aes-256-gcm"
_AAD_PREFIX: Final = b"oauth-gateway/seal/v1\x00"
_TO_STANDARD: Final = bytes.maketrans(b"-_", b"+/")
_PADDING: Final = (b"", b"===", b"==", b"=")


class SealError(ValueError):
    """A value that does not open: ``reason`` says why (for logs and metrics, never shown)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Key:
    __slots__ = ("aead", "id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"a sealing secret needs at least {MIN_SECRET_BYTES} bytes")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret)
        self.id = hashlib.sha256(b"key id\x00" + key).digest()[:KEY_ID_BYTES]
        self.aead = AESGCM(key)


class Sealer:
    """Seals and opens values under a rotating list of keys (the first one seals)."""

    __slots__ = ("_by_id", "_current")

    def __init__(self, secrets: Sequence[bytes]) -> None:
        if not secrets:
            raise ValueError("at least one sealing secret is needed")
        keys = [_Key(secret) for secret in secrets]
        by_id = {key.id: key for key in keys}
        if len(by_id) != len(keys):
            raise ValueError("two sealing secrets are the same")
        self._current = keys[0]
        self._by_id = by_id

    def seal(self, purpose: str, payload: bytes, expires_at: float) -> str:
        """``payload`` sealed for ``purpose`` until ``expires_at`` (Unix seconds)."""
        key = self._current
        header = bytes([VERSION]) + key.id + os.urandom(NONCE_BYTES)
        plaintext = _EXPIRY.pack(max(0, int(expires_at))) + payload
        sealed = key.aead.encrypt(header[1 + KEY_ID_BYTES :], plaintext, _aad(key.id, purpose))
        return base64.urlsafe_b64encode(header + sealed).rstrip(b"=").decode("ascii")

    def open(self, purpose: str, value: str, now: float, *, max_bytes: int) -> bytes:
        """The payload, or ``SealError``: malformed, unknown key, tampered (or sealed for
        another purpose, which is the same thing to an AEAD), or expired."""
        raw = _decode(value, max_bytes)
        if len(raw) < _OVERHEAD:
            raise SealError("malformed")
        if raw[0] != VERSION:
            raise SealError("unknown_version")
        key_id = raw[1 : 1 + KEY_ID_BYTES]
        key = self._by_id.get(key_id)
        if key is None:
            raise SealError("unknown_key")
        try:
            plaintext = key.aead.decrypt(
                raw[1 + KEY_ID_BYTES : _HEADER], raw[_HEADER:], _aad(key_id, purpose)
            )
        except InvalidTag:
            raise SealError("tampered") from None
        (expires_at,) = _EXPIRY.unpack_from(plaintext)
        if now >= expires_at:
            raise SealError("expired")
        return plaintext[_EXPIRY.size :]

    def is_current(self, value: str) -> bool:
        """Whether ``value`` was sealed with the current key (else re-seal it when touched)."""
        try:
            raw = _decode(value[:16], 16)
        except SealError:
            return False
        return len(raw) > KEY_ID_BYTES and hmac.compare_digest(
            raw[1 : 1 + KEY_ID_BYTES], self._current.id
        )


def bound_purpose(name: str, binding: str) -> str:
    """The purpose a cookie's value is sealed for: its ``name`` and, when given, the
    ``binding`` of the login that wrote it (``login_binding``). Secrets copied from one
    deployment to another (staging and production, two applications at one provider) then
    still open no cookie of the other, whose holder could paste it in: a user of another
    client or provider must not become a user here."""
    return f"{name}\x00{binding}" if binding else name


def login_binding(external_url: str, issuer: str, client_id: str) -> str:
    """What a login's cookies are bound to: the origin, the issuer and the client."""
    return "\x00".join((external_url, issuer, client_id))


def sealed_length(payload_bytes: int) -> int:
    """The length of a sealed value's text for a payload of this many bytes."""
    raw = payload_bytes + _OVERHEAD
    return (raw * 4 + 2) // 3


def _aad(key_id: bytes, purpose: str) -> bytes:
    return _AAD_PREFIX + key_id + b"\x00" + purpose.encode()


def _decode(value: str, max_bytes: int) -> bytes:
    """base64url (RFC 4648 §5) without padding. Translated to the standard alphabet and
    decoded in strict mode, which refuses any other character; "+" and "/" are refused
    first, since they are standard base64 but not base64url."""
    if len(value) > max_bytes or not value.isascii():
        raise SealError("malformed")
    data = value.encode("ascii")
    if len(data) % 4 == 1 or b"+" in data or b"/" in data:
        raise SealError("malformed")
    try:
        return binascii.a2b_base64(
            data.translate(_TO_STANDARD) + _PADDING[len(data) % 4], strict_mode=True
        )
    except binascii.Error:
        raise SealError("malformed") from None
