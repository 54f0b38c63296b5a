"""TLS on the real gateway's proxy listener (``listen.tls``, issue 16 part 1): real clients
(aiohttp, ``openssl s_client``) over loopback, a recording upstream behind it.

What a client gets: HTTPS with ALPN ``http/1.1`` and TLS 1.2 at least; the upstream learns
the scheme was ``https``. Renewals: a certificate replaced on disk (or by a reload) is what
the next handshake presents, while a connection already open keeps working; a renewal that
does not load leaves the old certificate served. Mutual TLS: the client certificate from
the handshake is what an RFC 8705 certificate-bound token is checked against.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509

from gateway.config.errors import ConfigError
from gateway.config.loader import load_config
from tests.support.certificates import Issued, TestCA
from tests.support.gateway import base_config, running_gateway, wait_ready, write_config
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


@pytest.fixture
def server(ca: TestCA) -> Issued:
    """The listener's certificate, for the name clients connect to."""
    return ca.issue("localhost", server=True)


def tls_section(server: Issued, **extra: Any) -> dict[str, Any]:
    return {"cert_file": str(server.cert_file), "key_file": str(server.key_file), **extra}


def tls_config(upstream: RecordingUpstream, tls: dict[str, Any], **extra: Any) -> dict[str, Any]:
    config = base_config(upstream.url, **extra)
    config["listen"]["tls"] = tls
    return config


async def get(
    port: int, context: ssl.SSLContext, path: str = "/x", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"https://127.0.0.1:{port}{path}", headers=headers) as response:
            return response.status, await response.read()


async def served_certificate(port: int, context: ssl.SSLContext) -> x509.Certificate:
    """The leaf a new handshake presents."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One keep-alive request on an open connection; the response's status."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


def s_client(port: int, ca: TestCA, *options: str) -> str:
    """``openssl s_client``'s report of one handshake (what a non-Python client sees)."""
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca.cert_file),
         "-alpn", "h2,http/1.1", "-servername", "localhost", *options],
        input=b"", capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    return (result.stdout + result.stderr).decode("utf-8", "replace")


async def test_https_reaches_the_upstream_as_https(
    tmp_path: Path, upstream: RecordingUpstream, ca: TestCA, server: Issued
) -> None:
    async with running_gateway(tmp_path, tls_config(upstream, tls_section(server))) as gw:
        status, _ = await get(gw.proxy_port, ca.client_context(), "/orders?a=1")
        assert status == 200
        assert upstream.last.raw_path == "/orders?a=1"
        assert upstream.last.header("X-Forwarded-Proto") == "https"
        # Plain HTTP on the TLS port is not served (answered 400: test_listener_tls_door.py).
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert not answer.startswith(b"HTTP/1.1 200")
    assert len(upstream.received) == 1


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_openssl_sees_http11_alpn_and_no_version_below_the_minimum(
    tmp_path: Path, upstream: RecordingUpstream, ca: TestCA, server: Issued
) -> None:
    async with running_gateway(tmp_path, tls_config(upstream, tls_section(server))) as gw:
        port = gw.proxy_port
        report = await asyncio.to_thread(s_client, port, ca)
        assert "ALPN protocol: http/1.1" in report, report
        assert "Verify return code: 0 (ok)" in report, report
        assert "New, TLSv1.3" in report, report
        tls12 = await asyncio.to_thread(s_client, port, ca, "-tls1_2")
        assert "New, TLSv1.2, Cipher is ECDHE-" in tls12, tls12  # forward secret
        tls11 = await asyncio.to_thread(s_client, port, ca, "-tls1_1")
        assert "New, TLSv1.1" not in tls11 and "Cipher is (NONE)" in tls11, tls11
    async with running_gateway(
        tmp_path, tls_config(upstream, tls_section(server, min_version="1.3"))
    ) as gw:
        tls12 = await asyncio.to_thread(s_client, gw.proxy_port, ca, "-tls1_2")
        assert "Cipher is (NONE)" in tls12, tls12


