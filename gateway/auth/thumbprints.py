"""RFC 7638 §3 JWK thumbprints and RFC 8705 §3.1 certificate thumbprints (``x5t#S256``).

Both bind an access token to a key the client holds: RFC 9449 §6.1 puts the JWK SHA-256
thumbprint of the DPoP key into ``cnf.jkt``, RFC 8705 §3.1 the SHA-256 of the client
certificate's DER into ``cnf["x5t#S256"]``. The gateway recomputes them from what the
request carries and compares, so both must be computed exactly as the RFCs say.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Final

# RFC 7638 §3.2: "The required members for an RSA public key ... are "e", "kty", and "n"";
# for an EC public key "crv", "kty", "x", and "y"; RFC 8037 §2 adds OKP with "crv", "kty",
# "x". Each tuple is already in lexicographic order (RFC 7638 §3.3).
REQUIRED_MEMBERS: Final[Mapping[str, tuple[str, ...]]] = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
# Member values of public keys are base64url (RFC 7518 §6) or a curve name; nothing that
# JSON would escape, so the serialisation below is the RFC's byte for byte.
_VALUE: Final = re.compile(r"[A-Za-z0-9_-]+")
_CURVE: Final = re.compile(r"[A-Za-z0-9-]+")


def b64url(data: bytes) -> str:
    """RFC 7515 §2: base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 JWK SHA-256 thumbprint of a public key, base64url-encoded.

    RFC 7638 §3: the hash input is a JSON object with only the required members, "with no
    whitespace or line breaks before or after any syntactic elements", members "ordered
    lexicographically by the Unicode code points of the member names", UTF-8 encoded.
    ``ValueError`` for an unsupported ``kty`` or a missing or malformed required member.
    """
    kty = jwk.get("kty")
    members = REQUIRED_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError("the key type is not RSA, EC or OKP")
    canonical: dict[str, str] = {}
    for name in members:
        value = jwk.get(name)
        pattern = _CURVE if name in ("crv", "kty") else _VALUE
        if not isinstance(value, str) or pattern.fullmatch(value) is None:
            raise ValueError(f"the key's {name!r} member is missing or malformed")
        canonical[name] = value
    text = json.dumps(canonical, separators=(",", ":"))
    return b64url(hashlib.sha256(text.encode("ascii")).digest())


def certificate_thumbprint(der: bytes) -> str:
    """RFC 8705 §3.1: ``x5t#S256`` is "the base64url-encoded SHA-256 hash of the DER encoding
    of the X.509 certificate"."""
    return b64url(hashlib.sha256(der).digest())


def b64url_decode(segment: str) -> bytes:
    """base64url without padding, canonical only (RFC 7515 §2, RFC 4648 §3.5): one value has
    one spelling. ``ValueError`` otherwise."""
    if len(segment) % 4 == 1:
        raise ValueError("impossible base64url length")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (ValueError, TypeError):
        raise ValueError("not base64url") from None
    if b64url(data) != segment:
        raise ValueError("non-canonical or padded base64url")
    return data
