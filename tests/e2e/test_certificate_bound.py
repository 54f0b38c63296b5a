"""Certificate-bound access tokens (RFC 8705) end to end: a client presents its certificate
in the TLS handshake with oidc-provider's token endpoint and gets a token bound to it
(``cnf["x5t#S256"]`` in the JWT, or in the introspection answer for an opaque token); the
gateway, behind a TLS-terminating front proxy, reads the certificate from that proxy's
header (the trusted-peer ``header`` source) and lets the token through only with the same
certificate.

The front proxy is the test itself (sending nginx's ``$ssl_client_escaped_cert`` and Envoy's
``X-Forwarded-Client-Cert`` as they would), and then a real nginx terminating mutual TLS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from tests.e2e.harness import gateway_config, gateways
from tests.e2e.oidc import JWT_RESOURCE, OPAQUE_RESOURCE, OidcProvider
from tests.support.certificates import Issued, TestCA
from tests.support.host_proxies import in_ci
from tests.support.processes import Children, free_port
from tests.support.upstream import RecordingUpstream

INVALID_TOKEN = 'Bearer realm="gateway", error="invalid_token", error_description='
RESOURCES = {"jwt": JWT_RESOURCE, "opaque": OPAQUE_RESOURCE}
IDENTITY = {"X-Auth-Client-Id": "{client_id}", "X-Auth-X5t": "{cnf_x5t}"}


def certificates(header: str, header_format: str, trusted: list[str]) -> dict[str, Any]:
    return {"mode": "required", "source": "header", "header": header,
            "header_format": header_format, "trusted_proxies": trusted}  # fmt: skip


def mtls_config(oidc: OidcProvider, upstream: str) -> dict[str, Any]:
    """Routes behind nginx (escaped PEM), behind Envoy (XFCC), and one trusting a proxy
    network this test is not in."""
    config = gateway_config(oidc, upstream)
    read = {"scopes": {"all": ["orders:read"]}}
    loopback = ["127.0.0.1/32"]
    config["routes"] = [
        {"name": "nginx", "match": {"path": {"prefix": "/nginx"}}, "upstream": "orders",
         "require": read, "identity_headers": IDENTITY,
         "client_certificates": certificates("X-SSL-Client-Cert", "escaped_pem", loopback)},
        {"name": "envoy", "match": {"path": {"prefix": "/envoy"}}, "upstream": "orders",
         "require": read, "identity_headers": IDENTITY,
         "client_certificates": certificates("X-Forwarded-Client-Cert", "xfcc", loopback)},
        {"name": "elsewhere", "match": {"path": {"prefix": "/elsewhere"}}, "upstream": "orders",
         "require": read, "identity_headers": IDENTITY,
         "client_certificates": certificates("X-SSL-Client-Cert", "escaped_pem",
                                             ["10.0.0.0/8"])},
        *config["routes"],
    ]  # fmt: skip
    return config


def claims_of(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    padded = segment + "=" * (-len(segment) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return claims


async def bound_token(oidc: OidcProvider, ca: TestCA, client: Issued, resource: str) -> str:
    """RFC 8705 §3: client credentials over mutual TLS with the provider; the token is bound
    to the certificate of that handshake."""
    form = {"grant_type": "client_credentials", "resource": resource, "scope": "orders:read"}
    status, body = await oidc.token_request("mtls-service", form, tls=ca.client_context(client))
    assert status == 200, body
    assert body["token_type"] == "Bearer", body  # RFC 8705 tokens keep the Bearer scheme
    token: str = body["access_token"]
    return token


async def send(gateway: Gateway, path: str, headers: dict[str, str]) -> tuple[int, str | None]:
    url = f"http://127.0.0.1:{gateway.proxy_port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
        await r.read()
        return r.status, r.headers.get("WWW-Authenticate")


@pytest.fixture
async def orders() -> AsyncIterator[RecordingUpstream]:
    server = RecordingUpstream(name="orders")
    await server.start()
    yield server
    await server.close()


@pytest.mark.parametrize("kind", ["jwt", "opaque"])
@pytest.mark.parametrize(
    ("path", "header", "render"),
    [
        pytest.param("/nginx/1", "X-SSL-Client-Cert", "escaped_pem", id="nginx-escaped-pem"),
        pytest.param("/envoy/1", "X-Forwarded-Client-Cert", "xfcc", id="envoy-xfcc"),
    ],
)
async def test_a_certificate_bound_token_passes_only_with_its_certificate(
    oidc: OidcProvider,
    test_ca: TestCA,
    orders: RecordingUpstream,
    tmp_path: Path,
    kind: str,
    path: str,
    header: str,
    render: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mine, other = test_ca.issue("client-a", server=False), test_ca.issue("client-b", server=False)
    token = await bound_token(oidc, test_ca, mine, RESOURCES[kind])
    if kind == "jwt":
        assert claims_of(token)["cnf"] == {"x5t#S256": mine.x5t_s256}  # RFC 8705 §3.1
    else:
        answer = await oidc.introspect(token)  # RFC 8705 §3.2
        assert answer["active"] is True and answer["cnf"] == {"x5t#S256": mine.x5t_s256}
    bearer = {"Authorization": f"Bearer {token}"}
    async with gateways(tmp_path, mtls_config(oidc, orders.url)) as (gw,):
        status, _ = await send(gw, path, {**bearer, header: getattr(mine, render)})
        assert status == 200
        # RFC 8705 §3: another certificate, or none: 401 invalid_token.
        status, challenge = await send(gw, path, {**bearer, header: getattr(other, render)})
        assert status == 401
        assert challenge == (
            INVALID_TOKEN + '"The access token is bound to another client certificate."'
        )
        status, challenge = await send(gw, path, bearer)
        assert status == 401
        assert challenge == (
            INVALID_TOKEN + '"The access token is bound to a client certificate and the '
            'request presented none."'
        )
        # From a peer that is not the trusted front proxy, the header is anyone's typing.
        status, challenge = await send(
            gw, "/elsewhere/1", {**bearer, "X-SSL-Client-Cert": mine.escaped_pem}
        )
        assert status == 401 and "presented none" in (challenge or "")
    assert len(orders.received) == 1
    assert orders.received[0].header("X-Auth-Client-Id") == "mtls-service"
    assert orders.received[0].header("X-Auth-X5t") == mine.x5t_s256
    # The access log says how the token was presented, and holds neither it nor the cert.
    logged = capsys.readouterr().out
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    assert [line["token_type"] for line in lines if line["status"] == 200] == ["mtls"]
    assert token not in logged and getattr(mine, render) not in logged


async def test_a_plain_bearer_token_is_refused_where_certificates_are_required(
    oidc: OidcProvider, test_ca: TestCA, orders: RecordingUpstream, tmp_path: Path
) -> None:
    mine = test_ca.issue("client-c", server=False)
    token = await oidc.client_credentials(JWT_RESOURCE, "orders:read")  # not bound
    async with gateways(tmp_path, mtls_config(oidc, orders.url)) as (gw,):
        status, challenge = await send(
            gw,
            "/nginx/1",
            {"Authorization": f"Bearer {token}", "X-SSL-Client-Cert": mine.escaped_pem},
        )
    assert status == 401
    assert challenge == (
        INVALID_TOKEN + '"This resource accepts only certificate-bound access tokens."'
    )
    assert orders.received == []


# --- behind a real nginx terminating mutual TLS ---------------------------------------------


def _nginx_conf(directory: Path, port: int, gateway_port: int, server: Issued, ca: TestCA) -> Path:
    """The README recipe: nginx verifies the client certificate against the CA and forwards
    it URL-encoded; ``proxy_set_header`` replaces whatever header the client sent (and an
    empty value, with no certificate, sends none)."""
    temp = "\n".join(
        f"  {kind}_temp_path {directory}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = directory / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
{temp}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {server.cert_file};
    ssl_certificate_key {server.key_file};
    ssl_client_certificate {ca.cert_file};
    ssl_verify_client optional;
    location / {{
      proxy_pass http://127.0.0.1:{gateway_port};
      proxy_http_version 1.1;
      proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;
    }}
  }}
}}
""")
    return conf


