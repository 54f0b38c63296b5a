"""DPoP (RFC 9449) end to end: oidc-provider binds access tokens to a client's ES256 key
(a JWT with ``cnf.jkt``, and an opaque token whose introspection answer carries it), the
client calls through the gateway with ``Authorization: DPoP`` and a fresh proof per request,
and every way of getting a proof wrong is refused with the exact RFC 9449 §7.1 challenge.

Tokens come from the provider's token endpoint with a real proof (RFC 9449 §5); proofs to
the gateway are signed with the client's real key; the gateway learns the binding only from
the token (JWT) or from the provider's introspection answer (opaque).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from tests.e2e.harness import free_ports, gateway_config, gateways_at
from tests.e2e.oidc import ES256_RESOURCE, JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.support.dpop import ClientKey, client_key, proof
from tests.support.upstream import RecordingUpstream

ALGS = 'algs="ES256 PS256 RS256 EdDSA"'
INTROSPECTION = "POST /token/introspection"
NONCE_SECRET = "a-nonce-secret-of-at-least-32-bytes-shared-by-replicas"
IDENTITY = {"X-Auth-Subject": "{sub}", "X-Auth-Client-Id": "{client_id}",
            "X-Auth-Jkt": "{cnf_jkt}", "X-Auth-Scopes": "{scope}"}  # fmt: skip
RESOURCES = {"jwt": JWT_RESOURCE, "es256": ES256_RESOURCE, "opaque": OPAQUE_RESOURCE}


def dpop_config(
    oidc: OidcProvider, upstream: str, base: str, redis: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The harness gateway plus three DPoP routes; ``base`` is the URL clients use."""
    config = gateway_config(oidc, upstream, redis=redis)
    dpop: dict[str, Any] = {"mode": "required", "external_url": base}
    if redis is not None:  # replicas share the seen proofs (one store for every route)
        config.setdefault("defaults", {})["dpop"] = {"replay": {"redis": True}}
    read = {"scopes": {"all": ["orders:read"]}}
    config["routes"] = [
        {"name": "dpop", "match": {"path": {"prefix": "/dpop"}}, "upstream": "orders",
         "require": read, "dpop": dpop, "identity_headers": IDENTITY},
        {"name": "either", "match": {"path": {"prefix": "/either"}}, "upstream": "orders",
         "require": read, "dpop": {**dpop, "mode": "optional"}, "identity_headers": IDENTITY},
        {"name": "nonce", "match": {"path": {"prefix": "/nonce"}}, "upstream": "orders",
         "require": read, "dpop": {**dpop, "nonce": {"secret": NONCE_SECRET}},
         "identity_headers": IDENTITY},
        *config["routes"],
    ]  # fmt: skip
    config["resources"] = [{"resource": f"{base}/dpop", "routes": ["dpop"]}]
    return config


def claims_of(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return claims


async def dpop_token(oidc: OidcProvider, key: ClientKey, resource: str) -> str:
    """RFC 9449 §5: a token request with a proof for the token endpoint (no ``ath``)."""
    token_proof = proof(key, htm="POST", htu=oidc.issuer + "/token", token=None)
    form = {"grant_type": "client_credentials", "resource": resource, "scope": "orders:read"}
    status, body = await oidc.token_request("service", form, {"DPoP": token_proof})
    assert status == 200, body
    assert body["token_type"] == "DPoP", body  # RFC 9449 §5.1
    token: str = body["access_token"]
    return token


async def bearer_token(oidc: OidcProvider, resource: str) -> str:
    return await oidc.client_credentials(resource, "orders:read")


async def send(
    gateway: Gateway, path: str, headers: dict[str, str], method: str = "GET"
) -> tuple[int, dict[str, str]]:
    url = f"http://127.0.0.1:{gateway.proxy_port}{path}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers) as r,
    ):
        await r.read()
        return r.status, dict(r.headers)


class DpopClient:
    """A DPoP client as RFC 9449 describes it: a fresh proof per request (§4.2), and on
    ``use_dpop_nonce`` one retry with the nonce the server sent in ``DPoP-Nonce`` (§9)."""

    def __init__(self, key: ClientKey, base: str) -> None:
        self.key = key
        self.base = base
        self.nonce: str | None = None
        self.retries = 0
        self.sent: list[str] = []  # every proof, to check none of them is ever logged

    def headers(self, token: str, method: str, path: str) -> dict[str, str]:
        claims = {} if self.nonce is None else {"nonce": self.nonce}
        signed = proof(self.key, htm=method, htu=self.base + path, token=token, claims=claims)
        self.sent.append(signed)
        return {"Authorization": f"DPoP {token}", "DPoP": signed}

    async def call(
        self, gateway: Gateway, token: str, path: str, method: str = "GET"
    ) -> tuple[int, dict[str, str]]:
        status, headers = await send(gateway, path, self.headers(token, method, path), method)
        challenge = headers.get("WWW-Authenticate", "")
        if status == 401 and 'error="use_dpop_nonce"' in challenge and "DPoP-Nonce" in headers:
            self.nonce = headers["DPoP-Nonce"]
            self.retries += 1
            status, headers = await send(gateway, path, self.headers(token, method, path), method)
        return status, headers


