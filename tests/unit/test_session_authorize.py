"""The authorization request URL (RFC 6749 §4.1.1, RFC 7636 §4.3, OIDC Core §3.1.2.1) and the
return-URL rule against open redirects (RFC 9700 §4.11)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.auth.sessions.authorize import authorization_url, remove_dot_segments
from gateway.auth.sessions.authorize import safe_return_path as safe

RESERVED = {"/oauth2/callback", "/oauth2/logout"}


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        pytest.param("/orders/42", "/orders/42", id="plain-path"),
        pytest.param("/search?q=a%20b&x=1", "/search?q=a%20b&x=1", id="query-kept"),
        pytest.param("/a/./b/../c", "/a/c", id="dot-segments-normalised"),
        pytest.param("/caf%C3%A9", "/caf%C3%A9", id="encoded-utf8"),
        pytest.param("/", "/", id="root"),
        pytest.param(
            "/next?url=https://evil.com",
            "/next?url=https://evil.com",
            id="url-in-query-is-the-upstreams-business",
        ),
    ],
)
def test_same_origin_paths_are_kept(candidate: str, expected: str) -> None:
    assert safe(candidate, reserved=RESERVED) == expected


@pytest.mark.parametrize(
    "candidate",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("//evil.com", id="network-path"),
        pytest.param("///evil.com", id="triple-slash"),
        pytest.param("/\\evil.com", id="slash-backslash"),
        pytest.param("\\\\evil.com", id="double-backslash"),
        pytest.param("/%2F%2Fevil.com", id="encoded-slashes"),
        pytest.param("/%2f/evil.com", id="encoded-second-slash"),
        pytest.param("/%5Cevil.com", id="encoded-backslash"),
        pytest.param("/%252F%252Fevil.com", id="double-encoded"),
        pytest.param("/%25252F%25252Fevil.com", id="triple-encoded"),
        pytest.param("/%2525252F%2525252Fevil.com", id="quadruple-encoded"),
        pytest.param("\t//evil.com", id="leading-tab"),
        pytest.param("/\t/evil.com", id="tab-inside"),
        pytest.param("/%09/evil.com", id="encoded-tab"),
        pytest.param("/%0a/evil.com", id="encoded-newline"),
        pytest.param("/%0d%0aSet-Cookie:x=1", id="header-injection"),
        pytest.param("/\r\n/evil.com", id="raw-crlf"),
        pytest.param(" /x", id="leading-space"),
        pytest.param("/a b", id="raw-space"),
        pytest.param("https:evil.com", id="scheme-no-slashes"),
        pytest.param("https://evil.com", id="absolute-url"),
        pytest.param("javascript:alert(1)", id="javascript"),
        pytest.param("data:text/html,x", id="data"),
        pytest.param("evil.com", id="relative-path"),
        pytest.param("./x", id="dot-relative"),
        pytest.param("/.//evil.com", id="dot-then-network-path"),
        pytest.param("/..//evil.com", id="dotdot-then-network-path"),
        pytest.param("/%2e%2e//evil.com", id="encoded-dotdot"),
        pytest.param("/%2e/%2fevil.com", id="encoded-dot-and-slash"),
        pytest.param("/%EF%BC%8F/evil.com", id="fullwidth-solidus"),
        pytest.param("/%ff", id="not-utf8"),
        pytest.param("/é", id="raw-non-ascii"),
        pytest.param("/x#frag", id="fragment"),
        pytest.param("/x\x00", id="nul"),
        pytest.param("/%00", id="encoded-nul"),
        pytest.param("/" + "a" * 2000, id="too-long"),
        pytest.param("/oauth2/callback?code=x&state=y", id="callback-loop"),
        pytest.param("/oauth2/logout", id="logout-loop"),
        pytest.param("/x/../oauth2/callback", id="callback-via-dots"),
        pytest.param("/oauth2%2Fcallback", id="callback-encoded"),
    ],
)
def test_anything_else_becomes_the_root(candidate: str | None) -> None:
    assert safe(candidate, reserved=RESERVED) == "/"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/a/b/c/./../../g", "/a/g"),  # RFC 3986 §5.2.4's own example
        ("/..", "/"),
        ("/../a", "/a"),
        ("/a/.", "/a/"),
        ("/a/..", "/"),
        ("/..//x", "//x"),
    ],
)
def test_dot_segments_are_removed_as_rfc_3986_says(path: str, expected: str) -> None:
    assert remove_dot_segments(path) == expected


def build(**overrides: object) -> dict[str, list[str]]:
    arguments: dict[str, object] = {
        "client_id": "web-app",
        "redirect_uri": "https://app.example/oauth2/callback",
        "scopes": ["profile", "email"],
        "state": "S" * 43,
        "nonce": "N" * 43,
        "code_challenge": "C" * 43,
    }
    endpoint = str(overrides.pop("endpoint", "https://as.example/authorize"))
    url = authorization_url(endpoint, **(arguments | overrides))  # type: ignore[arg-type]
    return parse_qs(urlsplit(url).query, strict_parsing=True)


def test_the_authorization_request_carries_every_required_parameter() -> None:
    assert build() == {
        "response_type": ["code"],
        "client_id": ["web-app"],
        "redirect_uri": ["https://app.example/oauth2/callback"],
        "scope": ["openid profile email"],
        "state": ["S" * 43],
        "nonce": ["N" * 43],
        "code_challenge": ["C" * 43],
        "code_challenge_method": ["S256"],
    }


def test_openid_is_always_requested_once() -> None:
    assert build(scopes=["email", "openid"])["scope"] == ["openid email"]


def test_the_endpoints_own_query_is_kept() -> None:
    params = build(endpoint="https://as.example/authorize?tenant=a")
    assert params["tenant"] == ["a"] and params["response_type"] == ["code"]


def test_extra_parameters_are_added_but_never_override_ours() -> None:
    assert build(extra={"prompt": "login"})["prompt"] == ["login"]
    with pytest.raises(ValueError, match="redirect_uri"):
        build(extra={"redirect_uri": "https://evil.example/"})


@pytest.mark.parametrize(
    "endpoint",
    ["https://as.example/authorize#frag", "ftp://as.example/authorize", "/authorize"],
)
def test_unusable_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ValueError):
        build(endpoint=endpoint)
