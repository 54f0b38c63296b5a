"""DPoP (RFC 9449), certificate-bound tokens (RFC 8705) and RFC 9728 metadata through the
real gateway: real proofs signed with client keys, a real issuer, a recording upstream."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict

from tests.support.dpop import client_key, proof
from tests.support.gateway import ready_gateway
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream

EXTERNAL = "https://api.example.test"
RESOURCE = "https://api.example.test/mcp"


def config(issuer: TestIssuer, upstream: RecordingUpstream, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": [{"issuer": issuer.url, "audiences": ["api://default"]}],
        "routes": [
            {"name": "dpop", "match": {"path": {"prefix": "/dpop"}}, "upstream": "app",
             "dpop": {"mode": "required", "external_url": EXTERNAL}},
            {"name": "either", "match": {"path": {"prefix": "/either"}}, "upstream": "app",
             "dpop": {"mode": "optional", "external_url": EXTERNAL}},
            {"name": "mcp", "match": {"path": {"prefix": "/mcp"}}, "upstream": "app",
             "require": {"scopes": {"all": ["mcp:tools"]}}},
            {"name": "plain", "match": {"path": {"prefix": "/"}}, "upstream": "app"},
        ],
        "resources": [{"resource": RESOURCE, "routes": ["mcp"],
                       "resource_documentation": "https://docs.example.test/mcp"}],
    }  # fmt: skip
    base.update(extra)
    return base


async def call(
    gw: Any, path: str, headers: dict[str, str], local: str | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    """A GET from 127.0.0.1, or from ``local`` (another loopback address: another peer)."""
    connector = aiohttp.TCPConnector(local_addr=(local, 0)) if local else None
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"http://127.0.0.1:{gw.proxy_port}{path}", headers=headers) as r:
            return r.status, CIMultiDict(r.headers), await r.read()


@pytest.fixture
async def world(tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream):
    async with ready_gateway(tmp_path, config(issuer, upstream)) as gw:
        yield gw, issuer, upstream


async def test_a_dpop_bound_token_with_its_proof_passes_and_the_proof_stays_here(world) -> None:
    gw, issuer, upstream = world
    key = client_key("ES256")
    token = issuer.mint({"cnf": {"jkt": key.jkt}})
    dpop = proof(key, htu=f"{EXTERNAL}/dpop/orders", token=token)
    status, _, _ = await call(
        gw, "/dpop/orders?x=1", {"Authorization": f"DPoP {token}", "DPoP": dpop}
    )
    assert status == 200
    assert upstream.last.header("DPoP") is None  # the proof was for the gateway
    assert upstream.last.header("X-Auth-Subject") == "user-1"


@pytest.mark.parametrize(
    ("case", "change", "error"),
    [
        pytest.param("wrong-htu", {"htu": f"{EXTERNAL}/elsewhere"}, "invalid_dpop_proof", id="htu"),
        pytest.param("wrong-htm", {"htm": "POST"}, "invalid_dpop_proof", id="htm"),
        pytest.param("wrong-ath", {"token": "another-token"}, "invalid_dpop_proof", id="ath"),
        pytest.param("old-iat", {"iat": 1_000_000}, "invalid_dpop_proof", id="expired-iat"),
        pytest.param("foreign-key", {"key": "other"}, "invalid_token", id="foreign-key"),
        # The refused alg is quoted in the detail: outside ASCII it had made the answer a 500.
        pytest.param(
            "odd-alg",
            {"header": {"alg": 'ES\u0100"\\'}},
            "invalid_dpop_proof",
            id="alg-outside-the-description-charset",
        ),
    ],
)
async def test_a_proof_that_does_not_fit_is_refused_with_the_dpop_challenge(
    world, case: str, change: dict[str, Any], error: str
) -> None:
    gw, issuer, upstream = world
    key = client_key("ES256")
    token = issuer.mint({"cnf": {"jkt": key.jkt}})
    signer = client_key("ES256") if change.get("key") else key
    options: dict[str, Any] = {"htu": f"{EXTERNAL}/dpop/x", "token": token}
    options.update({k: v for k, v in change.items() if k != "key"})
    dpop = proof(signer, **options)
    status, headers, _ = await call(gw, "/dpop/x", {"Authorization": f"DPoP {token}", "DPoP": dpop})
    assert status == 401, case
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith('DPoP realm="gateway", error="' + error + '"'), challenge
    assert 'algs="ES256 PS256 RS256 EdDSA"' in challenge
    description = challenge.split('error_description="', 1)[1].split('"', 1)[0]
    assert all(" " <= c <= "~" and c not in '"\\' for c in description), description  # §3
    assert upstream.received == []


async def test_a_replayed_proof_is_refused(world) -> None:
    gw, issuer, upstream = world
    key = client_key("ES256")
    token = issuer.mint({"cnf": {"jkt": key.jkt}})
    dpop = proof(key, htu=f"{EXTERNAL}/dpop/x", token=token)
    headers = {"Authorization": f"DPoP {token}", "DPoP": dpop}
    assert (await call(gw, "/dpop/x", headers))[0] == 200
    status, answer, _ = await call(gw, "/dpop/x", headers)
    assert status == 401 and "already used" in answer["WWW-Authenticate"]
    assert len(upstream.received) == 1


async def test_a_dpop_bound_token_sent_as_bearer_is_refused_with_both_challenges(world) -> None:
    gw, issuer, upstream = world
    key = client_key("ES256")
    token = issuer.mint({"cnf": {"jkt": key.jkt}})
    for path in ("/either/x", "/dpop/x", "/plain/x"):
        status, headers, _ = await call(gw, path, {"Authorization": f"Bearer {token}"})
        assert status == 401, path
    status, headers, _ = await call(gw, "/either/x", {"Authorization": f"Bearer {token}"})
    assert headers["WWW-Authenticate"].startswith('Bearer realm="gateway", error="invalid_token"')
    assert ', DPoP realm="gateway", algs=' in headers["WWW-Authenticate"]
    assert upstream.received == []


async def test_challenges_say_which_schemes_a_route_takes(world) -> None:
    gw, issuer, _ = world
    assert (await call(gw, "/dpop/x", {}))[1]["WWW-Authenticate"] == (
        'DPoP realm="gateway", algs="ES256 PS256 RS256 EdDSA"'
    )
    assert (await call(gw, "/either/x", {}))[1]["WWW-Authenticate"] == (
        'Bearer realm="gateway", DPoP realm="gateway", algs="ES256 PS256 RS256 EdDSA"'
    )
    assert (await call(gw, "/plain/x", {}))[1]["WWW-Authenticate"] == 'Bearer realm="gateway"'
    plain = issuer.mint()  # an unbound token: fine as Bearer where DPoP is optional...
    assert (await call(gw, "/either/x", {"Authorization": f"Bearer {plain}"}))[0] == 200
    # ...and refused where DPoP is required, with the DPoP scheme carrying the error.
    status, headers, _ = await call(gw, "/dpop/x", {"Authorization": f"Bearer {plain}"})
    assert status == 401 and headers["WWW-Authenticate"].startswith('DPoP realm="gateway", error=')


# --- RFC 9728 ----------------------------------------------------------------------------


async def test_the_metadata_document_is_served_by_the_gateway_and_cacheable(world) -> None:
    gw, issuer, upstream = world
    path = "/.well-known/oauth-protected-resource/mcp"
    status, headers, body = await call(gw, path, {})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    document = json.loads(body)
    assert document == {
        "resource": RESOURCE,
        "authorization_servers": [issuer.url],
        "scopes_supported": ["mcp:tools"],
        "bearer_methods_supported": ["header"],
        "resource_documentation": "https://docs.example.test/mcp",
    }
    assert "max-age" in headers["Cache-Control"]
    status, _, body = await call(gw, path, {"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b""
    assert upstream.received == []  # never forwarded
    # Never built from what the client says it is talking to.
    status, _, body = await call(gw, path, {"Host": "evil.example", "X-Forwarded-Host": "evil"})
    assert json.loads(body)["resource"] == RESOURCE


async def test_challenges_of_a_resource_name_its_metadata_and_the_scope_to_ask_for(world) -> None:
    gw, issuer, _ = world
    meta = 'resource_metadata="https://api.example.test/.well-known/oauth-protected-resource/mcp"'
    status, headers, _ = await call(gw, "/mcp", {})
    assert status == 401
    assert headers["WWW-Authenticate"] == f'Bearer realm="gateway", scope="mcp:tools", {meta}'
    token = issuer.mint(scope="read")
    status, headers, _ = await call(gw, "/mcp", {"Authorization": f"Bearer {token}"})
    assert status == 403  # step-up: the client learns what to ask for, and where to look
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    assert (
        'scope="mcp:tools"' in headers["WWW-Authenticate"] and meta in headers["WWW-Authenticate"]
    )


# --- RFC 8705 through a front proxy's certificate header --------------------------------


def certificate() -> tuple[str, str]:
    """A self-signed client certificate: (URL-encoded PEM, its x5t#S256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    der = cert.public_bytes(serialization.Encoding.DER)
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    return quote(pem, safe=""), thumbprint


def certificate_header_routes(header: str, trusted: list[str]) -> list[dict[str, Any]]:
    """One catch-all route taking the client certificate (RFC 8705 §3) from a front proxy's
    ``header``, URL-escaped PEM, believed only from a peer in ``trusted``."""
    certificates = {"mode": "optional", "source": "header", "header": header,
                    "header_format": "escaped_pem", "trusted_proxies": trusted}  # fmt: skip
    return [{"match": {"path": {"prefix": "/"}}, "upstream": "app",
             "client_certificates": certificates}]  # fmt: skip


@pytest.mark.parametrize(("trusted", "expected"), [(["127.0.0.1/32"], 200), (["10.0.0.0/8"], 401)])
async def test_a_certificate_bound_token_needs_the_certificate_from_a_trusted_proxy(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream, trusted, expected
) -> None:
    escaped, thumbprint = certificate()
    other, _ = certificate()
    routes = certificate_header_routes("X-SSL-Client-Cert", trusted)
    async with ready_gateway(tmp_path, config(issuer, upstream, routes=routes, resources=[])) as gw:
        token = issuer.mint({"cnf": {"x5t#S256": thumbprint}})
        good = {"Authorization": f"Bearer {token}", "X-SSL-Client-Cert": escaped}
        assert (await call(gw, "/x", good))[0] == expected
        wrong = {"Authorization": f"Bearer {token}", "X-SSL-Client-Cert": other}
        status, headers, _ = await call(gw, "/x", wrong)
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert (await call(gw, "/x", {"Authorization": f"Bearer {token}"}))[0] == 401
    assert len(upstream.received) == (1 if expected == 200 else 0)


async def test_a_certificate_header_from_an_untrusted_client_never_reaches_the_upstream(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    """The gateway ignores a certificate header from a peer outside trusted_proxies; the
    upstream must not get it either, whatever the header is called (an upstream that reads
    it would take the certificate the client typed for one a front proxy verified)."""
    escaped, _ = certificate()
    routes = certificate_header_routes("X-Client-Certificate", ["10.0.0.0/8"])
    async with ready_gateway(tmp_path, config(issuer, upstream, routes=routes, resources=[])) as gw:
        token = issuer.mint()
        sent = {"Authorization": f"Bearer {token}", "X-Client-Certificate": escaped}
        assert (await call(gw, "/x", sent))[0] == 200
    assert upstream.last.header("X-Client-Certificate") is None


async def test_a_peer_trusted_for_forwarding_only_cannot_vouch_for_a_certificate(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    """The certificate header's own list (client_certificates.trusted_proxies) decides who may
    set it, for the gateway and for the upstream alike: a peer trusted for X-Forwarded-For
    only neither binds a token with it nor passes it on; the certificate proxy does both."""
    escaped, thumbprint = certificate()
    certificates = {"mode": "optional", "source": "header", "header": "X-SSL-Client-Cert",
                    "header_format": "escaped_pem",
                    "trusted_proxies": ["127.0.0.2/32"]}  # fmt: skip
    routes = [{"match": {"path": {"prefix": "/"}}, "upstream": "app",
               "client_certificates": certificates}]  # fmt: skip
    forwarding = {"trusted_proxies": ["127.0.0.1/32"]}
    cfg = config(issuer, upstream, routes=routes, resources=[], forwarding=forwarding)
    async with ready_gateway(tmp_path, cfg) as gw:
        bound = issuer.mint({"cnf": {"x5t#S256": thumbprint}})
        sent = {"Authorization": f"Bearer {issuer.mint()}", "X-SSL-Client-Cert": escaped,
                "X-Forwarded-For": "198.51.100.7"}  # fmt: skip
        assert (await call(gw, "/x", sent))[0] == 200
        assert "198.51.100.7" in (upstream.last.header("X-Forwarded-For") or "")  # believed
        assert upstream.last.header("X-SSL-Client-Cert") is None  # not believed: removed
        injected = {"Authorization": f"Bearer {bound}", "X-SSL-Client-Cert": escaped}
        status, headers, _ = await call(gw, "/x", injected)
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert (await call(gw, "/x", injected, local="127.0.0.2"))[0] == 200
        assert upstream.last.header("X-SSL-Client-Cert") == escaped  # its proxy's: passed on
    assert len(upstream.received) == 2


async def test_an_anonymous_route_under_dpop_defaults_keeps_the_proof_too(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    """defaults.dpop covers public routes as well: a request let through without an identity
    (no token, or a proof that does not fit on an identify_anonymous route) does not carry
    the client's proof to the upstream either."""
    routes = [
        {"name": "open", "match": {"path": {"prefix": "/open"}}, "upstream": "app",
         "auth": "anonymous", "identify_anonymous": True},
        {"name": "public", "match": {"path": {"prefix": "/"}}, "upstream": "app",
         "auth": "anonymous"},
    ]  # fmt: skip
    defaults = {"dpop": {"mode": "optional", "external_url": EXTERNAL}}
    async with ready_gateway(
        tmp_path, config(issuer, upstream, routes=routes, resources=[], defaults=defaults)
    ) as gw:
        key = client_key("ES256")
        token = issuer.mint({"cnf": {"jkt": key.jkt}})
        stale = proof(key, htu=f"{EXTERNAL}/elsewhere", token=token)
        sent = {"Authorization": f"DPoP {token}", "DPoP": stale}
        for path in ("/open/x", "/x"):
            assert (await call(gw, path, sent))[0] == 200
            assert upstream.last.header("DPoP") is None, path
            assert upstream.last.header("X-Auth-Subject") is None
        assert (await call(gw, "/x", {"DPoP": stale}))[0] == 200
        assert upstream.last.header("DPoP") is None


async def test_a_reload_that_would_leave_the_replay_store_unshared_is_refused(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    """The replay store is kept across reloads (a proof must not become usable again). A
    reload turning on replay.redis would keep the memory-only store, so replicas would not
    share proofs although the config says they do: the reload is refused instead."""
    from gateway.config.errors import ConfigError
    from gateway.config.loader import load_config
    from tests.support.gateway import write_config
    from tests.support.redis import TEST_CACHE_KEY, redis_url_or_start

    with redis_url_or_start() as redis_url:
        redis = {"url": redis_url, "timeout": "500ms", "key": TEST_CACHE_KEY}
        cfg = config(issuer, upstream, resources=[], cache={"redis": redis})
        cfg["defaults"] = {"dpop": {"mode": "optional", "external_url": EXTERNAL}}
        async with ready_gateway(tmp_path, cfg) as gw:
            kept = gw.holder.current.replay
            cfg["defaults"]["dpop"]["replay"] = {"redis": True}
            with pytest.raises(ConfigError, match="restart"):
                await gw.reload(load_config(write_config(tmp_path, cfg), env={}))
            assert gw.holder.current.replay is kept
            cfg["defaults"]["dpop"].pop("replay")
            await gw.reload(load_config(write_config(tmp_path, cfg), env={}))  # unchanged: fine
            assert gw.holder.current.replay is kept


async def test_a_reload_that_moves_the_replay_stores_redis_is_refused(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    """The shared replay store keeps its Redis client across reloads. A reload naming another
    cache.redis would leave it recording proofs where the config no longer says (and a
    store started afresh there would let every proof still alive be used once more), so it
    is refused with the line of cache.redis, and proofs keep going to the first Redis."""
    import redis.asyncio as aioredis

    from gateway.config.errors import ConfigError
    from gateway.config.loader import load_config
    from tests.support.gateway import write_config
    from tests.support.redis import TEST_CACHE_KEY, RedisServer

    def redis_of(server: RedisServer) -> dict[str, Any]:
        return {"url": server.url, "timeout": "500ms", "key": TEST_CACHE_KEY}

    async def proof_keys(server: RedisServer) -> list[bytes]:
        client = aioredis.Redis.from_url(server.url)
        try:
            return [key async for key in client.scan_iter(match="gw:dpop:*")]
        finally:
            await client.aclose()

    with RedisServer() as first, RedisServer() as second:
        cfg = config(issuer, upstream, resources=[], cache={"redis": redis_of(first)})
        cfg["defaults"] = {"dpop": {"mode": "optional", "external_url": EXTERNAL,
                                    "replay": {"redis": True}}}  # fmt: skip
        async with ready_gateway(tmp_path, cfg) as gw:
            kept = gw.holder.current.replay
            cfg["cache"] = {"redis": redis_of(second)}
            with pytest.raises(ConfigError, match=r"gateway\.yaml:\d+: cache\.redis: .*restart"):
                await gw.reload(load_config(write_config(tmp_path, cfg), env={}))
            assert gw.holder.current.replay is kept
            key = client_key("ES256")
            token = issuer.mint({"cnf": {"jkt": key.jkt}})
            sent = {"Authorization": f"DPoP {token}",
                    "DPoP": proof(key, htu=f"{EXTERNAL}/dpop/x", token=token)}  # fmt: skip
            assert (await call(gw, "/dpop/x", sent))[0] == 200
        assert len(await proof_keys(first)) == 1 and await proof_keys(second) == []


async def test_one_key_signing_proofs_fast_fills_its_share_not_everyones_store(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream
) -> None:
    """One client with one DPoP-bound token can sign a fresh proof per request; each stays in
    the replay store for the proof lifetime. Past its key's share it gets 429 with
    Retry-After, and another client's proofs still fit (without the share the first client
    fills the store and every DPoP request on the replica gets 503)."""
    defaults = {"dpop": {"mode": "optional", "external_url": EXTERNAL,
                         "replay": {"max_entries": 8, "max_entries_per_key": 3}}}  # fmt: skip
    cfg = config(issuer, upstream, resources=[], defaults=defaults)
    async with ready_gateway(tmp_path, cfg) as gw:

        async def send(key: Any, token: str) -> tuple[int, CIMultiDict[str], bytes]:
            dpop = proof(key, htu=f"{EXTERNAL}/dpop/x", token=token)
            return await call(gw, "/dpop/x", {"Authorization": f"DPoP {token}", "DPoP": dpop})

        hog = client_key("ES256")
        hog_token = issuer.mint({"cnf": {"jkt": hog.jkt}})
        assert [(await send(hog, hog_token))[0] for _ in range(3)] == [200, 200, 200]
        status, headers, body = await send(hog, hog_token)
        assert status == 429 and 1 <= int(headers["Retry-After"]) <= 70  # iat + 60s + 5s
        assert json.loads(body)["type"].endswith("dpop-proofs-exceeded")
        assert "WWW-Authenticate" not in headers  # not a credential problem
        for _ in range(5):  # the rest of the store is everyone else's
            other = client_key("ES256")
            assert (await send(other, issuer.mint({"cnf": {"jkt": other.jkt}})))[0] == 200
    assert len(upstream.received) == 8
