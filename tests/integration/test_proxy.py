"""The reverse proxy over real sockets: framing, streaming, headers, routing and errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import resource
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.support.gateway import base_config, raw_exchange, running_gateway, status_of
from tests.support.upstream import RecordingUpstream


@pytest.fixture
async def gateway(tmp_path: Path, upstream: RecordingUpstream):
    async with running_gateway(tmp_path, base_config(upstream.url)) as gw:
        yield gw


def url(gw, path: str) -> URL:
    """An already-encoded URL: the client must send the bytes the test wrote."""
    return URL(f"http://127.0.0.1:{gw.proxy_port}{path}", encoded=True)


async def test_get_reaches_upstream_with_query_verbatim(gateway, upstream):
    async with aiohttp.ClientSession() as s:
        async with s.get(url(gateway, "/items?b=%2F&a=1+2&c")) as r:
            assert r.status == 200
            body = await r.json()
            assert r.headers["X-Upstream"] == "app"
            assert r.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert body["path"] == "/items?b=%2F&a=1+2&c"
    assert upstream.last.raw_path == "/items?b=%2F&a=1+2&c"


async def test_response_status_and_body_pass_through_unchanged(gateway, upstream):
    async with aiohttp.ClientSession() as s:
        for code in (201, 404, 418, 500, 503):
            async with s.get(url(gateway, f"/s?mode=status&code={code}")) as r:
                assert r.status == code
                assert await r.text() == "status\n"


async def test_large_upload_is_streamed_not_buffered(tmp_path, upstream):
    """A 256 MiB chunked upload must not raise the gateway's memory by more than a few MB."""
    total = 256 * 1024 * 1024
    block = bytes(range(256)) * 256  # 64 KiB
    digest = hashlib.sha256()

    async def body():
        sent = 0
        while sent < total:
            digest.update(block)
            sent += len(block)
            yield block

    async with running_gateway(tmp_path, base_config(upstream.url)) as gw:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        async with aiohttp.ClientSession() as s:
            async with s.post(url(gw, "/upload"), data=body()) as r:
                assert r.status == 200
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert upstream.last.body_size == total
    assert upstream.last.body_sha256 == digest.hexdigest()
    assert upstream.last.header("Transfer-Encoding") == "chunked"
    # ru_maxrss is in KiB; the whole test process (client, gateway, upstream) shares it.
    assert (after - before) < 64 * 1024, f"peak RSS grew by {(after - before) // 1024} MiB"


async def test_large_download_is_streamed(gateway, upstream):
    size = 64 * 1024 * 1024
    async with aiohttp.ClientSession() as s:
        async with s.get(url(gateway, f"/big?mode=huge&size={size}")) as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == str(size)
            received = 0
            async for chunk in r.content.iter_any():
                received += len(chunk)
    assert received == size


async def test_content_length_body_keeps_content_length_framing(gateway, upstream):
    async with aiohttp.ClientSession() as s:
        async with s.put(url(gateway, "/x"), data=b"hello world") as r:
            assert r.status == 200
    assert upstream.last.header("Content-Length") == "11"
    assert upstream.last.header("Transfer-Encoding") is None
    assert upstream.last.body_size == 11


async def test_echo_streams_both_ways(gateway, upstream):
    payload = b"0123456789" * 100_000
    async with aiohttp.ClientSession() as s:
        async with s.post(url(gateway, "/e?mode=echo"), data=payload) as r:
            assert await r.read() == payload


async def test_chunked_upstream_response_is_relayed(gateway):
    async with aiohttp.ClientSession() as s:
        async with s.get(url(gateway, "/c?mode=chunked")) as r:
            assert await r.text() == "part0\npart1\npart2\n"


