"""A real MCP client and a real MCP server through the gateway (MCP authorization spec).

The server is built with the official ``mcp`` SDK (streamable HTTP transport, one tool) and
sits behind the gateway on a route that belongs to an RFC 9728 protected resource. The
client is the SDK's own, with its own OAuth support (``OAuthClientProvider``), told only the
server's URL. On its first 401 it reads ``resource_metadata`` from the challenge, fetches the
gateway's metadata, finds oidc-provider in ``authorization_servers``, registers itself
(RFC 7591), runs the authorization code flow with PKCE for the RFC 8707 ``resource`` the
metadata names (the provider's development login and consent pages are clicked through with
HTTP requests, no browser), and completes a tool call with the JWT access token it got. The
tool itself reports the identity headers the gateway set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.e2e.harness import free_ports, gateways_at
from tests.e2e.oidc import ES256_RESOURCE, OidcProvider, click_through
from tests.support.host_proxies import in_ci
from tests.support.processes import free_port

try:
    import httpx2
    import uvicorn
    from mcp import Client
    from mcp.client.auth import OAuthClientProvider
    from mcp.client.streamable_http import streamable_http_client
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.shared.auth import (
        AuthorizationCodeResult,
        OAuthClientInformationFull,
        OAuthClientMetadata,
        OAuthToken,
    )
except ImportError as missing:
    if in_ci():
        raise  # CI must run the MCP tests: a missing SDK fails the run, never skips it
    pytest.skip(f"the mcp SDK is missing ({missing}): pip install -e '.[dev]'",
                allow_module_level=True)  # fmt: skip

SCOPE = "mcp:tools"
ACCOUNT = "alice"
IDENTITY = {"X-Auth-Subject": "{sub}", "X-Auth-Client-Id": "{client_id}",
            "X-Auth-Scopes": "{scope}", "X-Auth-Audience": "{aud}"}  # fmt: skip
WELL_KNOWN = "/.well-known/oauth-protected-resource"


# --- the MCP server -------------------------------------------------------------------------


@dataclass
class McpUpstream:
    """An SDK MCP server on a free port; ``seen`` holds the headers of every HTTP request
    that reached it (what the gateway forwarded)."""

    port: int
    seen: list[dict[str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _mcp_app(upstream: McpUpstream) -> Any:
    server = MCPServer("orders-mcp")

    @server.tool()
    def whoami(ctx: Context) -> str:
        """The identity the gateway vouched for, as this tool sees it."""
        headers = ctx.headers or {}
        names = ("x-auth-subject", "x-auth-client-id", "x-auth-scopes", "x-auth-audience")
        return json.dumps({name: headers.get(name) for name in names})

    app = server.streamable_http_app()

    async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            upstream.seen.append({k.decode().lower(): v.decode() for k, v in scope["headers"]})
        await app(scope, receive, send)

    return recording


@pytest.fixture
async def mcp_upstream() -> AsyncIterator[McpUpstream]:
    upstream = McpUpstream(port=free_port())
    config = uvicorn.Config(
        _mcp_app(upstream), host="127.0.0.1", port=upstream.port, log_level="warning",
        lifespan="on",
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.025)
    assert server.started, "the MCP server did not start"
    try:
        yield upstream
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


# --- the gateway ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where the MCP resource lives on the gateway, and the URL the client is given."""

    resource_path: str  # the RFC 9728 resource identifier's path ("" for the origin)
    route: dict[str, Any]  # match + rewrite of the route to the MCP server
    client_path: str  # the path of the URL the client uses


LAYOUTS = {
    # The route at /mcp: the resource is http://127.0.0.1:PORT/mcp.
    "prefix": Layout("/mcp", {"match": {"path": {"prefix": "/mcp"}}}, "/mcp"),
    # Behind a deeper prefix the gateway strips before the MCP server sees the path.
    "nested-prefix": Layout(
        "/tenants/acme/mcp",
        {
            "match": {"path": {"prefix": "/tenants/acme/mcp"}},
            "rewrite": {"strip_prefix": "/tenants/acme"},
        },
        "/tenants/acme/mcp",
    ),
    # The whole gateway is one resource; the client is given the MCP endpoint under it.
    "origin": Layout("", {"match": {"path": {"prefix": "/mcp"}}}, "/mcp"),
}