async def test_a_renewed_certificate_is_served_without_dropping_open_connections(
    tmp_path: Path, upstream: RecordingUpstream, ca: TestCA, server: Issued
) -> None:
    first = server
    live = tmp_path / "live"
    live.mkdir()
    cert_file, key_file = live / "tls.crt", live / "tls.key"
    shutil.copy(first.cert_file, cert_file)
    shutil.copy(first.key_file, key_file)
    tls = {"cert_file": str(cert_file), "key_file": str(key_file), "watch_interval": "100ms"}
    async with running_gateway(tmp_path, tls_config(upstream, tls)) as gw:
        port = gw.proxy_port
        context = ca.client_context()
        assert (
            await served_certificate(port, context)
        ).serial_number == first.certificate.serial_number
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        assert await exchange(reader, writer, "/before") == 200
        # cert-manager style: the new pair is written in place (key first, then cert).
        second = ca.issue("renewed", server=True)
        shutil.copy(second.key_file, key_file)
        shutil.copy(second.cert_file, cert_file)
        for _ in range(50):
            await asyncio.sleep(0.1)
            seen = await served_certificate(port, context)
            if seen.serial_number == second.certificate.serial_number:
                break
        assert seen.serial_number == second.certificate.serial_number
        # The connection opened before the renewal is still open, and serves.
        assert await exchange(reader, writer, "/after") == 200
        writer.close()
        # A renewal that does not load (a key for another certificate) is refused; the
        # renewed certificate stays what clients get.
        third = ca.issue("broken", server=True)
        shutil.copy(third.cert_file, cert_file)
        await asyncio.sleep(0.5)
        assert (
            await served_certificate(port, context)
        ).serial_number == second.certificate.serial_number
        assert (await get(port, context, "/still"))[0] == 200
        metrics = await admin_metrics(gw.admin_port)
        assert 'gateway_tls_reloads_total{result="ok"} 1.0' in metrics
        assert 'gateway_tls_reloads_total{result="failed"} 1.0' in metrics
        assert "gateway_tls_certificate_expiry_seconds " in metrics
    assert [r.raw_path for r in upstream.received] == ["/before", "/after", "/still"]


async def admin_metrics(port: int) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            return await response.text()


async def test_a_reload_serves_new_files_and_refuses_what_needs_a_restart(
    tmp_path: Path, upstream: RecordingUpstream, ca: TestCA, server: Issued
) -> None:
    first, second = server, ca.issue("second", server=True)
    config = tls_config(upstream, tls_section(first))
    async with running_gateway(tmp_path, config) as gw:
        context = ca.client_context()

        async def reload(tls: dict[str, Any] | None) -> None:
            changed = dict(config, listen={**config["listen"], "tls": tls})
            if tls is None:
                del changed["listen"]["tls"]
            path = write_config(tmp_path, changed, "reload.yaml")
            await gw.reload(load_config(path, env={}), wait_for_keys=1)

        await reload(tls_section(second))
        seen = await served_certificate(gw.proxy_port, context)
        assert seen.serial_number == second.certificate.serial_number
        with pytest.raises(ConfigError) as turned_off:
            await reload(None)
        assert "reload.yaml" in str(turned_off.value) and "listen.tls" in str(turned_off.value)
        with pytest.raises(ConfigError) as mode:
            asked = {"mode": "optional", "ca_file": str(ca.cert_file)}
            await reload(tls_section(first, client_auth=asked))
        assert "listen.tls.client_auth.mode" in str(mode.value)
        assert "needs a restart" in str(mode.value)
        # Still the second certificate, still serving.
        seen = await served_certificate(gw.proxy_port, context)
        assert seen.serial_number == second.certificate.serial_number
        assert (await get(gw.proxy_port, context))[0] == 200


async def test_turning_tls_on_by_reload_is_refused(
    tmp_path: Path, upstream: RecordingUpstream, ca: TestCA, server: Issued
) -> None:
    config = base_config(upstream.url)
    async with running_gateway(tmp_path, config) as gw:
        config["listen"]["tls"] = tls_section(server)
        path = write_config(tmp_path, config, "reload.yaml")
        with pytest.raises(ConfigError, match=r"reload\.yaml:\d+: listen\.tls"):
            await gw.reload(load_config(path, env={}), wait_for_keys=1)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{gw.proxy_port}/x") as response:
                assert response.status == 200


async def test_a_client_that_never_finishes_the_handshake_is_dropped(
    tmp_path: Path, upstream: RecordingUpstream, ca: TestCA, server: Issued
) -> None:
    config = tls_config(upstream, tls_section(server),
                        limits={"header_timeout": "1s"})  # fmt: skip
    async with running_gateway(tmp_path, config) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        started = asyncio.get_running_loop().time()
        closed = await asyncio.wait_for(reader.read(), 10)
        waited = asyncio.get_running_loop().time() - started
        writer.close()
        assert closed == b"" and waited < 5
        assert gw.listener.open_connections == 0


