"""RFC 6265 cookies of the gateway: strict, bounded reading of our names amid everyone
else's, Set-Cookie attributes (__Host-, Secure, HttpOnly, SameSite), and chunk reassembly
attacks (gaps, extras, mixed sets)."""

from __future__ import annotations

import secrets

import pytest

from gateway.auth.sessions.cookies import (
    MAX_COOKIE_HEADER_BYTES,
    AmbiguousCookie,
    ChunkError,
    CookiePolicy,
    CookieTooLarge,
    delete_cookie,
    join_chunks,
    parse_cookie_header,
    render_deletion,
    render_value,
    set_cookie,
    set_cookie_name,
    split_chunks,
    without_owned,
)

TLS = CookiePolicy("gw", secure=True)
PLAIN = CookiePolicy("gw", secure=False)
SMALL = CookiePolicy("gw", secure=True, chunk_bytes=300, max_chunks=3)


def header(pairs: list[tuple[str, str]]) -> str:
    return "; ".join(f"{name}={value}" for name, value in pairs)


# --- names and attributes ---------------------------------------------------------------


def test_over_tls_the_cookie_carries_the_host_prefix_and_its_required_attributes() -> None:
    value = set_cookie(TLS, TLS.name, "abc", 3600)
    assert value == "__Host-gw=abc; Path=/; Max-Age=3600; Secure; HttpOnly; SameSite=Lax"
    assert "Domain" not in value


def test_without_tls_there_is_no_prefix_and_no_secure() -> None:
    value = set_cookie(PLAIN, PLAIN.name, "abc", None)
    assert value == "gw=abc; Path=/; HttpOnly; SameSite=Lax"


def test_a_deletion_matches_the_cookie_it_deletes() -> None:
    assert delete_cookie(TLS, "__Host-gw.1") == (
        "__Host-gw.1=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Secure; "
        "HttpOnly; SameSite=Lax"
    )


@pytest.mark.parametrize("name", ["", "a b", "a;b", "a.b", "ä", "a=b"])
def test_a_policy_refuses_names_that_are_not_tokens(name: str) -> None:
    with pytest.raises(ValueError):
        CookiePolicy(name, secure=True)


def test_values_that_are_not_cookie_octets_are_never_written() -> None:
    for value in ("a b", "a;b", 'a"b', "a,b", "a\\b", "a\nb"):
        with pytest.raises(ValueError):
            set_cookie(TLS, TLS.name, value, None)


# --- reading ----------------------------------------------------------------------------


def test_our_cookies_are_picked_out_of_everyone_elses() -> None:
    fields = ['theme=dark; __Host-gw=abc; other="x y"; bad value; __Host-gw.x=1; =; a=b=c']
    assert parse_cookie_header(fields, TLS) == {"__Host-gw": "abc", "__Host-gw.x": "1"}


def test_without_the_prefix_the_unprefixed_name_is_not_ours_over_tls() -> None:
    """A cookie a sibling subdomain could set (no __Host-) is not the TLS session cookie."""
    assert parse_cookie_header(["gw=planted"], TLS) == {}


def test_a_quoted_value_is_unquoted() -> None:
    assert parse_cookie_header(['__Host-gw="abc"'], TLS) == {"__Host-gw": "abc"}


def test_a_malformed_value_of_ours_counts_as_absent() -> None:
    assert parse_cookie_header(["__Host-gw=a,b"], TLS) == {}


def test_split_fields_from_http2_are_joined() -> None:
    assert parse_cookie_header(["a=1", "__Host-gw=abc"], TLS) == {"__Host-gw": "abc"}


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(["__Host-gw=a; __Host-gw=b"], id="same-field"),
        pytest.param(["__Host-gw=a", "__Host-gw=a"], id="two-fields"),
        pytest.param(["__Host-gw.0=a; x=1; __Host-gw.0=b"], id="chunk-twice"),
    ],
)
def test_one_of_our_names_twice_is_refused(fields: list[str]) -> None:
    with pytest.raises(AmbiguousCookie) as caught:
        parse_cookie_header(fields, TLS)
    assert caught.value.status == 400


def test_the_cookie_header_is_bounded_in_bytes_and_pairs() -> None:
    with pytest.raises(CookieTooLarge):
        parse_cookie_header(["__Host-gw=" + "a" * MAX_COOKIE_HEADER_BYTES], TLS)
    with pytest.raises(CookieTooLarge):
        parse_cookie_header([header([(f"c{i}", "1") for i in range(300)]) + "; __Host-gw=a"], TLS)


def test_no_cookie_header_is_no_cookies() -> None:
    assert parse_cookie_header([], TLS) == {}
    assert parse_cookie_header(["theme=dark"], TLS) == {}


# --- chunks -----------------------------------------------------------------------------


def test_a_small_value_is_one_bare_cookie() -> None:
    assert split_chunks(TLS, "abc") == [("__Host-gw", "abc")]
    assert join_chunks(TLS, {"__Host-gw": "abc"}) == "abc"


def test_a_large_value_is_split_and_reassembled() -> None:
    value = secrets.token_urlsafe(600)
    pairs = split_chunks(SMALL, value)
    assert [name for name, _ in pairs] == ["__Host-gw.0", "__Host-gw.1", "__Host-gw.2"]
    assert all(len(chunk) <= SMALL.chunk_bytes for _, chunk in pairs)
    assert join_chunks(SMALL, dict(reversed(pairs))) == value


