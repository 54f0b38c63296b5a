"""Browser login in a real browser against a real authorization server (issue 18): headless
Chromium (Debian's, driven by Playwright) signs in through oidc-provider's login and consent
forms to the gateway, which must land the person on the page they asked for with their
identity sent upstream; share the session with a second tab; refresh exactly once however
many requests overlap the expiry, against a provider that rotates refresh tokens and revokes
a grant on reuse; end the session on every replica at RP-initiated and back-channel logout;
answer API calls with 401, never a redirect; refuse tampered, expired and replayed
callbacks; and never send the browser off its origin.

One browser for the module (a fresh context, so a fresh cookie jar, per test); Chromium's
profile is a temporary directory Playwright makes and removes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import pytest_asyncio

from tests.e2e.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PASSWORD,
    SIGNED_OUT,
    browser_missing,
    only_loopback,
    request_with_cookies,
    site,
)
from tests.e2e.conftest import unavailable
from tests.e2e.oidc import OidcProvider

if browser_missing() is None:
    from playwright.async_api import Browser, BrowserContext, Page, async_playwright

pytestmark = pytest.mark.asyncio(loop_scope="module")
TOKEN = "POST /token"
CONCURRENT = 10


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    missing = browser_missing()
    if missing is not None:
        unavailable(missing)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=list(CHROMIUM_ARGS), headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    fresh = await browser.new_context()
    fresh.set_default_timeout(15_000)
    await fresh.route("**/*", only_loopback)
    try:
        yield fresh
    finally:
        await fresh.close()


LOGIN_FORM = 'input[name="login"]'
CONSENT = 'form:has(input[name="prompt"][value="consent"]) button[type="submit"]'


async def sign_in(page: Page, account: str = "alice") -> None:
    """oidc-provider's development login form (unless the browser is signed in at the
    provider already), then its consent form."""
    await page.wait_for_selector(f"{LOGIN_FORM}, {CONSENT}")
    if await page.query_selector(LOGIN_FORM) is not None:
        await page.fill(LOGIN_FORM, account)
        await page.fill('input[name="password"]', PASSWORD)
        await page.click('button[type="submit"]')
        await page.wait_for_selector(CONSENT)
    await page.click(CONSENT)


async def visit_and_sign_in(page: Page, url: str, account: str = "alice") -> None:
    await page.goto(url)
    await sign_in(page, account)
    await page.wait_for_url(url)


async def fetch_all(page: Page, paths: list[str], headers: dict[str, str] | None = None) -> Any:
    """``fetch()`` from the page (same origin: the browser sends its cookies), concurrently;
    each answer's status (redirects not followed)."""
    return await page.evaluate(
        """async ([paths, headers]) => Promise.all(paths.map((path) =>
            fetch(path, {headers, redirect: "manual"}).then((r) => r.status)))""",
        [paths, headers or {"Accept": "application/json"}],
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str, limit: float = 5.0) -> None:
    for _ in range(int(limit / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {limit}s")


def session_cookie(cookies: list[Any]) -> dict[str, Any]:
    (found,) = [c for c in cookies if c["name"] == "gw_session"]
    return dict(found)


# --- sign in, land, share --------------------------------------------------------------------


async def test_a_person_signs_in_and_lands_on_the_page_they_asked_for(
    tmp_path: Path, oidc: OidcProvider, context: BrowserContext
) -> None:
    async with site(tmp_path, oidc) as s:
        page = await context.new_page()
        target = s.url + "/orders/42?view=full"
        await page.goto(target)
        assert page.url.startswith(oidc.issuer + "/interaction/")  # the provider's login form
        assert s.upstream.received == []
        await sign_in(page, "alice")
        await page.wait_for_url(target)
        received = s.upstream.last
        assert received.raw_path == "/orders/42?view=full"
        assert received.header("X-Auth-Subject") == "alice"
        assert received.header("X-Auth-Email") == "alice@example.com"
        assert received.header("X-Auth-Client-Id") == s.client_id
        assert received.headers_named("Cookie") == []  # the session cookie stays here
        cookie = session_cookie(await context.cookies())
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/"
        assert not [c for c in await context.cookies() if c["name"] == "gw_session_login"]
        assert oidc.count(TOKEN) == 1

        # A second tab shares the session: no second login, no second code exchange.
        tab = await context.new_page()
        await tab.goto(s.url + "/invoices")
        assert tab.url == s.url + "/invoices"
        assert s.upstream.last.header("X-Auth-Subject") == "alice"
        assert oidc.count(TOKEN) == 1


async def test_the_access_token_is_refreshed_once_for_ten_concurrent_requests(
    tmp_path: Path, oidc: OidcProvider, context: BrowserContext, redis_url: str
) -> None:
    """oidc-provider rotates refresh tokens and revokes the grant when a rotated-out one
    comes back: two refreshes would log the user out. Access tokens live 3 s here."""
    login = {"refresh_margin": "1s", "forward_access_token": True,
             "store": {"type": "redis", "key_prefix": f"e2e:{uuid.uuid4().hex}:s:"}}  # fmt: skip
    async with site(tmp_path, oidc, replicas=2, redis_url=redis_url, short_lived=True,
                    **login) as s:  # fmt: skip
        page = await context.new_page()
        await visit_and_sign_in(page, s.url + "/orders")
        first_token = s.upstream.last.header("Authorization")
        await asyncio.sleep(2.2)  # within a second of expiry: refresh due
        oidc.reset_counters()
        statuses = await fetch_all(page, [f"/orders/{i}" for i in range(CONCURRENT)])
        assert statuses == [200] * CONCURRENT
        assert oidc.count(TOKEN) == 1  # exactly one refresh at the provider
        sent = {r.header("Authorization") for r in s.upstream.received[-CONCURRENT:]}
        assert len(sent) == 1 and sent != {first_token}
        (token,) = sent
        assert token is not None
        assert (await oidc.introspect(token.removeprefix("Bearer ")))["active"] is True

        # Once more, through both replicas at once (sharing Redis): still one refresh.
        await asyncio.sleep(2.2)
        oidc.reset_counters()
        cookies = await context.cookies()
        results = await asyncio.gather(*(
            request_with_cookies(s.gateways[i % 2], f"/orders/{i}", cookies)
            for i in range(CONCURRENT)
        ))  # fmt: skip
        assert results == [200] * CONCURRENT
        assert oidc.count(TOKEN) == 1
        # The grant survived: the browser carries on without a new login.
        await page.goto(s.url + "/orders/after")
        assert page.url == s.url + "/orders/after"


# --- logout ----------------------------------------------------------------------------------


async def test_rp_initiated_logout_ends_the_session_on_both_replicas(
    tmp_path: Path, oidc: OidcProvider, context: BrowserContext, redis_url: str
) -> None:
    store = {"store": {"type": "redis", "key_prefix": f"e2e:{uuid.uuid4().hex}:s:"}}
    async with site(tmp_path, oidc, replicas=2, redis_url=redis_url, **store) as s:
        page = await context.new_page()
        await visit_and_sign_in(page, s.url + "/orders")
        await page.goto(s.at(1) + "/orders/on-the-other-replica")  # same cookie, same session
        assert page.url == s.at(1) + "/orders/on-the-other-replica"
        copied = await context.cookies()

        await page.goto(s.at(1) + "/oauth2/logout")
        assert page.url.startswith(oidc.issuer + "/session/end")  # the OP asks to confirm
        query = parse_qs(urlsplit(page.url).query)
        assert query.get("client_id") == [s.client_id]
        await page.click('button[name="logout"]')
        await page.wait_for_url(s.url + SIGNED_OUT)  # post_logout_redirect_uri
        assert [c for c in await context.cookies() if c["name"] == "gw_session"] == []
        for gateway in s.gateways:  # a copy of the old cookie is worthless on both
            assert await request_with_cookies(gateway, "/orders", copied) == 401
        await page.goto(s.url + "/orders")
        assert page.url.startswith(oidc.issuer + "/interaction/")  # signed out at the OP too


async def test_back_channel_logout_ends_the_session_on_every_replica(
    tmp_path: Path, oidc: OidcProvider, context: BrowserContext, redis_url: str
) -> None:
    """The person signs out at the provider, not at the gateway: the provider tells the
    gateway (a logout token POSTed to replica 1), and replica 0, where the session began,
    refuses the cookie the browser still holds."""
    store = {"store": {"type": "redis", "key_prefix": f"e2e:{uuid.uuid4().hex}:s:"}}
    async with site(tmp_path, oidc, replicas=2, redis_url=redis_url, backchannel_to=1,
                    **store) as s:  # fmt: skip
        page = await context.new_page()
        await visit_and_sign_in(page, s.url + "/orders")
        before = await context.cookies()
        assert await request_with_cookies(s.gateways[1], "/orders", before) == 200
        await page.goto(oidc.issuer + "/session/end?" + urlencode({"client_id": s.client_id}))
        await page.click('button[name="logout"]')
        await page.wait_for_load_state()
        assert session_cookie(await context.cookies())["value"]  # still in the browser

        async def ended() -> bool:
            cookies = await context.cookies()
            return all([await request_with_cookies(g, "/orders", cookies) == 401
                        for g in s.gateways])  # fmt: skip

        await eventually(ended, "the back-channel logout")
        (service,) = s.gateways[1].holder.current.logins.services.values()
        assert service.counters.logouts["backchannel"] == 1


# --- API calls, refused callbacks, the origin --------------------------------------------


async def test_api_requests_get_401_never_a_redirect(
    tmp_path: Path, oidc: OidcProvider, context: BrowserContext
) -> None:
    async with site(tmp_path, oidc) as s:
        page = await context.new_page()
        await page.goto(s.url + "/public/start")  # a page on the origin, no session
        statuses = await fetch_all(page, ["/orders/1"])
        assert statuses == [401]  # fetch() from a page: no redirect to a login form
        bad = await fetch_all(page, ["/orders/1"], {"Authorization": "Bearer not-a-token"})
        assert bad == [401]
        assert oidc.count("GET /auth") == 0


async def test_replayed_reused_and_forged_callbacks_are_refused(
    tmp_path: Path, oidc: OidcProvider, browser: Browser, context: BrowserContext
) -> None:
    async with site(tmp_path, oidc) as s:
        callbacks: list[str] = []
        context.on("request", lambda r: callbacks.append(r.url) if "/oauth2/callback" in r.url
                   else None)  # fmt: skip
        page = await context.new_page()
        await visit_and_sign_in(page, s.url + "/orders")
        (used,) = callbacks
        params = {k: v[0] for k, v in parse_qs(urlsplit(used).query).items()}
        logins = oidc.count(TOKEN)

        async def refused(url: str, page: Page) -> str:
            answer = await page.goto(url)
            assert answer is not None and answer.status in (400, 502), answer.status
            assert urlsplit(page.url).path == "/oauth2/callback"  # a page, never a loop
            return await page.inner_text("h1")

        # Replayed: the state was spent by the first use.
        assert await refused(used, page) == "Sign-in failed"
        assert oidc.count(TOKEN) == logins  # the code never reached the provider again

        # A reused code under a new, valid state: the provider refuses the spent code.
        other = await browser.new_context()
        await other.route("**/*", only_loopback)
        authorizations: list[str] = []
        other.on("request", lambda r: authorizations.append(r.url)
                 if r.url.startswith(oidc.issuer + "/auth?") else None)  # fmt: skip
        try:
            fresh = await other.new_page()
            await fresh.goto(s.url + "/orders")  # a new pending login in that browser
            (authorization,) = authorizations
            state = parse_qs(urlsplit(authorization).query)["state"][0]
            reused = (
                s.url
                + "/oauth2/callback?"
                + urlencode({"code": params["code"], "state": state, "iss": params["iss"]})
            )
            assert await refused(reused, fresh) == "Sign-in failed"
            assert oidc.count(TOKEN) == logins + 1  # the provider said invalid_grant

            # Tampered: a state that is not this browser's.
            forged = used.replace(params["state"], "forged" + params["state"][6:])
            assert await refused(forged, fresh) == "Sign-in failed"
        finally:
            await other.close()


async def test_a_sign_in_that_took_too_long_is_refused(
    tmp_path: Path, oidc: OidcProvider, context: BrowserContext
) -> None:
    """Past timeouts.login the pre-login cookie is gone: the callback is refused, a page."""
    async with site(tmp_path, oidc, timeouts={"login": "2s"}) as s:
        page = await context.new_page()
        await page.goto(s.url + "/orders/slow")
        await asyncio.sleep(2.5)
        await sign_in(page)
        await page.wait_for_url("**/oauth2/callback?**")
        assert "no longer pending" in await page.inner_text("p")
        assert s.upstream.received == []


async def test_an_id_token_with_another_nonce_is_refused(
    tmp_path: Path, oidc: OidcProvider, context: BrowserContext
) -> None:
    """The authorization request rewritten in flight (its nonce changed): the provider signs
    an ID token for the other nonce, and the gateway refuses it (OIDC Core §3.1.3.7 item 11)."""
    async with site(tmp_path, oidc) as s:

        async def other_nonce(route: Any) -> None:
            """The gateway's redirect, with the nonce in its Location changed."""
            response = await route.fetch(max_redirects=0)
            url = urlsplit(response.headers["location"])
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            query["nonce"] = "replayed-" + query["nonce"][9:]
            location = url._replace(query=urlencode(query)).geturl()
            await route.fulfill(response=response, headers={**response.headers,
                                                            "location": location})  # fmt: skip

        await context.route(lambda url: url == s.url + "/orders", other_nonce)
        page = await context.new_page()
        await page.goto(s.url + "/orders")
        await sign_in(page)
        await page.wait_for_url("**/oauth2/callback?**")
        assert "nonce" in await page.inner_text("p")
        assert [c for c in await context.cookies() if c["name"] == "gw_session"] == []
        assert s.upstream.received == []


async def test_the_return_url_cannot_leave_the_origin(
    tmp_path: Path, oidc: OidcProvider, context: BrowserContext
) -> None:
    async with site(tmp_path, oidc) as s:
        page = await context.new_page()
        await page.goto(s.url + "//evil.example/steal?next=https://evil.example/")
        await sign_in(page)
        await page.wait_for_url(s.url + "/**")
        assert urlsplit(page.url).netloc == urlsplit(s.url).netloc
        assert s.upstream.last.raw_path == "/evil.example/steal?next=https://evil.example/"
