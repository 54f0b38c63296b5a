"""JwtVerifier against a real issuer on loopback: accepted tokens, every attack refused, and
key rotation with a single-flight, rate-limited refetch."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from gateway.auth.jwks import KeySetProvider
from gateway.auth.jwt import JwtVerifier
from gateway.problems import InvalidToken, ServiceUnavailable
from tests.support.issuer import TestIssuer, b64url, encode_compact
from tests.support.settings import Issuer

ATTACKER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    issuer: TestIssuer
    attacker: TestIssuer
    verifier: JwtVerifier
    hmac_verifier: JwtVerifier
    provider: KeySetProvider
    clock: FakeClock


Build = Callable[..., Awaitable[tuple[JwtVerifier, KeySetProvider]]]


@pytest.fixture
async def issuer() -> AsyncIterator[TestIssuer]:
    server = TestIssuer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def build() -> AsyncIterator[Build]:
    """Makes a verifier for one issuer config; closes what it made."""
    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    providers: list[KeySetProvider] = []

    async def make(config: Issuer, clock: Callable[[], float] = time.monotonic) -> Any:
        provider = KeySetProvider(config, session, clock=clock)
        providers.append(provider)
        await provider.start()
        return JwtVerifier([config], {config.key: provider}), provider

    yield make
    for provider in providers:
        await provider.close()
    await session.close()


@pytest.fixture
async def env(issuer: TestIssuer, build: Build) -> AsyncIterator[Env]:
    attacker = TestIssuer()
    await attacker.start()
    attacker.rotate("RS256")  # a kid the real issuer does not have
    clock = FakeClock()
    verifier, provider = await build(issuer.config(), clock)
    hmac_config = issuer.config(
        name="hmac", algorithms=["RS256", "HS256"], hmac_secret=issuer.hmac_secret
    )
    hmac_verifier, _ = await build(hmac_config)
    yield Env(issuer, attacker, verifier, hmac_verifier, provider, clock)
    await attacker.close()


def rsa_public_pem(issuer: TestIssuer) -> bytes:
    key = issuer.signing_keys[issuer.default_kid("RS256")].private.public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def hs256_over(issuer: TestIssuer, secret: bytes) -> str:
    """An HS256 token for the issuer's claims, keyed with ``secret`` (an algorithm-confusion
    attacker's guess at what a verifier might use as the HMAC key)."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims_of(issuer)).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), "sha256").digest()
    return f"{header}.{payload}.{b64url(signature)}"


def claims_of(issuer: TestIssuer, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": issuer.url, "sub": "user-1", "aud": "api://default", "exp": now + 300,
            "iat": now, "scope": "read"} | extra  # fmt: skip


def es256_der(issuer: TestIssuer) -> str:
    """ES256 signed by the real key, but DER-encoded instead of RFC 7518 §3.4's raw r||s."""
    kid = issuer.default_kid("ES256")
    header = b64url(json.dumps({"alg": "ES256", "kid": kid}).encode())
    payload = b64url(json.dumps(claims_of(issuer)).encode())
    private = issuer.signing_keys[kid].private
    der = private.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    return f"{header}.{payload}.{b64url(der)}"


def tampered(issuer: TestIssuer) -> str:
    head, _, sig = issuer.mint().split(".")
    payload = b64url(json.dumps(claims_of(issuer, scope="admin")).encode())
    return f"{head}.{payload}.{sig}"


def duplicate_claims(issuer: TestIssuer) -> str:
    """Validly signed, but "aud" appears twice: parsers that keep the first and the last
    member would disagree about the audience."""
    body = json.dumps(claims_of(issuer, aud="api://other")).encode()[:-1]
    body += b', "aud": "api://default"}'
    kid = issuer.default_kid("RS256")
    key = issuer.signing_keys[kid].private
    return TestIssuer.sign({"alg": "RS256", "kid": kid}, body, alg="RS256", key=key)


def attacker_jwk(kid: str) -> dict[str, Any]:
    return RSAAlgorithm.to_jwk(ATTACKER_KEY.public_key(), as_dict=True) | {"kid": kid}


def padded(token: str) -> str:
    head, payload, sig = token.split(".")
    return f"{head}.{payload}{'=' * (-len(payload) % 4 or 2)}.{sig}"


Mint = Callable[[Env], str]
now = time.time