# --- mutual TLS and RFC 8705 certificate-bound tokens ----------------------------------


def mtls_config(
    issuer: TestIssuer, upstream: RecordingUpstream, server: Issued, ca: TestCA, mode: str
) -> dict[str, Any]:
    asked = {"mode": mode, "ca_file": str(ca.cert_file)}
    config = tls_config(upstream, tls_section(server, client_auth=asked))
    config["issuers"] = [{"issuer": issuer.url, "audiences": ["api://default"]}]
    config["defaults"] = {"auth": "required"}
    config["routes"] = [
        {"name": "bound", "match": {"path": {"prefix": "/bound"}}, "upstream": "app",
         "client_certificates": {"mode": "required", "source": "tls"}},
        {"name": "either", "match": {"path": {"prefix": "/"}}, "upstream": "app",
         "client_certificates": {"mode": "optional", "source": "tls"}},
    ]  # fmt: skip
    return config


async def test_required_client_certificates_and_a_bound_token(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream, ca: TestCA, server: Issued
) -> None:
    alice, mallory = ca.issue("alice", server=False), ca.issue("mallory", server=False)
    outsider = TestCA(tmp_path / "other").issue("outsider", server=False)
    config = mtls_config(issuer, upstream, server, ca, "required")
    async with running_gateway(tmp_path, config) as gw:
        await wait_ready(gw)
        port = gw.proxy_port
        bound = issuer.mint({"cnf": {"x5t#S256": alice.x5t_s256}})
        auth = {"Authorization": f"Bearer {bound}"}
        assert (await get(port, ca.client_context(alice), "/bound/a", auth))[0] == 200
        assert upstream.last.raw_path == "/bound/a"
        # The same token over another client's (valid) certificate: not the holder.
        status, _ = await get(port, ca.client_context(mallory), "/bound/b", auth)
        assert status == 401
        # No certificate, or one from another CA: no handshake at all.
        for context in (ca.client_context(), TestCA(tmp_path / "o2").client_context(outsider)):
            with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
                await get(port, context, "/bound/c", auth)
        # An unbound token on a route that requires a bound one.
        plain = {"Authorization": f"Bearer {issuer.mint({})}"}
        assert (await get(port, ca.client_context(alice), "/bound/d", plain))[0] == 401
    assert [r.raw_path for r in upstream.received] == ["/bound/a"]


async def test_optional_client_certificates(
    tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream, ca: TestCA, server: Issued
) -> None:
    alice = ca.issue("alice", server=False)
    config = mtls_config(issuer, upstream, server, ca, "optional")
    async with running_gateway(tmp_path, config) as gw:
        await wait_ready(gw)
        port = gw.proxy_port
        bound = {"Authorization": f"Bearer {issuer.mint({'cnf': {'x5t#S256': alice.x5t_s256}})}"}
        plain = {"Authorization": f"Bearer {issuer.mint({})}"}
        # Without a certificate: an unbound token passes, a bound one does not.
        assert (await get(port, ca.client_context(), "/x", plain))[0] == 200
        assert (await get(port, ca.client_context(), "/y", bound))[0] == 401
        assert (await get(port, ca.client_context(alice), "/z", bound))[0] == 200
        # A client certificate header sent by the client itself is not the handshake.
        forged = {**bound, "X-Forwarded-Client-Cert": alice.xfcc}
        assert (await get(port, ca.client_context(), "/w", forged))[0] == 401
    assert [r.raw_path for r in upstream.received] == ["/x", "/z"]


def test_the_example_in_the_readme_loads(tmp_path: Path, ca: TestCA, server: Issued) -> None:
    """README's listen.tls example is a config the gateway accepts (with real files)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("<!-- listen.tls example -->", 1)[1].split("```yaml", 1)[1]
    section = yaml.safe_load(block.split("```", 1)[0])
    tls = section["listen"]["tls"]
    tls["cert_file"], tls["key_file"] = str(server.cert_file), str(server.key_file)
    tls["client_auth"]["ca_file"] = str(ca.cert_file)
    config = base_config("http://127.0.0.1:9")
    config["listen"].update(section["listen"])
    load_config(write_config(tmp_path, config), env={})