@pytest.fixture
async def orders() -> Any:
    server = RecordingUpstream(name="orders")
    await server.start()
    yield server
    await server.close()


# --- a DPoP client through the gateway --------------------------------------------------


@pytest.mark.parametrize("kind", ["jwt", "es256", "opaque"])
async def test_a_dpop_bound_token_from_the_provider_passes_with_a_fresh_proof_per_request(
    oidc: OidcProvider,
    orders: RecordingUpstream,
    tmp_path: Path,
    cache_kind: str,
    shared_cache: dict[str, Any] | None,
    kind: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ports = free_ports(2 if cache_kind == "redis" else 1)
    base = f"http://127.0.0.1:{ports[0]}"
    key = client_key("ES256")
    token = await dpop_token(oidc, key, RESOURCES[kind])
    if kind == "opaque":
        # The binding reaches the gateway only through RFC 7662: RFC 9449 §6.2 puts it in
        # the introspection answer as cnf.jkt, with token_type DPoP.
        assert token.count(".") == 0
        answer = await oidc.introspect(token)
        assert answer["active"] is True and answer["cnf"] == {"jkt": key.jkt}, answer
        assert answer["token_type"] == "DPoP", answer
    else:
        assert claims_of(token)["cnf"] == {"jkt": key.jkt}  # RFC 9449 §6.1
    oidc.reset_counters()
    client = DpopClient(key, base)
    async with gateways_at(
        tmp_path, dpop_config(oidc, orders.url, base, shared_cache), ports
    ) as gws:
        for index in range(4):  # alternating replicas when there are two
            status, _ = await client.call(gws[index % len(gws)], token, f"/dpop/orders/{index}")
            assert status == 200
    assert len(orders.received) == 4
    for index, seen in enumerate(orders.received):
        assert seen.raw_path == f"/dpop/orders/{index}"
        assert seen.header("X-Auth-Client-Id") == "service"
        assert seen.header("X-Auth-Jkt") == key.jkt  # the binding, for the upstream's audit
        assert seen.header("X-Auth-Scopes") == "orders:read"
        assert seen.header("DPoP") is None  # RFC 9449: the proof was for the gateway
    # The opaque token is introspected (cached after the first answer); a JWT never is.
    introspected = oidc.count(INTROSPECTION)
    assert (introspected >= 1) if kind == "opaque" else (introspected == 0)
    # The access log says how the token was presented, and never holds it or a proof.
    logged = capsys.readouterr().out
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    assert [line["token_type"] for line in lines if line["route"] == "dpop"] == ["dpop"] * 4
    assert token not in logged and not any(sent in logged for sent in client.sent)


# --- every way of getting it wrong --------------------------------------------------------


def _old_iat() -> dict[str, Any]:
    return {"iat": int(time.time()) - 120}  # the gateway accepts 60 s after iat (max_age)


ATTACKS: dict[str, tuple[str, str]] = {
    # attack: (error code, error_description) of the DPoP challenge, RFC 9449 §7.1
    "wrong-htm": ("invalid_dpop_proof", "The DPoP proof was made for another HTTP method."),
    "wrong-htu": ("invalid_dpop_proof", "The DPoP proof was made for another URI."),
    "wrong-ath": ("invalid_dpop_proof", "The DPoP proof was made for another access token."),
    "expired-iat": ("invalid_dpop_proof", "The DPoP proof is too old."),
    # RFC 9449 §7.1 Figure 16: a valid proof by a key the token is not bound to.
    "foreign-key": ("invalid_token", "Invalid DPoP key binding"),
    "no-proof": ("invalid_dpop_proof", "The request carries no DPoP proof."),
    "two-proofs": ("invalid_dpop_proof", "The request carries more than one DPoP header."),
}


def attack_proof(attack: str, key: ClientKey, token: str, htu: str) -> list[str]:
    """The ``DPoP`` header values a client sends in ``attack``."""
    if attack == "no-proof":
        return []
    if attack == "two-proofs":
        return [proof(key, htu=htu, token=token), proof(key, htu=htu, token=token)]
    options: dict[str, Any] = {
        "wrong-htm": {"htm": "POST"},
        "wrong-htu": {"htu": htu.replace("/dpop/", "/elsewhere/")},
        "wrong-ath": {"token": token + "x"},
        "expired-iat": _old_iat(),
    }.get(attack, {})
    signer = client_key("ES256") if attack == "foreign-key" else key
    return [proof(signer, **{"htu": htu, "token": token, **options})]


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("kind", ["jwt", "opaque"])
async def test_a_proof_that_does_not_fit_is_refused_with_the_exact_dpop_challenge(
    oidc: OidcProvider, orders: RecordingUpstream, tmp_path: Path, attack: str, kind: str
) -> None:
    ports = free_ports(1)
    base = f"http://127.0.0.1:{ports[0]}"
    key = client_key("ES256")
    token = await dpop_token(oidc, key, RESOURCES[kind])
    error, description = ATTACKS[attack]
    metadata = f'resource_metadata="{base}/.well-known/oauth-protected-resource/dpop"'
    async with gateways_at(tmp_path, dpop_config(oidc, orders.url, base), ports) as (gw,):
        url = f"http://127.0.0.1:{gw.proxy_port}/dpop/orders/1"
        values = attack_proof(attack, key, token, f"{base}/dpop/orders/1")
        headers = [("Authorization", f"DPoP {token}")] + [("DPoP", v) for v in values]
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
            status, challenge = r.status, r.headers.get("WWW-Authenticate")
    assert status == 401
    assert challenge == (
        f'DPoP realm="gateway", error="{error}", error_description="{description}", '
        f"{ALGS}, {metadata}"
    )
    assert orders.received == []


async def test_a_replayed_proof_is_refused_here_and_on_the_other_replica(
    oidc: OidcProvider,
    orders: RecordingUpstream,
    tmp_path: Path,
    cache_kind: str,
    shared_cache: dict[str, Any] | None,
) -> None:
    """RFC 9449 §11.1: a proof is accepted once; with ``replay.redis`` replicas share that."""
    ports = free_ports(2 if cache_kind == "redis" else 1)
    base = f"http://127.0.0.1:{ports[0]}"
    key = client_key("ES256")
    token = await dpop_token(oidc, key, JWT_RESOURCE)
    signed = proof(key, htu=f"{base}/dpop/orders/1", token=token)
    headers = {"Authorization": f"DPoP {token}", "DPoP": signed}
    async with gateways_at(
        tmp_path, dpop_config(oidc, orders.url, base, shared_cache), ports
    ) as gws:
        assert (await send(gws[0], "/dpop/orders/1", headers))[0] == 200
        for gw in gws:  # the same replica, then (with Redis) the other one
            status, answer = await send(gw, "/dpop/orders/1", headers)
            assert status == 401
            assert answer["WWW-Authenticate"].startswith(
                'DPoP realm="gateway", error="invalid_dpop_proof", '
                'error_description="The DPoP proof was already used.", ' + ALGS
            )
    assert len(orders.received) == 1


async def test_a_dpop_bound_token_sent_as_bearer_is_refused(
    oidc: OidcProvider, orders: RecordingUpstream, tmp_path: Path
) -> None:
    """RFC 9449 §7.2: "such a protected resource MUST reject a DPoP-bound access token
    received as a bearer token"; the Bearer challenge carries the error, and a DPoP one says
    what would work (Figure 18), on a route that requires DPoP, one that allows both, and a
    plain bearer route that does not speak DPoP at all."""
    ports = free_ports(1)
    base = f"http://127.0.0.1:{ports[0]}"
    token = await dpop_token(oidc, client_key("ES256"), JWT_RESOURCE)
    bearer = {"Authorization": f"Bearer {token}"}
    description = (
        "The access token is bound to a DPoP key: send it with the DPoP scheme and a proof."
    )
    metadata = f'resource_metadata="{base}/.well-known/oauth-protected-resource/dpop"'
    async with gateways_at(tmp_path, dpop_config(oidc, orders.url, base), ports) as (gw,):
        status, headers = await send(gw, "/dpop/orders/1", bearer)
        assert status == 401
        assert headers["WWW-Authenticate"] == (
            f'Bearer realm="gateway", error="invalid_token", error_description="{description}", '
            f'{metadata}, DPoP realm="gateway", {ALGS}, {metadata}'
        )
        status, headers = await send(gw, "/either/orders/1", bearer)
        assert status == 401
        assert headers["WWW-Authenticate"] == (
            f'Bearer realm="gateway", error="invalid_token", error_description="{description}", '
            f'DPoP realm="gateway", {ALGS}'
        )
        status, headers = await send(gw, "/orders/1", bearer)  # dpop: off
        assert status == 401
        assert headers["WWW-Authenticate"] == (
            'Bearer realm="gateway", error="invalid_token", error_description="The access '
            'token is bound to a DPoP key, which this route does not accept."'
        )
    assert orders.received == []


async def test_a_plain_bearer_token_is_refused_where_dpop_is_required(
    oidc: OidcProvider, orders: RecordingUpstream, tmp_path: Path
) -> None:
    ports = free_ports(1)
    base = f"http://127.0.0.1:{ports[0]}"
    token = await bearer_token(oidc, JWT_RESOURCE)
    metadata = f'resource_metadata="{base}/.well-known/oauth-protected-resource/dpop"'
    async with gateways_at(tmp_path, dpop_config(oidc, orders.url, base), ports) as (gw,):
        status, headers = await send(gw, "/dpop/orders/1", {"Authorization": f"Bearer {token}"})
        assert status == 401
        assert headers["WWW-Authenticate"] == (
            'DPoP realm="gateway", error="invalid_token", error_description="This resource '
            f'accepts only DPoP-bound access tokens.", {ALGS}, {metadata}'
        )
        # Sent with the DPoP scheme and a proof, an unbound token is no better (§7.1).
        client = DpopClient(client_key("ES256"), base)
        status, headers = await client.call(gw, token, "/dpop/orders/1")
        assert status == 401
        assert headers["WWW-Authenticate"].startswith(
            'DPoP realm="gateway", error="invalid_token", '
            'error_description="The access token is not bound to a DPoP key."'
        )
        # Where DPoP is optional the same bearer token is fine.
        status, _ = await send(gw, "/either/orders/1", {"Authorization": f"Bearer {token}"})
        assert status == 200
    assert [seen.raw_path for seen in orders.received] == ["/either/orders/1"]


async def test_a_client_retries_with_the_server_nonce_and_gets_through(
    oidc: OidcProvider, orders: RecordingUpstream, tmp_path: Path
) -> None:
    """RFC 9449 §9: the resource server answers ``use_dpop_nonce`` with a ``DPoP-Nonce``
    header; the client's next proof carries it and is accepted; a made-up nonce is not."""
    ports = free_ports(1)
    base = f"http://127.0.0.1:{ports[0]}"
    key = client_key("ES256")
    token = await dpop_token(oidc, key, JWT_RESOURCE)
    client = DpopClient(key, base)
    async with gateways_at(tmp_path, dpop_config(oidc, orders.url, base), ports) as (gw,):
        status, first = await send(
            gw, "/nonce/orders/1", client.headers(token, "GET", "/nonce/orders/1")
        )
        assert status == 401
        assert first["WWW-Authenticate"] == (
            'DPoP realm="gateway", error="use_dpop_nonce", error_description="The resource '
            f'server requires a fresh nonce in the DPoP proof.", {ALGS}'
        )
        assert first["Cache-Control"] == "no-store"  # RFC 9449 §8.2
        assert (await client.call(gw, token, "/nonce/orders/2"))[0] == 200
        assert client.retries == 1 and client.nonce == first["DPoP-Nonce"]
        assert (await client.call(gw, token, "/nonce/orders/3"))[0] == 200  # the nonce holds
        assert client.retries == 1
        client.nonce = secrets.token_urlsafe(18)  # not one the gateway made
        status, headers = await send(
            gw, "/nonce/orders/4", client.headers(token, "GET", "/nonce/orders/4")
        )
        assert status == 401 and 'error="use_dpop_nonce"' in headers["WWW-Authenticate"]
    assert [seen.raw_path for seen in orders.received] == ["/nonce/orders/2", "/nonce/orders/3"]


async def test_the_dpop_resource_metadata_says_dpop_bound_tokens_are_required(
    oidc: OidcProvider, orders: RecordingUpstream, tmp_path: Path
) -> None:
    """RFC 9728 §2: ``dpop_signing_alg_values_supported`` and
    ``dpop_bound_access_tokens_required`` for a resource whose routes require DPoP."""
    ports = free_ports(1)
    base = f"http://127.0.0.1:{ports[0]}"
    async with gateways_at(tmp_path, dpop_config(oidc, orders.url, base), ports) as (gw,):
        url = f"http://127.0.0.1:{gw.proxy_port}/.well-known/oauth-protected-resource/dpop"
        async with aiohttp.ClientSession() as session, session.get(url) as r:
            assert r.status == 200
            document = await r.json()
    assert document["resource"] == f"{base}/dpop"
    assert document["authorization_servers"] == [oidc.issuer]
    algorithms = document["dpop_signing_alg_values_supported"]
    assert sorted(algorithms) == ["ES256", "EdDSA", "PS256", "RS256"]
    assert document["dpop_bound_access_tokens_required"] is True
    assert orders.received == []
