"""The listener's TLS context (gateway.listener.tls) over real handshakes on loopback: what
it accepts and refuses, and that replacing it changes the next handshake, not the socket."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import pytest_asyncio
from cryptography import x509

from gateway.listener.tls import (
    ReloadingTls,
    TlsError,
    TlsFiles,
    files_version,
    peer_certificate,
    server_context,
)
from tests.support.certificates import Issued, TestCA, self_signed


class Peer(asyncio.Protocol):
    """Says hello once the handshake is done, and records the client certificate it saw."""

    seen: list[bytes | None] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Peer.seen.append(peer_certificate(transport.get_extra_info("ssl_object")))
        cast(asyncio.WriteTransport, transport).write(b"hello")
        transport.close()


@pytest_asyncio.fixture
async def serve() -> AsyncIterator:
    servers: list[asyncio.Server] = []

    async def start(context: ssl.SSLContext) -> int:
        Peer.seen = []
        server = await asyncio.get_running_loop().create_server(Peer, "127.0.0.1", 0, ssl=context)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()


def client_context(ca: TestCA, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca.cert_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    if client is not None:
        context.load_cert_chain(client.cert_file, client.key_file)
    return context


async def handshake(port: int, context: ssl.SSLContext, sni: str | None = "localhost"):
    """(certificate subject CN, ALPN protocol, TLS version) the server presented."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=sni)
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    answer = subject, ssl_object.selected_alpn_protocol(), ssl_object.version()
    writer.close()
    return answer


