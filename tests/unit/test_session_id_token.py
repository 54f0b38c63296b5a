"""ID token validation, rule by rule (OIDC Core §3.1.3.7, §3.2.2.9 at_hash, §12.2 refresh),
against tokens signed with real RSA, EC and Ed25519 keys."""

from __future__ import annotations

import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth.sessions.errors import IdTokenInvalid
from gateway.auth.sessions.id_token import IdTokenRules, token_hash, validate_id_token
from gateway.auth.sessions.jws import UnknownSigningKey
from tests.support.issuer import TestIssuer
from tests.support.signing import SigningKeys, left_half_hash

ISSUER = "https://as.example/tenant"
CLIENT = "web-app"
NONCE = "n0nce-" + "x" * 37
ACCESS = "access-token-value"
KEYS = SigningKeys()
NOW = time.time()
RULES = IdTokenRules(
    issuer=ISSUER,
    client_id=CLIENT,
    algorithms=frozenset({"RS256", "ES256", "PS256", "EdDSA"}),
    trusted_audiences=frozenset({"api://trusted"}),
)


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": CLIENT,
        "exp": int(NOW) + 300,
        "iat": int(NOW),
        "nonce": NONCE,
        "sid": "op-session-1",
        "email": "alice@example.com",
        "at_hash": left_half_hash(ACCESS),
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def validate(
    token: str,
    *,
    nonce: str | None = NONCE,
    access: str | None = ACCESS,
    subject: str | None = None,
    now: float = NOW,
):
    return validate_id_token(
        token,
        keys=KEYS.key_set,
        rules=RULES,
        now=now,
        nonce=nonce,
        access_token=access,
        subject=subject,
    )


def reason(token: str, **kwargs: Any) -> str:
    with pytest.raises(IdTokenInvalid) as caught:
        validate(token, **kwargs)
    assert caught.value.status == 502
    return caught.value.reason


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
def test_a_valid_id_token_yields_the_user(alg: str) -> None:
    digest = "sha512" if alg == "EdDSA" else "sha256"
    token = KEYS.sign(claims(at_hash=left_half_hash(ACCESS, digest)), alg=alg)
    checked = validate(token)
    assert (checked.subject, checked.sid) == ("alice", "op-session-1")
    assert checked.claims["email"] == "alice@example.com"
    assert checked.expires_at == int(NOW) + 300


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({"iss": ISSUER + "/"}, "id_token_bad_issuer", id="iss-trailing-slash"),
        pytest.param({"iss": "https://evil.example"}, "id_token_bad_issuer", id="iss-other"),
        pytest.param({"iss": None}, "id_token_missing_iss", id="iss-missing"),
        pytest.param({"aud": "someone-else"}, "id_token_bad_audience", id="aud-other"),
        pytest.param({"aud": None}, "id_token_bad_audience", id="aud-missing"),
        pytest.param({"aud": []}, "id_token_bad_audience", id="aud-empty"),
        pytest.param({"aud": [CLIENT, 3]}, "id_token_bad_audience", id="aud-not-strings"),
        pytest.param(
            {"aud": [CLIENT, "api://untrusted"], "azp": CLIENT},
            "id_token_untrusted_audience",
            id="aud-untrusted-extra",
        ),
        pytest.param(
            {"aud": [CLIENT, "api://trusted"]},
            "id_token_missing_azp",
            id="several-audiences-without-azp",
        ),
        pytest.param(
            {"aud": [CLIENT, "api://trusted"], "azp": "api://trusted"},
            "id_token_bad_azp",
            id="azp-not-us",
        ),
        pytest.param({"azp": "other-client"}, "id_token_bad_azp", id="azp-other-single-aud"),
        pytest.param({"exp": int(NOW) - 31}, "id_token_expired", id="expired"),
        pytest.param({"exp": None}, "id_token_missing_exp", id="exp-missing"),
        pytest.param({"exp": "soon"}, "id_token_malformed", id="exp-string"),
        pytest.param({"exp": True}, "id_token_malformed", id="exp-bool"),
        pytest.param({"iat": None}, "id_token_missing_iat", id="iat-missing"),
        pytest.param({"iat": int(NOW) + 120}, "id_token_not_yet_valid", id="iat-future"),
        pytest.param({"iat": int(NOW) - 700}, "id_token_too_old", id="iat-too-old"),
        pytest.param({"nbf": int(NOW) + 120}, "id_token_not_yet_valid", id="nbf-future"),
        pytest.param({"nonce": "other"}, "id_token_bad_nonce", id="nonce-other"),
        pytest.param({"nonce": None}, "id_token_missing_nonce", id="nonce-missing"),
        pytest.param({"nonce": 5}, "id_token_malformed", id="nonce-number"),
        pytest.param(
            {"at_hash": left_half_hash("another-token")},
            "id_token_bad_at_hash",
            id="at-hash-other-token",
        ),
        pytest.param(
            {"at_hash": left_half_hash(ACCESS, "sha384")},
            "id_token_bad_at_hash",
            id="at-hash-wrong-function",
        ),
        pytest.param({"sub": None}, "id_token_missing_sub", id="sub-missing"),
        pytest.param({"sub": "x" * 256}, "id_token_malformed", id="sub-too-long"),
        pytest.param({"sub": "élise"}, "id_token_malformed", id="sub-non-ascii"),
        pytest.param({"sub": 42}, "id_token_malformed", id="sub-number"),
    ],
)
def test_every_rule_refuses_its_violation(changes: dict[str, Any], expected: str) -> None:
    assert reason(KEYS.sign(claims(**changes))) == expected


