"""Browser navigation or API call (RFC 9110 §12.5.1 Accept, Fetch Metadata): only the first
is ever redirected to a login; everything else gets a 401 with its challenge."""

from __future__ import annotations

import pytest

from gateway.auth.sessions.browser import parse_accept, quality, wants_login_redirect

CHROME = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def decide(
    method: str = "GET",
    accept: str | None = CHROME,
    *,
    authorization: bool = False,
    xrw: bool = False,
    mode: str | None = "navigate",
) -> bool:
    return wants_login_redirect(
        method,
        accept=accept,
        authorization=authorization,
        x_requested_with=xrw,
        sec_fetch_mode=mode,
    )


@pytest.mark.parametrize(
    "accept",
    [
        CHROME,
        FIREFOX,
        "text/html",
        "text/*",
        "text/html;q=0.9, application/json;q=0.5",
        "application/json;q=0.1, */*",
    ],
)
def test_a_navigation_that_prefers_html_is_redirected(accept: str) -> None:
    assert decide(accept=accept)


def test_a_navigation_from_a_browser_without_fetch_metadata_is_redirected() -> None:
    assert decide(mode=None)


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"method": "POST"}, "not a GET"),
        ({"method": "HEAD"}, "not a GET"),
        ({"method": "get"}, "methods are case-sensitive"),
        ({"accept": "application/json"}, "asks for JSON"),
        ({"accept": "*/*"}, "prefers nothing (fetch's default)"),
        ({"accept": None}, "no Accept"),
        ({"accept": "text/html;q=0.5, application/json"}, "prefers JSON"),
        ({"accept": "text/html, application/json"}, "a tie is not a preference"),
        ({"accept": "text/html;q=0"}, "refuses HTML"),
        ({"accept": "text/html;q=2"}, "malformed q"),
        ({"accept": "text/html;q=0.1234"}, "too many q digits"),
        ({"accept": "texthtml"}, "malformed range"),
        ({"accept": "*/html"}, "malformed wildcard"),
        ({"accept": "text/html;" + "a=b;" * 2000}, "oversized"),
        ({"accept": ",".join(["text/html"] * 100)}, "too many ranges"),
        ({"authorization": True}, "a bearer token, valid or not"),
        ({"xrw": True}, "X-Requested-With"),
        ({"mode": "cors"}, "fetch() from a page"),
        ({"mode": "no-cors"}, "a subresource"),
        ({"mode": "same-origin"}, "a same-origin fetch"),
    ],
)
def test_anything_else_gets_a_401_never_a_redirect(kwargs: dict[str, object], why: str) -> None:
    assert not decide(**kwargs), why  # type: ignore[arg-type]


def test_the_most_specific_range_decides() -> None:
    preferences = parse_accept("text/*;q=0.3, text/html;q=0.7, */*;q=0.5")
    assert preferences is not None
    assert quality(preferences, "text", "html") == 0.7
    assert quality(preferences, "text", "plain") == 0.3
    assert quality(preferences, "application", "json") == 0.5
    assert quality(parse_accept("image/png") or [], "text", "html") == 0.0
