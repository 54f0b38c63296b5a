"""DPoP test helpers: client keys and proofs, signed for real with PyJWT's algorithms.

``sign`` takes the header and claims as raw JSON text where a test needs JSON no encoder
would produce (duplicate members); ``proof`` builds a normal proof with overrides.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from gateway.auth.thumbprints import b64url, jwk_thumbprint

ALGORITHMS = get_default_algorithms()
_DROP = object()


@dataclass
class ClientKey:
    alg: str
    private: Any
    jwk: dict[str, Any]

    @property
    def jkt(self) -> str:
        return jwk_thumbprint(self.jwk)

    @property
    def private_jwk(self) -> dict[str, Any]:
        """The whole key pair as a JWK: what a careless client might put in ``jwk``."""
        return json.loads(ALGORITHMS[self.alg].to_jwk(self.private))


def client_key(alg: str = "ES256") -> ClientKey:
    if alg.startswith("ES"):
        curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
        private: Any = ec.generate_private_key(curve)
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(ALGORITHMS[alg].to_jwk(private.public_key()))
    return ClientKey(alg=alg, private=private, jwk=jwk)


def ath(token: str) -> str:
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def sign(header_json: str, claims_json: str, key: ClientKey, alg: str | None = None) -> str:
    signing_input = f"{b64url(header_json.encode())}.{b64url(claims_json.encode())}"
    signature = ALGORITHMS[alg or key.alg].sign(signing_input.encode(), key.private)
    return f"{signing_input}.{b64url(signature)}"


def proof(
    key: ClientKey,
    *,
    htm: str = "GET",
    htu: str = "https://api.example.com/orders/42",
    token: str | None = "access-token",  # noqa: S107 - a test value
    iat: float | None = None,
    jti: str | None = None,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
) -> str:
    """A valid proof; ``header``/``claims`` entries replace (or, with ``DROP``, remove) ones."""
    head: dict[str, Any] = {"typ": "dpop+jwt", "alg": key.alg, "jwk": key.jwk}
    body: dict[str, Any] = {
        "jti": jti or uuid.uuid4().hex,
        "htm": htm,
        "htu": htu,
        "iat": int(time.time()) if iat is None else iat,
    }
    if token is not None:
        body["ath"] = ath(token)
    for target, changes in ((head, header), (body, claims)):
        for name, value in (changes or {}).items():
            if value is _DROP:
                target.pop(name, None)
            else:
                target[name] = value
    return sign(json.dumps(head), json.dumps(body), key)


DROP: Any = _DROP
