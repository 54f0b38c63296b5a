"""What the login paths and session routes answer, rendered by the one renderer: the login
redirect and the 401 with their repeated Set-Cookie fields, problem pages for browsers (HTML,
escaped, no active content, never cached) and for programs (RFC 9457 JSON)."""

from __future__ import annotations

import json

import pytest

from gateway.auth.sessions.errors import (
    AuthorizationRefused,
    LoginRedirect,
    SessionRequired,
    StateMismatch,
)
from gateway.auth.sessions.pages import prefers_html, problem_page, redirect
from gateway.problems import MethodNotAllowed, render_problem

HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def test_the_login_redirect_carries_location_and_every_cookie_and_no_challenge() -> None:
    error = LoginRedirect("https://as.example/authorize?x=1", ["a=1; Path=/", "b=; Max-Age=0"])
    rendered = render_problem(error, "gateway")
    assert rendered.status == 302
    headers = list(rendered.headers)
    assert ("Location", "https://as.example/authorize?x=1") in headers
    assert [v for k, v in headers if k == "Set-Cookie"] == ["a=1; Path=/", "b=; Max-Age=0"]
    assert ("Cache-Control", "no-store") in headers
    assert not any(k == "WWW-Authenticate" for k, _ in headers)


def test_a_missing_session_is_a_401_with_the_challenge_and_its_cookie_deletions() -> None:
    rendered = render_problem(SessionRequired(["gw=; Max-Age=0"], "session_idle"), "shop")
    assert rendered.status == 401
    headers = list(rendered.headers)
    assert ("WWW-Authenticate", 'Bearer realm="shop"') in headers
    assert ("Set-Cookie", "gw=; Max-Age=0") in headers
    body = json.loads(rendered.body)
    assert body["type"].endswith("missing-credentials") and "session" in body["detail"]


def test_extra_headers_still_render_as_before() -> None:
    rendered = render_problem(MethodNotAllowed(["POST", "GET"]))
    assert ("Allow", "GET, POST") in rendered.headers


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (HTML, True),
        ("application/json", False),
        ("application/json, text/html;q=0.5", False),
        ("*/*", False),
        (None, False),
        ("text/html;q=nonsense", False),
    ],
)
def test_pages_are_html_only_when_html_is_preferred(accept: str | None, html: bool) -> None:
    assert prefers_html(accept) is html


def test_a_problem_page_for_a_browser_is_escaped_html_that_runs_nothing() -> None:
    error = AuthorizationRefused("<script>alert(1)</script>")  # not an RFC 6749 error code
    page = problem_page(error, HTML, set_cookies=["l=; Max-Age=0"], request_id="r<1>")
    assert page.status == 400
    headers = dict(page.headers)
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert b"<script>" not in page.body and b"r&lt;1&gt;" in page.body
    assert b"invalid_response" in page.body and b"script" not in page.body
    assert ("Set-Cookie", "l=; Max-Age=0") in page.headers
    assert [k for k, _ in page.headers].count("Cache-Control") == 1


def test_a_problem_page_for_a_program_is_rfc_9457_json() -> None:
    page = problem_page(StateMismatch(), "application/json")
    assert dict(page.headers)["Content-Type"] == "application/problem+json"
    body = json.loads(page.body)
    assert body["status"] == 400 and body["type"].endswith("login-state-mismatch")
    assert page.reason == "state_mismatch"


def test_a_redirect_is_never_cached_and_sends_no_referrer() -> None:
    reply = redirect("https://app.example/x", ["s=1"], "login_ok", status=303)
    headers = dict(reply.headers)
    assert reply.status == 303 and headers["Location"] == "https://app.example/x"
    assert headers["Cache-Control"] == "no-store" and headers["Referrer-Policy"] == "no-referrer"
    assert reply.body == b"" and reply.reason == "login_ok"
