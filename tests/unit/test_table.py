"""Route table: first match wins, 404 vs 405 with Allow, HEAD as GET, and the prefix index."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.problems import BadRequest, InvalidPath, MethodNotAllowed, NotFound
from gateway.routing.patterns import HostPattern, PathKind, compile_path_pattern, normalise_host
from gateway.routing.semantics import STRICT, PathSemantics
from gateway.routing.table import RouteEntry, RouteTable


def route(
    name: str,
    path: str,
    *,
    kind: PathKind = "prefix",
    methods: tuple[str, ...] | None = None,
    hosts: tuple[str, ...] | None = None,
    semantics: PathSemantics = STRICT,
) -> RouteEntry[str]:
    methods_set = None if methods is None else frozenset(methods)
    return RouteEntry(hosts, kind, path, methods_set, name, semantics)


ENTRIES = (
    route("health", "/health", kind="exact", methods=("GET",)),
    route("admin-host", "/", hosts=("admin.example.com",)),
    route("tenant", "/t", hosts=("*.tenants.example.com",)),
    route("orders-read", "/orders/**", kind="glob", methods=("GET",)),
    route("orders-write", "/orders/**", kind="glob", methods=("POST", "PUT")),
    route("user", r"/users/\d+", kind="regex", methods=("GET", "DELETE")),
    route("api-first", "/api"),
    route("api-shadowed", "/api/x", kind="exact"),
    route("head-only", "/probe", kind="exact", methods=("HEAD",)),
    route("files", "/files/*/raw", kind="glob", methods=("GET",)),
    route("any-method-later", "/files/a/raw", kind="exact"),
)


@pytest.fixture
def table() -> RouteTable[str]:
    """Built per test, never at import: mutmut switches a mutant on after the import."""
    return RouteTable(list(ENTRIES))


@pytest.mark.parametrize(
    ("host", "path", "method", "expected"),
    [
        pytest.param(None, "/health", "GET", "health", id="exact"),
        pytest.param(None, "/health", "HEAD", "health", id="head-served-by-get-route"),
        pytest.param(None, "/orders/1", "GET", "orders-read", id="method-picks-route"),
        pytest.param(None, "/orders/1", "PUT", "orders-write", id="method-picks-later-route"),
        pytest.param(None, "/orders", "POST", "orders-write", id="globstar-zero-segments"),
        pytest.param(None, "/users/7", "DELETE", "user", id="regex-route"),
        pytest.param(None, "/api/x", "GET", "api-first", id="first-match-wins"),
        pytest.param(None, "/probe", "HEAD", "head-only", id="head-only-route"),
        pytest.param(
            None, "/files/a/raw", "POST", "any-method-later", id="later-any-method-beats-405"
        ),
        pytest.param("admin.example.com", "/health", "GET", "health", id="earlier-any-host"),
        pytest.param("admin.example.com", "/orders/1", "GET", "admin-host", id="host-route"),
        pytest.param("ADMIN.Example.com:8443", "/x", "GET", "admin-host", id="host-normalised"),
        pytest.param("admin.example.com.", "/x", "GET", "admin-host", id="host-trailing-dot"),
        pytest.param("a.tenants.example.com", "/t/1", "GET", "tenant", id="host-wildcard"),
        pytest.param("a.b.tenants.example.com", "/t", "GET", "tenant", id="host-wildcard-deep"),
        pytest.param("other.example.com", "/api", "GET", "api-first", id="other-host-any-route"),
    ],
)
def test_match(
    table: RouteTable[str], host: str | None, path: str, method: str, expected: str
) -> None:
    assert table.match(host, path, method) == expected


@pytest.mark.parametrize(
    ("host", "path"),
    [
        pytest.param(None, "/nothing", id="no-route"),
        pytest.param(None, "/healthz", id="exact-is-not-prefix"),
        pytest.param(None, "/apix", id="prefix-is-segment-aware"),
        pytest.param(None, "/users/x", id="regex-no-match"),
        pytest.param(None, "/t/1", id="host-route-needs-a-host"),
        pytest.param("tenants.example.com", "/t/1", id="wildcard-not-apex"),
        pytest.param("admin.example.com.evil", "/x", id="host-suffix-trick"),
    ],
)
def test_not_found(table: RouteTable[str], host: str | None, path: str) -> None:
    with pytest.raises(NotFound) as caught:
        table.match(host, path, "GET")
    assert caught.value.status == 404


@pytest.mark.parametrize(
    ("host", "path", "method", "allowed"),
    [
        pytest.param(None, "/health", "POST", ("GET", "HEAD"), id="get-route-allows-head"),
        pytest.param(
            None,
            "/orders/1",
            "DELETE",
            ("GET", "HEAD", "POST", "PUT"),
            id="allow-is-union-of-path-matches",
        ),
        pytest.param(None, "/users/1", "PUT", ("DELETE", "GET", "HEAD"), id="regex-405"),
        pytest.param(None, "/probe", "GET", ("HEAD",), id="head-does-not-imply-get"),
        pytest.param(None, "/health", "get", ("GET", "HEAD"), id="method-is-case-sensitive"),
        pytest.param(None, "/files/b/raw", "PUT", ("GET", "HEAD"), id="glob-405"),
    ],
)
def test_method_not_allowed(
    table: RouteTable[str], host: str | None, path: str, method: str, allowed: tuple[str, ...]
) -> None:
    with pytest.raises(MethodNotAllowed) as caught:
        table.match(host, path, method)
    assert caught.value.status == 405
    assert caught.value.allowed == allowed
    assert caught.value.extra_headers() == {"Allow": ", ".join(allowed)}
    # What an OPTIONS answered by the gateway lists (RFC 9110 §7.6.2) is this same set.
    assert table.allowed(host, path) == frozenset(allowed)


@pytest.mark.parametrize(
    ("host", "path", "allowed"),
    [
        pytest.param(None, "/orders/1", {"GET", "HEAD", "POST", "PUT"}, id="union-of-matches"),
        pytest.param(None, "/probe", {"HEAD"}, id="one-route"),
        pytest.param(None, "/api/x", None, id="any-method-route"),
        pytest.param(None, "/files/a/raw", None, id="later-any-method-route"),
        pytest.param("admin.example.com", "/health", None, id="any-method-host-route"),
        pytest.param("other.example.com", "/t/1", set(), id="no-route"),
    ],
)
def test_allowed(
    table: RouteTable[str], host: str | None, path: str, allowed: set[str] | None
) -> None:
    assert table.allowed(host, path) == (None if allowed is None else frozenset(allowed))


def test_allow_ignores_routes_of_other_hosts() -> None:
    table = RouteTable(
        [
            route("other-host", "/x", methods=("DELETE",), hosts=("a.example.com",)),
            route("wild", "/x", methods=("PATCH",), hosts=("*.b.example.com",)),
            route("mine", "/x", methods=("GET",)),
        ]
    )
    with pytest.raises(MethodNotAllowed) as caught:
        table.match("c.example.com", "/x", "POST")
    assert caught.value.allowed == ("GET", "HEAD")


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("a b", id="space"),
        pytest.param("user@admin.example.com", id="userinfo"),
        pytest.param("admin.example.com/x", id="slash"),
        pytest.param("\u212admin.example.com", id="kelvin-sign"),
    ],
)
def test_junk_host_is_a_bad_request(table: RouteTable[str], host: str) -> None:
    with pytest.raises(BadRequest) as caught:
        table.match(host, "/health", "GET")
    assert caught.value.status == 400


def test_host_specific_route_listed_after_any_host_route_keeps_order() -> None:
    table = RouteTable(
        [
            route("any-long", "/a/b/c"),
            route("host-short", "/a", hosts=("h.example.com",)),
            route("any-short", "/a"),
        ]
    )
    assert table.match("h.example.com", "/a/b/c", "GET") == "any-long"
    assert table.match("h.example.com", "/a/b", "GET") == "host-short"
    assert table.match("x.example.com", "/a/b", "GET") == "any-short"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        pytest.param([route("ok", "/"), route("bad", "/a(", kind="regex")], "route 1", id="regex"),
        pytest.param([route("bad", "/a/../b")], "route 0", id="unnormalised-path"),
        pytest.param([route("bad", "/a", hosts=("a b",))], "route 0", id="bad-host"),
        pytest.param([route("bad", "/a", hosts=())], "route 0: an empty host", id="no-hosts"),
        pytest.param([route("bad", "/a", methods=())], "route 0: an empty method", id="no-verbs"),
        pytest.param([RouteEntry(None, "substring", "/a", None, "x")], "route 0", id="bad-kind"),
    ],
)
def test_bad_entries_name_their_index(entries: list[RouteEntry[str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RouteTable(entries)


def test_len_and_lowercase_methods_in_entries() -> None:
    table = RouteTable([route("a", "/a", methods=("get",)), route("b", "/b")])
    assert len(table) == 2
    assert len(RouteTable([])) == 0
    assert table.match(None, "/a", "HEAD") == "a"


# --- upstream path semantics (issue 13, item 1) ----------------------------------------------

LOOSE = PathSemantics(
    case_insensitive=True,
    trailing_slash_ignored=True,
    trailing_dot_ignored=True,
    trailing_space_ignored=True,
)


def _protected_then_anonymous(semantics: PathSemantics) -> RouteTable[str]:
    return RouteTable(
        [
            route("admin", "/admin/**", kind="glob", semantics=semantics),
            route("secret", "/secret", kind="exact", semantics=semantics),
            route("private", r"/api/v1/private(/.*)?", kind="regex", semantics=semantics),
            route("docs", "/Docs", semantics=semantics),
            route("anonymous", "/", semantics=semantics),
        ]
    )


ISSUE_13_SPELLINGS = [
    pytest.param("/ADMIN/x", "admin", id="case"),
    pytest.param("/Admin", "admin", id="case-globstar-zero-segments"),
    pytest.param("/secret/", "secret", id="trailing-slash"),
    pytest.param("/secret.", "secret", id="trailing-dot"),
    pytest.param("/secret%20", "secret", id="trailing-space"),
    pytest.param("/admin./x", "admin", id="trailing-dot-inside"),
    pytest.param("/SECRET.%20/", "secret", id="all-at-once"),
    pytest.param("/api/v1/Private/x", "private", id="case-regex"),
    pytest.param("/docs/a", "docs", id="case-pattern-written-in-capitals"),
]


@pytest.mark.parametrize(("path", "expected"), ISSUE_13_SPELLINGS)
def test_routes_match_the_path_as_the_upstream_reads_it(path: str, expected: str) -> None:
    assert _protected_then_anonymous(LOOSE).match(None, path, "GET") == expected


@pytest.mark.parametrize(("path", "expected"), ISSUE_13_SPELLINGS)
def test_strict_upstreams_keep_the_strict_reading(path: str, expected: str) -> None:
    assert _protected_then_anonymous(STRICT).match(None, path, "GET") == "anonymous"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/ADMIN/x", "anonymous", id="case-only-where-set"),
        pytest.param("/secret/", "secret", id="slash-set"),
        pytest.param("/secret.", "anonymous", id="dot-not-set"),
    ],
)
def test_each_rule_applies_alone(path: str, expected: str) -> None:
    table = _protected_then_anonymous(PathSemantics(trailing_slash_ignored=True))
    assert table.match(None, path, "GET") == expected


def test_each_route_is_matched_on_its_own_upstreams_view_in_config_order() -> None:
    table = RouteTable(
        [
            route("strict-admin", "/admin", semantics=STRICT),
            route("iis-admin", "/admin", semantics=LOOSE),
            route("strict-rest", "/", semantics=STRICT),
        ]
    )
    assert table.match(None, "/admin/x", "GET") == "strict-admin"
    assert table.match(None, "/ADMIN/x", "GET") == "iis-admin"
    assert table.match(None, "/other", "GET") == "strict-rest"
    assert table.candidates("/admin/x") == (0, 1, 2)


def test_a_path_an_upstream_would_misread_is_refused_only_where_that_upstream_serves() -> None:
    table = RouteTable(
        [
            route("iis", "/", hosts=("iis.example.com",), semantics=LOOSE),
            route("strict", "/"),
        ]
    )
    long_s = "/%C5%BFecret"  # U+017F: Java reads it as "s"
    assert table.match("other.example.com", long_s, "GET") == "strict"
    with pytest.raises(InvalidPath):
        table.match("iis.example.com", long_s, "GET")
    assert table.candidates(long_s, "other.example.com") == (1,)
    with pytest.raises(InvalidPath):  # the index is probed on the host's views too
        table.candidates(long_s, "iis.example.com")
    assert table.allowed("other.example.com", long_s) is None  # "strict" takes any method
    with pytest.raises(InvalidPath):  # and so is an OPTIONS answered by the gateway
        table.allowed("iis.example.com", long_s)


def test_allowed_reads_the_path_as_each_upstream_does() -> None:
    """``allowed`` (an OPTIONS the gateway answers, RFC 9110 §7.6.2) sees the routes ``match``
    sees: a route on a case-insensitive upstream counts for "/DOCS" too."""
    table = RouteTable(
        [
            route("docs", "/Docs", methods=("GET",), hosts=("a.example.com",), semantics=LOOSE),
            route("docs-write", "/docs", methods=("POST",), semantics=LOOSE),
            route("strict", "/docs", methods=("PUT",)),
        ]
    )
    assert table.allowed("a.example.com", "/DOCS/") == frozenset({"GET", "HEAD", "POST"})
    assert table.allowed("b.example.com", "/DOCS/") == frozenset({"POST"})
    assert table.allowed("a.example.com", "/docs") == frozenset({"GET", "HEAD", "POST", "PUT"})


def test_what_is_matched_is_not_what_is_returned() -> None:
    """The table only chooses; the handler forwards the normalised path as sent."""
    table = _protected_then_anonymous(LOOSE)
    assert table.match(None, "/ADMIN/x", "GET") == "admin"
    path = "/ADMIN/x"
    table.match(None, path, "GET")
    assert path == "/ADMIN/x"


# --- the index -----------------------------------------------------------------------------

ROUTE_COUNT = 10_000


def _big_table() -> RouteTable[int]:
    entries: list[RouteEntry[int]] = []
    for i in range(ROUTE_COUNT):
        shape = i % 4
        if shape == 0:
            entries.append(RouteEntry(None, "prefix", f"/svc{i}", None, i))
        elif shape == 1:
            entries.append(RouteEntry(None, "glob", f"/svc{i}/items/*", frozenset({"GET"}), i))
        elif shape == 2:
            entries.append(RouteEntry(None, "regex", rf"/svc{i}/v\d+/.*", None, i))
        else:
            entries.append(RouteEntry((f"h{i}.example.com",), "exact", f"/svc{i}", None, i))
    entries.append(RouteEntry(None, "regex", r".*/catch-all", None, ROUTE_COUNT))
    return RouteTable(entries)


BIG = _big_table()


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        pytest.param(None, "/svc9996/x", 9996, id="prefix-near-the-end"),
        pytest.param(None, "/svc9997/items/5", 9997, id="glob-near-the-end"),
        pytest.param(None, "/svc9998/v2/q", 9998, id="regex-near-the-end"),
        pytest.param("h9999.example.com", "/svc9999", 9999, id="host-bucket"),
        pytest.param(None, "/x/catch-all", ROUTE_COUNT, id="literal-free-regex"),
    ],
)
def test_large_table_examines_few_entries(host: str | None, path: str, expected: int) -> None:
    assert BIG.match(host, path, "GET") == expected
    examined = BIG.candidates(path, host)
    assert expected in examined
    # Only entries whose literal prefix starts the path (and, for a host, those of its
    # bucket) are tested, plus the one literal-free regex: not 10,000.
    assert len(examined) <= 3, examined
    assert list(examined) == sorted(examined)


def test_large_case_insensitive_table_still_examines_few_entries() -> None:
    entries = [RouteEntry(None, "prefix", f"/Svc{i}", None, i, LOOSE) for i in range(ROUTE_COUNT)]
    entries += [RouteEntry(None, "regex", rf"/Re{i}/v\d+", None, i, LOOSE) for i in range(100)]
    table = RouteTable(entries)
    assert table.match(None, "/SVC9999./x", "GET") == 9999
    # /svc9, /svc99, /svc999 and /svc9999: the literal prefixes that start the view.
    assert table.candidates("/SVC9999./x") == (9, 99, 999, 9999)
    assert table.match(None, "/RE42/V7", "GET") == 42
    assert table.candidates("/re42/v7") == (10_042,)


def test_large_table_host_routes_stay_in_their_bucket() -> None:
    assert 9999 not in BIG.candidates("/svc9999", None)
    assert 9999 not in BIG.candidates("/svc9999", "h3.example.com")
    with pytest.raises(NotFound):
        BIG.match("h3.example.com", "/svc9999", "GET")


# --- the index never changes the answer ----------------------------------------------------

_PATH_SEGMENTS = st.sampled_from(["a", "b", "ab", "c.json", "1", "A", "a.", "B%20"])
_PATHS = st.builds(
    lambda segments, slash: "/" + "/".join(segments) + ("/" if slash and segments else ""),
    st.lists(_PATH_SEGMENTS, max_size=4),
    st.booleans(),
)
_PATTERNS = st.one_of(
    st.tuples(st.sampled_from(["exact", "prefix"]), _PATHS),
    st.tuples(
        st.just("glob"),
        st.lists(st.sampled_from(["a", "b", "*", "**", "a*", "*.json"]), max_size=4).map(
            lambda segments: "/" + "/".join(segments)
        ),
    ),
    st.tuples(
        st.just("regex"),
        st.sampled_from([r"/a.*", r"/a?b.*", r".*b", r"/(a|b)/\d", "/a", r"/A(/.*)?|/b"]),
    ),
)
_HOSTS = st.sampled_from(["a.example.com", "b.example.com", "x.a.example.com", None])
_SEMANTICS = st.builds(PathSemantics, st.booleans(), st.booleans(), st.booleans(), st.booleans())
_ENTRIES = st.lists(
    st.builds(
        lambda pattern, hosts, methods, name, semantics: RouteEntry(
            hosts, pattern[0], pattern[1], methods, name, semantics
        ),
        _PATTERNS,
        st.one_of(
            st.none(),
            st.lists(
                st.sampled_from(["a.example.com", "b.example.com", "*.a.example.com"]),
                min_size=1,
                max_size=2,
            ).map(tuple),
        ),
        st.one_of(st.none(), st.sets(st.sampled_from(["GET", "POST"]), min_size=1).map(frozenset)),
        st.integers(),
        st.one_of(st.just(STRICT), _SEMANTICS),
    ),
    max_size=12,
)


def _linear_match(
    entries: list[RouteEntry[int]], host: str | None, path: str, method: str
) -> int | tuple[str, ...] | None:
    """The specification, without an index: the target, the Allow set, or None for 404."""
    host = normalise_host(host)
    allowed: set[str] = set()
    for entry in entries:
        if entry.hosts is not None and not any(HostPattern(h).matches(host) for h in entry.hosts):
            continue
        pattern = compile_path_pattern(entry.path_kind, entry.path_pattern, entry.semantics)
        if not pattern.matches(entry.semantics.view(path)):
            continue
        methods = entry.methods
        if methods is not None and "GET" in methods:
            methods = methods | {"HEAD"}
        if methods is None or method in methods:
            return entry.target
        allowed |= methods
    return tuple(sorted(allowed)) if allowed else None


def _indexed_match(
    table: RouteTable[int], host: str | None, path: str, method: str
) -> int | tuple[str, ...] | None:
    try:
        return table.match(host, path, method)
    except MethodNotAllowed as exc:
        return exc.allowed
    except NotFound:
        return None


@given(_ENTRIES, _HOSTS, _PATHS, st.sampled_from(["GET", "HEAD", "POST", "PUT"]))
def test_indexed_match_equals_linear_scan(
    entries: list[RouteEntry[int]], host: str | None, path: str, method: str
) -> None:
    try:
        table = RouteTable(entries)
    except ValueError:
        return  # e.g. a generated glob with "//": not a normalised path
    assert _indexed_match(table, host, path, method) == _linear_match(entries, host, path, method)


@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        pytest.param(r"/admin(/.*)?|/internal(/.*)?", "/internal/x", id="bar-after-closed-group"),
        pytest.param(r"/admin(/.*)?|/internal(/.*)?", "/admin", id="first-branch-bare"),
        pytest.param(r"/api/v\d|/internal", "/internal", id="bar-after-escape"),
        pytest.param(r"/api/v\d|/internal", "/api/v2", id="escape-branch"),
        pytest.param(r"/[^x]dmin|/internal", "/internal", id="bar-after-negated-class"),
        pytest.param(r"/[^x]dmin|/internal", "/admin", id="negated-class-branch"),
        pytest.param(r"/a[(]b|/internal", "/internal", id="class-holding-a-parenthesis"),
        pytest.param(r"/a[(]b|/internal", "/a(b", id="parenthesis-branch"),
        pytest.param(r"/a\(|/internal", "/internal", id="escaped-parenthesis"),
        pytest.param(r"(/admin|/internal)/.*", "/internal/x", id="alternation-in-a-group"),
    ],
)
def test_an_alternating_protected_regex_is_never_skipped_for_a_later_catch_all(
    pattern: str, path: str
) -> None:
    """Every branch of a regex route with "|" is indexed under a prefix the path starts with:
    an alternation read as anchored by its first branch would index "/internal/x" under
    "/admin" only, and the anonymous "/" after it would serve it."""
    table = RouteTable([route("protected", pattern, kind="regex"), route("anonymous", "/")])
    assert table.match(None, path, "GET") == "protected"
    assert 0 in table.candidates(path)
    assert table.match(None, "/other", "GET") == "anonymous"