REJECTED: list[Any] = [
    pytest.param(lambda e: e.issuer.mint(alg="none"), "bad_algorithm", id="alg-none"),
    pytest.param(lambda e: e.issuer.mint(alg="none", headers={"alg": "NoNe"}), "bad_algorithm",
                 id="alg-NoNe"),
    pytest.param(lambda e: e.issuer.mint(headers={"alg": "none"}), "bad_algorithm",
                 id="alg-none-with-a-real-signature"),
    pytest.param(lambda e: hs256_over(e.issuer, rsa_public_pem(e.issuer)), "bad_algorithm",
                 id="hs256-with-rsa-public-key-pem"),
    pytest.param(lambda e: e.issuer.mint(alg="RS384"), "bad_algorithm", id="alg-not-configured"),
    pytest.param(lambda e: e.issuer.mint(key=ATTACKER_KEY, kid=None,
                                         headers={"jwk": attacker_jwk("evil")}),
                 "bad_signature", id="embedded-jwk"),
    pytest.param(lambda e: e.issuer.mint(key=ATTACKER_KEY, kid="evil",
                                         headers={"jwk": attacker_jwk("evil")}),
                 "unknown_key", id="embedded-jwk-own-kid"),
    pytest.param(lambda e: e.attacker.mint({"iss": e.issuer.url},
                                           headers={"jku": e.attacker.jwks_url}),
                 "unknown_key", id="jku-header-ignored"),
    pytest.param(lambda e: e.attacker.mint({"iss": e.issuer.url},
                                           headers={"x5u": e.attacker.jwks_url}),
                 "unknown_key", id="x5u"),
    pytest.param(lambda e: e.issuer.mint(key=ATTACKER_KEY, headers={"x5c": ["MIIBIjAN"]}),
                 "bad_signature", id="x5c-ignored"),
    pytest.param(lambda e: e.issuer.mint(key=ATTACKER_KEY), "bad_signature",
                 id="attacker-key-real-kid"),
    pytest.param(lambda e: e.issuer.mint(alg="ES256", kid=e.issuer.default_kid("RS256")),
                 "unknown_key", id="es256-naming-an-rsa-kid"),
    pytest.param(lambda e: es256_der(e.issuer), "bad_signature", id="es256-der-signature"),
    pytest.param(lambda e: tampered(e.issuer), "bad_signature", id="tampered-claims"),
    pytest.param(lambda e: e.issuer.mint(headers={"crit": ["exp"]}), "malformed",
                 id="crit-unknown"),
    pytest.param(lambda e: e.issuer.mint(exp_in=-60), "expired", id="expired"),
    pytest.param(lambda e: e.issuer.mint({"nbf": int(now()) + 120}), "not_yet_valid",
                 id="nbf-future"),
    pytest.param(lambda e: e.issuer.mint({"iat": int(now()) + 120}), "not_yet_valid",
                 id="iat-future"),
    pytest.param(lambda e: e.issuer.mint({"exp": str(int(now()) + 300)}), "malformed",
                 id="exp-as-string"),
    pytest.param(lambda e: e.issuer.mint({"exp": True}), "malformed", id="exp-as-bool"),
    pytest.param(lambda e: e.issuer.mint({"nbf": "0"}), "malformed", id="nbf-as-string"),
    pytest.param(lambda e: e.issuer.mint({"exp": None}), "missing_claim", id="exp-missing"),
    pytest.param(lambda e: e.issuer.mint({"iss": e.attacker.url}), "bad_issuer", id="wrong-iss"),
    pytest.param(lambda e: e.attacker.mint({"iss": e.issuer.url + "/"}), "bad_issuer",
                 id="iss-with-trailing-slash"),
    pytest.param(lambda e: e.issuer.mint(audience="api://other"), "bad_audience", id="wrong-aud"),
    pytest.param(lambda e: e.issuer.mint(audience=["api://a", "api://b"]), "bad_audience",
                 id="wrong-aud-array"),
    pytest.param(lambda e: e.issuer.mint({"aud": None}), "bad_audience", id="aud-missing"),
    pytest.param(lambda e: e.issuer.mint({"aud": {"api://default": 1}}), "malformed",
                 id="aud-object"),
    pytest.param(lambda e: e.issuer.mint({"sub": 42}), "malformed", id="sub-not-string"),
    pytest.param(lambda e: duplicate_claims(e.issuer), "malformed", id="duplicate-json-keys"),
    pytest.param(lambda e: ".".join([e.issuer.mint()] + ["AAAA"] * 2), "malformed",
                 id="jwe-five-parts"),
    pytest.param(lambda e: padded(e.issuer.mint()), "malformed", id="padding-in-segment"),
    pytest.param(lambda e: encode_compact({"alg": "RS256"}, claims_of(e.issuer), b""),
                 "bad_signature", id="empty-signature"),
]  # fmt: skip


