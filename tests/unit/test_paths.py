"""Request-target normalisation: the path routes match is the path the upstream receives."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.problems import InvalidPath
from gateway.routing import paths
from gateway.routing.paths import Target, normalise_target, rewrite_path, without_path_parameters
from gateway.routing.semantics import STRICT, PathSemantics
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
    pytest.param("/public/..;a;b/admin", id="tomcat-dotdot-two-parameters"),
    pytest.param("/public/.;a;b/admin", id="tomcat-dot-two-parameters"),
    pytest.param("/;a;b/admin", id="tomcat-empty-segment-two-parameters"),
    # --- an encoded ";" (issue 13, item 10): servlet stacks that decode, then cut ";..." ----
    pytest.param("/api/read/..%3B/admin/x", id="dotdot-encoded-semicolon"),
    pytest.param("/api/read/..%3b/admin/x", id="dotdot-encoded-semicolon-lowercase"),
    pytest.param("/api/read/%2e%2e%3b/admin/x", id="all-encoded-dotdot-semicolon"),
    pytest.param("/api/read/%2E.%3B/admin/x", id="mixed-encoded-dotdot-semicolon"),
    pytest.param("/api/read/.%3B/x", id="dot-encoded-semicolon"),
    pytest.param("/%3Bx/admin", id="empty-segment-encoded-semicolon"),
    pytest.param("/admin%3Bjsessionid=1/x", id="encoded-semicolon-inside-a-name"),
    pytest.param("/api/read/..%253B/admin/x", id="double-encoded-semicolon"),
    pytest.param("/api/read/..%25%33%62/admin/x", id="double-encoded-from-unreserved-escapes"),
    pytest.param("/api/read/..%C0%BB/admin/x", id="overlong-2-byte-semicolon"),
    pytest.param("/api/read/..%E0%80%BB/admin/x", id="overlong-3-byte-semicolon"),
    pytest.param("/api/read/..%EF%BC%9B/admin/x", id="fullwidth-semicolon-nfkc"),
    pytest.param("/api/read/..%CD%BE/admin/x", id="greek-question-mark-nfc-is-semicolon"),
]


@pytest.mark.parametrize("raw", REJECTED)
def test_rejected(raw: str) -> None:
    with pytest.raises(InvalidPath) as caught:
        normalise_target(raw)
    assert caught.value.status == 400


# --- every member of the module's constants (mutation testing cannot mutate them) --------

_PCHAR_PUNCTUATION = "-._~!$&'()*+,;=:@"


@pytest.mark.parametrize("code", range(0x20, 0x7F), ids=lambda c: f"raw-{c:02X}")
def test_every_printable_ascii_character_raw(code: int) -> None:
    """_NOT_PCHAR: accepted raw exactly when RFC 3986 §3.3 lets it into a segment."""
    char = chr(code)
    raw = "/a" + char + "b"
    if char.isalnum() or char in _PCHAR_PUNCTUATION or char == "/":
        assert normalise_target(raw).path == raw
    elif char == "?":
        assert normalise_target(raw) == Target("/a", "b")
    else:
        with pytest.raises(InvalidPath):
            normalise_target(raw)


@pytest.mark.parametrize("char", sorted(paths._UNRESERVED))
def test_every_unreserved_escape_is_decoded(char: str) -> None:
    for escape in (f"%{ord(char):02X}", f"%{ord(char):02x}"):
        assert normalise_target(f"/x{escape}y").path == f"/x{char}y"


@pytest.mark.parametrize("octet", sorted(paths._FORBIDDEN_OCTETS), ids=lambda o: f"{o:02X}")
def test_every_forbidden_octet_is_refused_in_every_encoding(octet: int) -> None:
    for escape in (f"%{octet:02X}", f"%{octet:02x}", f"%25{octet:02X}"):
        with pytest.raises(InvalidPath):
            normalise_target(f"/x{escape}y")


def test_forbidden_octets_are_the_separators_parameters_and_controls() -> None:
    assert {*range(0x20), 0x7F, ord("/"), ord(";"), ord("\\")} == paths._FORBIDDEN_OCTETS


@pytest.mark.parametrize(
    "code",
    [c for c in range(0x20, 0x80) if c not in paths._FORBIDDEN_OCTETS],
    ids=lambda c: f"{c:02X}",
)
def test_every_other_ascii_escape_is_decoded_or_kept_uppercase(code: int) -> None:
    char = chr(code)
    expected = char if char in paths._UNRESERVED else f"%{code:02X}"
    assert normalise_target(f"/x%{code:02x}y").path == f"/x{expected}y"


# One compatibility character per fold target: what NFKC (or a best-fit code page) makes of it.
_FOLDS_INTO = {
    ".": "%EF%BC%8E",  # U+FF0E FULLWIDTH FULL STOP
    "/": "%EF%BC%8F",  # U+FF0F FULLWIDTH SOLIDUS
    "\\": "%EF%BC%BC",  # U+FF3C FULLWIDTH REVERSE SOLIDUS
    "%": "%EF%BC%85",  # U+FF05 FULLWIDTH PERCENT SIGN
    ";": "%EF%BC%9B",  # U+FF1B FULLWIDTH SEMICOLON
}


def test_fold_targets_are_the_ones_tested() -> None:
    assert set(paths._FOLD_TARGETS) == set(_FOLDS_INTO)


@pytest.mark.parametrize(("target", "escape"), sorted(_FOLDS_INTO.items()))
def test_every_fold_target_is_refused_as_a_compatibility_character(
    target: str, escape: str
) -> None:
    assert unicodedata.normalize("NFKC", unquote(escape)) == target
    with pytest.raises(InvalidPath):
        normalise_target(f"/x{escape}y")


@pytest.mark.parametrize("segment", sorted(paths._DOT_SEGMENTS))
def test_every_dot_segment_with_parameters_is_refused(segment: str) -> None:
    for raw in (f"/a/{segment};/b", f"/a/{segment};x=1/b", f"/a/{segment};"):
        with pytest.raises(InvalidPath):
            normalise_target(raw)


# --- path parameters and rewriting (issue 13, item 6) --------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/a;x=1/b;y", "/a/b", id="every-segment"),
        pytest.param("/a;x;y/b", "/a/b", id="several-parameters"),
        pytest.param("/a/b", "/a/b", id="none"),
        pytest.param("/a;x/", "/a/", id="trailing-slash"),
        pytest.param("/", "/", id="root"),
    ],
)
def test_without_path_parameters(path: str, expected: str) -> None:
    assert without_path_parameters(path) == expected


@pytest.mark.parametrize(
    ("path", "strip", "add", "semantics", "expected"),
    [
        pytest.param(
            "/public;x/a", "/public", "/base", STRICT, "/base/a", id="issue-13-params-stripped"
        ),
        pytest.param("/public;x", "/public", None, STRICT, "/", id="params-on-whole-path"),
        pytest.param("/a;x/b;y/c", "/a/b", None, STRICT, "/c", id="params-on-every-stripped"),
        pytest.param("/a;x;y/b", "/a", None, STRICT, "/b", id="several-params-stripped"),
        pytest.param("/a/b;y/c", "/a", None, STRICT, "/b;y/c", id="params-below-kept"),
        pytest.param("/publicx;y/a", "/public", None, STRICT, "/publicx;y/a", id="still-aware"),
        pytest.param("/PUBLIC/a", "/public", "/base", STRICT, "/base/PUBLIC/a", id="strict-case"),
        pytest.param(
            "/PUBLIC/a",
            "/public",
            "/base",
            PathSemantics(case_insensitive=True),
            "/base/a",
            id="as-a-case-insensitive-upstream-reads-it",
        ),
        pytest.param(
            "/public.%20/a",
            "/public",
            None,
            PathSemantics(trailing_dot_ignored=True, trailing_space_ignored=True),
            "/a",
            id="as-a-trimming-upstream-reads-it",
        ),
        pytest.param("/pub", "/public", None, STRICT, "/pub", id="shorter-than-prefix"),
    ],
)
def test_rewrite_path_compares_segments_as_the_route_matched_them(
    path: str, strip: str, add: str | None, semantics: PathSemantics, expected: str
) -> None:
    assert rewrite_path(path, strip, add, semantics) == expected


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
        pytest.param("/x", None, "/v1X", "/v1X/x", id="add-prefix-only-slashes-trimmed"),
        pytest.param("/apiX/x", "/apiX", None, "/x", id="strip-prefix-only-slashes-trimmed"),
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
