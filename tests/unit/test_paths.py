"""Request-target normalisation: the path routes match is the path the upstream receives."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.problems import InvalidPath
from gateway.routing.paths import Target, normalise_target, rewrite_path
from gateway.routing.table import RouteEntry, RouteTable

ACCEPTED = [
    # --- plain paths (fast path) ----------------------------------------------------------
    pytest.param("/", "/", id="root"),
    pytest.param("/a/b/c", "/a/b/c", id="plain"),
    pytest.param("/a/b/", "/a/b/", id="keep-trailing-slash"),
    pytest.param("/Orders/ABC", "/Orders/ABC", id="no-case-folding"),
    pytest.param("/v1.2/x_y-z~w", "/v1.2/x_y-z~w", id="unreserved-punctuation"),
    pytest.param("/admin.", "/admin.", id="keep-trailing-dot-name"),
    pytest.param("/a../b", "/a../b", id="dots-inside-name-not-dot-segment"),
    pytest.param("/.well-known/jwks.json", "/.well-known/jwks.json", id="dot-led-name"),
    pytest.param("/...", "/...", id="three-dots-is-a-name"),
    # --- slashes ---------------------------------------------------------------------------
    pytest.param("//a///b", "/a/b", id="collapse-slashes"),
    pytest.param("/a//", "/a/", id="collapse-trailing-slashes"),
    pytest.param("//", "/", id="collapse-to-root"),
    pytest.param("//evil.example/x", "/evil.example/x", id="scheme-relative-looking-target"),
    # --- dot segments ----------------------------------------------------------------------
    pytest.param("/a/./b", "/a/b", id="dot-segment"),
    pytest.param("/a/b/../c", "/a/c", id="dotdot-segment"),
    pytest.param("/a/.", "/a/", id="trailing-dot-keeps-slash"),
    pytest.param("/a/..", "/", id="trailing-dotdot-to-root"),
    pytest.param("/a/b/..", "/a/", id="trailing-dotdot-keeps-slash"),
    pytest.param("/a/b/../", "/a/", id="dotdot-then-slash"),
    pytest.param("/./", "/", id="dot-at-root"),
    pytest.param("/a//../b", "/b", id="collapse-before-dotdot"),
    pytest.param("/a/%2e/b", "/a/b", id="encoded-dot-segment"),
    pytest.param("/a/b/%2e%2E", "/a/", id="encoded-dotdot-mixed-case"),
    pytest.param("/a/b/.%2e/c", "/a/c", id="half-encoded-dotdot"),
    pytest.param("/public/%2e%2e/admin", "/admin", id="encoded-dotdot-resolved-before-routing"),
    # --- percent-encoding ------------------------------------------------------------------
    pytest.param("/%7euser", "/~user", id="decode-unreserved-tilde"),
    pytest.param("/%41%62%30%2D%5F", "/Ab0-_", id="decode-unreserved-alnum"),
    pytest.param("/a%20b", "/a%20b", id="keep-encoded-space"),
    pytest.param("/a%3fb", "/a%3Fb", id="keep-encoded-question-mark"),
    pytest.param("/a%3a%40", "/a%3A%40", id="uppercase-hex"),
    pytest.param("/caf%c3%a9", "/caf%C3%A9", id="utf8-kept-encoded"),
    pytest.param("/%e2%82%ac", "/%E2%82%AC", id="utf8-euro-sign"),
    pytest.param("/%F0%9F%98%80", "/%F0%9F%98%80", id="utf8-four-bytes"),
    pytest.param("/100%25", "/100%25", id="encoded-percent-alone"),
    pytest.param("/a%25zz", "/a%25zz", id="encoded-percent-before-non-hex"),
    pytest.param("/a%23b", "/a%23b", id="keep-encoded-hash"),
    pytest.param("/%c2%bd", "/%C2%BD", id="vulgar-half-folds-to-fraction-slash-only"),
    # --- sub-delims and path parameters ----------------------------------------------------
    pytest.param("/a;b=c/d", "/a;b=c/d", id="matrix-params-on-name"),
    pytest.param("/!$&'()*+,=:@", "/!$&'()*+,=:@", id="sub-delims-colon-at"),
    pytest.param("/a/b;..", "/a/b;..", id="dotdot-as-param-value"),
    # --- query -----------------------------------------------------------------------------
    pytest.param("/a?b=%2F..%2e%zz", "/a", id="query-verbatim"),
    pytest.param("/a?", "/a", id="empty-query"),
    pytest.param("/a/../b?x=1?y=2", "/b", id="query-split-at-first-question-mark"),
]


@pytest.mark.parametrize(("raw", "path"), ACCEPTED)
def test_accepted(raw: str, path: str) -> None:
    target = normalise_target(raw)
    assert target.path == path
    assert normalise_target(target.path).path == path


REJECTED = [
    # --- form ------------------------------------------------------------------------------
    pytest.param("", id="empty-target"),
    pytest.param("*", id="asterisk-form"),
    pytest.param("http://h/a", id="absolute-form"),
    pytest.param("example.com:443", id="authority-form"),
    pytest.param("a/b", id="relative-path"),
    pytest.param("?a=1", id="query-only"),
    pytest.param("/a#frag", id="fragment"),
    pytest.param("/a%23#", id="fragment-after-escape"),
    # --- characters that must be encoded ---------------------------------------------------
    pytest.param("/a b", id="raw-space"),
    pytest.param('/a"b', id="raw-double-quote"),
    pytest.param("/a<b>", id="raw-angle-brackets"),
    pytest.param("/a\\..\\admin", id="backslash"),
    pytest.param("/a^b", id="raw-caret"),
    pytest.param("/a`b", id="raw-backtick"),
    pytest.param("/a{b}", id="raw-braces"),
    pytest.param("/a|b", id="raw-pipe"),
    pytest.param("/a[0]", id="raw-square-brackets"),
    pytest.param("/café", id="raw-non-ascii"),
    pytest.param("/a\x00b", id="raw-nul"),
    pytest.param("/a\tb", id="raw-tab"),
    pytest.param("/a\r\nHost: x", id="raw-crlf-injection"),
    pytest.param("/a\x7f", id="raw-del"),
    pytest.param("/\uff0e\uff0e/admin", id="raw-fullwidth-dots"),
    # --- malformed escapes -----------------------------------------------------------------
    pytest.param("/a%zz", id="invalid-pct-hex"),
    pytest.param("/a%4", id="truncated-pct-at-end"),
    pytest.param("/a%", id="lone-percent"),
    pytest.param("/a%4/b", id="truncated-pct-mid-path"),
    # --- encoded separators and controls ---------------------------------------------------
    pytest.param("/public%2F..%2Fadmin", id="encoded-slash"),
    pytest.param("/public%2f..%2fadmin", id="encoded-slash-lowercase"),
    pytest.param("/public/..%5Cadmin", id="encoded-backslash"),
    pytest.param("/a%00.json", id="encoded-nul"),
    pytest.param("/a%0d%0aX-Injected:%201", id="encoded-crlf"),
    pytest.param("/a%09", id="encoded-tab"),
    pytest.param("/a%7F", id="encoded-del"),
    # --- double encoding -------------------------------------------------------------------
    pytest.param("/public/%252e%252e/admin", id="double-encoded-dot"),
    pytest.param("/public%252fadmin", id="double-encoded-slash"),
    pytest.param("/a%255C", id="double-encoded-backslash"),
    pytest.param("/a%25%32%65", id="double-encoding-built-from-unreserved-escapes"),
    # --- invalid UTF-8 ---------------------------------------------------------------------
    pytest.param("/public/%c0%ae%c0%ae/admin", id="overlong-utf8-dot"),
    pytest.param("/public%c0%afadmin", id="overlong-utf8-slash"),
    pytest.param("/%e0%80%ae", id="overlong-utf8-dot-three-bytes"),
    pytest.param("/%c1%9c", id="overlong-utf8-backslash"),
    pytest.param("/%ff", id="invalid-utf8-byte"),
    pytest.param("/%c3", id="truncated-utf8-sequence"),
    pytest.param("/%ed%a0%80", id="utf8-encoded-surrogate"),
    pytest.param("/%80", id="utf8-lone-continuation"),
    # --- compatibility characters that fold into syntax ------------------------------------
    pytest.param("/public/%ef%bc%8e%ef%bc%8e/admin", id="fullwidth-dot"),
    pytest.param("/public%ef%bc%8fadmin", id="fullwidth-slash"),
    pytest.param("/public%ef%bc%bcadmin", id="fullwidth-backslash"),
    pytest.param("/a%ef%bc%85%32%65", id="fullwidth-percent"),
    pytest.param("/%e2%80%a5/admin", id="two-dot-leader"),
    pytest.param("/%e2%80%a4%e2%80%a4", id="one-dot-leader"),
    pytest.param("/%ef%b9%92%ef%b9%92", id="small-full-stop"),
    pytest.param("/%e2%84%85", id="care-of-folds-to-slash"),
    # --- traversal -------------------------------------------------------------------------
    pytest.param("/..", id="dotdot-escape-root"),
    pytest.param("/../etc/passwd", id="dotdot-escape-root-leading"),
    pytest.param("/a/../../b", id="dotdot-escape-root-nested"),
    pytest.param("/%2e%2e/x", id="encoded-dotdot-escape-root"),
    pytest.param("/public/..;/admin", id="tomcat-dotdot-semicolon"),
    pytest.param("/public/..;jsessionid=x/admin", id="tomcat-dotdot-jsessionid"),
    pytest.param("/public/%2e%2e;/admin", id="tomcat-encoded-dotdot-semicolon"),
    pytest.param("/a/.;x/b", id="tomcat-dot-semicolon"),
    pytest.param("/;x/admin", id="tomcat-empty-segment-with-params"),
    pytest.param("/a/..;", id="tomcat-trailing-dotdot-semicolon"),
]


@pytest.mark.parametrize("raw", REJECTED)
def test_rejected(raw: str) -> None:
    with pytest.raises(InvalidPath) as caught:
        normalise_target(raw)
    assert caught.value.status == 400


def test_query_is_kept_verbatim_and_separate() -> None:
    raw_query = "redirect=%2F..%2fadmin&x=%zz&y=a+b&%E2%82%AC"
    assert normalise_target("/a/./b?" + raw_query) == Target("/a/b", raw_query)
    assert normalise_target("/a").query is None
    assert normalise_target("/a?").query == ""


@pytest.mark.parametrize(
    ("path", "strip", "add", "expected"),
    [
        pytest.param("/api/x", "/api", None, "/x", id="strip-segment"),
        pytest.param("/api", "/api", None, "/", id="strip-whole-path"),
        pytest.param("/api/", "/api", None, "/", id="strip-whole-path-trailing-slash"),
        pytest.param("/apix", "/api", None, "/apix", id="strip-is-segment-aware"),
        pytest.param("/api/x", "/api/", None, "/x", id="strip-prefix-with-trailing-slash"),
        pytest.param("/other/x", "/api", None, "/other/x", id="strip-no-match-unchanged"),
        pytest.param("/x", None, "/v1", "/v1/x", id="add-prefix"),
        pytest.param("/x", None, "/v1/", "/v1/x", id="add-prefix-no-double-slash"),
        pytest.param("/", None, "/v1", "/v1/", id="add-prefix-to-root"),
        pytest.param("/api/x/", "/api", "/v2", "/v2/x/", id="strip-then-add"),
        pytest.param("/api/x", "/", "/", "/api/x", id="root-prefixes-are-no-ops"),
        pytest.param("/a/b", None, None, "/a/b", id="no-rewrite"),
    ],
)
def test_rewrite_path(path: str, strip: str | None, add: str | None, expected: str) -> None:
    assert rewrite_path(path, strip, add) == expected


# --- properties ----------------------------------------------------------------------------

_TOKENS = st.sampled_from(
    [
        "/", "//", ".", "..", "...", "a", "B", "~", "-", "_", ";", ";x", "..;", ":", "@", "=",
        "*", "%2e", "%2E", "%2f", "%5c", "%25", "%20", "%41", "%7e", "%c3%a9", "%C0%AE",
        "%ef%bc%8e", "%e2%80%a5", "%00", "%zz", "%4", "\\", " ", "#", "?", "é", "\uff0e",
    ]
)  # fmt: skip
_RAW_PATHS = st.lists(_TOKENS, max_size=14).map(lambda tokens: "/" + "".join(tokens))
_NORMAL_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*")


def _accepted(raw: str) -> Target | None:
    try:
        return normalise_target(raw)
    except InvalidPath:
        return None


@given(_RAW_PATHS)
@example("/a/%2e%2e/%2E/b/")
@example("/%25%34%31%42")
def test_normalised_paths_are_fixed_points_without_dot_or_empty_segments(raw: str) -> None:
    target = _accepted(raw)
    if target is None:
        return
    path = target.path
    assert normalise_target(path) == Target(path, None)
    assert path.startswith("/")
    assert _NORMAL_CHARS.fullmatch(path)
    for bad in ("//", "/./", "/../"):
        assert bad not in path
    assert not path.endswith(("/..", "/."))
    # What an upstream that decodes everything and strips ";params" would see has no
    # traversal in it either.
    decoded = unquote(path)
    assert "\\" not in decoded
    for segment in decoded.split("/"):
        assert segment.partition(";")[0] not in (".", "..")


_ROUTES: RouteTable[str] = RouteTable(
    [
        RouteEntry(None, "prefix", "/admin", None, "admin"),
        RouteEntry(None, "glob", "/public/*/file", None, "file"),
        RouteEntry(None, "regex", r"/a/[^/]*\.json", None, "json"),
        RouteEntry(None, "prefix", "/", None, "fallback"),
    ]
)


@given(_RAW_PATHS, st.sampled_from(["", "/admin", "/public/x", "/a", "/public/.."]))
def test_route_for_a_path_is_the_route_for_its_renormalised_form(raw: str, lead: str) -> None:
    target = _accepted(lead + raw)
    if target is None:
        return
    again = normalise_target(target.path).path
    assert _ROUTES.match(None, target.path, "GET") == _ROUTES.match(None, again, "GET")
