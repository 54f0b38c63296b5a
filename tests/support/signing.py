"""Real signing keys for ID token and logout token tests, and the KeySet that trusts them."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.auth.jwks import KeySet
from tests.support.issuer import TestIssuer

_FAMILY = {"RS": "rsa", "PS": "rsa", "ES": "ec", "Ed": "ed"}


class SigningKeys:
    """One RSA, one P-256 and one Ed25519 key, published as a JWK Set."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {
            "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec": ec.generate_private_key(ec.SECP256R1()),
            "ed": ed25519.Ed25519PrivateKey.generate(),
        }
        self.jwks = {
            "keys": [
                RSAAlgorithm.to_jwk(self.private["rsa"].public_key(), as_dict=True)
                | {"kid": "rsa", "use": "sig"},
                ECAlgorithm.to_jwk(self.private["ec"].public_key(), as_dict=True)
                | {"kid": "ec", "alg": "ES256"},
                OKPAlgorithm.to_jwk(self.private["ed"].public_key(), as_dict=True)
                | {"kid": "ed", "alg": "EdDSA"},
            ]
        }
        self.key_set = KeySet.from_jwks(self.jwks)

    def sign(
        self,
        claims: dict[str, Any],
        *,
        alg: str = "RS256",
        kid: str | None = "",
        header: dict[str, Any] | None = None,
        key: Any = None,
    ) -> str:
        """``kid=""``: the key of ``alg``'s family; None: no kid. ``header`` entries set to
        None are removed."""
        family = _FAMILY[alg[:2]]
        head: dict[str, Any] = {"alg": alg, "kid": family if kid == "" else kid}
        head |= header or {}
        head = {name: value for name, value in head.items() if value is not None}
        return TestIssuer.sign(head, claims, alg=alg, key=key or self.private[family])


def left_half_hash(value: str, digest: str = "sha256") -> str:
    raw = hashlib.new(digest, value.encode()).digest()
    return base64.urlsafe_b64encode(raw[: len(raw) // 2]).rstrip(b"=").decode()