async def test_head_has_no_body_and_connection_is_reused(gateway, upstream):
    request = (
        b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /after-head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    response = await raw_exchange(gateway.proxy_port, request)
    first, _, rest = response.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert b"Content-Length:" in first
    assert rest.startswith(b"HTTP/1.1 200"), rest[:80]
    assert [r.raw_path for r in upstream.received] == ["/h", "/after-head"]


async def test_hop_by_hop_headers_are_removed(gateway, upstream):
    request = (
        b"GET /hop HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret-Hop\r\n"
        b"X-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
        b"Proxy-Authorization: Basic Zm9v\r\n"
        b"Upgrade: h2c\r\nX-Kept: yes\r\n\r\n"
    )
    response = await raw_exchange(gateway.proxy_port, request, timeout=1)
    assert status_of(response) == 200
    names = {k.lower() for k, _ in upstream.last.headers}
    for gone in ("x-secret-hop", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert gone not in names
    assert upstream.last.header("X-Kept") == "yes"


async def test_x_forwarded_from_untrusted_client_is_replaced(gateway, upstream):
    headers = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
    }
    async with aiohttp.ClientSession() as s:
        async with s.get(url(gateway, "/xff"), headers=headers) as r:
            assert r.status == 200
    received = upstream.last
    assert received.headers_named("X-Forwarded-For") == ["127.0.0.1"]
    assert received.header("X-Forwarded-Proto") == "http"
    assert received.header("X-Forwarded-Host") == f"127.0.0.1:{gateway.proxy_port}"
    assert received.header("Via") == "1.1 gateway"
    assert len(received.header("X-Request-Id") or "") >= 16


async def test_x_forwarded_from_trusted_proxy_is_appended(tmp_path, upstream):
    config = base_config(
        upstream.url, forwarding={"trusted_proxies": ["127.0.0.0/8"], "forwarded": True}
    )
    async with running_gateway(tmp_path, config) as gw:
        async with aiohttp.ClientSession() as s:
            headers = {
                "X-Forwarded-For": "203.0.113.7",
                "X-Forwarded-Proto": "https",
                "X-Request-Id": "abc-123",
            }
            async with s.get(url(gw, "/xff"), headers=headers) as r:
                assert r.status == 200
                assert r.headers["X-Request-Id"] == "abc-123"
    received = upstream.last
    assert received.header("X-Forwarded-For") == "203.0.113.7, 127.0.0.1"
    assert received.header("X-Forwarded-Proto") == "https"
    assert received.header("X-Request-Id") == "abc-123"
    assert (
        received.header(
            "Forwarded",
        )
        is not None
    )
    assert "for=127.0.0.1" in (received.header("Forwarded") or "")


@pytest.mark.parametrize(
    ("target", "expected_upstream_path"),
    [
        pytest.param("/a//b", "/a/b", id="collapse-slashes"),
        pytest.param("/a/./b/../c", "/a/c", id="dot-segments"),
        pytest.param("/%7Euser/%61", "/~user/a", id="decode-unreserved"),
        pytest.param("/a%20b", "/a%20b", id="keep-encoded-space"),
        pytest.param("/a/%2e%2e/b", "/b", id="encoded-dotdot-resolved"),
    ],
)
async def test_upstream_sees_the_normalised_path(gateway, upstream, target, expected_upstream_path):
    response = await raw_exchange(
        gateway.proxy_port,
        f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status_of(response) == 200
    assert upstream.last.raw_path == expected_upstream_path


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/a/%2F/b", id="encoded-slash"),
        pytest.param("/a/%5C/b", id="encoded-backslash"),
        pytest.param("/a/%00", id="encoded-nul"),
        pytest.param("/..", id="dotdot-escapes-root"),
        pytest.param("/%2e%2e/etc/passwd", id="encoded-dotdot-escapes-root"),
        pytest.param("/a/..;/admin", id="tomcat-dotdot-semicolon"),
        pytest.param("/a/%252e%252e/b", id="double-encoded-dot"),
        pytest.param("/a/%C0%AE%C0%AE/b", id="overlong-utf8-dot"),
        pytest.param("/admin;x/secret", id="path-parameter-servlet-bypass"),
        pytest.param("/a/%EF%BC%8E%EF%BC%8E/b", id="fullwidth-dots"),
        pytest.param("/a\\..\\b", id="backslash"),
    ],
)
async def test_unsafe_paths_get_400_and_never_reach_upstream(gateway, upstream, target):
    response = await raw_exchange(
        gateway.proxy_port,
        f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status_of(response) == 400
    assert b"application/problem+json" in response
    assert upstream.received == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="cl-and-te",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            id="conflicting-content-length",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
            id="repeated-content-length",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            id="te-xchunked",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            id="te-gzip-chunked",
        ),
        pytest.param(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", id="space-before-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="missing-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
        pytest.param(
            b"GET http://other.example/ HTTP/1.1\r\nHost: x\r\n\r\n",
            id="absolute-form-other-authority",
        ),
        pytest.param(
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", id="connect"
        ),
    ],
)
async def test_invalid_framing_is_refused_and_never_forwarded(gateway, upstream, request_bytes):
    response = await raw_exchange(gateway.proxy_port, request_bytes, timeout=1)
    assert status_of(response) in (400, 405)
    assert upstream.received == []