def mcp_config(
    oidc: OidcProvider, upstream: McpUpstream, base: str, layout: Layout
) -> dict[str, Any]:
    resource = base + layout.resource_path
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"mcp": {"url": upstream.url, "timeouts": {"connect": "1s", "read": "10s"}}},
        "issuers": [{"issuer": oidc.issuer, "keys": {"discovery": True}, "audiences": [resource],
                     "algorithms": ["ES256"], "require_at_jwt": True, "leeway": "1s"}],
        "routes": [{"name": "mcp", **layout.route, "upstream": "mcp",
                    "require": {"scopes": {"all": [SCOPE]}}, "identity_headers": IDENTITY}],
        "resources": [{"resource": resource, "routes": ["mcp"],
                       "resource_name": "Orders MCP server"}],
    }  # fmt: skip


# --- the MCP client's side of OAuth ---------------------------------------------------------


class MemoryStorage:
    """The SDK's ``TokenStorage``: where a client keeps its registration and tokens."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class Browser:
    """The user's browser: the redirect handler opens the authorization URL, logs in and
    consents on the provider's pages; the callback handler hands back the redirect's code."""

    def __init__(self, redirect_uri: str) -> None:
        self.redirect_uri = redirect_uri
        self.authorization_urls: list[str] = []
        self._redirect: dict[str, str] | None = None

    async def open(self, authorization_url: str) -> None:
        self.authorization_urls.append(authorization_url)
        self._redirect = await click_through(authorization_url, ACCOUNT, self.redirect_uri)

    async def callback(self) -> AuthorizationCodeResult:
        assert self._redirect is not None and "code" in self._redirect, self._redirect
        redirect, self._redirect = self._redirect, None
        return AuthorizationCodeResult(
            code=redirect["code"], state=redirect.get("state"), iss=redirect.get("iss")
        )


@dataclass
class Traffic:
    """Every request the MCP client's HTTP client sent, as (method, URL)."""

    requests: list[tuple[str, str]] = field(default_factory=list)

    async def record(self, request: Any) -> None:
        self.requests.append((request.method, str(request.url)))


async def call_whoami(
    server_url: str, storage: MemoryStorage, browser: Browser, traffic: Traffic
) -> Any:
    auth = OAuthClientProvider(
        server_url=server_url,
        client_metadata=OAuthClientMetadata(
            client_name="gateway e2e MCP client",
            redirect_uris=[browser.redirect_uri],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        ),
        storage=storage,
        redirect_handler=browser.open,
        callback_handler=browser.callback,
    )
    async with httpx2.AsyncClient(
        auth=auth, event_hooks={"request": [traffic.record]}, timeout=20
    ) as http:
        async with Client(streamable_http_client(server_url, http_client=http)) as client:
            return await client.call_tool("whoami", {})


