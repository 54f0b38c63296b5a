"""RFC 9449 §4.3 htu normalisation (RFC 3986 §6.2.2, §6.2.3): examples and properties."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.htu import NotAnHttpUri, external_uri, normalise_htu, remove_dot_segments

EQUIVALENT = {
    "scheme-case": ("HTTPS://api.example.com/a", "https://api.example.com/a"),
    "host-case": ("https://API.Example.COM/a", "https://api.example.com/a"),
    "default-https-port": ("https://api.example.com:443/a", "https://api.example.com/a"),
    "default-http-port": ("http://api.example.com:80/a", "http://api.example.com/a"),
    "empty-port": ("https://api.example.com:/a", "https://api.example.com/a"),
    "port-leading-zeros": ("https://api.example.com:08443/a", "https://api.example.com:8443/a"),
    "port-many-leading-zeros": ("https://api.example.com:0000443/a", "https://api.example.com/a"),
    "port-zeros-only": ("https://api.example.com:00/a", "https://api.example.com:0/a"),
    "highest-port": ("https://api.example.com:065535/a", "https://api.example.com:65535/a"),
    "empty-path": ("https://api.example.com", "https://api.example.com/"),
    "percent-case": ("https://h.example/a%2fb", "https://h.example/a%2Fb"),
    "percent-unreserved": ("https://h.example/%7Euser/%41%2d", "https://h.example/~user/A-"),
    "percent-in-host": ("https://%41pi.example/", "https://api.example/"),
    "percent-case-in-host": ("https://EX%2fAMPLE.com/", "https://ex%2Fample.com/"),
    "dot-segments": ("https://h.example/a/b/c/./../../g", "https://h.example/a/g"),
    "dot-segment-escaped": ("https://h.example/a/%2E%2E/b", "https://h.example/b"),
    "dots-above-root": ("https://h.example/../../a", "https://h.example/a"),
    "trailing-dot": ("https://h.example/a/.", "https://h.example/a/"),
    "trailing-dotdot": ("https://h.example/a/b/..", "https://h.example/a/"),
    "query-dropped": ("https://h.example/a?b=c", "https://h.example/a"),
    "fragment-dropped": ("https://h.example/a#frag", "https://h.example/a"),
    "query-and-fragment": ("https://h.example/a?x#y", "https://h.example/a"),
    "ipv6": ("https://[2001:DB8::0001]:443/a", "https://[2001:db8::1]/a"),
}

DISTINCT = {
    "path-case": ("https://h.example/A", "https://h.example/a"),
    "encoded-slash": ("https://h.example/a%2Fb", "https://h.example/a/b"),
    "non-default-port": ("https://h.example:8443/", "https://h.example/"),
    "scheme": ("http://h.example/", "https://h.example/"),
    "empty-segment": ("https://h.example/a//b", "https://h.example/a/b"),
    "trailing-slash": ("https://h.example/a/", "https://h.example/a"),
}

REFUSED = {
    "relative": "/orders/42",
    "no-scheme": "//h.example/a",
    "other-scheme": "ftp://h.example/a",
    "no-host": "https:///a",
    "userinfo": "https://user@h.example/a",
    "space": "https://h.example/a b",
    "non-ascii": "https://h.example/é",
    "bad-percent": "https://h.example/%zz",
    "truncated-percent": "https://h.example/%4",
    "port-out-of-range": "https://h.example:65536/",
    "port-of-5000-digits": "https://h.example:" + "9" * 5000 + "/",
    "port-not-number": "https://h.example:https/",
    "bad-ipv6": "https://[not-an-address]/",
    "control": "https://h.example/\n",
    "too-long": "https://h.example/" + "a" * 9000,
    "one-too-long": "https://h.example/" + "a" * (8193 - len("https://h.example/")),
}


@pytest.mark.parametrize(("given_uri", "expected"), EQUIVALENT.values(), ids=EQUIVALENT.keys())
def test_equivalent_uris_normalise_alike(given_uri: str, expected: str) -> None:
    assert normalise_htu(given_uri) == normalise_htu(expected) == expected


@pytest.mark.parametrize(("one", "other"), DISTINCT.values(), ids=DISTINCT.keys())
def test_different_resources_stay_different(one: str, other: str) -> None:
    assert normalise_htu(one) != normalise_htu(other)


@pytest.mark.parametrize("uri", REFUSED.values(), ids=REFUSED.keys())
def test_what_is_no_http_uri_is_refused(uri: str) -> None:
    with pytest.raises(NotAnHttpUri):
        normalise_htu(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "https://h.example:65535/",  # the largest TCP port
        "https://h.example/" + "a" * (8192 - len("https://h.example/")),  # the longest URI
    ],
)
def test_the_limits_themselves_are_accepted(uri: str) -> None:
    assert normalise_htu(uri) == uri


@pytest.mark.parametrize(
    ("path", "expected"),
    [  # RFC 3986 §5.4.1-5.4.2 results, as absolute paths
        ("/a/b/c/./../../g", "/a/g"),
        ("/a/b/c/../../../g", "/g"),
        ("/a/b/c/g/./h", "/a/b/c/g/h"),
        ("/a/b/c/g;x=1/../y", "/a/b/c/y"),
        ("/a/./b/../b/", "/a/b/"),
        ("/.", "/"),
        ("/..", "/"),
        ("/", "/"),
        ("/a/..g", "/a/..g"),
    ],
)
def test_remove_dot_segments(path: str, expected: str) -> None:
    assert remove_dot_segments(path) == expected


_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
segments = st.lists(
    st.one_of(
        st.sampled_from([".", "..", ""]),
        st.text(alphabet=_UNRESERVED + "!$&'()*+,;=:@", min_size=1, max_size=8),
        st.builds(lambda b: f"%{b:02x}", st.integers(0, 255)),
    ),
    max_size=6,
)
hosts = st.from_regex(
    r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?(\.[a-zA-Z]{2,5}){0,2}", fullmatch=True
)
uris = st.builds(
    lambda scheme, host, port, parts: f"{scheme}://{host}{port}/{'/'.join(parts)}",
    st.sampled_from(["http", "https", "HTTP", "Https"]),
    hosts,
    st.sampled_from(["", ":", ":80", ":443", ":8080"]),
    segments,
)


@given(uris)
def test_normalisation_is_idempotent(uri: str) -> None:
    once = normalise_htu(uri)
    assert normalise_htu(once) == once


@given(uris)
def test_the_result_has_no_dot_segments_and_a_lowercase_origin(uri: str) -> None:
    result = normalise_htu(uri)
    scheme, rest = result.split("://", 1)
    host, _, path = rest.partition("/")
    assert scheme in ("http", "https") and host == host.lower()
    assert not {".", ".."} & set(path.split("/"))


@given(uris, st.text(alphabet=_UNRESERVED + "=&/?", max_size=12), st.text(max_size=12))
def test_query_and_fragment_never_matter(uri: str, query: str, fragment: str) -> None:
    fragment = "".join(c for c in fragment if c.isascii() and c.isalnum())
    assert normalise_htu(f"{uri}?{query}#{fragment}") == normalise_htu(uri)


@given(uris, st.data())
def test_encoding_an_unreserved_character_changes_nothing(uri: str, data: st.DataObject) -> None:
    path_start = uri.index("/", uri.index("//") + 2)
    in_escape = {i + d for i, c in enumerate(uri) if c == "%" for d in (1, 2)}
    positions = [
        i for i, c in enumerate(uri) if i > path_start and c in _UNRESERVED and i not in in_escape
    ]
    if not positions:
        return
    at = data.draw(st.sampled_from(positions))
    hex_digits = data.draw(st.sampled_from(["%02x", "%02X"])) % ord(uri[at])
    encoded = uri[:at] + "%" + hex_digits + uri[at + 1 :]
    assert normalise_htu(encoded) == normalise_htu(uri)


@given(uris)
def test_the_origin_is_case_insensitive(uri: str) -> None:
    scheme, rest = uri.split("://", 1)
    host, slash, path = rest.partition("/")
    swapped = f"{scheme.swapcase()}://{host.swapcase()}{slash}{path}"
    assert normalise_htu(swapped) == normalise_htu(uri)


@given(st.text(max_size=200))
def test_arbitrary_text_is_refused_as_no_http_uri_or_normalised(text: str) -> None:
    """The DPoP check catches NotAnHttpUri only: any other exception would be a 500."""
    with contextlib.suppress(NotAnHttpUri):
        normalise_htu(text)


@pytest.mark.parametrize(
    ("external_url", "path", "uri"),
    [
        ("https://api.example.com", "/orders/42", "https://api.example.com/orders/42"),
        ("https://api.example.com/", "/orders", "https://api.example.com/orders"),
        ("https://example.com/api", "/orders", "https://example.com/api/orders"),
        ("https://example.com/api/", "/", "https://example.com/api/"),
        # Only slashes are stripped: a prefix that ends in another character keeps it.
        ("https://example.com/BOX", "/orders", "https://example.com/BOX/orders"),
        ("https://example.com/X/", "/orders", "https://example.com/X/orders"),
    ],
)
def test_external_uri_is_the_configured_url_and_the_path(
    external_url: str, path: str, uri: str
) -> None:
    assert external_uri(external_url, path) == uri


@pytest.mark.parametrize(
    "uri", ["http://example.com", "http://example.com/", "http://example.com:/",
            "http://example.com:80/"],
)  # fmt: skip
def test_rfc3986_section_6_2_3_example_uris_are_one(uri: str) -> None:
    """RFC 3986 §6.2.3: "the following four URIs are equivalent"; and the form "normalized
    by scheme-based normalization" is the second one."""
    assert normalise_htu(uri) == "http://example.com/"


def test_rfc3986_section_6_2_2_example_with_an_http_scheme() -> None:
    """RFC 3986 §6.2.2: "eXAMPLE://a/./b/../b/%63/%7bfoo%7d" normalises to
    "example://a/b/c/%7Bfoo%7D" (case, percent-encoding and dot-segment normalisation);
    the same URI with the http scheme, the only kind an htu may be."""
    assert normalise_htu("HTTP://a/./b/../b/%63/%7bfoo%7d") == "http://a/b/c/%7Bfoo%7D"


def test_rfc9449_figure_13_htu_matches_the_request_uri_it_was_made_for() -> None:
    """RFC 9449 Figure 13: a proof for ``GET /protectedresource`` at resource.example.org
    says htu "https://resource.example.org/protectedresource"; §4.3 item 9 ignores query."""
    request = external_uri("https://resource.example.org", "/protectedresource")
    assert normalise_htu("https://resource.example.org/protectedresource") == normalise_htu(
        request + "?query=ignored"
    )