async def test_path_parameters_can_be_allowed(tmp_path, upstream):
    config = base_config(upstream.url, limits={"path_parameters": True})
    async with running_gateway(tmp_path, config) as gw:
        response = await raw_exchange(
            gw.proxy_port, b"GET /a;v=1/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert status_of(response) == 200
    assert upstream.last.raw_path == "/a;v=1/b"


async def test_absolute_form_matching_host_uses_the_path_only(gateway, upstream):
    response = await raw_exchange(
        gateway.proxy_port, b"GET http://x/p?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status_of(response) == 200
    assert upstream.last.raw_path == "/p?q=1"


async def test_oversized_header_gets_431(gateway, upstream):
    big = b"a" * 9000
    response = await raw_exchange(
        gateway.proxy_port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + big + b"\r\n\r\n"
    )
    assert status_of(response) == 431
    assert upstream.received == []


async def test_too_many_headers_gets_431(gateway, upstream):
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    response = await raw_exchange(
        gateway.proxy_port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"
    )
    assert status_of(response) == 431
    assert upstream.received == []


async def test_oversized_request_line_is_refused(gateway, upstream):
    response = await raw_exchange(
        gateway.proxy_port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert status_of(response) in (400, 414)
    assert upstream.received == []


async def test_route_precedence_first_match_wins(tmp_path):
    first, second = RecordingUpstream(name="first"), RecordingUpstream(name="second")
    await first.start()
    await second.start()
    config = base_config(first.url)
    config["upstreams"]["second"] = {"url": second.url}
    config["routes"] = [
        {"match": {"path": {"exact": "/api/special"}}, "upstream": "second"},
        {"match": {"path": "/api/**", "methods": ["GET"]}, "upstream": "app"},
        {
            "match": {"path": {"prefix": "/api"}, "methods": ["POST"]},
            "upstream": "second",
            "rewrite": {"strip_prefix": "/api", "add_prefix": "/v2"},
        },
        {"match": {"host": "*.example.com", "path": {"prefix": "/"}}, "upstream": "second"},
    ]
    try:
        async with running_gateway(tmp_path, config) as gw, aiohttp.ClientSession() as s:
            async with s.get(url(gw, "/api/special")) as r:
                assert (await r.json())["upstream"] == "second"
            async with s.get(url(gw, "/api/x/y")) as r:
                assert (await r.json())["upstream"] == "first"
            async with s.post(url(gw, "/api/orders?x=1")) as r:
                assert (await r.json())["upstream"] == "second"
            assert second.last.raw_path == "/v2/orders?x=1"
            async with s.get(url(gw, "/other"), headers={"Host": "a.example.com"}) as r:
                assert (await r.json())["upstream"] == "second"
            async with s.get(url(gw, "/other")) as r:
                assert r.status == 404
                assert r.headers["Content-Type"] == "application/problem+json"
                assert r.headers["Server"] == "oauth-gateway"  # no stack or version leaked
                problem = await r.json()
                assert problem["status"] == 404
            async with s.delete(url(gw, "/api/x")) as r:
                assert r.status == 405
                assert set(r.headers["Allow"].split(", ")) >= {"GET", "POST"}
        assert len(first.received) == 1
    finally:
        await first.close()
        await second.close()


async def test_upstream_refused_gives_502(tmp_path):
    config = base_config("http://127.0.0.1:1")
    async with running_gateway(tmp_path, config) as gw, aiohttp.ClientSession() as s:
        async with s.get(url(gw, "/x")) as r:
            assert r.status == 502
            assert r.headers["Content-Type"] == "application/problem+json"
            problem = await r.json()
            assert problem["status"] == 502
            assert "Traceback" not in json.dumps(problem)


async def test_upstream_reset_gives_502(gateway):
    async with aiohttp.ClientSession() as s:
        async with s.get(url(gateway, "/x?mode=reset")) as r:
            assert r.status == 502
            assert "aiohttp" not in r.headers["Server"]


async def test_upstream_timeout_gives_504(tmp_path, upstream):
    config = base_config(upstream.url)
    config["upstreams"]["app"]["timeouts"] = {"connect": "1s", "read": "300ms"}
    async with running_gateway(tmp_path, config) as gw, aiohttp.ClientSession() as s:
        async with s.get(url(gw, "/x?mode=slow&delay=3")) as r:
            assert r.status == 504
            assert (await r.json())["status"] == 504


async def test_keepalive_connections_are_reused(gateway, upstream):
    async with aiohttp.ClientSession() as s:
        for _ in range(20):
            async with s.get(url(gateway, "/k")) as r:
                assert r.status == 200
    pool = gateway.holder.current.pools["app"]
    assert pool.open_connections == 1


async def test_client_disconnect_cancels_upstream_request(tmp_path, upstream):
    async with running_gateway(tmp_path, base_config(upstream.url)) as gw:
        _, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(b"GET /slow?mode=slow&delay=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()
        await asyncio.sleep(0.3)
        pool = gw.holder.current.pools["app"]
        assert pool.open_connections == 0, "the upstream connection outlived its client"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
                metrics = await r.text()
        assert 'gateway_requests_total{method="GET",route="routes[0]",status="499"} 1.0' in metrics


async def test_websocket_is_relayed_on_websocket_routes(tmp_path, upstream):
    config = base_config(
        upstream.url,
        routes=[
            {"match": {"path": {"prefix": "/ws"}}, "upstream": "app", "websocket": True},
            {"match": {"path": {"prefix": "/"}}, "upstream": "app"},
        ],
    )
    async with running_gateway(tmp_path, config) as gw, aiohttp.ClientSession() as s:
        async with s.ws_connect(url(gw, "/ws?mode=ws"), protocols=("chat",)) as ws:
            assert ws.protocol == "chat"
            await ws.send_str("hi")
            assert (await ws.receive()).data == "echo:hi"
            await ws.send_bytes(b"\x00\x01")
            assert (await ws.receive()).data == b"\x00\x01"
        assert upstream.last.header("Via") == "1.1 gateway"
        # A route without websocket: true never upgrades.
        with pytest.raises(aiohttp.WSServerHandshakeError):
            async with s.ws_connect(url(gw, "/plain?mode=ws")):
                pass


async def test_admin_endpoints_are_not_on_the_proxy_port(gateway, upstream):
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{gateway.admin_port}/healthz") as r:
            assert r.status == 200
        async with s.get(f"http://127.0.0.1:{gateway.admin_port}/readyz") as r:
            assert r.status == 200
        async with s.get(url(gateway, "/healthz")) as r:
            assert (await r.json())["upstream"] == "app"  # proxied, not answered by admin


async def test_suite_runs_on_uvloop_like_production():
    uvloop = pytest.importorskip("uvloop")
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def test_traceparent_passes_through_untouched(gateway, upstream):
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with aiohttp.ClientSession() as s:
        headers = {"traceparent": trace, "tracestate": "vendor=a,other=b"}
        async with s.get(url(gateway, "/t"), headers=headers) as r:
            assert r.status == 200
    assert upstream.last.header("traceparent") == trace
    assert upstream.last.header("tracestate") == "vendor=a,other=b"


async def test_unix_socket_upstream(tmp_path):
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"path": request.raw_path, "host": request.headers["Host"]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    socket_path = tmp_path / "app.sock"
    await web.UnixSite(runner, str(socket_path)).start()
    try:
        async with running_gateway(tmp_path, base_config(f"unix:{socket_path}")) as gw:
            async with aiohttp.ClientSession() as s:
                async with s.get(url(gw, "/over/unix?x=1")) as r:
                    assert r.status == 200
                    assert await r.json() == {"path": "/over/unix?x=1", "host": "localhost"}
    finally:
        await runner.cleanup()


async def test_upstream_host_header_by_default_and_client_host_when_preserved(tmp_path, upstream):
    async with running_gateway(tmp_path, base_config(upstream.url)) as gw:
        response = await raw_exchange(
            gw.proxy_port, b"GET /h HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n"
        )
        assert status_of(response) == 200
        assert upstream.last.header("Host") == f"127.0.0.1:{upstream.port}"
    config = base_config(upstream.url)
    config["upstreams"]["app"]["preserve_host"] = True
    (tmp_path / "p").mkdir()
    async with running_gateway(tmp_path / "p", config) as gw:
        response = await raw_exchange(
            gw.proxy_port, b"GET /h HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n"
        )
        assert status_of(response) == 200
        assert upstream.last.header("Host") == "api.example.com"


async def test_request_in_flight_across_a_reload_completes_once(tmp_path, upstream):
    from gateway.config.loader import load_config

    async with running_gateway(tmp_path, base_config(upstream.url)) as gw:
        old_pool = gw.holder.current.pools["app"]
        async with aiohttp.ClientSession() as s:
            slow = asyncio.ensure_future(s.get(url(gw, "/slow?mode=slow&delay=1")))
            await asyncio.sleep(0.3)
            await gw.reload(load_config(tmp_path / "gateway.yaml", env={}))
            async with s.get(url(gw, "/after")) as r:  # served by the new runtime
                assert r.status == 200
            response = await slow
            assert response.status == 200
            response.release()
        await asyncio.sleep(0.6)
        assert old_pool.open_connections == 0  # retired: closed once its exchange ended
    assert [r.raw_path for r in upstream.received].count("/slow?mode=slow&delay=1") == 1


async def test_a_post_is_never_replayed_on_a_reset_keepalive_connection(gateway, upstream):
    """Found under load: the stale keep-alive retry re-sent requests the upstream had
    already received. Only idempotent requests may be repeated (RFC 9110 §9.2.2)."""
    async with aiohttp.ClientSession() as s:
        async with s.get(url(gateway, "/warm")) as r:  # leaves a keep-alive connection pooled
            assert r.status == 200
        async with s.post(url(gateway, "/orders/42/cancel?mode=reset")) as r:
            assert r.status == 502
    posts = [r for r in upstream.received if r.method == "POST"]
    assert len(posts) == 1, "the upstream received the POST more than once"