def test_every_set_cookie_of_a_full_session_fits_a_browsers_4096_bytes() -> None:
    policy = CookiePolicy("gw_session", secure=True, max_chunks=3)
    for _, chunk in split_chunks(policy, "A" * (3 * 3700)):
        assert len(set_cookie(policy, policy.name + ".0", chunk, 43200)) < 4096


def test_a_value_too_large_for_max_chunks_is_refused_not_truncated() -> None:
    with pytest.raises(ValueError, match="more than 3"):
        split_chunks(SMALL, "A" * 1000)


def chunked(value: str | None = None) -> dict[str, str]:
    return dict(split_chunks(SMALL, value or secrets.token_urlsafe(500)))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(lambda c: c.pop("__Host-gw.1"), "missing_chunk", id="gap"),
        pytest.param(lambda c: c.pop("__Host-gw.2"), "missing_chunk", id="last-missing"),
        pytest.param(
            lambda c: c.update({"__Host-gw.3": c["__Host-gw.2"]}), "extra_chunk", id="extra-index"
        ),
        pytest.param(lambda c: c.update({"__Host-gw": "abc"}), "mixed_chunks", id="bare-too"),
        pytest.param(
            lambda c: c.update({"__Host-gw.01": c.pop("__Host-gw.1")}),
            "bad_chunk_name",
            id="leading-zero",
        ),
        pytest.param(lambda c: c.update({"__Host-gw.x": "1"}), "bad_chunk_name", id="not-a-number"),
        pytest.param(lambda c: c.update({"__Host-gw.1": "junk"}), "bad_chunk", id="no-header"),
        pytest.param(
            lambda c: c.update({"__Host-gw.1": chunked()["__Host-gw.1"]}),
            "mismatched_chunks",
            id="other-write",
        ),
        pytest.param(
            lambda c: c.update({k: "9" + v[1:] for k, v in c.items()}),
            "chunk_count",
            id="count-beyond-max",
        ),
        pytest.param(
            lambda c: c.update({k: "1" + v[1:] for k, v in c.items()}),
            "chunk_count",
            id="count-one",
        ),
        pytest.param(
            lambda c: c.update({k: "2" + v[1:] for k, v in c.items()}),
            "extra_chunk",
            id="count-understated",
        ),
    ],
)
def test_chunk_sets_no_writer_of_ours_produced_are_refused(mutate, expected: str) -> None:
    cookies = chunked()
    mutate(cookies)
    with pytest.raises(ChunkError) as caught:
        join_chunks(SMALL, cookies)
    assert caught.value.reason == expected


def test_no_cookies_reassemble_to_nothing() -> None:
    assert join_chunks(SMALL, {}) is None


# --- rendering --------------------------------------------------------------------------


def test_rendering_deletes_the_stale_chunks_the_request_carried() -> None:
    present = {"__Host-gw.0", "__Host-gw.1", "__Host-gw.2"}
    headers = render_value(SMALL, "short", 600, present)
    assert headers[0].startswith("__Host-gw=short;")
    assert sorted(h.split("=")[0] for h in headers[1:]) == sorted(present)
    assert all("Max-Age=0" in h for h in headers[1:])


def test_rendering_chunks_deletes_the_old_bare_cookie() -> None:
    headers = render_value(SMALL, secrets.token_urlsafe(400), 600, {"__Host-gw"})
    assert any(h.startswith("__Host-gw=;") and "Max-Age=0" in h for h in headers)
    assert sum(h.startswith("__Host-gw.") for h in headers) == 2


def test_overwritten_names_are_not_also_deleted() -> None:
    headers = render_value(SMALL, secrets.token_urlsafe(400), 600, {"__Host-gw.0", "__Host-gw.1"})
    assert not any("Max-Age=0" in h for h in headers)


def test_deletion_clears_every_cookie_present_or_the_bare_name() -> None:
    assert render_deletion(TLS, set()) == [delete_cookie(TLS, "__Host-gw")]
    assert len(render_deletion(TLS, {"__Host-gw.0", "__Host-gw.1"})) == 2


# --- what the upstream receives -------------------------------------------------------------

LOGIN = CookiePolicy("gw_login", secure=True, max_chunks=1)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([], None),
        (["theme=dark; lang=en"], None),  # nothing of ours: forwarded as it is
        (["__Host-gw=abc"], ""),
        (["theme=dark; __Host-gw=abc; lang=en"], "theme=dark; lang=en"),
        (["__Host-gw.0=2.abcdef.x; a=1", "__Host-gw.1=2.abcdef.y"], "a=1"),
        (["__Host-gw_login=s; __Host-gw=v; b=2"], "b=2"),
        (["__Host-gwx=1; gw=2"], None),  # other names that merely start alike, or unprefixed
        (["a=1;;  __Host-gw=abc ; junk"], "a=1; junk"),
    ],
    ids=["none", "others", "only-ours", "amid", "chunks", "login", "lookalike", "sloppy"],
)
def test_the_gateways_cookies_never_reach_the_upstream(
    fields: list[str], expected: str | None
) -> None:
    assert without_owned(fields, (TLS, LOGIN)) == expected


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("a=1; Path=/", "a"),
        (" a =1", "a"),
        ("a", "a"),  # no "=": stored nameless, sent back as "a"
        ("=a=1; Path=/", "a"),  # nameless: sent back as "a=1"
        ("= a =1", "a"),
        ("a.0=2.x.y;Secure", "a.0"),
        ("=", ""),
        ("", ""),
    ],
)
def test_set_cookie_name_is_the_name_a_browser_sends_back(value: str, name: str) -> None:
    assert set_cookie_name(value) == name
