"""RFC 9449 §4.3: the reason code (metrics label, access-log reason) of each refusal that
test_dpop.py's attack table does not reach, and the inclusive edges of the size limits.

Every row builds its proof inside the test: mutmut's trampolined module is only seen by
code run at test time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth.dpop import DpopPolicy, VerifiedProof, read_dpop_token, validate_proof
from gateway.auth.dpop_errors import InvalidDpopProof
from gateway.problems import InvalidToken
from tests.support.dpop import ALGORITHMS, ClientKey, client_key, proof

URI = "https://api.example.com/orders/42"
TOKEN = "access-token"


@pytest.fixture(scope="module")
def key() -> ClientKey:
    return client_key("ES256")


def _check(headers: list[str], key: ClientKey, **overrides: Any) -> VerifiedProof:
    arguments: dict[str, Any] = {
        "method": "GET",
        "uri": URI,
        "access_token": TOKEN,
        "bound_jkt": key.jkt,
        "policy": DpopPolicy(),
        "now": time.time(),
    }
    arguments.update(overrides)
    return validate_proof(headers, **arguments)


def _short_rsa_key() -> ClientKey:
    """RFC 9449 §4.3 item 6 leaves key strength to policy; NIST SP 800-131A: RSA < 2048 bits
    is no longer acceptable for signatures."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key under test
    jwk = json.loads(ALGORITHMS["RS256"].to_jwk(private.public_key()))
    return ClientKey(alg="RS256", private=private, jwk=jwk)


def _with_signature(signed: str, signature: str) -> str:
    return signed[: signed.rindex(".") + 1] + signature


def _short_rsa(_: ClientKey) -> tuple[list[str], dict[str, Any]]:
    signer = _short_rsa_key()
    return [proof(signer)], {"bound_jkt": signer.jkt}


Case = Callable[[ClientKey], tuple[list[str], dict[str, Any]]]
# One row per refusal: how the proof (or the request) is changed, and the reason expected.
REFUSALS: dict[str, tuple[Case, str]] = {
    "rsa-key-under-2048-bits": (_short_rsa, "dpop_key"),
    "non-ascii-access-token": (
        lambda k: ([proof(k)], {"access_token": "tök\u00e9n"}),
        "dpop_ath",
    ),
    # The compact-JWS pattern lets these through; base64url decoding refuses them.
    "signature-impossible-length": (
        lambda k: ([_with_signature(proof(k), "A")], {}),
        "dpop_malformed",
    ),
    "signature-non-canonical": (
        lambda k: ([_with_signature(proof(k), "AB")], {}),
        "dpop_malformed",
    ),
    # RFC 9110 §5.5: only SP and HTAB are optional whitespace around a field value.
    "vertical-tab-after-proof": (lambda k: ([proof(k) + "\x0b"], {}), "dpop_malformed"),
    "newline-after-proof": (lambda k: ([proof(k) + "\n"], {}), "dpop_malformed"),
    "no-break-space-before-proof": (lambda k: (["\u00a0" + proof(k)], {}), "dpop_malformed"),
    # A base64url character outside the whitespace is part of the signature, never trimmed.
    "letter-after-signature": (lambda k: ([proof(k) + "X"], {}), "dpop_malformed"),
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal_names_its_reason(case: tuple[Case, str], key: ClientKey) -> None:
    build, reason = case
    headers, overrides = build(key)
    with pytest.raises(InvalidDpopProof) as refused:
        _check(headers, key, **overrides)
    assert refused.value.reason == reason
    assert refused.value.status == 401


def test_a_proof_of_exactly_the_size_limit_is_accepted(key: ClientKey) -> None:
    signed = proof(key)
    assert _check([signed], key, policy=DpopPolicy(max_proof_bytes=len(signed))).jkt == key.jkt
    with pytest.raises(InvalidDpopProof) as refused:
        _check([signed], key, policy=DpopPolicy(max_proof_bytes=len(signed) - 1))
    assert refused.value.reason == "dpop_oversized"


def test_a_jti_of_exactly_the_length_limit_is_accepted(key: ClientKey) -> None:
    policy = DpopPolicy(max_jti_length=20)
    assert _check([proof(key, jti="j" * 20)], key, policy=policy).jti == "j" * 20
    with pytest.raises(InvalidDpopProof) as refused:
        _check([proof(key, jti="j" * 21)], key, policy=policy)
    assert refused.value.reason == "dpop_claims"


def test_a_dpop_token_of_exactly_the_size_limit_is_accepted() -> None:
    assert read_dpop_token(["DPoP " + "a" * 100], max_size=100) == "a" * 100


def test_an_oversized_dpop_token_names_its_reason() -> None:
    with pytest.raises(InvalidToken) as refused:
        read_dpop_token(["DPoP " + "a" * 101], max_size=100)
    assert refused.value.reason == "oversized"
    assert refused.value.status == 401
