"""Path pattern semantics, literal prefixes, host normalisation and host wildcards."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.routing.patterns import (
    HostPattern,
    PathKind,
    check_prefix_path,
    compile_path_pattern,
    normalise_host,
)
from gateway.routing.semantics import PathSemantics

MATCHES = [
    # --- exact -----------------------------------------------------------------------------
    pytest.param("exact", "/health", "/health", True, id="exact-equal"),
    pytest.param("exact", "/health", "/health/", False, id="exact-not-trailing-slash"),
    pytest.param("exact", "/health", "/Health", False, id="exact-case-sensitive"),
    pytest.param("exact", "/health", "/healthz", False, id="exact-not-longer"),
    # --- prefix ----------------------------------------------------------------------------
    pytest.param("prefix", "/api", "/api", True, id="prefix-itself"),
    pytest.param("prefix", "/api", "/api/", True, id="prefix-trailing-slash"),
    pytest.param("prefix", "/api", "/api/x/y", True, id="prefix-below"),
    pytest.param("prefix", "/api", "/apix", False, id="prefix-segment-aware"),
    pytest.param("prefix", "/api", "/ap", False, id="prefix-shorter"),
    pytest.param("prefix", "/api", "/api;v=1/x", False, id="prefix-params-are-part-of-segment"),
    pytest.param("prefix", "/api/", "/api/", True, id="slash-prefix-itself"),
    pytest.param("prefix", "/api/", "/api/x", True, id="slash-prefix-below"),
    pytest.param("prefix", "/api/", "/api", False, id="slash-prefix-not-bare"),
    pytest.param("prefix", "/", "/", True, id="root-prefix-root"),
    pytest.param("prefix", "/", "/anything/at/all", True, id="root-prefix-everything"),
    # --- glob ------------------------------------------------------------------------------
    pytest.param("glob", "/a/*", "/a/b", True, id="star-one-segment"),
    pytest.param("glob", "/a/*", "/a/", True, id="star-zero-chars"),
    pytest.param("glob", "/a/*", "/a/b/c", False, id="star-not-across-slash"),
    pytest.param("glob", "/a/*", "/a", False, id="star-needs-its-slash"),
    pytest.param("glob", "/a/*.json", "/a/x.json", True, id="star-within-segment"),
    pytest.param("glob", "/a/*.json", "/a/x.jsonp", False, id="star-suffix-literal"),
    pytest.param("glob", "/a/**", "/a", True, id="globstar-zero-segments"),
    pytest.param("glob", "/a/**", "/a/", True, id="globstar-trailing-slash"),
    pytest.param("glob", "/a/**", "/a/b/c", True, id="globstar-many-segments"),
    pytest.param("glob", "/a/**", "/ab", False, id="globstar-segment-aware"),
    pytest.param("glob", "/a/**/z", "/a/z", True, id="globstar-middle-zero"),
    pytest.param("glob", "/a/**/z", "/a/b/c/z", True, id="globstar-middle-many"),
    pytest.param("glob", "/a/**/z", "/a/bz", False, id="globstar-middle-whole-segments"),
    pytest.param("glob", "/**", "/", True, id="globstar-root"),
    pytest.param("glob", "/**", "/x/y", True, id="globstar-everything"),
    pytest.param("glob", "/a/b**", "/a/bc", True, id="double-star-in-segment-is-star"),
    pytest.param("glob", "/a/b**", "/a/b/c", False, id="double-star-in-segment-one-segment"),
    pytest.param("glob", "/a.b/+(x)", "/a.b/+(x)", True, id="glob-regex-chars-literal"),
    pytest.param("glob", "/a.b/*", "/axb/c", False, id="glob-dot-is-literal"),
    pytest.param("glob", "/users/*/orders/*", "/users/1/orders/2", True, id="two-stars"),
    # A "**" after a "*" segment is not the prefix shortcut: the "*" still matches anything.
    pytest.param("glob", "/a*/**", "/ab/c", True, id="star-segment-then-globstar"),
    pytest.param("glob", "/*/**", "/x/y", True, id="root-star-then-globstar"),
    # --- regex -----------------------------------------------------------------------------
    pytest.param("regex", r"/u/\d+", "/u/42", True, id="regex-fullmatch"),
    pytest.param("regex", r"/u/\d+", "/u/42/x", False, id="regex-anchored-at-end"),
    pytest.param("regex", r"^/(a|b)$", "/b", True, id="regex-alternation"),
    pytest.param("regex", r"(?i)/admin", "/ADMIN", True, id="regex-flags"),
]


@pytest.mark.parametrize(("kind", "pattern", "path", "expected"), MATCHES)
def test_matches(kind: PathKind, pattern: str, path: str, expected: bool) -> None:
    compiled = compile_path_pattern(kind, pattern)
    assert compiled.matches(path) is expected
    if expected:
        assert path.startswith(compiled.literal_prefix)


@pytest.mark.parametrize(
    ("kind", "pattern", "prefix"),
    [
        pytest.param("exact", "/a/b", "/a/b", id="exact-whole"),
        pytest.param("prefix", "/a/", "/a/", id="prefix-whole"),
        pytest.param("glob", "/a/b*", "/a/b", id="glob-up-to-star"),
        pytest.param("glob", "/a/**", "/a", id="glob-globstar-drops-slash"),
        pytest.param("glob", "/**", "/", id="glob-root-globstar"),
        pytest.param("glob", "/a/**/b/**", "/a", id="glob-two-globstars"),
        pytest.param("glob", "/a/x**", "/a/x", id="glob-double-star-in-segment"),
        pytest.param("glob", "/a/b", "/a/b", id="glob-without-star-is-exact"),
        pytest.param("regex", r"/api/v1/.*", "/api/v1/", id="regex-literal-run"),
        pytest.param("regex", r"^/api/x", "/api/x", id="regex-caret"),
        pytest.param("regex", r"/api/v1?", "/api/v", id="regex-optional-char-dropped"),
        pytest.param("regex", r"/ab*", "/a", id="regex-star-drops-char"),
        pytest.param("regex", r"/ab+", "/ab", id="regex-plus-keeps-one"),
        pytest.param("regex", r"/ab{2}", "/abb", id="regex-brace-repeats"),
        pytest.param("regex", r"/ab{0,2}", "/a", id="regex-brace-may-be-zero"),
        pytest.param("regex", r"/a|/b", "/", id="regex-top-level-alternation"),
        pytest.param("regex", r"/a|b", "", id="regex-alternative-without-slash"),
        pytest.param("regex", r"/(?:a|b)", "/", id="regex-alternation-in-group"),
        pytest.param("regex", r"/x[|]|/y", "/", id="regex-alternation-after-class"),
        pytest.param("regex", r"/x[]|]", "/x", id="regex-bar-in-class"),
        pytest.param("regex", r"/x[^]|]y", "/x", id="regex-bar-in-negated-class"),
        pytest.param("regex", r"/a\.json", "/a.json", id="regex-escaped-dot-is-literal"),
        pytest.param("regex", r"/a[bc]", "/a", id="regex-class-stops"),
        pytest.param("regex", r"/[a]dmin", "/admin", id="regex-one-char-class"),
        pytest.param("regex", r"(?i)/admin", "/", id="regex-leading-flags"),
        pytest.param("regex", r"/a(?i)B", "/a", id="regex-late-flags"),
        pytest.param("regex", r".*", "", id="regex-no-literal"),
        pytest.param("regex", r"/caf%C3%A9/.*", "/caf%C3%A9/", id="regex-encoded-utf8"),
        pytest.param("regex", "/caf\u00e9/.*", "/caf", id="regex-stops-at-non-ascii"),
        # A literal cut inside an escape or a UTF-8 sequence is a possible prefix all the same.
        pytest.param("regex", r"/caf%C3%A[9A]", "/caf%C3%A", id="regex-stops-mid-utf8-escape"),
        pytest.param("regex", r"/x%F0%9F%98%8[0-9A-F]", "/x%F0%9F%98%8", id="regex-stops-in-emoji"),
        pytest.param("regex", r"/%C3%A9%C3%A[0-9A-F]", "/%C3%A9%C3%A", id="regex-stops-after-char"),
        # Issue 19: alternations the old hand-written scanner was never tested on.
        pytest.param("regex", r"/admin(/.*)?|/internal(/.*)?", "/", id="bar-after-closed-group"),
        pytest.param("regex", r"/api/v\d|/internal", "/", id="bar-after-escape"),
        pytest.param("regex", r"/api/[^x]+|/internal", "/", id="bar-after-negated-class"),
        pytest.param("regex", r"/a[(]|/internal", "/", id="bar-after-class-holding-paren"),
        pytest.param("regex", r"/a[)]|/internal", "/", id="bar-after-class-holding-close"),
        pytest.param("regex", r"/admin\Q(\E|/internal", "/", id="bar-after-quoted-paren"),
        pytest.param("regex", r"/a(?:b|c)|/internal", "/", id="bar-after-group-with-bar"),
        pytest.param("regex", r"/a\(|/internal", "/", id="bar-after-escaped-paren"),
    ],
)
def test_literal_prefix(kind: PathKind, pattern: str, prefix: str) -> None:
    assert compile_path_pattern(kind, pattern).literal_prefix == prefix


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [
        pytest.param("regex", "/a(", id="regex-syntax"),
        pytest.param("regex", r"(a)\1", id="regex-backreference"),
        pytest.param("regex", r"/a(?=b)", id="regex-lookahead"),
        pytest.param("regex", r"/a(?<!b)", id="regex-lookbehind"),
        pytest.param("regex", r"/a++", id="regex-possessive"),
        pytest.param("regex", r"/a(?#x)", id="regex-comment"),
        pytest.param("regex", r"u/\d+", id="regex-not-slash-led"),
        pytest.param("regex", r"/v2/\.\./admin", id="regex-dot-segments"),
        pytest.param("regex", r"/a//b.*", id="regex-empty-segment"),
        pytest.param("regex", r"/admin%2F.*", id="regex-encoded-slash"),
        pytest.param("regex", r"/%7euser/.*", id="regex-encoded-unreserved"),
        pytest.param("regex", r"/caf%c3%a9", id="regex-lowercase-hex"),
        # No UTF-8 sequence is cut short by four bytes: these can never become valid.
        pytest.param("regex", r"/a%80%80%80%80.*", id="regex-four-continuation-bytes"),
        pytest.param("regex", r"/admin;x/.*", id="regex-path-parameters"),
        pytest.param("regex", r"/x\|y", id="regex-unencoded-bar"),
        pytest.param("exact", "/admin;x", id="exact-path-parameters"),
        pytest.param("prefix", "/v2/../admin%2F;x", id="prefix-from-issue-13"),
        pytest.param("glob", "/a;x/**", id="glob-path-parameters"),
        pytest.param("exact", "/a%3Bx", id="exact-encoded-semicolon"),
        pytest.param("exact", "a/b", id="exact-relative"),
        pytest.param("prefix", "", id="prefix-empty"),
        pytest.param("exact", "/a/../b", id="exact-dot-segments"),
        pytest.param("exact", "/a//b", id="exact-double-slash"),
        pytest.param("prefix", "/%7euser", id="prefix-encoded-unreserved"),
        pytest.param("exact", "/a%2fb", id="exact-encoded-slash"),
        pytest.param("glob", "/a b/*", id="glob-raw-space"),
        pytest.param("exact", "/a?x=1", id="exact-with-query"),
        pytest.param("prefix", "/a/..;/b", id="prefix-tomcat"),
        pytest.param("substring", "/a", id="unknown-kind"),
    ],
)
def test_bad_patterns(kind: PathKind, pattern: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        compile_path_pattern(kind, pattern)


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("/", id="root"),
        pytest.param("/v2", id="plain"),
        pytest.param("/v2/", id="trailing-slash"),
        pytest.param("/api/.X", id="dot-led-segment"),
    ],
)
def test_rewrite_prefixes(prefix: str) -> None:
    check_prefix_path("add_prefix", prefix)


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("/v2 ", id="trailing-space"),
        pytest.param("/v2\t", id="trailing-tab"),
        pytest.param("/a//X", id="empty-segment"),
        pytest.param("/a/../b/", id="dot-segments"),
        pytest.param("/a;x/", id="path-parameters"),
        pytest.param("v2/", id="relative"),
    ],
)
def test_bad_rewrite_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        check_prefix_path("strip_prefix", prefix)


_SEGMENTS = st.sampled_from(["a", "b", "ab", "x.json", "", "*", "**", "a*", "*b"])
_PATH_SEGMENTS = st.sampled_from(["a", "b", "ab", "x.json", "ba", "abab", "z"])


@given(
    st.lists(_SEGMENTS, min_size=1, max_size=5),
    st.lists(_PATH_SEGMENTS, max_size=6),
    st.booleans(),
)
def test_every_glob_match_starts_with_the_literal_prefix(
    pattern_segments: list[str], path_segments: list[str], trailing: bool
) -> None:
    pattern = "/" + "/".join(pattern_segments)
    try:
        compiled = compile_path_pattern("glob", pattern)
    except ValueError:
        return  # e.g. "//" in the pattern: not a normalised path
    path = "/" + "/".join(path_segments) + ("/" if trailing and path_segments else "")
    if compiled.matches(path):
        assert path.startswith(compiled.literal_prefix)


# --- hosts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, None, id="none"),
        pytest.param("", None, id="empty"),
        pytest.param("api.example.com", "api.example.com", id="already-normal"),
        pytest.param("API.Example.COM", "api.example.com", id="lowercase"),
        pytest.param("api.example.com:8443", "api.example.com", id="strip-port"),
        pytest.param("api.example.com.", "api.example.com", id="strip-trailing-dot"),
        pytest.param("API.example.com.:443", "api.example.com", id="dot-and-port"),
        pytest.param("example.com:", "example.com", id="empty-port"),
        pytest.param("127.0.0.1:8080", "127.0.0.1", id="ipv4-port"),
        pytest.param("[::1]", "[::1]", id="ipv6"),
        pytest.param("[::1]:8080", "[::1]", id="ipv6-port"),
        pytest.param("[2001:DB8:0:0::1]", "[2001:db8::1]", id="ipv6-canonical"),
        pytest.param("my_host", "my_host", id="underscore"),
        pytest.param("a.com:65535", "a.com", id="highest-port"),
        pytest.param("a.com:0", "a.com", id="port-zero"),
        pytest.param("a.com:00443", "a.com", id="five-digit-port-with-zeros"),
        pytest.param("[::1]:65535", "[::1]", id="ipv6-highest-port"),
        pytest.param("[::1]:", "[::1]", id="ipv6-empty-port"),
        pytest.param("[2001:db8::1]:443", "[2001:db8::1]", id="ipv6-port-canonical"),
        pytest.param("A" * 253, "a" * 253, id="longest-name"),
        pytest.param("A" * 253 + ".:80", "a" * 253, id="longest-name-dot-and-port"),
    ],
)
def test_normalise_host(raw: str | None, expected: str | None) -> None:
    assert normalise_host(raw) == expected
    assert normalise_host(expected) == expected


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("a b.com", id="space"),
        pytest.param("a.com/x", id="slash"),
        pytest.param("user@a.com", id="userinfo"),
        pytest.param("a.com:80:80", id="two-ports"),
        pytest.param("a.com:http", id="named-port"),
        pytest.param("a.com:99999", id="port-out-of-range"),
        pytest.param("a.com:65536", id="port-one-past-the-highest"),
        pytest.param("a.com:000443", id="six-digit-port"),
        pytest.param("a.com:-1", id="negative-port"),
        pytest.param("a.com:+80", id="signed-port"),
        pytest.param("a.com:\u0661", id="non-ascii-digit-port"),
        pytest.param("[::1]:65536", id="ipv6-port-one-past-the-highest"),
        pytest.param("[::1]:http", id="ipv6-named-port"),
        pytest.param("[::1]:80:80", id="ipv6-two-ports"),
        pytest.param("[::1]8080", id="ipv6-port-without-colon"),
        pytest.param("[]", id="empty-brackets"),
        pytest.param("[not-ipv6]", id="bracketed-name"),
        pytest.param("[10.0.0.1]", id="bracketed-ipv4"),
        pytest.param("A" * 254, id="too-long-uppercase"),
        pytest.param("a.com..", id="two-trailing-dots"),
        pytest.param(".a.com", id="leading-dot"),
        pytest.param("a..com", id="empty-label"),
        pytest.param(".", id="only-dot"),
        pytest.param(":80", id="only-port"),
        pytest.param("::1", id="unbracketed-ipv6"),
        pytest.param("[::1", id="unclosed-bracket"),
        pytest.param("[::1]x", id="junk-after-bracket"),
        pytest.param("[fe80::1%25eth0]", id="ipv6-zone"),
        pytest.param("[v1.x]", id="ipvfuture"),
        pytest.param("\u212aexample.com", id="kelvin-sign-lowercases-to-k"),
        pytest.param("exämple.com", id="non-ascii"),
        pytest.param("a.com\r\nX: y", id="crlf"),
        pytest.param("*.a.com", id="wildcard-is-not-a-host"),
        pytest.param("a" * 254, id="too-long"),
    ],
)
def test_normalise_host_rejects_junk(raw: str) -> None:
    with pytest.raises(ValueError, match="host"):
        normalise_host(raw)


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        pytest.param("api.example.com", "api.example.com", True, id="exact"),
        pytest.param("API.Example.com", "api.example.com", True, id="exact-pattern-case"),
        pytest.param("api.example.com.", "api.example.com", True, id="exact-pattern-dot"),
        pytest.param("api.example.com", "x.api.example.com", False, id="exact-not-sub"),
        pytest.param("api.example.com", None, False, id="exact-no-host"),
        pytest.param("*.example.com", "a.example.com", True, id="wildcard-one-label"),
        pytest.param("*.example.com", "a.b.example.com", True, id="wildcard-many-labels"),
        pytest.param("*.example.com", "example.com", False, id="wildcard-not-apex"),
        pytest.param("*.example.com", "badexample.com", False, id="wildcard-label-aware"),
        pytest.param("*.example.com", "example.com.evil", False, id="wildcard-suffix-only"),
        pytest.param("*.example.com", None, False, id="wildcard-no-host"),
        pytest.param("[::1]", "[::1]", True, id="ipv6-exact"),
        pytest.param("[0:0::1]", "[::1]", True, id="ipv6-canonical"),
    ],
)
def test_host_pattern(pattern: str, host: str | None, expected: bool) -> None:
    assert HostPattern(pattern).matches(host) is expected


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("", id="empty"),
        pytest.param("*", id="bare-star"),
        pytest.param("*.", id="star-dot"),
        pytest.param("a.*.com", id="inner-star"),
        pytest.param("*.*.com", id="two-stars"),
        pytest.param("api*.com", id="partial-star"),
        pytest.param("api.example.com:443", id="port"),
        pytest.param("[::1]:443", id="ipv6-port"),
        pytest.param("*.[::1]", id="wildcard-ip"),
        pytest.param("a b", id="space"),
    ],
)
def test_bad_host_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match="host"):
        HostPattern(pattern)


_REGEX_TOKENS = st.sampled_from(
    ["/", "a", "b", "|", "(", ")", "(?:", "[", "]", "[^", "]|]", "*", "?", "+", "{2}", ".",
     "\\(", "\\d", "(?P<n>", "[(|]", "[^b(]", "$"]
)  # fmt: skip


@pytest.mark.filterwarnings("ignore:Possible:FutureWarning")  # "[[" or "||" in a class
@given(st.data(), st.booleans(), st.lists(_REGEX_TOKENS, min_size=1, max_size=10))
def test_every_regex_match_starts_with_the_literal_prefix(
    data: st.DataObject, caret: bool, tokens: list[str]
) -> None:
    """RE2's match range gives the prefix; Python's re (via hypothesis) draws the matches."""
    pattern = ("^" if caret else "") + "/" + "".join(tokens)
    try:
        re.compile(pattern)
        compiled = compile_path_pattern("regex", pattern)
        folded = compile_path_pattern("regex", pattern, PathSemantics(case_insensitive=True))
    except (ValueError, re.error):
        return  # refused by RE2, or a syntax only RE2 accepts ("/$*")
    path = data.draw(st.from_regex(pattern.removeprefix("^"), fullmatch=True))
    if not path.isascii():
        return  # never a normalised path; and re's \d is Unicode, RE2's ASCII
    assert compiled.matches(path)
    assert path.startswith(compiled.literal_prefix), (pattern, compiled.literal_prefix)
    if folded.matches(path.lower()):  # "[^b]" matches "B" but not "b" once folded
        assert path.lower().startswith(folded.literal_prefix), (pattern, folded.literal_prefix)
