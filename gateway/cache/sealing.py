"""Authenticated encryption of shared-cache values (AES-256-GCM, NIST SP 800-38D).

Redis is outside the gateway's trust boundary: anyone who can write to it could otherwise
plant an identity, and anyone who can read it would learn who holds which token. Every
value the gateway writes there is sealed with an AEAD under an operator-supplied key, with
the key's id and the entry's Redis key as associated data, so a value can be neither forged
nor moved from one key to another. Keys rotate: the first seals, every listed key opens.

    sealed = version (1) | key id (4) | nonce (12) | ciphertext + tag (16)

A value that does not open is ``None`` — a cache miss — never an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES: Final = 32
_VERSION: Final = b"\x01"
_KID_BYTES: Final = 4
_NONCE_BYTES: Final = 12
_HEADER: Final = 1 + _KID_BYTES + _NONCE_BYTES
_AD_LABEL: Final = b"oauth-gateway cache v1\x00"
GENERATE_HINT: Final = (
    "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))' "
    "(or: openssl rand -base64 32)"
)


def parse_key(text: str) -> bytes:
    """A 256-bit key from base64 (standard or URL-safe, padding optional) or 64 hex digits."""
    value = text.strip()
    if len(value) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    padded = value + "=" * (-len(value) % 4)
    try:
        key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"a cache key must be {KEY_BYTES} bytes in base64 or hex") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"a cache key must be {KEY_BYTES} bytes, this one has {len(key)}")
    return key


def key_id(key: bytes) -> bytes:
    """A short public name for a key: which key sealed a value, without revealing it."""
    return hashlib.sha256(b"oauth-gateway cache key id\x00" + key).digest()[:_KID_BYTES]


class Sealer:
    """Seals with the first key; opens with any (rotation: add the new key first, drop the
    old one once its values have expired)."""

    __slots__ = ("_ciphers", "_kid")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        for key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError(f"a cache key must be {KEY_BYTES} bytes")
        self._kid = key_id(keys[0])
        self._ciphers = {key_id(key): AESGCM(key) for key in keys}

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        cipher = self._ciphers[self._kid]
        sealed = cipher.encrypt(nonce, plaintext, _AD_LABEL + self._kid + associated)
        return _VERSION + self._kid + nonce + sealed

    def open(self, blob: bytes, associated: bytes) -> bytes | None:
        """The plaintext, or None for a value that is not ours, was altered, or was sealed
        for another key."""
        if len(blob) < _HEADER + 16 or blob[:1] != _VERSION:
            return None
        kid = blob[1 : 1 + _KID_BYTES]
        cipher = self._ciphers.get(kid)
        if cipher is None:
            return None
        nonce = blob[1 + _KID_BYTES : _HEADER]
        try:
            return cipher.decrypt(nonce, blob[_HEADER:], _AD_LABEL + kid + associated)
        except InvalidTag:
            return None