@pytest.mark.parametrize(("mint", "reason"), REJECTED)
async def test_attack_is_rejected(env: Env, mint: Mint, reason: str) -> None:
    token = mint(env)
    with pytest.raises(InvalidToken) as caught:
        await env.verifier.verify(token)
    assert caught.value.reason == reason
    detail = caught.value.detail
    assert token not in detail and "user-1" not in detail and env.issuer.url not in detail
    assert env.attacker.jwks_fetches == 0 and env.attacker.discovery_fetches == 0


HMAC_REJECTED = [
    pytest.param(lambda e: hs256_over(e.issuer, rsa_public_pem(e.issuer)),
                 id="hs256-with-rsa-public-key-pem"),
    pytest.param(lambda e: hs256_over(e.issuer, json.dumps(e.issuer.jwks()).encode()),
                 id="hs256-with-the-jwks-as-secret"),
    pytest.param(lambda e: e.issuer.mint(alg="HS256", key=b"x" * 32), id="hs256-other-secret"),
]  # fmt: skip


@pytest.mark.parametrize("mint", HMAC_REJECTED)
async def test_hmac_issuer_keys_hmac_only_with_its_secret(env: Env, mint: Mint) -> None:
    with pytest.raises(InvalidToken) as caught:
        await env.hmac_verifier.verify(mint(env))
    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA", "HS256"])
async def test_valid_token_per_algorithm(env: Env, alg: str) -> None:
    verifier = env.hmac_verifier if alg == "HS256" else env.verifier
    identity = await verifier.verify(env.issuer.mint(alg=alg, scope="read write"))
    assert identity.issuer == env.issuer.url
    assert identity.subject == "user-1" and identity.client_id == "client-1"
    assert identity.scopes == {"read", "write"} and identity.token_kind == "jwt"


async def test_identity_reflects_the_claims(env: Env) -> None:
    exp = int(time.time()) + 100
    token = env.issuer.mint(
        {"client_id": None, "azp": "spa", "scope": None, "scp": ["a", "b"], "exp": exp,
         "groups": ["ops"]},
        audience=["api://other", "api://default"],
    )  # fmt: skip
    identity = await env.verifier.verify(token)
    assert identity.client_id == "spa" and identity.scopes == {"a", "b"}
    assert identity.audiences == ("api://other", "api://default")
    assert identity.expires_at == exp and identity.claims["groups"] == ["ops"]
    with pytest.raises(TypeError):
        identity.claims["sub"] = "someone-else"  # type: ignore[index]


@pytest.mark.parametrize(
    ("claims", "ok"),
    [
        pytest.param({"exp": -25}, True, id="expired-within-leeway"),
        pytest.param({"exp": -35}, False, id="expired-beyond-leeway"),
        pytest.param({"nbf": 25}, True, id="nbf-within-leeway"),
        pytest.param({"nbf": 35}, False, id="nbf-beyond-leeway"),
        pytest.param({"iat": 25}, True, id="iat-within-leeway"),
        pytest.param({"iat": 35}, False, id="iat-beyond-leeway"),
    ],
)
async def test_leeway_bounds_clock_skew(env: Env, claims: dict[str, int], ok: bool) -> None:
    token = env.issuer.mint({name: int(time.time()) + delta for name, delta in claims.items()})
    if ok:
        await env.verifier.verify(token)
    else:
        with pytest.raises(InvalidToken):
            await env.verifier.verify(token)


async def test_required_claims_are_enforced(issuer: TestIssuer, build: Build) -> None:
    verifier, _ = await build(issuer.config(required_claims=["exp", "jti", "sub"]))
    await verifier.verify(issuer.mint())
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(issuer.mint({"jti": None}))
    assert caught.value.reason == "missing_claim" and "jti" in caught.value.detail


async def test_exp_may_be_optional_by_config(issuer: TestIssuer, build: Build) -> None:
    verifier, _ = await build(issuer.config(required_claims=[]))
    assert (await verifier.verify(issuer.mint({"exp": None}))).expires_at is None


