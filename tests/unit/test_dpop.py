"""RFC 9449 §4.3 proof validation: the RFC's own examples, then one attack per check."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth import dpop
from gateway.auth.dpop import (
    DpopPolicy,
    VerifiedProof,
    access_token_hash,
    read_dpop_token,
    replay_key,
    validate_proof,
)
from gateway.auth.dpop_errors import InvalidDpopProof, InvalidDpopToken, UseDpopNonce
from gateway.auth.replay import MemoryReplayStore
from gateway.auth.thumbprints import b64url
from gateway.problems import InvalidRequest, InvalidToken
from tests.support.dpop import DROP, ClientKey, client_key, proof, sign

# RFC 9449 Figure 2 (token request) and Figure 13 (resource request), "\" wrapping removed.
RFC_TOKEN_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0Vj"
    "NoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5"
    "VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVC"
    "IsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP"
    "4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg"
)
RFC_RESOURCE_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0Vj"
    "NoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5"
    "VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIi"
    "wiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2Mj"
    "YxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtN"
    "P86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA"
)
RFC_ACCESS_TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"  # Figure 6
RFC_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"  # Figure 9
RFC_ATH = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"  # Figure 14

POLICY = DpopPolicy()
URI = "https://api.example.com/orders/42"
TOKEN = "access-token"


def test_rfc_token_request_proof_verifies() -> None:
    result = validate_proof(
        [RFC_TOKEN_PROOF],
        method="POST",
        uri="https://server.example.com/token",
        access_token=None,
        bound_jkt=None,
        policy=POLICY,
        now=1562262616,
    )
    assert result == VerifiedProof(
        jkt=RFC_JKT,
        jti="-BwC3ESc6acc2lTc",
        replay_key=replay_key(RFC_JKT, "-BwC3ESc6acc2lTc"),
        replay_ttl=POLICY.max_age + POLICY.leeway,
    )


def test_rfc_resource_request_proof_verifies_with_ath_and_jkt() -> None:
    result = validate_proof(
        [RFC_RESOURCE_PROOF],
        method="GET",
        uri="https://resource.example.org/protectedresource",
        access_token=RFC_ACCESS_TOKEN,
        bound_jkt=RFC_JKT,
        policy=POLICY,
        now=1562262618 + 10,
    )
    assert (result.jkt, result.jti, result.replay_ttl) == (RFC_JKT, "e1j3V_bKic8-LAEB", 55.0)


def test_rfc_ath_example() -> None:
    assert access_token_hash(RFC_ACCESS_TOKEN) == RFC_ATH


def test_rfc_resource_proof_is_refused_for_another_token_or_key() -> None:
    common: dict[str, Any] = {
        "method": "GET",
        "uri": "https://resource.example.org/protectedresource",
        "policy": POLICY,
        "now": 1562262618,
    }
    with pytest.raises(InvalidDpopProof, match="another access token") as error:
        validate_proof([RFC_RESOURCE_PROOF], access_token="other", bound_jkt=RFC_JKT, **common)
    assert error.value.reason == "dpop_ath"
    with pytest.raises(InvalidDpopToken, match="Invalid DPoP key binding"):
        validate_proof(
            [RFC_RESOURCE_PROOF], access_token=RFC_ACCESS_TOKEN, bound_jkt="A" * 43, **common
        )


@pytest.fixture(scope="module")
def key() -> ClientKey:
    return client_key("ES256")


def check(headers: list[str], key: ClientKey, **overrides: Any) -> VerifiedProof:
    arguments: dict[str, Any] = {
        "method": "GET",
        "uri": URI,
        "access_token": TOKEN,
        "bound_jkt": key.jkt,
        "policy": POLICY,
        "now": time.time(),
    }
    arguments.update(overrides)
    return validate_proof(headers, **arguments)


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "RS256", "PS256", "EdDSA"])
def test_every_default_and_listed_algorithm_verifies(alg: str) -> None:
    signer = client_key(alg)
    policy = DpopPolicy(algorithms=("ES256", "ES384", "ES512", "RS256", "PS256", "EdDSA"))
    result = check([proof(signer)], signer, policy=policy)
    assert result.jkt == signer.jkt


def test_a_fresh_proof_returns_what_to_record(key: ClientKey) -> None:
    now = 1_700_000_000.0
    result = check([proof(key, jti="j-1", iat=now - 20)], key, now=now)
    assert result.jti == "j-1"
    assert result.replay_key == replay_key(key.jkt, "j-1")
    assert result.replay_ttl == pytest.approx(45.0)


def test_uri_comparison_is_normalised_and_ignores_the_query(key: ClientKey) -> None:
    signed = proof(key, htu="HTTPS://API.example.com:443/orders/./42?x=1#f")
    check([signed], key, uri="https://api.example.com/orders/%34%32?y=2")


def _raw(key: ClientKey, header: str, claims: str) -> str:
    return sign(header, claims, key)


def _claims(**extra: Any) -> str:
    body = {
        "jti": "j",
        "htm": "GET",
        "htu": URI,
        "iat": int(time.time()),
        "ath": access_token_hash(TOKEN),
    }
    body.update(extra)
    return json.dumps(body)


def _header(key: ClientKey, **extra: Any) -> str:
    return json.dumps({"typ": "dpop+jwt", "alg": key.alg, "jwk": key.jwk, **extra})


Case = Callable[[ClientKey], tuple[list[str], dict[str, Any]]]
ATTACKS: dict[str, tuple[Case, str]] = {
    "no-proof": (lambda k: ([], {}), "dpop_missing"),
    "two-dpop-headers": (lambda k: ([proof(k), proof(k)], {}), "dpop_multiple"),
    "oversized": (lambda k: ([proof(k, claims={"pad": "x" * 9000})], {}), "dpop_oversized"),
    "not-a-jws": (lambda k: (["not.a-jws"], {}), "dpop_malformed"),
    "bad-base64": (lambda k: (["e30.e30.!!"], {}), "dpop_malformed"),
    "padded-base64": (lambda k: ([proof(k).replace(".", "=.", 1)], {}), "dpop_malformed"),
    "non-canonical-base64": (
        lambda k: ([proof(k).split(".")[0] + ".eyJhIjoxfR." + "AB"], {}),
        "dpop_malformed",
    ),
    "header-not-json": (lambda k: ([b64url(b"{nope") + ".e30.AA"], {}), "dpop_malformed"),
    "header-not-object": (lambda k: ([b64url(b"[1]") + ".e30.AA"], {}), "dpop_malformed"),
    "duplicate-header-member": (
        lambda k: ([_raw(k, _header(k)[:-1] + ',"typ":"jwt"}', _claims())], {}),
        "dpop_malformed",
    ),
    "duplicate-claim": (
        lambda k: ([_raw(k, _header(k), _claims()[:-1] + ', "htm": "POST"}')], {}),
        "dpop_malformed",
    ),
    "deeply-nested": (
        lambda k: ([_raw(k, _header(k), _claims(x=[[[[[]]]]]))], {}),
        "dpop_malformed",
    ),
    "typ-jwt": (lambda k: ([proof(k, header={"typ": "JWT"})], {}), "dpop_type"),
    "typ-at+jwt": (lambda k: ([proof(k, header={"typ": "at+jwt"})], {}), "dpop_type"),
    "typ-missing": (lambda k: ([proof(k, header={"typ": DROP})], {}), "dpop_type"),
    "alg-none": (lambda k: ([_unsigned(k)], {}), "dpop_algorithm"),
    "alg-hs256": (lambda k: ([_hs256(k)], {}), "dpop_algorithm"),
    "alg-not-allowed": (
        lambda k: ([proof(k)], {"policy": DpopPolicy(algorithms=("RS256",))}),
        "dpop_algorithm",
    ),
    "alg-not-string": (lambda k: ([proof(k, header={"alg": 1})], {}), "dpop_algorithm"),
    "crit": (lambda k: ([proof(k, header={"crit": ["exp"]})], {}), "dpop_malformed"),
    "no-jwk": (lambda k: ([proof(k, header={"jwk": DROP})], {}), "dpop_key"),
    "jwk-not-object": (lambda k: ([proof(k, header={"jwk": "key"})], {}), "dpop_key"),
    "private-key-in-jwk": (
        lambda k: ([proof(k, header={"jwk": {**k.jwk, "d": "AAAA"}})], {}),
        "dpop_key",
    ),
    "whole-key-pair-in-jwk": (
        lambda k: ([proof(k, header={"jwk": k.private_jwk})], {}),
        "dpop_key",
    ),
    "rsa-key-pair-in-jwk": (lambda k: ([_rsa_pair()], {}), "dpop_key"),
    "symmetric-key-in-jwk": (
        lambda k: ([proof(k, header={"jwk": {"kty": "oct", "k": "AAAA"}})], {}),
        "dpop_key",
    ),
    "jwk-crv-list": (
        lambda k: ([proof(k, header={"jwk": {**k.jwk, "crv": ["P-256"]}})], {}),
        "dpop_key",
    ),
    "jwk-kty-list": (
        lambda k: ([proof(k, header={"jwk": {**k.jwk, "kty": ["EC"]}})], {}),
        "dpop_key",
    ),
    "jwk-x-number": (lambda k: ([proof(k, header={"jwk": {**k.jwk, "x": 5}})], {}), "dpop_key"),
    "jwk-wrong-curve": (
        lambda k: ([proof(k, header={"jwk": client_key("ES384").jwk})], {}),
        "dpop_key",
    ),
    "jwk-wrong-type": (
        lambda k: ([proof(k, header={"jwk": client_key("EdDSA").jwk})], {}),
        "dpop_key",
    ),
    "jwk-for-encryption": (
        lambda k: ([proof(k, header={"jwk": {**k.jwk, "use": "enc"}})], {}),
        "dpop_key",
    ),
    "jwk-other-alg": (
        lambda k: ([proof(k, header={"jwk": {**k.jwk, "alg": "ES384"}})], {}),
        "dpop_key",
    ),
    "jwk-point-off-curve": (
        lambda k: ([proof(k, header={"jwk": {**k.jwk, "y": k.jwk["x"]}})], {}),
        "dpop_key",
    ),
    "foreign-key-signature": (
        lambda k: ([proof(k, header={"jwk": client_key("ES256").jwk})], {}),
        "dpop_signature",
    ),
    "tampered-claims": (lambda k: ([_tampered(k)], {}), "dpop_signature"),
    "no-jti": (lambda k: ([proof(k, claims={"jti": DROP})], {}), "dpop_claims"),
    "jti-not-string": (lambda k: ([proof(k, claims={"jti": 7})], {}), "dpop_claims"),
    "jti-empty": (lambda k: ([proof(k, claims={"jti": ""})], {}), "dpop_claims"),
    "jti-too-long": (lambda k: ([proof(k, jti="j" * 257)], {}), "dpop_claims"),
    "no-htm": (lambda k: ([proof(k, claims={"htm": DROP})], {}), "dpop_claims"),
    "wrong-htm": (lambda k: ([proof(k, htm="POST")], {}), "dpop_htm"),
    "htm-lowercase": (lambda k: ([proof(k, htm="get")], {}), "dpop_htm"),
    "no-htu": (lambda k: ([proof(k, claims={"htu": DROP})], {}), "dpop_claims"),
    "htu-list": (lambda k: ([proof(k, claims={"htu": [URI]})], {}), "dpop_claims"),
    "wrong-htu-path": (
        lambda k: ([proof(k, htu="https://api.example.com/orders/43")], {}),
        "dpop_htu",
    ),
    "wrong-htu-host": (
        lambda k: ([proof(k, htu="https://evil.example.com/orders/42")], {}),
        "dpop_htu",
    ),
    "wrong-htu-scheme": (
        lambda k: ([proof(k, htu="http://api.example.com/orders/42")], {}),
        "dpop_htu",
    ),
    "wrong-htu-port": (
        lambda k: ([proof(k, htu="https://api.example.com:8443/orders/42")], {}),
        "dpop_htu",
    ),
    "htu-relative": (lambda k: ([proof(k, htu="/orders/42")], {}), "dpop_htu"),
    "no-iat": (lambda k: ([proof(k, claims={"iat": DROP})], {}), "dpop_claims"),
    "iat-string": (
        lambda k: ([proof(k, claims={"iat": str(int(time.time()))})], {}),
        "dpop_claims",
    ),
    "iat-boolean": (lambda k: ([proof(k, claims={"iat": True})], {}), "dpop_claims"),
    "iat-huge-integer": (lambda k: ([_raw(k, _header(k), _claims(iat=10**400))], {}), "dpop_iat"),
    "iat-infinite": (
        lambda k: ([_raw(k, _header(k), _claims(iat=0).replace('"iat": 0', '"iat": 1e400'))], {}),
        "dpop_iat",
    ),
    "expired-iat": (lambda k: ([proof(k, iat=time.time() - 61)], {}), "dpop_iat"),
    "future-iat": (lambda k: ([proof(k, iat=time.time() + 6)], {}), "dpop_iat"),
    "no-ath": (lambda k: ([proof(k, token=None)], {}), "dpop_claims"),
    "wrong-ath": (lambda k: ([proof(k, token="another-token")], {}), "dpop_ath"),
    "ath-not-string": (lambda k: ([proof(k, claims={"ath": 1})], {}), "dpop_claims"),
    "foreign-key-binding": (
        lambda k: ([proof(k)], {"bound_jkt": client_key().jkt}),
        "dpop_binding",
    ),
    "nonce-missing": (lambda k: ([proof(k)], {"nonces": ("n-1",)}), "dpop_nonce"),
    "nonce-stale": (
        lambda k: ([proof(k, claims={"nonce": "n-0"})], {"nonces": ("n-1",)}),
        "dpop_nonce",
    ),
}


def _unsigned(key: ClientKey) -> str:
    """``alg: none`` with an empty signature (RFC 7515 §A.5's unsecured form)."""
    header = b64url(_header(key, alg="none").encode())
    return f"{header}.{b64url(_claims().encode())}."


def _rsa_pair() -> str:
    signer = client_key("RS256")
    return proof(signer, header={"jwk": signer.private_jwk})


def _hs256(key: ClientKey) -> str:
    header = b64url(_header(key, alg="HS256").encode())
    claims = b64url(_claims().encode())
    mac = hmac.new(b"k" * 32, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64url(mac)}"


def _tampered(key: ClientKey) -> str:
    header, _, signature = proof(key).split(".")
    return f"{header}.{b64url(_claims(jti='other').encode())}.{signature}"


@pytest.mark.parametrize("case", ATTACKS.values(), ids=ATTACKS.keys())
def test_attack_is_refused_with_a_precise_reason(case: tuple[Case, str], key: ClientKey) -> None:
    build, reason = case
    headers, overrides = build(key)
    with pytest.raises(InvalidToken) as refused:  # InvalidDpopProof, or InvalidDpopToken
        check(headers, key, **overrides)
    assert refused.value.reason == reason, refused.value.detail
    assert refused.value.status == 401


def test_binding_mismatch_is_invalid_token_not_invalid_proof(key: ClientKey) -> None:
    with pytest.raises(InvalidDpopToken) as refused:
        check([proof(key)], key, bound_jkt=client_key().jkt)
    assert refused.value.error_code == "invalid_token"
    assert 'error="invalid_token"' in refused.value.challenge("gw")


def test_nonce_is_required_and_handed_out(key: ClientKey) -> None:
    with pytest.raises(UseDpopNonce) as refused:
        check([proof(key)], key, nonces=("current", "previous"))
    assert refused.value.extra_headers()["DPoP-Nonce"] == "current"
    assert refused.value.challenge("gw").startswith('DPoP realm="gw", error="use_dpop_nonce"')
    for accepted in ("current", "previous"):
        check([proof(key, claims={"nonce": accepted})], key, nonces=("current", "previous"))


def test_leading_and_trailing_whitespace_of_the_field_is_not_part_of_the_proof(
    key: ClientKey,
) -> None:
    check([" " + proof(key) + "\t"], key)


def test_no_access_token_means_no_ath_check(key: ClientKey) -> None:
    check([proof(key, token=None)], key, access_token=None, bound_jkt=None)


def test_policy_refuses_symmetric_or_unknown_algorithms() -> None:
    for algorithms in (("HS256",), ("none",), ()):
        with pytest.raises(ValueError):
            DpopPolicy(algorithms=algorithms)


def test_iat_window_edges(key: ClientKey) -> None:
    now = 1_700_000_000.0
    check([proof(key, iat=now - 60)], key, now=now)
    check([proof(key, iat=now + 5)], key, now=now)
    result = check([proof(key, iat=now + 5.0)], key, now=now)
    assert result.replay_ttl == pytest.approx(70.0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_any_header_text_is_refused_as_a_proof_never_a_crash(text: str) -> None:
    with pytest.raises(InvalidToken):
        validate_proof(
            [text],
            method="GET",
            uri=URI,
            access_token=TOKEN,
            bound_jkt=None,
            policy=POLICY,
            now=time.time(),
        )


@settings(max_examples=200)
@given(
    st.dictionaries(st.sampled_from(["typ", "alg", "jwk", "crit", "kid"]), json_values),
    st.dictionaries(st.sampled_from(["jti", "htm", "htu", "iat", "ath", "nonce"]), json_values),
)
def test_any_signed_json_is_accepted_or_refused_never_a_crash(
    header: dict[str, Any], claims: dict[str, Any]
) -> None:
    signer = _FUZZ_KEY
    try:
        validate_proof(
            [sign(json.dumps(header), json.dumps(claims), signer)],
            method="GET",
            uri=URI,
            access_token=TOKEN,
            bound_jkt=None,
            policy=POLICY,
            now=time.time(),
            nonces=("n",),
        )
    except InvalidToken:
        return
    raise AssertionError("a proof without a valid typ/alg/jwk was accepted")


_FUZZ_KEY = client_key("ES256")


@pytest.mark.parametrize(
    ("values", "token"),
    [
        (["DPoP Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"], RFC_ACCESS_TOKEN),
        (["dpop  abc=="], "abc=="),
        (["\tDPOP\tabc "], "abc"),
        (["Bearer abc"], None),
        (["DPoPish abc"], None),
        ([], None),
        (["DPoP a", "DPoP b"], None),  # ambiguous: bearer.read_token refuses two fields
    ],
    ids=["rfc-figure-13", "case-and-spaces", "tabs", "bearer", "other-scheme", "none", "two"],
)
def test_read_dpop_token(values: list[str], token: str | None) -> None:
    assert read_dpop_token(values, max_size=100) == token


@pytest.mark.parametrize("value", ["DPoP", "DPoP ", "DPoP a b", "DPoP a,b", "DPoP é"])
def test_malformed_dpop_credentials_are_invalid_requests(value: str) -> None:
    with pytest.raises(InvalidRequest):
        read_dpop_token([value], max_size=100)


def test_oversized_dpop_token() -> None:
    with pytest.raises(InvalidToken, match="too large"):
        read_dpop_token(["DPoP " + "a" * 101], max_size=100)


async def test_a_replayed_proof_is_caught_by_recording_what_validation_returns(
    key: ClientKey,
) -> None:
    store = MemoryReplayStore(100)
    signed = proof(key)
    first = check([signed], key)
    assert await store.record(first.replay_key, first.replay_ttl) is True
    again = check([signed], key)  # the proof itself is still valid: only the store knows
    assert again.replay_key == first.replay_key
    assert await store.record(again.replay_key, again.replay_ttl) is False
    other = check([proof(key)], key)  # a fresh jti from the same key is no replay
    assert await store.record(other.replay_key, other.replay_ttl) is True


async def test_a_replica_whose_clock_is_behind_still_finds_the_proof_in_the_shared_store(
    key: ClientKey,
) -> None:
    """Replicas share one store (Redis); the one that recorded a proof may run ahead of
    another by up to the leeway. The entry must outlive the last moment any of them could
    still accept the proof, or the slower replica takes a replay."""
    now = 1_700_000_000.0
    clock = [0.0]
    store = MemoryReplayStore(100, clock=lambda: clock[0])
    signed = proof(key, iat=now - 10)
    first = check([signed], key, now=now)  # replica A, on time
    assert await store.record(first.replay_key, first.replay_ttl) is True
    behind = POLICY.leeway - 1  # replica B's clock, that far behind A's
    last = POLICY.max_age - 10 - 0.5  # on B's clock, just before the proof is too old
    clock[0] = last + behind  # the same moment, on the store's (A's) clock
    again = check([signed], key, now=now + last)  # B: the proof is still acceptable
    assert await store.record(again.replay_key, again.replay_ttl) is False


# mutmut does not mutate module-level constants: each member is named here instead.
@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "oth", "k"])
def test_every_private_key_member_in_the_jwk_is_refused(member: str, key: ClientKey) -> None:
    assert member in dpop.PRIVATE_MEMBERS
    with pytest.raises(InvalidToken) as refused:
        check([proof(key, header={"jwk": {**key.jwk, member: "AAAA"}})], key)
    assert refused.value.reason == "dpop_key"


