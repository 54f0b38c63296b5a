"""Key sets: which JWKs are usable, how fetching is bounded, and how a provider survives an
issuer that is down, slow, lying about its identity or serving over plain http."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.abc
import jwt as pyjwt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.auth.discovery import (
    DiscoveryError,
    FetchError,
    check_url_allowed,
    fetch_json,
    fetch_metadata,
    metadata_urls,
)
from gateway.auth.jwks import KeySet, KeySetProvider, refresh_delay
from gateway.auth.settings import KeyRefreshSettings as KeyRefresh
from tests.support.issuer import TestIssuer
from tests.support.settings import Issuer

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_JWK = RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
P256_JWK = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
P384_JWK = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True)
P521_JWK = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP521R1()).public_key(), as_dict=True)
ED448_JWK = OKPAlgorithm.to_jwk(ed448.Ed448PrivateKey.generate().public_key(), as_dict=True)
SMALL_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused
SMALL_RSA_JWK = RSAAlgorithm.to_jwk(SMALL_KEY.public_key(), as_dict=True)
OCT_JWK = json.loads(HMACAlgorithm.to_jwk(b"k" * 32))
ALL_RSA = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}


# --- KeySet: which keys may verify what (RFC 7517, RFC 7518 §3) ----------------------------


@pytest.mark.parametrize(
    ("jwk", "algorithms"),
    [
        pytest.param(RSA_JWK, ALL_RSA, id="rsa-any-rs-ps"),
        pytest.param(RSA_JWK | {"alg": "PS384"}, {"PS384"}, id="rsa-pinned-by-alg"),
        pytest.param(P256_JWK, {"ES256"}, id="p256-es256-only"),
        pytest.param(P384_JWK, {"ES384"}, id="p384-es384-only"),
        pytest.param(P521_JWK, {"ES512"}, id="p521-es512-only"),
        pytest.param(ED448_JWK, {"EdDSA"}, id="ed448-eddsa"),
        pytest.param(RSA_JWK | {"use": "sig", "key_ops": ["verify"]}, ALL_RSA, id="use-sig"),
        pytest.param(RSA_JWK | {"d": "AQAB", "p": "AQAB"}, ALL_RSA, id="private-parts-dropped"),
        pytest.param(RSA_JWK | {"use": "enc"}, None, id="use-enc-skipped"),
        pytest.param(RSA_JWK | {"key_ops": ["encrypt"]}, None, id="key-ops-without-verify"),
        pytest.param(RSA_JWK | {"key_ops": "verify"}, None, id="key-ops-not-array"),
        pytest.param(RSA_JWK | {"alg": "ES256"}, None, id="rsa-claiming-es256"),
        pytest.param(RSA_JWK | {"alg": "HS256"}, None, id="rsa-claiming-hs256"),
        pytest.param(P256_JWK | {"alg": "ES384"}, None, id="p256-claiming-es384"),
        pytest.param(OCT_JWK, None, id="oct-ignored"),
        pytest.param(OCT_JWK | {"alg": "HS256"}, None, id="oct-with-alg-ignored"),
        pytest.param(SMALL_RSA_JWK, None, id="rsa-1024-too-small"),
        pytest.param(P256_JWK | {"crv": "secp256k1"}, None, id="unsupported-curve"),
        pytest.param({"kty": "OKP", "crv": "X25519", "x": "AA"}, None, id="x25519-not-signing"),
        pytest.param(RSA_JWK | {"kid": 7}, None, id="kid-not-string"),
        pytest.param(RSA_JWK | {"alg": ["RS256"]}, None, id="alg-not-string"),
        pytest.param({"kty": ["RSA"]}, None, id="kty-not-string"),
        pytest.param(RSA_JWK | {"n": "!!"}, None, id="unreadable-modulus"),
        pytest.param("RSA", None, id="not-an-object"),
    ],
)
def test_key_usability(jwk: Any, algorithms: set[str] | None) -> None:
    keys = KeySet.from_jwks({"keys": [jwk]}).keys
    if algorithms is None:
        assert keys == ()
    else:
        (key,) = keys
        assert key.algorithms == algorithms
        assert not hasattr(key.key, "private_numbers")


@pytest.mark.parametrize(
    "document",
    [
        pytest.param([], id="array"),
        pytest.param({}, id="no-keys"),
        pytest.param({"keys": {"kty": "RSA"}}, id="keys-not-array"),
    ],
)
def test_not_a_jwk_set(document: Any) -> None:
    with pytest.raises(ValueError, match="JWK Set"):
        KeySet.from_jwks(document)


def test_find_by_kid_and_algorithm() -> None:
    keys = KeySet.from_jwks(
        {"keys": [RSA_JWK | {"kid": "a"}, P256_JWK | {"kid": "a"}, ED448_JWK | {"kid": "b"}]}
    )
    assert keys.find("a", "PS256").family == "RSA"  # type: ignore[union-attr]
    assert keys.find("a", "ES256").family == "EC"  # type: ignore[union-attr]
    assert keys.find("b", "ES256") is None
    assert keys.find("c", "EdDSA") is None
    assert keys.find(None, "EdDSA").kid == "b"  # type: ignore[union-attr]
    two_rsa = KeySet.from_jwks({"keys": [RSA_JWK | {"kid": "a"}, RSA_JWK | {"kid": "b"}]})
    assert two_rsa.find(None, "RS256") is None  # ambiguous without a kid


# --- pure helpers --------------------------------------------------------------------------

REFRESH = KeyRefresh(default=3600, min=300, max=86400)


@pytest.mark.parametrize(
    ("cache_control", "delay"),
    [
        pytest.param(None, 3600, id="absent-default"),
        pytest.param("no-cache", 3600, id="no-max-age-default"),
        pytest.param("max-age=600", 600, id="within-bounds"),
        pytest.param("public, max-age=7200, must-revalidate", 7200, id="among-directives"),
        pytest.param("MAX-AGE=900", 900, id="case-insensitive"),
        pytest.param('max-age="900"', 900, id="quoted"),
        pytest.param("max-age=0", 300, id="below-min-clamped"),
        pytest.param("max-age=31536000", 86400, id="above-max-clamped"),
        pytest.param("s-maxage=600", 3600, id="s-maxage-is-not-max-age"),
        pytest.param("max-age=soon", 3600, id="not-a-number"),
    ],
)
def test_refresh_delay_honours_max_age_within_bounds(
    cache_control: str | None, delay: float
) -> None:
    assert refresh_delay(cache_control, REFRESH) == delay


@pytest.mark.parametrize(
    ("url", "allow_http", "ok"),
    [
        pytest.param("https://idp.example/jwks", False, True, id="https"),
        pytest.param("http://127.0.0.1:8080/jwks", False, True, id="http-loopback-v4"),
        pytest.param("http://127.9.9.9/jwks", False, True, id="http-loopback-range"),
        pytest.param("http://[::1]:8080/jwks", False, True, id="http-loopback-v6"),
        pytest.param("http://localhost/jwks", False, True, id="http-localhost"),
        pytest.param("http://idp.example/jwks", False, False, id="http-remote-refused"),
        pytest.param("http://10.0.0.1/jwks", False, False, id="http-private-ip-refused"),
        pytest.param("http://localhost.evil.example/jwks", False, False, id="http-lookalike"),
        pytest.param("http://idp.example/jwks", True, True, id="http-remote-insecure-http"),
        pytest.param("ftp://idp.example/jwks", True, False, id="other-scheme"),
        pytest.param("file:///etc/jwks.json", True, False, id="file-scheme"),
        pytest.param("https:///jwks", False, False, id="no-host"),
    ],
)
def test_check_url_allowed(url: str, allow_http: bool, ok: bool) -> None:
    if ok:
        check_url_allowed(url, allow_http)
    else:
        with pytest.raises(ValueError):
            check_url_allowed(url, allow_http)


@pytest.mark.parametrize(
    ("issuer", "expected"),
    [
        pytest.param("https://as.example", ("https://as.example/.well-known/openid-configuration",
                     "https://as.example/.well-known/oauth-authorization-server"), id="host-only"),
        pytest.param("https://as.example/", ("https://as.example/.well-known/openid-configuration",
                     "https://as.example/.well-known/oauth-authorization-server"), id="slash"),
        pytest.param("https://as.example/t/1", (
            "https://as.example/t/1/.well-known/openid-configuration",
            "https://as.example/.well-known/oauth-authorization-server/t/1"), id="with-path"),
    ],
)  # fmt: skip
def test_metadata_urls(issuer: str, expected: tuple[str, str]) -> None:
    assert metadata_urls(issuer) == expected


# --- fetching over real sockets -------------------------------------------------------------


@pytest.fixture
async def issuer() -> AsyncIterator[TestIssuer]:
    server = TestIssuer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        yield client


Start = Callable[[Issuer], Awaitable[KeySetProvider]]


@pytest.fixture
async def start(session: aiohttp.ClientSession) -> AsyncIterator[Start]:
    providers: list[KeySetProvider] = []

    async def make(config: Issuer) -> KeySetProvider:
        provider = KeySetProvider(config, session)
        providers.append(provider)
        await provider.start()
        return provider

    yield make
    for provider in providers:
        await provider.close()


async def eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


FAST = {"retry": 0.05, "default": 3600, "min": 0.05}


async def test_discovery_then_jwks(issuer: TestIssuer, start: Start) -> None:
    provider = await start(issuer.config())
    assert provider.ready and provider.fetch_count == 1
    assert provider.metadata is not None and provider.metadata["jwks_uri"] == issuer.jwks_url
    assert provider.find(issuer.default_kid("EdDSA"), "EdDSA") is not None


async def test_rfc8414_location_when_openid_configuration_is_absent(
    issuer: TestIssuer, session: aiohttp.ClientSession
) -> None:
    issuer.serve_openid_configuration = False
    metadata = await fetch_metadata(session, issuer.url, timeout=2, ssl=None, allow_http=False)
    assert metadata["jwks_uri"] == issuer.jwks_url and issuer.discovery_fetches == 1


async def test_discovery_issuer_mismatch_is_refused(
    issuer: TestIssuer, session: aiohttp.ClientSession, start: Start
) -> None:
    issuer.metadata_overrides = {"issuer": issuer.url + "/"}
    with pytest.raises(DiscoveryError, match="different issuer"):
        await fetch_metadata(session, issuer.url, timeout=2, ssl=None, allow_http=False)
    provider = await start(issuer.config())
    assert not provider.ready and provider.metadata is None and issuer.jwks_fetches == 0


async def test_jwks_uri_downgraded_to_remote_http_is_refused(
    issuer: TestIssuer, start: Start
) -> None:
    issuer.metadata_overrides = {"jwks_uri": "http://192.0.2.1/jwks"}  # TEST-NET-1
    provider = await start(issuer.config())
    assert not provider.ready and provider.fetch_count == 0


async def test_insecure_http_lets_a_remote_http_url_be_tried(
    issuer: TestIssuer, start: Start
) -> None:
    issuer.metadata_overrides = {"jwks_uri": "http://192.0.2.1/jwks"}
    provider = await start(issuer.config(http={"insecure_http": True, "timeout": 0.2}))
    assert not provider.ready and provider.fetch_count == 1


async def test_jwks_down_at_start_then_recovers(issuer: TestIssuer, start: Start) -> None:
    issuer.jwks_status = 500
    provider = await start(issuer.config(refresh=FAST))
    assert not provider.ready
    await eventually(lambda: issuer.jwks_fetches >= 3)  # retrying every refresh.retry
    issuer.jwks_status = 200
    await eventually(lambda: provider.ready)
    fetches = issuer.jwks_fetches
    await asyncio.sleep(0.3)
    assert issuer.jwks_fetches == fetches  # back on the slow cadence (refresh.default)


async def test_jwks_hanging_at_start_is_bounded_by_the_timeout(
    issuer: TestIssuer, start: Start
) -> None:
    issuer.jwks_hang = True
    began = time.monotonic()
    provider = await start(issuer.config(http={"timeout": 0.2}))
    assert not provider.ready and time.monotonic() - began < 1.5


async def test_jwks_down_later_keeps_the_last_good_keys(issuer: TestIssuer, start: Start) -> None:
    issuer.jwks_max_age = 0  # refresh every refresh.min
    provider = await start(
        issuer.config(refresh={"min": 0.05, "retry": 0.05, "unknown_kid_interval": 0})
    )
    kid = issuer.default_kid("RS256")
    issuer.jwks_status = 503
    fetches = issuer.jwks_fetches
    await eventually(lambda: issuer.jwks_fetches >= fetches + 2)  # periodic refreshes failed
    assert not await provider.refetch_for_unknown_kid()  # and so did an on-demand one
    assert provider.ready and provider.find(kid, "RS256") is not None


@pytest.mark.parametrize(
    ("max_age", "refresh", "fetches"),
    [
        pytest.param(0, {"min": 0.1, "max": 10, "default": 10}, (4, 9), id="max-age-0-held-at-min"),
        pytest.param(
            3600, {"min": 0.1, "max": 0.1, "default": 10}, (4, 9), id="max-age-held-at-max"
        ),
        pytest.param(
            None, {"min": 0.1, "max": 10, "default": 10}, (1, 1), id="absent-uses-default"
        ),
        pytest.param(
            10, {"min": 0.1, "max": 10, "default": 0.1}, (1, 1), id="max-age-beats-default"
        ),
    ],
)
async def test_periodic_refresh_follows_cache_control(
    issuer: TestIssuer,
    start: Start,
    max_age: int | None,
    refresh: dict[str, float],
    fetches: tuple[int, int],
) -> None:
    issuer.jwks_max_age = max_age
    await start(issuer.config(refresh=refresh))
    await asyncio.sleep(0.65)
    low, high = fetches
    assert low <= issuer.jwks_fetches <= high


async def test_refetch_is_single_flight_and_rate_limited(issuer: TestIssuer, start: Start) -> None:
    provider = await start(issuer.config(keys={"jwks_uri": issuer.jwks_url}))
    assert provider.metadata is None and issuer.discovery_fetches == 0
    issuer.jwks_delay = 0.05
    results = await asyncio.gather(*(provider.refetch_for_unknown_kid() for _ in range(100)))
    assert results == [True] * 100 and issuer.jwks_fetches == 2
    assert not await provider.refetch_for_unknown_kid()  # inside unknown_kid_interval
    assert issuer.jwks_fetches == 2 and provider.fetch_count == 2


async def test_close_cancels_background_work(
    issuer: TestIssuer, session: aiohttp.ClientSession
) -> None:
    issuer.jwks_status = 500
    provider = KeySetProvider(issuer.config(refresh=FAST), session)
    await provider.start()
    await provider.close()
    fetches = issuer.jwks_fetches
    await asyncio.sleep(0.2)
    assert issuer.jwks_fetches == fetches


@pytest.mark.parametrize("source", ["inline", "file"])
async def test_static_keys(issuer: TestIssuer, start: Start, tmp_path: Path, source: str) -> None:
    jwks = issuer.jwks()
    if source == "file":
        (tmp_path / "jwks.json").write_text(json.dumps(jwks))
        keys: dict[str, Any] = {"file": tmp_path / "jwks.json"}
    else:
        keys = {"jwks": jwks}
    provider = await start(issuer.config(keys=keys))
    assert provider.ready and provider.find(issuer.default_kid("ES256"), "ES256") is not None
    assert not await provider.refetch_for_unknown_kid()
    assert issuer.jwks_fetches == 0 and issuer.discovery_fetches == 0


async def test_unreadable_key_file_fails_start(start: Start, tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text("{not json")
    config = Issuer(issuer="https://as.example", keys={"file": tmp_path / "jwks.json"},
                    audiences=["api"])  # fmt: skip
    with pytest.raises(ValueError):
        await start(config)


def self_signed_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 and the certificate file a client must trust for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


@pytest.mark.parametrize("trusted", [True, False], ids=["ca-file-trusted", "untrusted-cert"])
async def test_https_issuer_with_its_own_ca(start: Start, tmp_path: Path, trusted: bool) -> None:
    context, cert_file = self_signed_tls(tmp_path)
    server = TestIssuer(ssl=context)
    await server.start()
    try:
        http = {"ca_file": cert_file} if trusted else {}
        provider = await start(server.config(http=http))
        assert provider.ready is trusted
        assert server.discovery_fetches == int(trusted)
    finally:
        await server.close()


async def test_given_ssl_context_is_used(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """An explicit client TLS context (e.g. a private CA) must reach the fetches, not be dropped."""
    context, cert_file = self_signed_tls(tmp_path)
    server = TestIssuer(ssl=context)
    await server.start()
    provider = KeySetProvider(
        server.config(), session, ssl=ssl.create_default_context(cafile=str(cert_file))
    )
    try:
        await provider.start()
        assert provider.ready
    finally:
        await provider.close()
        await server.close()


# --- fetch_json: bounded and strict ---------------------------------------------------------


def _json(body: bytes, content_type: str = "application/json") -> web.Response:
    return web.Response(body=body, content_type=content_type)


BAD_ANSWERS: dict[str, Callable[[], web.Response]] = {
    "big-declared": lambda: _json(b"{}" + b" " * (2 * 1024 * 1024)),
    "html": lambda: _json(b"{}", "text/html"),
    "array": lambda: _json(b"[]"),
    "not-json": lambda: _json(b"{"),
    "nan": lambda: _json(b'{"a": NaN}'),
    "redirect": lambda: web.Response(status=302, headers={"Location": "/good"}),
    "error": lambda: web.json_response({}, status=500),
}


async def _answer(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name == "good":
        return web.json_response({"keys": []})
    if name == "big-streamed":  # no Content-Length: the cap must hold while reading
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"keys": ["' + b"A" * (2 * 1024 * 1024) + b'"]}')
        return response
    return BAD_ANSWERS[name]()


@pytest.mark.parametrize("name", [*BAD_ANSWERS, "big-streamed"])
async def test_fetch_json_refuses(
    aiohttp_server: Any, session: aiohttp.ClientSession, name: str
) -> None:
    app = web.Application()
    app.router.add_get("/{name}", _answer)
    server = await aiohttp_server(app, host="127.0.0.1")
    with pytest.raises(FetchError):
        await fetch_json(
            session, str(server.make_url(f"/{name}")), timeout=2, ssl=None, allow_http=False
        )
    good = str(server.make_url("/good"))
    document, _ = await fetch_json(session, good, timeout=2, ssl=None, allow_http=False)
    assert document == {"keys": []}


async def test_inherit_takes_the_running_keys_of_the_same_issuer_only(
    issuer: TestIssuer, start: Start, session: aiohttp.ClientSession
) -> None:
    """On reload a provider that has no keys yet starts from the running ones, but never
    from another issuer's: those keys must not verify this issuer's tokens."""
    running = await start(issuer.config())
    fresh = KeySetProvider(issuer.config(), session)
    fresh.inherit(running)
    assert fresh.ready and fresh.find(issuer.default_kid("EdDSA"), "EdDSA") is not None
    assert fresh.metadata == running.metadata
    other = TestIssuer()
    await other.start()
    try:
        stranger = KeySetProvider(other.config(), session)
        stranger.inherit(running)
        assert not stranger.ready and stranger.metadata is None
    finally:
        await other.close()


async def test_unknown_kid_refetch_is_refused_inside_the_interval_only(
    issuer: TestIssuer, session: aiohttp.ClientSession
) -> None:
    """RFC 7517 gives no rate, so the configured interval bounds what unknown kids cost the
    issuer: a refetch inside it is refused (False), one exactly at its end goes ahead."""
    now = [1000.0]
    config = issuer.config(refresh={"unknown_kid_interval": 10})
    provider = KeySetProvider(config, session, clock=lambda: now[0])
    await provider.start()
    try:
        assert await provider.refetch_for_unknown_kid()
        now[0] += 5
        assert not await provider.refetch_for_unknown_kid()
        now[0] += 5
        assert await provider.refetch_for_unknown_kid()
    finally:
        await provider.close()


# --- what a key set's keys do, and what the provider tells operators ------------------------


def test_a_prepared_key_verifies_its_issuers_signature() -> None:
    (key,) = KeySet.from_jwks({"keys": [RSA_JWK | {"kid": "r"}]}).keys
    token = pyjwt.encode({"sub": "x"}, RSA_KEY, algorithm="PS256", headers={"kid": "r"})
    assert pyjwt.decode(token, key.key, algorithms=["PS256"]) == {"sub": "x"}


def test_the_skipped_keys_line_names_each_key_by_position_and_kid(
    caplog: pytest.LogCaptureFixture,
) -> None:
    document = {"keys": [RSA_JWK | {"kid": "ok"}, "RSA", OCT_JWK | {"kid": "secret"}]}
    with caplog.at_level(logging.INFO, logger="gateway.auth.jwks"):
        KeySet.from_jwks(document)
    (record,) = caplog.records
    count, listed = record.args  # type: ignore[misc]
    assert count == 2
    first, second = listed.split("; ")
    assert first.startswith("#1 kid=None: ") and second.startswith("#2 kid='secret': ")
    assert "kid='ok'" not in record.getMessage()


async def test_a_provider_finds_by_kid_and_nothing_before_its_keys_load(
    issuer: TestIssuer, session: aiohttp.ClientSession, start: Start
) -> None:
    assert KeySetProvider(issuer.config(), session).find("any", "RS256") is None
    provider = await start(issuer.config())
    issuer.rotate("RS256")  # two RSA keys now: a kid is what tells them apart
    assert await provider.refetch_for_unknown_kid()
    rsa_kids = [kid for kid in issuer.published if issuer.signing_keys[kid].family == "rsa"]
    assert len(rsa_kids) == 2
    for kid in rsa_kids:
        assert provider.find(kid, "RS256").kid == kid  # type: ignore[union-attr]


async def test_fetch_outcomes_are_logged_with_the_issuer_and_what_is_kept(
    issuer: TestIssuer, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator with many issuers must see which one failed, why, and whether tokens
    still verify (the last good set kept, or none loaded yet)."""
    config = issuer.config(refresh={"unknown_kid_interval": 0})
    with caplog.at_level(logging.INFO, logger="gateway.auth.jwks"):
        issuer.jwks_status = 500
        provider = await start(config)
        issuer.jwks_status = 200
        assert await provider.refetch_for_unknown_kid()
        issuer.jwks_status = 500
        assert not await provider.refetch_for_unknown_kid()
    failed_first, loaded, failed_later = (r for r in caplog.records if r.name.endswith("jwks"))
    for record in (failed_first, failed_later):
        key, error, _ = record.args  # type: ignore[misc]
        assert key == config.key and isinstance(error, FetchError)
    assert failed_first.args[2] != failed_later.args[2]  # type: ignore[index]
    assert loaded.args == (config.key, len(issuer.published))


