"""JwtVerifier.parse: what counts as a JWT at all (NotMine) and which headers are refused."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm

from gateway.auth.jwks import KeySetProvider
from gateway.auth.jwt import JwtVerifier, NotMine, ParsedJwt
from gateway.auth.settings import IssuerSettings
from gateway.problems import InvalidToken
from tests.support.issuer import TestIssuer, b64url, encode_compact
from tests.support.settings import Issuer

ISS = "https://issuer.example/tenant"
AT_ISS = "https://at.example"
HMAC_ISS = "https://hmac.example"
SECRET = "s" * 40
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = {"keys": [RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True) | {"kid": "k1"}]}
CLAIMS = {"iss": ISS, "sub": "user-1", "aud": "api://x", "exp": 4_000_000_000}


def rs256(header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None) -> str:
    head = {"alg": "RS256", "kid": "k1"} | (header or {})
    return TestIssuer.sign(head, CLAIMS | (claims or {}), alg="RS256", key=KEY)


def hmac_issuer() -> Issuer:
    return Issuer(issuer=HMAC_ISS, audiences=["api://x"], algorithms=["HS256"], hmac_secret=SECRET)


@pytest.fixture
async def verifier() -> AsyncIterator[JwtVerifier]:
    plain = Issuer(issuer=ISS, keys={"jwks": JWKS}, audiences=["api://x"])
    typed = Issuer(issuer=AT_ISS, keys={"jwks": JWKS}, audiences=["api://x"], require_at_jwt=True)
    async with aiohttp.ClientSession() as session:
        providers = {i.key: KeySetProvider(i, session) for i in (plain, typed)}
        yield JwtVerifier([plain, typed, hmac_issuer()], providers)


def test_parse_returns_the_parts_decoded_once(verifier: JwtVerifier) -> None:
    token = rs256()
    parsed = verifier.parse(token)
    head, body, sig = token.split(".")
    assert parsed == ParsedJwt(
        header={"alg": "RS256", "kid": "k1"},
        payload=CLAIMS,
        signing_input=f"{head}.{body}".encode(),
        signature=parsed.signature,
        issuer_key=ISS,
    )
    assert b64url(parsed.signature) == sig and len(parsed.signature) == 256


def _segments(header: bytes, payload: bytes) -> str:
    return f"{b64url(header)}.{b64url(payload)}.{b64url(b'sig')}"


GOOD = rs256()
H, P, S = GOOD.split(".")
DUP_HEADER = b'{"alg":"RS256","kid":"k1","alg":"none"}'
DUP_PAYLOAD = json.dumps(CLAIMS).encode()[:-1] + b', "iss": "https://evil.example"}'

NOT_MINE = [
    pytest.param("", "malformed", id="empty"),
    pytest.param(f"{H}.{P}", "malformed", id="two-segments"),
    pytest.param(f"{H}.{P}.{S}.{S}", "malformed", id="four-segments"),
    pytest.param(f"{H}.{P}.{S}.{S}.{S}", "malformed", id="jwe-five-parts"),
    pytest.param(f"{H}.{P}=.{S}", "malformed", id="padding-in-segment"),
    pytest.param(f"{H}.{P}.{S}==", "malformed", id="padding-in-signature"),
    pytest.param(f"{H}.{P}.{S[:-2]}+/", "malformed", id="standard-base64-alphabet"),
    pytest.param(f"{H}.{P}.{S} ", "malformed", id="trailing-space"),
    pytest.param(f"{H}.{P}.{S}\n", "malformed", id="trailing-newline"),
    pytest.param(f"{H}.{P[:10]} {P[10:]}.{S}", "malformed", id="inner-space"),
    pytest.param(f"{H}.{P}.{S[:-1]}é", "malformed", id="non-ascii"),
    pytest.param(
        f"{H}.{P}.{S}" + "A" * ((1 - len(S)) % 4), "malformed", id="impossible-base64-length"
    ),
    pytest.param(f".{P}.{S}", "malformed", id="empty-header"),
    pytest.param(
        json.dumps({"payload": P, "protected": H, "signature": S}),
        "malformed",
        id="json-serialisation",
    ),
    pytest.param(
        _segments(b"not json", json.dumps(CLAIMS).encode()), "malformed", id="header-not-json"
    ),
    pytest.param(
        _segments(b'["RS256"]', json.dumps(CLAIMS).encode()), "malformed", id="header-array"
    ),
    pytest.param(
        _segments(b"\xff\xfe{}", json.dumps(CLAIMS).encode()), "malformed", id="header-not-utf8"
    ),
    pytest.param(
        _segments(b'{"alg":"RS256"}', b'"just a string"'), "malformed", id="payload-string"
    ),
    pytest.param(
        _segments(DUP_HEADER, json.dumps(CLAIMS).encode()),
        "malformed",
        id="duplicate-json-keys-header",
    ),
    pytest.param(
        _segments(b'{"alg":"RS256"}', DUP_PAYLOAD), "malformed", id="duplicate-json-keys-payload"
    ),
    pytest.param(
        _segments(b'{"alg":"RS256"}', json.dumps(CLAIMS | {"exp": float("nan")}).encode()),
        "malformed",
        id="nan-constant",
    ),
    pytest.param(rs256(claims={"iss": "https://evil.example"}), "bad_issuer", id="unknown-iss"),
    pytest.param(rs256(claims={"iss": ISS + "/"}), "bad_issuer", id="iss-trailing-slash"),
    pytest.param(rs256(claims={"iss": ISS.upper()}), "bad_issuer", id="iss-other-case"),
    pytest.param(rs256(claims={"iss": [ISS]}), "bad_issuer", id="iss-array"),
    pytest.param(rs256(claims={"iss": None}), "bad_issuer", id="iss-null"),
    pytest.param(_segments(b'{"alg":"RS256"}', b'{"sub":"x"}'), "bad_issuer", id="iss-missing"),
]


@pytest.mark.parametrize(("token", "reason"), NOT_MINE)
def test_not_a_jwt_from_a_trusted_issuer(verifier: JwtVerifier, token: str, reason: str) -> None:
    with pytest.raises(NotMine) as caught:
        verifier.parse(token)
    assert caught.value.reason == reason


BROKEN_HEADERS = [
    pytest.param(ISS, {"alg": "none"}, "bad_algorithm", id="alg-none"),
    pytest.param(ISS, {"alg": "NoNe"}, "bad_algorithm", id="alg-NoNe"),
    pytest.param(ISS, {"alg": "NONE"}, "bad_algorithm", id="alg-NONE"),
    pytest.param(ISS, {"alg": "RS384"}, "bad_algorithm", id="alg-not-configured"),
    pytest.param(ISS, {"alg": "HS256"}, "bad_algorithm", id="hs256-without-hmac-secret"),
    pytest.param(ISS, {"alg": "ES256K"}, "bad_algorithm", id="alg-unknown"),
    pytest.param(ISS, {"alg": "rs256"}, "bad_algorithm", id="alg-wrong-case"),
    pytest.param(ISS, {"alg": None}, "malformed", id="alg-missing"),
    pytest.param(ISS, {"alg": ["RS256"]}, "malformed", id="alg-array"),
    pytest.param(ISS, {"crit": ["exp"]}, "malformed", id="crit-unknown"),
    pytest.param(ISS, {"crit": ["b64"], "b64": False}, "malformed", id="crit-b64-unencoded"),
    pytest.param(ISS, {"kid": 1}, "malformed", id="kid-not-string"),
    pytest.param(HMAC_ISS, {"alg": "RS256"}, "bad_algorithm", id="rs256-at-hmac-only-issuer"),
    pytest.param(AT_ISS, {}, "bad_type", id="typ-missing-at-jwt-required"),
    pytest.param(AT_ISS, {"typ": "JWT"}, "bad_type", id="typ-jwt-at-jwt-required"),
    pytest.param(AT_ISS, {"typ": "at+jwt+x"}, "bad_type", id="typ-lookalike"),
    pytest.param(AT_ISS, {"typ": ["at+jwt"]}, "bad_type", id="typ-array"),
]


@pytest.mark.parametrize(("iss", "header", "reason"), BROKEN_HEADERS)
def test_known_issuer_with_a_broken_header_is_invalid(
    verifier: JwtVerifier, iss: str, header: dict[str, Any], reason: str
) -> None:
    head = {k: v for k, v in ({"alg": "RS256", "kid": "k1"} | header).items() if v is not None}
    token = encode_compact(head, CLAIMS | {"iss": iss}, b"signature")
    with pytest.raises(InvalidToken) as caught:
        verifier.parse(token)
    assert caught.value.reason == reason
    assert "user-1" not in caught.value.detail and token not in caught.value.detail


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/At+Jwt"])
def test_at_jwt_type_is_accepted_in_any_case(verifier: JwtVerifier, typ: str) -> None:
    token = rs256({"typ": typ}, {"iss": AT_ISS})
    assert verifier.parse(token).issuer_key == AT_ISS


def test_headers_naming_keys_elsewhere_are_ignored_not_refused(verifier: JwtVerifier) -> None:
    header = {"jku": "https://evil.example/jwks", "x5u": "https://evil.example/c",
              "jwk": {"kty": "oct", "k": "AA"}, "x5c": ["AA"]}  # fmt: skip
    assert verifier.parse(rs256(header)).header["jku"] == "https://evil.example/jwks"


def test_unsigned_token_is_refused_with_an_empty_signature(verifier: JwtVerifier) -> None:
    token = encode_compact({"alg": "none"}, CLAIMS, b"")
    assert token.endswith(".")
    with pytest.raises(InvalidToken) as caught:
        verifier.parse(token)
    assert caught.value.reason == "bad_algorithm" and "Unsigned" in caught.value.detail


@pytest.mark.parametrize(
    ("issuers", "message"),
    [
        pytest.param([hmac_issuer(), hmac_issuer()], "share", id="duplicate-issuer"),
        pytest.param(
            [Issuer(issuer=ISS, audiences=["a"])], "no keys", id="public-key-issuer-without-keys"
        ),
        pytest.param(
            [
                IssuerSettings(
                    key=HMAC_ISS, issuer=HMAC_ISS, audiences=("a",), algorithms=("HS256",)
                )
            ],
            "without an hmac_secret",
            id="hmac-without-secret-bypassing-the-schema",
        ),
    ],
)
def test_construction_refuses_unsafe_issuers(issuers: list[IssuerSettings], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JwtVerifier(issuers, {})


HMAC_ONLY = JwtVerifier([hmac_issuer()], {})


@given(
    st.text(max_size=300)
    | st.from_regex(r"[A-Za-z0-9_-]{0,40}(\.[A-Za-z0-9_-]{0,40}){2}", fullmatch=True)
)
def test_parse_fails_only_with_its_own_errors(token: str) -> None:
    with contextlib.suppress(NotMine, InvalidToken):
        HMAC_ONLY.parse(token)


def test_the_accepted_access_token_types_are_exactly_those_tested() -> None:
    from gateway.auth import jwt as module

    assert {"at+jwt", "application/at+jwt"} == module._AT_JWT_TYPES


@pytest.mark.parametrize("signature", ["AAAAAB", "AAAAAAB", "AB", "AAB"])
def test_non_canonical_base64url_is_malformed(verifier: JwtVerifier, signature: str) -> None:
    """RFC 4648 §3.5: unused trailing bits must be zero, so one token has one spelling."""
    head, body, _ = rs256().split(".")
    with pytest.raises(NotMine) as exc:
        verifier.parse(f"{head}.{body}.{signature}")
    assert exc.value.reason == "malformed"