def test_leeway_tolerates_small_clock_skew() -> None:
    validate(KEYS.sign(claims(exp=int(NOW) - 10, iat=int(NOW) + 10)))


def test_a_trusted_second_audience_with_our_azp_is_accepted() -> None:
    validate(KEYS.sign(claims(aud=[CLIENT, "api://trusted"], azp=CLIENT)))


def test_at_hash_is_checked_only_when_present() -> None:
    validate(KEYS.sign(claims(at_hash=None)))


def test_at_hash_for_ed448_or_unknown_algorithms_cannot_be_confirmed() -> None:
    assert token_hash(ACCESS, "EdDSA", object()) is None
    assert token_hash(ACCESS, "ES384", None) == left_half_hash(ACCESS, "sha384")


@pytest.mark.parametrize(
    ("sign", "expected"),
    [
        pytest.param(
            lambda: KEYS.sign(claims(), header={"alg": "none"}),
            "id_token_bad_algorithm",
            id="alg-none",
        ),
        pytest.param(
            lambda: KEYS.sign(claims(), alg="RS384"),
            "id_token_bad_algorithm",
            id="alg-not-configured",
        ),
        pytest.param(
            lambda: TestIssuer.sign(
                {"alg": "HS256", "kid": "rsa"}, claims(), alg="HS256", key=b"k" * 32
            ),
            "id_token_bad_algorithm",
            id="hmac",
        ),
        pytest.param(
            lambda: KEYS.sign(claims(), header={"crit": ["exp"]}), "id_token_malformed", id="crit"
        ),
        pytest.param(
            lambda: KEYS.sign(claims(), header={"typ": "logout+jwt"}),
            "id_token_wrong_type",
            id="typed-logout",
        ),
        pytest.param(
            lambda: KEYS.sign(claims(), header={"typ": "at+jwt"}),
            "id_token_wrong_type",
            id="typed-access-token",
        ),
        pytest.param(
            lambda: KEYS.sign(
                claims(), key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
            ),
            "id_token_bad_signature",
            id="foreign-key-same-kid",
        ),
        pytest.param(
            lambda: KEYS.sign(claims())[:-4] + "AAAA",
            "id_token_bad_signature",
            id="signature-tampered",
        ),
        pytest.param(lambda: "a.b", "id_token_malformed", id="two-parts"),
        pytest.param(lambda: "a.b.c.d.e", "id_token_malformed", id="jwe"),
        pytest.param(
            lambda: KEYS.sign(claims()).split(".")[0] + ".e30.",
            "id_token_malformed",
            id="unsigned-empty-signature",
        ),
        pytest.param(
            lambda: TestIssuer.sign(
                {"alg": "RS256", "kid": "rsa"},
                b'{"sub":"a","sub":"b"}',
                alg="RS256",
                key=KEYS.private["rsa"],
            ),
            "id_token_malformed",
            id="duplicate-claim",
        ),
    ],
)
def test_signature_and_header_rules(sign, expected: str) -> None:
    assert reason(sign()) == expected


def test_a_key_of_another_family_is_never_used() -> None:
    """The EC key's kid on an RS256 token: the key set has no RS256 key named "ec"."""
    with pytest.raises(UnknownSigningKey):
        validate(KEYS.sign(claims(), alg="RS256", kid="ec"))


def test_an_unknown_kid_asks_for_a_refetch() -> None:
    with pytest.raises(UnknownSigningKey):
        validate(KEYS.sign(claims(), kid="rotated-in"))


def test_a_refreshed_id_token_needs_no_nonce_but_the_same_subject() -> None:
    validate(KEYS.sign(claims(nonce=None)), nonce=None, subject="alice")
    assert (
        reason(KEYS.sign(claims(nonce=None, sub="mallory")), nonce=None, subject="alice")
        == "id_token_subject_changed"
    )
