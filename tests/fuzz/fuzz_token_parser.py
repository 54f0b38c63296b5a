"""Fuzz target: JWT parsing and validation (RFC 7515 §5.2, RFC 7519 §7.2, RFC 8725 §3).

Whatever a client sends as a bearer token, ``JwtVerifier.parse`` and ``verify`` may only fail
with ``NotMine``, ``InvalidToken`` or ``ServiceUnavailable`` (``verify`` reports ``NotMine``
as ``InvalidToken``); anything else would become a 500, or worse, on the request path. An
accepted token must name a configured issuer and audience and must not be expired.

The first byte of an input picks how the rest is used, so a fuzzer can reach the claim checks
behind the signature:

* ``S`` - ``header JSON \\n claims JSON``, HS256-signed here with the HMAC issuer's secret;
* ``K`` - ``header JSON \\n claims JSON``, ES256-signed here with the static key's private half;
* anything else - the bytes (latin-1) are the token itself.

Run with ``python tests/fuzz/fuzz_token_parser.py CORPUS_DIR -max_total_time=600``; see
tests/fuzz/README.md. ``check_token`` is importable without atheris, for regression tests.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import hashlib
import hmac
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

if __name__ == "__main__":
    import atheris

    _instrumentation: Any = atheris.instrument_imports(include=["gateway"])
else:
    _instrumentation = contextlib.nullcontext()

with _instrumentation:
    import aiohttp
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm, get_default_algorithms

    from gateway.auth.jwks import KeySetProvider
    from gateway.auth.jwt import JwtVerifier
    from gateway.problems import InvalidToken, ServiceUnavailable
    from tests.support.settings import Issuer

HMAC_ISS = "https://hmac.example"
KEYS_ISS = "https://keys.example"
AUDIENCE = "api://fuzz"
SECRET = b"fuzz-secret-" * 4
EC_KEY = ec.derive_private_key(0x5EED, ec.SECP256R1())
KID = "k1"
LEEWAY = 30.0


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _verifier(loop: asyncio.AbstractEventLoop) -> JwtVerifier:
    """Built inside the loop (the provider needs a session); static keys need no network."""
    jwk = ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True) | {"kid": KID, "alg": "ES256"}
    issuers = [
        Issuer(issuer=HMAC_ISS, audiences=[AUDIENCE], algorithms=["HS256"],
               hmac_secret=SECRET.decode(), leeway=LEEWAY),
        Issuer(issuer=KEYS_ISS, audiences=[AUDIENCE], keys={"jwks": {"keys": [jwk]}},
               algorithms=["ES256", "RS256"], require_at_jwt=True, leeway=LEEWAY),
    ]  # fmt: skip

    async def build() -> JwtVerifier:
        async with aiohttp.ClientSession() as session:
            provider = KeySetProvider(issuers[1], session)
            await provider.start()
        return JwtVerifier(issuers, {issuers[1].key: provider})

    return loop.run_until_complete(build())


_LOOP = asyncio.new_event_loop()
atexit.register(_LOOP.close)
_VERIFIER = _verifier(_LOOP)
_ES256 = get_default_algorithms()["ES256"]


def token_from(data: bytes) -> str:
    """The token an input stands for (see the module docstring)."""
    mode, rest = data[:1], data[1:]
    if mode in (b"S", b"K"):
        header, _, payload = rest.partition(b"\n")
        signing_input = _b64url(header) + b"." + _b64url(payload)
        if mode == b"S":
            signature = hmac.new(SECRET, signing_input, hashlib.sha256).digest()
        else:
            signature = _ES256.sign(signing_input, EC_KEY)
        return (signing_input + b"." + _b64url(signature)).decode("ascii")
    return data.decode("latin-1")


def check_token(data: bytes) -> None:
    """Raise (so the fuzzer reports a crash) unless the outcome is one the gateway allows."""
    token = token_from(data)
    try:
        # verify() runs parse() first and turns its NotMine into InvalidToken.
        identity = _LOOP.run_until_complete(_VERIFIER.verify(token))
    except (InvalidToken, ServiceUnavailable):
        return
    if identity.issuer not in (HMAC_ISS, KEYS_ISS):
        raise AssertionError(f"accepted a token from {identity.issuer!r}")
    if AUDIENCE not in identity.audiences:
        raise AssertionError(f"accepted a token for {identity.audiences!r}")
    exp = identity.claims.get("exp")
    if exp is not None and exp <= time.time() - LEEWAY - 1:
        raise AssertionError(f"accepted an expired token (exp={exp!r})")


def main() -> None:
    atheris.Setup(sys.argv, check_token)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