async def greeted(port: int, context: ssl.SSLContext) -> bool:
    """Whether the server completed the handshake and said hello (a refused client
    certificate shows only on the client's first read in TLS 1.3, RFC 8446 §4.4.2.4)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    try:
        return await asyncio.wait_for(reader.read(), 2) == b"hello"
    except (ssl.SSLError, ConnectionResetError):
        return False
    finally:
        writer.close()


async def test_serves_the_chain_with_http11_alpn_and_a_modern_version(tmp_path: Path, serve):
    ca = TestCA(tmp_path)
    server = ca.issue("localhost", server=True)
    port = await serve(server_context(TlsFiles(server.cert_file, server.key_file)))
    subject, alpn, version = await handshake(port, client_context(ca))
    assert subject == "CN=localhost" and alpn == "http/1.1" and version == "TLSv1.3"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
@pytest.mark.parametrize(
    ("minimum", "client_max", "ok"),
    [("1.2", ssl.TLSVersion.TLSv1_2, True), ("1.2", ssl.TLSVersion.TLSv1_1, False),
     ("1.3", ssl.TLSVersion.TLSv1_2, False), ("1.3", ssl.TLSVersion.TLSv1_3, True)],
)  # fmt: skip
async def test_the_minimum_version_is_enforced(
    tmp_path: Path, serve, minimum, client_max, ok
) -> None:
    ca = TestCA(tmp_path)
    server = ca.issue("localhost", server=True)
    port = await serve(server_context(TlsFiles(server.cert_file, server.key_file, minimum)))
    context = client_context(ca)
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = client_max
    context.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer what it may
    if ok:
        assert (await handshake(port, context))[0] == "CN=localhost"
    else:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await handshake(port, context)


async def test_tls12_offers_only_forward_secret_aead_suites(tmp_path: Path, serve) -> None:
    ca = TestCA(tmp_path)
    server = ca.issue("localhost", server=True)
    port = await serve(server_context(TlsFiles(server.cert_file, server.key_file)))
    context = client_context(ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-AES128-SHA:AES128-GCM-SHA256")  # CBC, and no ECDHE
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await handshake(port, context)


def test_unusable_files_are_named(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    server, other = ca.issue("localhost", server=True), ca.issue("other", server=True)
    with pytest.raises(TlsError) as missing:
        server_context(TlsFiles(server.cert_file, tmp_path / "nope.key"))
    assert missing.value.where == "key_file"
    with pytest.raises(TlsError) as mismatch:
        server_context(TlsFiles(server.cert_file, other.key_file))
    assert mismatch.value.where == "cert_file" and "mismatch" in str(mismatch.value).lower()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TlsError) as unparsable:
        server_context(TlsFiles(garbage, server.key_file))
    assert unparsable.value.where == "cert_file"
    with pytest.raises(TlsError) as no_ca:
        server_context(TlsFiles(server.cert_file, server.key_file, client_auth="required"))
    assert no_ca.value.where == "client_auth.ca_file"


@pytest.mark.parametrize("mode", ["optional", "required"])
async def test_client_certificates_from_the_ca_are_seen(tmp_path: Path, serve, mode) -> None:
    ca = TestCA(tmp_path)
    server, client = ca.issue("localhost", server=True), ca.issue("client", server=False)
    files = TlsFiles(
        server.cert_file, server.key_file, client_auth=mode, client_ca_file=ca.cert_file
    )
    port = await serve(server_context(files))
    await handshake(port, client_context(ca, client))
    await asyncio.sleep(0.05)
    assert Peer.seen == [client.der]
    if mode == "optional":
        await handshake(port, client_context(ca))
        await asyncio.sleep(0.05)
        assert Peer.seen == [client.der, None]


async def test_a_client_certificate_from_elsewhere_never_gets_in(tmp_path: Path, serve) -> None:
    ca, stranger = TestCA(tmp_path), TestCA(tmp_path, "other-ca")
    server = ca.issue("localhost", server=True)
    files = TlsFiles(server.cert_file, server.key_file, client_auth="optional",
                     client_ca_file=ca.cert_file)  # fmt: skip
    port = await serve(server_context(files))
    for cert in (stranger.issue("client", server=False), self_signed(tmp_path, "self")):
        assert await greeted(port, client_context(ca, cert)) is False
    await asyncio.sleep(0.05)
    assert Peer.seen == []


async def test_required_refuses_a_client_without_a_certificate(tmp_path: Path, serve) -> None:
    ca = TestCA(tmp_path)
    server = ca.issue("localhost", server=True)
    files = TlsFiles(server.cert_file, server.key_file, client_auth="required",
                     client_ca_file=ca.cert_file)  # fmt: skip
    port = await serve(server_context(files))
    assert await greeted(port, client_context(ca)) is False
    assert await greeted(port, client_context(ca, ca.issue("client", server=False))) is True
    Peer.seen.pop()
    assert Peer.seen == []


async def test_replace_and_refresh_change_the_next_handshake(tmp_path: Path, serve) -> None:
    ca = TestCA(tmp_path)
    first = ca.issue("first", server=True)
    tls = ReloadingTls(TlsFiles(first.cert_file, first.key_file))
    port = await serve(tls.front)
    assert (await handshake(port, client_context(ca)))[0] == "CN=first"
    assert (await handshake(port, client_context(ca), sni=None))[0] == "CN=first"

    second = ca.issue("second", server=True)
    tls.replace(TlsFiles(second.cert_file, second.key_file))  # a config reload
    assert (await handshake(port, client_context(ca)))[0] == "CN=second"
    assert (await handshake(port, client_context(ca), sni=None))[0] == "CN=second"

    assert tls.refresh() is False  # nothing changed on disk
    renewed = ca.issue("renewed", server=True)
    second.cert_file.write_bytes(renewed.cert_file.read_bytes())  # a renewal in place:
    assert files_version(tls.files) != tls._version  # type: ignore[attr-defined]
    with pytest.raises(TlsError):  # the certificate written before its key
        tls.refresh()
    assert (await handshake(port, client_context(ca)))[0] == "CN=second"  # still the old one
    second.key_file.write_bytes(renewed.key_file.read_bytes())
    assert tls.refresh() is True
    assert (await handshake(port, client_context(ca)))[0] == "CN=renewed"


async def test_the_client_ca_follows_a_reload_but_the_mode_does_not(tmp_path: Path, serve):
    old_ca, new_ca = TestCA(tmp_path / "old", "old-ca"), TestCA(tmp_path / "new", "new-ca")
    server = old_ca.issue("localhost", server=True)
    files = TlsFiles(server.cert_file, server.key_file, client_auth="required",
                     client_ca_file=old_ca.cert_file)  # fmt: skip
    tls = ReloadingTls(files)
    port = await serve(tls.front)
    new_client = new_ca.issue("client", server=False)
    trust = client_context(old_ca, new_client)

    async def accepted() -> bool:
        return await greeted(port, trust)

    assert await accepted() is False
    tls.replace(TlsFiles(server.cert_file, server.key_file, client_auth="required",
                         client_ca_file=new_ca.cert_file))  # fmt: skip
    assert await accepted() is True
    with pytest.raises(TlsError) as refused:
        tls.replace(TlsFiles(server.cert_file, server.key_file))
    assert refused.value.where == "client_auth.mode"
    assert await accepted() is True  # still asking for certificates


# --- listen.tls in the config: errors name the file, the line and the key path -------------


def _compile_error(text: str) -> str:
    from gateway.compiler import compile_config
    from gateway.config.errors import ConfigError
    from gateway.config.loader import load_config_text

    with pytest.raises(ConfigError) as info:
        compile_config(load_config_text(text, "gw.yaml", {}))
    return str(info.value)


def _config(tls: str, route_extra: str = "") -> str:
    return (
        "listen:\n"
        "  port: 8443\n"
        f"  tls: {tls}\n"
        "upstreams:\n"
        "  app: {url: 'http://127.0.0.1:9'}\n"
        "issuers: [{issuer: 'https://as.example/', audiences: [api]}]\n"
        "routes:\n"
        f"  - {{match: {{path: /x}}, upstream: app, auth: anonymous{route_extra}}}\n"
    )


def test_listen_tls_errors_name_the_line_and_key(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    server, other = ca.issue("localhost", server=True), ca.issue("other", server=True)
    mismatch = _compile_error(
        _config(f"{{cert_file: {server.cert_file}, key_file: {other.key_file}}}")
    )
    assert mismatch.startswith("gw.yaml:3: listen.tls.cert_file: cannot load")
    missing = _compile_error(_config(f"{{cert_file: {server.cert_file}, key_file: /nope.key}}"))
    assert missing.startswith("gw.yaml:3: listen.tls.key_file: cannot read /nope.key")
    tls = f"{{cert_file: {server.cert_file}, key_file: {server.key_file}, "
    no_ca = _compile_error(_config(tls + "client_auth: {mode: required}}"))
    assert "listen.tls.client_auth" in no_ca and "ca_file" in no_ca


def test_a_tls_certificate_source_needs_the_listener_to_ask_for_one(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    server = ca.issue("localhost", server=True)
    tls = f"{{cert_file: {server.cert_file}, key_file: {server.key_file}}}"
    route = ", client_certificates: {mode: optional, source: tls}"
    error = _compile_error(_config(tls, route).replace("auth: anonymous", "auth: required"))
    assert "routes[0].client_certificates.source" in error and "client_auth.mode" in error
