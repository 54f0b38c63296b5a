"""RFC 7638 JWK thumbprints and RFC 8705 certificate thumbprints against the RFCs' examples."""

from __future__ import annotations

import hashlib

import pytest

from gateway.auth.thumbprints import (
    b64url,
    b64url_decode,
    certificate_thumbprint,
    jwk_thumbprint,
)
from tests.support.dpop import client_key

# RFC 7638 §3.1: the RSA key of RFC 7517 Appendix A.1, and its thumbprint.
RFC7638_KEY = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
    "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2"
    "QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6W"
    "eZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
# RFC 9449 Figure 4's proof key and the jkt of Figure 9.
RFC9449_KEY = {
    "kty": "EC",
    "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
    "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
    "crv": "P-256",
}


def test_rfc7638_example() -> None:
    assert jwk_thumbprint(RFC7638_KEY) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_rfc9449_example() -> None:
    assert jwk_thumbprint(RFC9449_KEY) == "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


def test_only_required_members_count_and_their_order_does_not() -> None:
    decorated = {"use": "sig", "key_ops": ["verify"], **dict(reversed(RFC9449_KEY.items()))}
    assert jwk_thumbprint(decorated) == jwk_thumbprint(RFC9449_KEY)


def test_okp_uses_crv_kty_x() -> None:
    # RFC 8037 §A.3: the Ed25519 key of §A.2 has this thumbprint.
    key = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert jwk_thumbprint(key) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_generated_keys_have_43_character_thumbprints(alg: str) -> None:
    assert len(jwk_thumbprint(client_key(alg).jwk)) == 43


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "oct", "k": "AAAA"},
        {"kty": "EC", "crv": "P-256", "x": "AAAA"},
        {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": 5},
        {"kty": "RSA", "n": 'a"b', "e": "AQAB"},
        {"kty": "RSA", "n": "", "e": "AQAB"},
        {"kty": ["RSA"]},
        {},
    ],
    ids=["oct", "missing-y", "y-not-string", "quote-in-n", "empty-n", "kty-list", "empty"],
)
def test_malformed_keys_are_value_errors(jwk: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        jwk_thumbprint(jwk)


def test_certificate_thumbprint_is_base64url_sha256_of_the_der() -> None:
    der = b"\x30\x03\x02\x01\x01"
    assert certificate_thumbprint(der) == b64url(hashlib.sha256(der).digest())
    assert "=" not in certificate_thumbprint(der)


@pytest.mark.parametrize("segment", ["QQ=", "QR", "Q", "QQ==", "Q+/A", "QQ\n"])
def test_b64url_decode_accepts_only_the_canonical_unpadded_spelling(segment: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(segment)


def test_b64url_round_trip() -> None:
    for data in (b"", b"A", b"AB", b"ABC", bytes(range(256))):
        assert b64url_decode(b64url(data)) == data