@pytest.mark.parametrize(
    ("typ", "ok"),
    [
        pytest.param("at+jwt", True, id="at+jwt"),
        pytest.param("application/at+jwt", True, id="application/at+jwt"),
        pytest.param("AT+JWT", True, id="upper-case"),
        pytest.param("JWT", False, id="plain-jwt"),
        pytest.param(None, False, id="no-typ"),
    ],
)
async def test_require_at_jwt(issuer: TestIssuer, build: Build, typ: str | None, ok: bool) -> None:
    verifier, _ = await build(issuer.config(require_at_jwt=True))
    token = issuer.mint(headers={"typ": typ})
    if ok:
        await verifier.verify(token)
    else:
        with pytest.raises(InvalidToken) as caught:
            await verifier.verify(token)
        assert caught.value.reason == "bad_type"


async def test_a_token_without_kid_needs_an_unambiguous_key(env: Env) -> None:
    await env.verifier.verify(env.issuer.mint(alg="ES256", kid=None))  # the only EC key
    env.issuer.rotate("ES256")
    env.clock.now += 60
    assert await env.provider.refetch_for_unknown_kid()
    with pytest.raises(InvalidToken) as caught:
        await env.verifier.verify(env.issuer.mint(alg="ES256", kid=None))
    assert caught.value.reason == "unknown_key"


async def test_rotation_burst_costs_one_fetch(env: Env) -> None:
    kid = env.issuer.rotate("RS256")
    before = env.issuer.jwks_fetches
    env.issuer.jwks_delay = 0.05  # keep the fetch in flight while the burst arrives
    tokens = [env.issuer.mint(kid=kid) for _ in range(100)]
    identities = await asyncio.gather(*(env.verifier.verify(t) for t in tokens))
    assert len(identities) == 100
    assert env.issuer.jwks_fetches == before + 1


async def test_unknown_kids_are_rate_limited(env: Env) -> None:
    first = env.issuer.rotate("RS256")
    await env.verifier.verify(env.issuer.mint(kid=first))
    before = env.issuer.jwks_fetches
    second = env.issuer.rotate("RS256")
    env.clock.now += 29  # unknown_kid_interval is 30s
    with pytest.raises(InvalidToken) as caught:
        await env.verifier.verify(env.issuer.mint(kid=second))
    assert caught.value.reason == "unknown_key"
    assert env.issuer.jwks_fetches == before
    env.clock.now += 2
    await env.verifier.verify(env.issuer.mint(kid=second))
    assert env.issuer.jwks_fetches == before + 1


async def test_cancelled_caller_does_not_cancel_the_shared_refetch(env: Env) -> None:
    kid = env.issuer.rotate("RS256")
    env.issuer.jwks_delay = 0.2
    token = env.issuer.mint(kid=kid)
    leaver = asyncio.create_task(env.verifier.verify(token))
    stayer = asyncio.create_task(env.verifier.verify(token))
    await asyncio.sleep(0.05)
    leaver.cancel()
    assert (await stayer).subject == "user-1"
    assert leaver.cancelled()


async def test_removed_key_stops_verifying_after_a_refresh(env: Env) -> None:
    old = env.issuer.default_kid("RS256")
    token = env.issuer.mint(kid=old)
    await env.verifier.verify(token)
    env.issuer.remove_key(old)
    env.clock.now += 60
    assert await env.provider.refetch_for_unknown_kid()
    with pytest.raises(InvalidToken) as caught:
        await env.verifier.verify(token)
    assert caught.value.reason == "unknown_key"


async def test_no_keys_yet_is_unavailable_not_invalid(issuer: TestIssuer, build: Build) -> None:
    issuer.jwks_status = 500
    verifier, provider = await build(issuer.config())
    assert not provider.ready
    with pytest.raises(ServiceUnavailable) as caught:
        await verifier.verify(issuer.mint())
    assert caught.value.reason == "keys_unavailable"  # the access log's and metrics' reason
    issuer.jwks_status = 200
    with pytest.raises(ServiceUnavailable):  # the unknown-kid refetch is rate-limited too
        await verifier.verify(issuer.mint())


async def test_a_known_kid_does_not_refetch_the_key_set(env: Env) -> None:
    """Only a kid the key set lacks asks the issuer again (a rotation); a token naming a key
    the set holds is verified from it however long since the last fetch, so a flood of
    valid tokens costs the issuer nothing."""
    kid = env.issuer.default_kid("RS256")
    await env.verifier.verify(env.issuer.mint(kid=kid))
    before = env.issuer.jwks_fetches
    env.clock.now += 31  # past unknown_kid_interval (30s): a refetch would be allowed
    await env.verifier.verify(env.issuer.mint(kid=kid))
    assert env.issuer.jwks_fetches == before