@pytest.fixture
def nginx_binary() -> str:
    binary = shutil.which("nginx")
    if binary is None:
        message = "nginx is not installed (tests/run.sh installs nginx-light)"
        if in_ci():
            pytest.fail(message + "; CI must run this test, not skip it", pytrace=False)
        pytest.skip(message)
    return binary


async def _wait_listening(port: int, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"nothing listens on {port}")


async def test_behind_nginx_terminating_mutual_tls_only_the_bound_certificate_gets_through(
    oidc: OidcProvider,
    test_ca: TestCA,
    orders: RecordingUpstream,
    tmp_path: Path,
    nginx_binary: str,
) -> None:
    mine, other = test_ca.issue("client-d", server=False), test_ca.issue("client-e", server=False)
    token = await bound_token(oidc, test_ca, mine, JWT_RESOURCE)
    bearer = {"Authorization": f"Bearer {token}"}
    children = Children()
    async with gateways(tmp_path, mtls_config(oidc, orders.url)) as (gw,):
        port = free_port()
        conf = _nginx_conf(tmp_path, port, gw.proxy_port, test_ca.issue("nginx", server=True),
                           test_ca)  # fmt: skip
        log = tmp_path / "nginx.out"
        children.start([nginx_binary, "-c", str(conf), "-p", str(tmp_path)], stdout=log, stderr=log)
        try:
            await _wait_listening(port)
            url = f"https://127.0.0.1:{port}/nginx/1"

            async def through_nginx(
                client: Issued | None, headers: dict[str, str]
            ) -> tuple[int, str | None]:
                context = test_ca.client_context(client)
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(url, headers=headers, ssl=context) as r,
                ):
                    await r.read()
                    return r.status, r.headers.get("WWW-Authenticate")

            assert (await through_nginx(mine, bearer))[0] == 200
            status, challenge = await through_nginx(other, bearer)
            assert status == 401 and "bound to another client certificate" in (challenge or "")
            status, challenge = await through_nginx(None, bearer)
            assert status == 401 and "presented none" in (challenge or "")
            # A client without a certificate cannot forge nginx's header: nginx replaces it.
            status, challenge = await through_nginx(
                None, {**bearer, "X-SSL-Client-Cert": mine.escaped_pem}
            )
            assert status == 401 and "presented none" in (challenge or "")
        finally:
            children.stop_all()
    assert len(orders.received) == 1
    assert orders.received[0].header("X-Auth-X5t") == mine.x5t_s256