async def test_an_unexpected_fetch_error_is_logged_with_the_issuer(
    issuer: TestIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    """Anything but a fetch or discovery failure (here aiohttp's RuntimeError for a closed
    session) is logged with its traceback and the issuer, never raised to the caller."""
    config = issuer.config(refresh={"unknown_kid_interval": 0})
    async with aiohttp.ClientSession() as closed:
        provider = KeySetProvider(config, closed)
        await provider.start()
    try:
        with caplog.at_level(logging.ERROR, logger="gateway.auth.jwks"):
            assert not await provider.refetch_for_unknown_kid()
    finally:
        await provider.close()
    (record,) = caplog.records
    assert record.args == (config.key,) and record.exc_info is not None


async def test_reload_inherits_the_discovered_jwks_uri_when_discovery_is_down(
    issuer: TestIssuer, start: Start
) -> None:
    """A provider built at reload while the metadata endpoint is down takes the running
    one's keys and its jwks_uri too, so its own refreshes reach the keys meanwhile."""
    config = issuer.config(refresh={"unknown_kid_interval": 0})
    running = await start(config)
    issuer.discovery_status = 503
    fresh = await start(config)
    assert not fresh.ready
    fresh.inherit(running)
    kid = issuer.rotate("ES256")
    assert await fresh.refetch_for_unknown_kid()
    assert fresh.find(kid, "ES256") is not None


async def test_discovery_hanging_at_start_is_bounded_by_the_timeout(
    issuer: TestIssuer, start: Start
) -> None:
    issuer.discovery_hang = True
    provider = await asyncio.wait_for(start(issuer.config(http={"timeout": 1})), 10)
    assert not provider.ready and issuer.discovery_fetches == 1


class _EveryNameIsLoopback(aiohttp.abc.AbstractResolver):
    """Resolves any name to 127.0.0.1: an issuer reached by a name that is no loopback name."""

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, Any]]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port,
                 "family": socket.AF_INET, "proto": 0, "flags": 0}]  # fmt: skip

    async def close(self) -> None:
        return None


