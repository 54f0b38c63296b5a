"""RFC 9449 §9 and §11.1: resource-server nonces, stateless and shared by every replica.

§11.1: "servers MAY limit DPoP proof lifetimes by using server-provided nonce values
containing the time at the server". A nonce here is an HMAC of the current time window
under a configured secret, so any replica with the secret can tell a current nonce from a
stale or invented one without storing anything. The current window's nonce is handed out
(``DPoP-Nonce``); the previous window's is still accepted, so a client that just received
a nonce is not refused at a window boundary.
"""

from __future__ import annotations

import hashlib
import hmac
import math

from gateway.auth.thumbprints import b64url

_MAC_BYTES = 18  # 144 bits: unpredictable (RFC 9449 §8: "Nonce values MUST be unpredictable")


def _nonce(secret: bytes, window: int) -> str:
    mac = hmac.new(secret, window.to_bytes(8, "big", signed=True), hashlib.sha256).digest()
    # base64url characters are all NQCHAR, the nonce syntax of RFC 9449 §8.1.
    return b64url(mac[:_MAC_BYTES])


def current_nonces(secret: bytes, now: float, lifetime: float) -> tuple[str, str]:
    """(the nonce to hand out now, the previous window's nonce, still accepted)."""
    window = math.floor(now / lifetime)
    return _nonce(secret, window), _nonce(secret, window - 1)