def test_the_private_members_are_exactly_those_tested() -> None:
    assert {"d", "p", "q", "dp", "dq", "qi", "oth", "k"} == dpop.PRIVATE_MEMBERS


@pytest.mark.parametrize(
    "typ", ["dpop+jwt", "application/dpop+jwt", "DPoP+JWT", "Application/DPoP+jwt"]
)
def test_every_accepted_typ_verifies(typ: str, key: ClientKey) -> None:
    assert check([proof(key, header={"typ": typ})], key).jkt == key.jkt


@pytest.mark.parametrize(
    "typ", ["jwt", "dpop", "application/jwt", "dpop+jwt ", "application/dpop+jwt;x=1", ""]
)
def test_lookalike_typ_is_refused(typ: str, key: ClientKey) -> None:
    with pytest.raises(InvalidToken) as refused:
        check([proof(key, header={"typ": typ})], key)
    assert refused.value.reason == "dpop_type"


@pytest.mark.parametrize(
    ("alg", "kty", "curves"),
    [
        *((alg, "RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")),
        ("ES256", "EC", {"P-256"}),
        ("ES384", "EC", {"P-384"}),
        ("ES512", "EC", {"P-521"}),
        ("ES256K", "EC", {"secp256k1"}),
        ("EdDSA", "OKP", {"Ed25519", "Ed448"}),
    ],
)
def test_every_algorithm_names_its_key_type_and_curves(
    alg: str, kty: str, curves: set[str] | None
) -> None:
    assert dpop.KEY_TYPES[alg] == (kty, None if curves is None else frozenset(curves))


def test_the_key_type_table_is_exactly_the_algorithms_tested() -> None:
    assert set(dpop.KEY_TYPES) == {
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
        "ES256", "ES384", "ES512", "ES256K", "EdDSA",
    }  # fmt: skip


@pytest.mark.parametrize(("alg", "other"), [("ES256", "ES384"), ("ES384", "ES512")])
def test_an_ec_key_on_another_curve_is_refused(alg: str, other: str) -> None:
    signer = client_key(other)
    policy = DpopPolicy(algorithms=(alg, other))
    with pytest.raises(InvalidToken) as refused:
        check([proof(signer, header={"alg": alg})], signer, policy=policy)
    assert refused.value.reason in {"dpop_key", "dpop_signature"}