def _text(result: Any) -> str:
    assert not result.is_error, result
    return "".join(getattr(part, "text", "") for part in result.content)


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
async def test_the_sdk_client_discovers_authorizes_and_calls_a_tool_through_the_gateway(
    oidc: OidcProvider, mcp_upstream: McpUpstream, tmp_path: Path, layout_name: str
) -> None:
    layout = LAYOUTS[layout_name]
    (port,) = free_ports(1)
    base = f"http://127.0.0.1:{port}"
    resource = base + layout.resource_path
    server_url = base + layout.client_path
    # RFC 8707: the provider issues ES256 JWT access tokens for our resource, audience = it.
    oidc.add_resources({resource: {"format": "jwt", "alg": "ES256", "ttl": 300, "scope": SCOPE}})
    storage, traffic = MemoryStorage(), Traffic()
    browser = Browser(f"http://127.0.0.1:{free_port()}/callback")  # never visited
    async with gateways_at(tmp_path, mcp_config(oidc, mcp_upstream, base, layout), [port]):
        result = await call_whoami(server_url, storage, browser, traffic)
        seen_by_tool = json.loads(_text(result))

    # The client was told nothing but the server URL: it found the metadata through the
    # challenge, the provider through the metadata, and registered itself there.
    sent = [f"{method} {url}" for method, url in traffic.requests]
    metadata_url = base + WELL_KNOWN + layout.resource_path
    assert sent[0] == f"POST {server_url}"
    # resource_metadata from the 401 challenge (for "origin" the SDK's own guess would have
    # been the path-suffixed URL of /mcp, so this is the challenge at work).
    assert sent[1] == f"GET {metadata_url}", sent
    assert f"GET {oidc.issuer}/.well-known/oauth-authorization-server" in sent, sent
    assert f"POST {oidc.issuer}/reg" in sent, sent  # RFC 7591 dynamic registration
    assert storage.client_info is not None and storage.client_info.client_id
    (authorization_url,) = browser.authorization_urls
    query = dict(part.split("=", 1) for part in urlsplit(authorization_url).query.split("&"))
    assert query["code_challenge_method"] == "S256"  # PKCE (RFC 7636)
    assert storage.tokens is not None and storage.tokens.scope is not None
    assert SCOPE in storage.tokens.scope.split()

    # What the gateway vouched for reached the tool, and every MCP request was authorized.
    expected = {"x-auth-subject": ACCOUNT, "x-auth-client-id": storage.client_info.client_id,
                "x-auth-scopes": SCOPE, "x-auth-audience": resource}  # fmt: skip
    assert seen_by_tool == expected
    assert mcp_upstream.seen, "nothing reached the MCP server"
    for headers in mcp_upstream.seen:
        assert headers.get("x-auth-subject") == ACCOUNT, headers
        assert headers.get("x-auth-audience") == resource, headers


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
async def test_the_metadata_names_exactly_the_resource_the_client_uses(
    oidc: OidcProvider, mcp_upstream: McpUpstream, tmp_path: Path, layout_name: str
) -> None:
    """RFC 9728 §3.1 and §3.3: the metadata of ``resource`` lives at the well-known URI with
    the resource's path appended, the 401 challenge points there (§5.1), and the document's
    ``resource`` is identical to the identifier the client used, whatever Host it sent."""
    layout = LAYOUTS[layout_name]
    (port,) = free_ports(1)
    base = f"http://127.0.0.1:{port}"
    resource = base + layout.resource_path
    async with gateways_at(tmp_path, mcp_config(oidc, mcp_upstream, base, layout), [port]):
        async with aiohttp.ClientSession() as session:
            async with session.post(base + layout.client_path, json={}) as r:
                assert r.status == 401
                challenge = r.headers["WWW-Authenticate"]
            metadata_url = base + WELL_KNOWN + layout.resource_path
            assert challenge == (
                f'Bearer realm="gateway", scope="{SCOPE}", resource_metadata="{metadata_url}"'
            )
            for host in (None, "evil.example"):
                headers = {"Host": host} if host else {}
                async with session.get(metadata_url, headers=headers) as r:
                    assert r.status == 200
                    document = await r.json()
                assert document["resource"] == resource
            # RFC 9728 §3.1 path insertion only: the resource's path after the well-known
            # prefix, never the other way round.
            if layout.resource_path:
                async with session.get(resource + WELL_KNOWN) as r:
                    assert r.status in (401, 404)
    assert document == {
        "resource": resource,
        "authorization_servers": [oidc.issuer],  # the issuers the routes accept
        "scopes_supported": [SCOPE],  # what the routes require
        "bearer_methods_supported": ["header"],
        "resource_name": "Orders MCP server",
    }
    assert mcp_upstream.seen == []  # nothing of this reached the MCP server


async def test_a_token_the_provider_issued_for_another_resource_is_refused(
    oidc: OidcProvider, mcp_upstream: McpUpstream, tmp_path: Path
) -> None:
    """RFC 8707 is what keeps a token for one resource from working at another: a valid
    ES256 JWT from the same provider, for another audience, is refused with the challenge
    that tells the client where to get the right one."""
    layout = LAYOUTS["prefix"]
    (port,) = free_ports(1)
    base = f"http://127.0.0.1:{port}"
    token = await oidc.client_credentials(ES256_RESOURCE, "orders:read")
    async with gateways_at(tmp_path, mcp_config(oidc, mcp_upstream, base, layout), [port]):
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {token}"}
            async with session.post(base + "/mcp", json={}, headers=headers) as r:
                status, challenge = r.status, r.headers["WWW-Authenticate"]
    assert status == 401
    assert challenge == (
        'Bearer realm="gateway", error="invalid_token", error_description="The token is not '
        f'meant for this audience.", resource_metadata="{base}{WELL_KNOWN}/mcp"'
    )
    assert mcp_upstream.seen == []