# --- the gateway terminating mutual TLS itself (listen.tls) ----------------------------------


@pytest.mark.parametrize("kind", ["jwt", "opaque"])
async def test_over_mutual_tls_to_the_gateway_the_handshake_certificate_is_the_proof(
    oidc: OidcProvider, test_ca: TestCA, orders: RecordingUpstream, tmp_path: Path, kind: str
) -> None:
    """RFC 8705 §3 with no front proxy: the client presents the same certificate to
    oidc-provider's token endpoint and to the gateway's listener (``source: tls``)."""
    server = test_ca.issue("gateway-server", server=True)
    mine, other = test_ca.issue("client-t", server=False), test_ca.issue("client-u", server=False)
    token = await bound_token(oidc, test_ca, mine, RESOURCES[kind])
    config = gateway_config(oidc, orders.url)
    config["listen"]["tls"] = {
        "cert_file": str(server.cert_file), "key_file": str(server.key_file),
        "client_auth": {"mode": "optional", "ca_file": str(test_ca.cert_file)},
    }  # fmt: skip
    read = {"scopes": {"all": ["orders:read"]}}
    config["routes"] = [
        {"name": "ledger", "match": {"path": {"prefix": "/ledger"}}, "upstream": "orders",
         "require": read, "identity_headers": IDENTITY,
         "client_certificates": {"mode": "required", "source": "tls"}},
    ]  # fmt: skip
    bearer = {"Authorization": f"Bearer {token}"}

    async def over_tls(client: Issued | None, headers: dict[str, str]) -> tuple[int, str | None]:
        connector = aiohttp.TCPConnector(ssl=test_ca.client_context(client))
        url = f"https://127.0.0.1:{gw.proxy_port}/ledger/1"
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(url, headers=headers) as response:
                await response.read()
                return response.status, response.headers.get("WWW-Authenticate")

    async with gateways(tmp_path, config) as (gw,):
        assert (await over_tls(mine, bearer))[0] == 200
        status, challenge = await over_tls(other, bearer)
        assert status == 401 and "bound to another client certificate" in (challenge or "")
        # No certificate in the handshake; a header the client adds itself counts for nothing.
        status, challenge = await over_tls(None, {**bearer, "X-Forwarded-Client-Cert": mine.xfcc})
        assert status == 401 and "presented none" in (challenge or "")
    assert len(orders.received) == 1
    assert orders.received[0].header("X-Auth-X5t") == mine.x5t_s256
    assert orders.received[0].header("X-Forwarded-Proto") == "https"
