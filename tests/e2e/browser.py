"""A real browser for the login tests: Debian's headless Chromium driven by Playwright for
Python over CDP (never ``playwright install``: the system browser is launched by path), and
the gateways a browser talks to, configured once their ports are known.

The browser reaches gateways as ``http://localhost:PORT`` and the provider as
``http://127.0.0.1:PORT``: two sites, as a real deployment has. Every request to any other
host is aborted, so nothing leaves the machine and an open redirect would show as a
navigation to a blocked host rather than succeed.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway.app import Gateway
from gateway.config.loader import load_config
from tests.e2e.harness import gateway_config, wait_ready
from tests.e2e.oidc import OidcProvider
from tests.support.gateway import running_gateway, write_config
from tests.support.upstream import RecordingUpstream

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip
LOOPBACK = frozenset({"localhost", "127.0.0.1"})
SEALING_SECRET = "e2e-session-sealing-secret-" + "s" * 24
PASSWORD = "any password"  # oidc-provider's development login accepts any
SIGNED_OUT = "/public/signed-out"  # where the provider sends the browser after a logout


class BrowserUnavailable(RuntimeError):
    """Chromium or the Playwright package is missing."""


def browser_missing() -> str | None:
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        return f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[dev]')"
    return None


async def only_loopback(route: Any) -> None:
    """A context's request filter: loopback hosts only (no fonts, no phoning home)."""
    if urlsplit(route.request.url).hostname in LOOPBACK:
        await route.continue_()
    else:
        await route.abort("blockedbyclient")


@dataclass
class Site:
    """Gateways behind one origin (``url``, the first one's), with the provider client they
    log browsers in as, and the upstream they protect."""

    gateways: list[Gateway]
    upstream: RecordingUpstream
    client_id: str
    url: str

    def at(self, index: int) -> str:
        return f"http://localhost:{self.gateways[index].proxy_port}"


def login_section(oidc: OidcProvider, client_id: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "issuer": oidc.issuer,
        "client": {"client_id": client_id, "client_secret": oidc.client_secrets[client_id]},
        "external_url": url,
        "scopes": ["openid", "email", "profile", "offline_access"],
        # oidc-provider grants offline_access (a refresh token) only after a consent prompt.
        "authorization_parameters": {"prompt": "consent"},
        "backchannel_logout_path": "/oauth2/backchannel",
        "post_logout_redirect": SIGNED_OUT,
        "secrets": [SEALING_SECRET],
        **extra,
    }


def site_config(
    oidc: OidcProvider, upstream: RecordingUpstream, login: dict[str, Any], redis_url: str | None
) -> dict[str, Any]:
    redis = None
    if redis_url is not None:
        redis = {"url": redis_url, "timeout": "500ms", "key_prefix": f"e2e:{uuid.uuid4().hex}:"}
    config = gateway_config(oidc, upstream.url, redis=redis)
    config["logins"] = [login]
    config["defaults"] = {"identity_headers": {
        "X-Auth-Subject": "{sub}", "X-Auth-Email": "{email}", "X-Auth-Client-Id": "{client_id}",
    }}  # fmt: skip
    config["routes"] = [
        {"name": "public", "match": {"path": {"prefix": "/public"}}, "upstream": "orders",
         "auth": "anonymous"},
        {"name": "app", "match": {"path": {"prefix": "/"}}, "upstream": "orders",
         "auth": "session"},
    ]  # fmt: skip
    return config


@asynccontextmanager
async def site(
    directory: Path,
    oidc: OidcProvider,
    *,
    replicas: int = 1,
    redis_url: str | None = None,
    short_lived: bool = False,
    backchannel_to: int = 0,
    **login: Any,
) -> AsyncIterator[Site]:
    """``replicas`` gateways (sharing Redis when given) in front of one recording upstream,
    their origin the first one's, and a web client registered at the provider for it.

    The origin needs the first gateway's port, known only once it listens: each gateway
    starts with a placeholder origin and is reloaded with the real one (the listener stays).
    ``backchannel_to``: the replica whose back-channel URI the client registers."""
    prefix = "short-" if short_lived else "web-"
    client_id = prefix + uuid.uuid4().hex[:8]
    oidc.client_secrets[client_id] = uuid.uuid4().hex
    upstream = RecordingUpstream(name="orders")
    await upstream.start()
    try:
        async with AsyncExitStack() as stack:
            placeholder = site_config(
                oidc,
                upstream,
                login_section(oidc, client_id, "http://localhost", **login),
                redis_url,
            )
            gateways = []
            for index in range(replicas):
                path = directory / f"gateway-{index}"
                path.mkdir()
                gateways.append(await stack.enter_async_context(running_gateway(path, placeholder)))
            url = f"http://localhost:{gateways[0].proxy_port}"
            config = dict(placeholder)
            config["logins"] = [login_section(oidc, client_id, url, **login)]
            for index, gateway in enumerate(gateways):
                path = write_config(directory / f"gateway-{index}", config)
                await gateway.reload(load_config(path, env={}))
                await wait_ready(gateway)
            back = gateways[backchannel_to].proxy_port
            oidc.register_client({
                "client_id": client_id, "client_secret": oidc.client_secrets[client_id],
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
                "redirect_uris": [url + "/oauth2/callback"],
                "post_logout_redirect_uris": [url + SIGNED_OUT],
                # The provider (Node) posts here; 127.0.0.1, since "localhost" may be ::1 to it.
                "backchannel_logout_uri": f"http://127.0.0.1:{back}/oauth2/backchannel",
                "backchannel_logout_session_required": True,
                "scope": "openid email profile offline_access",
            })  # fmt: skip
            yield Site(gateways, upstream, client_id, url)
    finally:
        await upstream.close()


async def request_with_cookies(
    gateway: Gateway, path: str, cookies: list[dict[str, Any]], accept: str = "application/json"
) -> int:
    """One request outside the browser carrying the browser's cookies for ``localhost``
    (what a second device with a copied cookie would send)."""
    jar = "; ".join(f"{c['name']}={c['value']}" for c in cookies if c["domain"] == "localhost")
    url = f"http://127.0.0.1:{gateway.proxy_port}{path}"
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        http.get(url, headers={"Cookie": jar, "Accept": accept}, allow_redirects=False) as r,
    ):
        await r.read()
        return r.status