async def test_insecure_http_reaches_an_issuer_by_a_non_loopback_name(issuer: TestIssuer) -> None:
    """insecure_http is the operator's opt-in to plain http beyond loopback: it must reach
    both the metadata and the JWK Set there (and without it, neither is fetched)."""
    port = issuer.url.rsplit(":", 1)[1]
    named = f"http://issuer.test:{port}"
    issuer.metadata_overrides = {"issuer": named, "jwks_uri": named + "/jwks"}
    connector = aiohttp.TCPConnector(resolver=_EveryNameIsLoopback())
    async with aiohttp.ClientSession(connector=connector) as session:
        for insecure, ready in ((False, False), (True, True)):
            config = issuer.config(issuer=named, http={"insecure_http": insecure})
            provider = KeySetProvider(config, session)
            await provider.start()
            await provider.close()
            assert provider.ready is ready
    assert issuer.discovery_fetches == issuer.jwks_fetches == 1


async def test_an_open_breaker_refuses_a_refetch_without_asking_the_issuer(
    issuer: TestIssuer, start: Start
) -> None:
    issuer.jwks_status = 500
    config = issuer.config(
        refresh={"unknown_kid_interval": 0, "retry": 3600},
        http={"breaker": {"failures": 2, "open_for": 60}},
    )
    provider = await start(config)
    assert not await provider.refetch_for_unknown_kid()  # the second failure opens it
    fetches = issuer.jwks_fetches
    issuer.jwks_status = 200
    assert not await provider.refetch_for_unknown_kid()
    assert issuer.jwks_fetches == fetches and not provider.ready


async def test_background_tasks_are_named_for_their_issuer_and_close_twice(
    issuer: TestIssuer, session: aiohttp.ClientSession
) -> None:
    """A task dump (asyncio debug, py-spy) names each issuer's refresh and refetch."""
    config = issuer.config(refresh={"unknown_kid_interval": 0})
    provider = KeySetProvider(config, session)
    await provider.start()
    issuer.jwks_delay = 0.2
    refetch = asyncio.ensure_future(provider.refetch_for_unknown_kid())
    await asyncio.sleep(0.05)
    names = {task.get_name() for task in asyncio.all_tasks()}
    assert {f"jwks-refresh:{config.key}", f"jwks-refetch:{config.key}"} <= names
    assert await refetch
    await provider.close()
    await provider.close()
