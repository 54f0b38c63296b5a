"""Proxy header rules: what the upstream receives and what the client gets back."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.problems import BadRequest
from gateway.proxy.forwarding_headers import NEVER_FORWARDED, PROXY_ONLY
from gateway.proxy.headers import (
    HOP_BY_HOP,
    ForwardingPolicy,
    Removal,
    connection_tokens,
    downstream_response_headers,
    request_id_of,
    upstream_request_headers,
)
from gateway.proxy.trust import TrustedProxies
from tests.support.forwarding import NEVER_FORWARDED_TABLE, PROXY_ONLY_TABLE

Headers = list[tuple[str, str]]

TRUST = TrustedProxies(["10.0.0.0/8", "2001:db8::/32"])
TRUSTED = "10.0.0.5"
UNTRUSTED = "203.0.113.9"
REMOVAL = Removal(frozenset({"x-user-id", "x-client-id", "x-auth-subject"}), ("x-auth-",))
ADD = (("X-User-Id", "alice"), ("X-Client-Id", "web"))
SENTINEL = ("Accept", "application/json")
UPSTREAM_HOST = "orders.internal:8080"


def policy(**overrides: Any) -> ForwardingPolicy:
    return ForwardingPolicy(TRUST, **overrides)


def upstream(headers: Headers, **overrides: Any) -> Headers:
    kwargs: dict[str, Any] = {
        "peer": UNTRUSTED,
        "scheme": "https",
        "http_version": (1, 1),
        "request_id": "req-1",
        "policy": policy(),
        "removal": REMOVAL,
        "add": ADD,
        "host": UPSTREAM_HOST,
        "keep_authorization": False,
    }
    kwargs.update(overrides)
    return upstream_request_headers(headers, **kwargs)


def values(headers: Headers, name: str) -> list[str]:
    """Values under ``name`` as a CGI upstream would see it: any case, '_' read as '-'."""
    wanted = name.lower().replace("_", "-")
    return [v for n, v in headers if n.lower().replace("_", "-") == wanted]


def case(case_id: str, headers: Headers, name: str, expected: list[str], **overrides: Any) -> Any:
    return pytest.param(headers, overrides, name, expected, id=case_id)


HOP_BY_HOP_CASES = [
    case(f"hop-by-hop-{name}-dropped", [(name.title(), "x")], name, [])
    for name in sorted(HOP_BY_HOP)
]

FRAMING_CASES = [
    case("content-length-dropped-caller-reframes", [("Content-Length", "5")], "content-length", []),
    case("expect-dropped", [("Expect", "100-continue")], "expect", []),
    case("client-host-replaced", [("Host", "evil.example")], "host", [UPSTREAM_HOST]),
    case(
        "proxy-authorization-dropped-even-when-keeping-authorization",
        [("Proxy-Authorization", "Basic eA==")],
        "proxy-authorization",
        [],
        keep_authorization=True,
    ),
]

CONNECTION_CASES = [
    case(
        "connection-close-names-custom-header",
        [("Connection", "close, X-Custom"), ("X-Custom", "1")],
        "x-custom",
        [],
    ),
    case(
        "connection-named-header-before-connection",
        [("X-Custom", "1"), ("Connection", "X-Custom")],
        "x-custom",
        [],
    ),
    case(
        "connection-option-case-insensitive",
        [("Connection", "x-CUSTOM"), ("X-Custom", "1")],
        "x-custom",
        [],
    ),
    case(
        "connection-second-header-counts",
        [("Connection", "keep-alive"), ("Connection", " X-A ,"), ("X-A", "1")],
        "x-a",
        [],
    ),
    case(
        "connection-keep-alive-header-dropped",
        [("Connection", "keep-alive"), ("Keep-Alive", "timeout=5")],
        "keep-alive",
        [],
    ),
    case(
        "connection-close-names-the-reserved-close-field",
        [("Connection", "close"), ("Close", "x")],
        "close",
        [],
    ),
    case(
        "connection-names-identity-header-gateway-copy-survives",
        [("Connection", "close, X-Auth-Subject"), ("X-Auth-Subject", "root")],
        "x-auth-subject",
        ["alice"],
        add=[("X-Auth-Subject", "alice")],
    ),
    case(
        "connection-names-identity-header-anonymous-route",
        [("Connection", "X-Auth-Subject"), ("X-Auth-Subject", "root")],
        "x-auth-subject",
        [],
        add=[],
    ),
    case(
        "connection-names-xff-from-trusted-chain-dropped",
        [("Connection", "X-Forwarded-For"), ("X-Forwarded-For", "1.1.1.1")],
        "x-forwarded-for",
        [TRUSTED],
        peer=TRUSTED,
    ),
    case(
        "connection-names-request-id-ours-survives",
        [("Connection", "X-Request-Id"), ("X-Request-Id", "abc")],
        "x-request-id",
        ["req-1"],
    ),
    case(
        "connection-names-via-chain-dropped-ours-kept",
        [("Connection", "Via"), ("Via", "1.0 fred")],
        "via",
        ["1.1 gateway"],
    ),
    case(
        "connection-names-authorization-dropped",
        [("Connection", "Authorization"), ("Authorization", "Bearer t")],
        "authorization",
        [],
        keep_authorization=True,
    ),
]

SPOOF_CASES = [
    case("spoof-identity-exact-case", [("X-User-Id", "root")], "x-user-id", ["alice"]),
    case("spoof-identity-mixed-case", [("x-USER-id", "root")], "x-user-id", ["alice"]),
    case("spoof-identity-underscore-alias", [("X_User_Id", "root")], "x-user-id", ["alice"]),
    case("spoof-identity-underscore-upper", [("X_USER_ID", "root")], "x-user-id", ["alice"]),
    case(
        "spoof-identity-duplicates",
        [("X-User-Id", "root"), ("X-User-Id", "admin")],
        "x-user-id",
        ["alice"],
    ),
    case("spoof-identity-on-anonymous-route", [("X-User-Id", "root")], "x-user-id", [], add=[]),
    case("spoof-identity-prefix", [("X-Auth-Role", "admin")], "x-auth-role", []),
    case("spoof-identity-prefix-underscore-upper", [("X_AUTH_ROLE", "admin")], "x-auth-role", []),
    case(
        "spoof-added-name-outside-removal-set",
        [("X-Tenant", "evil")],
        "x-tenant",
        ["t1"],
        add=[("X-Tenant", "t1")],
    ),
    case(
        "removal-configured-with-underscores",
        [("X-Tenant", "evil")],
        "x-tenant",
        [],
        removal=Removal(frozenset({"x_tenant"}), ()),
    ),
    case(
        "removal-prefix-configured-with-underscores",
        [("X-Internal-Role", "admin")],
        "x-internal-role",
        [],
        removal=Removal(frozenset(), ("X_Internal_",)),
    ),
    case("any-underscore-header-dropped", [("Foo_Bar", "1")], "foo-bar", []),
    case("ordinary-header-kept", [("X-Custom", "1")], "x-custom", ["1"]),
]

AUTHORIZATION_CASES = [
    case("authorization-dropped-by-default", [("Authorization", "Bearer t")], "authorization", []),
    case(
        "authorization-kept-when-asked",
        [("Authorization", "Bearer t")],
        "authorization",
        ["Bearer t"],
        keep_authorization=True,
    ),
    case(
        "authorization-from-add-replaces-client-copy",
        [("Authorization", "Bearer t")],
        "authorization",
        ["Basic dXA="],
        keep_authorization=True,
        add=[("Authorization", "Basic dXA=")],
    ),
]


def test_the_tables_name_every_member() -> None:
    assert {name.lower() for name, _ in PROXY_ONLY_TABLE} == PROXY_ONLY
    assert len(PROXY_ONLY_TABLE) == len(PROXY_ONLY)
    assert {name.lower() for name, _ in NEVER_FORWARDED_TABLE} == NEVER_FORWARDED
    assert PROXY_ONLY.isdisjoint(NEVER_FORWARDED)


def spellings(name: str) -> list[str]:
    return [name, name.lower(), name.upper()]


PROXY_ONLY_CASES = [
    *(
        case(f"untrusted-{spelled}-dropped", [(spelled, v), SENTINEL], n, [])
        for n, v in PROXY_ONLY_TABLE
        for spelled in spellings(n)
    ),
    # From a trusted proxy they pass as they are: it set or stripped them.
    *(
        case(f"trusted-{n.lower()}-kept-as-is", [(n, v), (n, v + "2")], n, [v, v + "2"],
             peer=TRUSTED)
        for n, v in PROXY_ONLY_TABLE
    ),
    # Routing overrides: the gateway chose route and policy from the real path and method,
    # and front proxies rarely strip these, so nobody's copy is forwarded.
    *(
        case(f"{who}-{spelled}-dropped", [(spelled, v)], n, [], peer=peer)
        for n, v in NEVER_FORWARDED_TABLE
        for spelled in spellings(n)
        for who, peer in (("untrusted", UNTRUSTED), ("trusted", TRUSTED))
    ),
    case("unix-socket-peer-is-untrusted", [("X-Real-IP", "1.2.3.4")], "x-real-ip", [], peer=None),
]  # fmt: skip


def test_untrusted_request_keeps_everything_else() -> None:
    client = [*PROXY_ONLY_TABLE, *NEVER_FORWARDED_TABLE, SENTINEL, ("X-Real-Ip-Note", "x")]
    out = upstream(client)
    kept = [(n, v) for n, v in out if n.lower() not in {"host", "x-request-id", "via"}
            and not n.lower().startswith("x-forwarded-") and (n, v) not in ADD]  # fmt: skip
    assert kept == [SENTINEL, ("X-Real-Ip-Note", "x")]


SITE_NAMES = frozenset({"X-Corp-Client-IP", "x-akamai-edgescape"})

SITE_CASES = [
    case("site-name-untrusted-dropped", [("X-Corp-Client-IP", "1.2.3.4")], "x-corp-client-ip",
         [], policy=policy(proxy_only_headers=SITE_NAMES)),
    case("site-name-any-case-dropped", [("X-AKAMAI-EDGESCAPE", "x")], "x-akamai-edgescape", [],
         policy=policy(proxy_only_headers=SITE_NAMES)),
    case("site-name-trusted-kept", [("x-corp-client-ip", "1.2.3.4")], "x-corp-client-ip",
         ["1.2.3.4"], peer=TRUSTED, policy=policy(proxy_only_headers=SITE_NAMES)),
    case("site-name-not-configured-kept", [("X-Corp-Client-IP", "1.2.3.4")],
         "x-corp-client-ip", ["1.2.3.4"]),
    case("builtin-names-still-dropped-with-site-names", [("X-Real-IP", "1")], "x-real-ip", [],
         policy=policy(proxy_only_headers=SITE_NAMES)),
]  # fmt: skip

# A front proxy's client-certificate header with its own peers (client_certificates.
# trusted_proxies): they alone decide, whether or not forwarding trusts the peer.
CERTIFICATE_PROXY = "192.0.2.10"
GUARDED = policy(guarded_headers=(("X-SSL-Client-Cert", TrustedProxies([CERTIFICATE_PROXY])),
                                  ("X-Own-Cert", TrustedProxies([CERTIFICATE_PROXY]))))  # fmt: skip
GUARDED_CASES = [
    case("certificate-from-forwarding-trusted-peer-dropped", [("X-SSL-Client-Cert", "pem")],
         "x-ssl-client-cert", [], peer=TRUSTED, policy=GUARDED),
    case("certificate-from-untrusted-peer-dropped", [("x-ssl-client-cert", "pem")],
         "x-ssl-client-cert", [], policy=GUARDED),
    case("certificate-from-its-proxy-kept", [("X-SSL-Client-Cert", "pem")],
         "x-ssl-client-cert", ["pem"], peer=CERTIFICATE_PROXY, policy=GUARDED),
    case("site-certificate-name-from-its-proxy-kept", [("X-Own-Cert", "pem")],
         "x-own-cert", ["pem"], peer=CERTIFICATE_PROXY, policy=GUARDED),
    case("site-certificate-name-from-forwarding-trusted-peer-dropped", [("X-Own-Cert", "pem")],
         "x-own-cert", [], peer=TRUSTED, policy=GUARDED),
    case("other-proxy-only-names-still-follow-forwarding", [("X-Real-IP", "1")], "x-real-ip",
         [], peer=CERTIFICATE_PROXY, policy=GUARDED),
    case("unguarded-certificate-name-follows-forwarding", [("X-Client-Cert", "pem")],
         "x-client-cert", ["pem"], peer=TRUSTED, policy=GUARDED),
]  # fmt: skip


X_FORWARDED_CASES = [
    case(
        "xff-untrusted-client-value-replaced",
        [("X-Forwarded-For", "127.0.0.1")],
        "x-forwarded-for",
        [UNTRUSTED],
    ),
    case(
        "xff-trusted-appended",
        [("X-Forwarded-For", "198.51.100.1")],
        "x-forwarded-for",
        [f"198.51.100.1, {TRUSTED}"],
        peer=TRUSTED,
    ),
    case(
        "xff-trusted-multiple-headers-joined",
        [("X-Forwarded-For", "198.51.100.1"), ("x-forwarded-for", "192.0.2.1, 192.0.2.2")],
        "x-forwarded-for",
        [f"198.51.100.1, 192.0.2.1, 192.0.2.2, {TRUSTED}"],
        peer=TRUSTED,
    ),
    case(
        "xff-trusted-empty-member-skipped",
        [("X-Forwarded-For", " "), ("X-Forwarded-For", "198.51.100.1")],
        "x-forwarded-for",
        [f"198.51.100.1, {TRUSTED}"],
        peer=TRUSTED,
    ),
    case("xff-trusted-first-hop", [], "x-forwarded-for", [TRUSTED], peer=TRUSTED),
    case(
        "xff-ipv6-untrusted-bare-address",
        [("X-Forwarded-For", "127.0.0.1")],
        "x-forwarded-for",
        ["2001:db9::1"],
        peer="2001:db9::1",
    ),
    case(
        "xff-ipv6-trusted-appended",
        [("X-Forwarded-For", "198.51.100.1")],
        "x-forwarded-for",
        ["198.51.100.1, 2001:db8::7"],
        peer="2001:db8::7",
    ),
    case(
        "xff-ipv4-mapped-trusted-peer",
        [("X-Forwarded-For", "198.51.100.1")],
        "x-forwarded-for",
        ["198.51.100.1, ::ffff:10.0.0.5"],
        peer="::ffff:10.0.0.5",
    ),
    case(
        "xff-unix-socket-client-value-dropped",
        [("X-Forwarded-For", "127.0.0.1")],
        "x-forwarded-for",
        [],
        peer=None,
    ),
    case(
        "xfp-untrusted-replaced",
        [("X-Forwarded-Proto", "https")],
        "x-forwarded-proto",
        ["http"],
        scheme="http",
    ),
    case(
        "xfp-trusted-kept",
        [("X-Forwarded-Proto", "https")],
        "x-forwarded-proto",
        ["https"],
        scheme="http",
        peer=TRUSTED,
    ),
    case("xfp-trusted-absent-ours", [], "x-forwarded-proto", ["http"], scheme="http", peer=TRUSTED),
    case(
        "xfh-untrusted-client-host",
        [("Host", "api.example.com"), ("X-Forwarded-Host", "evil.example")],
        "x-forwarded-host",
        ["api.example.com"],
    ),
    case(
        "xfh-trusted-kept",
        [("Host", "lb.internal"), ("X-Forwarded-Host", "api.example.com")],
        "x-forwarded-host",
        ["api.example.com"],
        peer=TRUSTED,
    ),
    case("xfh-no-client-host-omitted", [], "x-forwarded-host", []),
    case(
        "xfwd-off-untrusted-client-xff-dropped-none-added",
        [("X-Forwarded-For", "127.0.0.1")],
        "x-forwarded-for",
        [],
        policy=policy(x_forwarded=False),
    ),
    case(
        "xfwd-off-untrusted-client-xfp-dropped",
        [("X-Forwarded-Proto", "https")],
        "x-forwarded-proto",
        [],
        policy=policy(x_forwarded=False),
    ),
    case(
        "xfwd-off-trusted-passes-through-unextended",
        [("X-Forwarded-For", "198.51.100.1")],
        "x-forwarded-for",
        ["198.51.100.1"],
        peer=TRUSTED,
        policy=policy(x_forwarded=False),
    ),
]

FORWARDED_ON = policy(forwarded=True)
FORWARDED_CASES = [
    case(
        "forwarded-untrusted-replaced",
        [("Host", "api.example.com"), ("Forwarded", "for=127.0.0.1")],
        "forwarded",
        [f"for={UNTRUSTED};proto=https;host=api.example.com"],
        policy=FORWARDED_ON,
    ),
    case(
        "forwarded-ipv6-node-quoted-bracketed",
        [("Host", "api.example.com")],
        "forwarded",
        ['for="[2001:db9::1]";proto=https;host=api.example.com'],
        peer="2001:db9::1",
        policy=FORWARDED_ON,
    ),
    case(
        "forwarded-host-with-port-quoted",
        [("Host", "api.example.com:8443")],
        "forwarded",
        [f'for={UNTRUSTED};proto=https;host="api.example.com:8443"'],
        policy=FORWARDED_ON,
    ),
    case(
        "forwarded-host-quote-and-backslash-escaped",
        [("Host", 'a"b\\c')],
        "forwarded",
        [f'for={UNTRUSTED};proto=https;host="a\\"b\\\\c"'],
        policy=FORWARDED_ON,
    ),
    case(
        "forwarded-no-host-omits-parameter",
        [],
        "forwarded",
        [f"for={UNTRUSTED};proto=https"],
        policy=FORWARDED_ON,
    ),
    case(
        "forwarded-unix-socket-unknown-node",
        [],
        "forwarded",
        ["for=unknown;proto=https"],
        peer=None,
        policy=FORWARDED_ON,
    ),
    case(
        "forwarded-trusted-appended",
        [
            ("Host", "api.example.com"),
            ("Forwarded", "for=192.0.2.60;proto=http"),
            ("Forwarded", 'for="[2001:db8::1]"'),
        ],
        "forwarded",
        [
            'for=192.0.2.60;proto=http, for="[2001:db8::1]", '
            f"for={TRUSTED};proto=https;host=api.example.com"
        ],
        peer=TRUSTED,
        policy=FORWARDED_ON,
    ),
    case("forwarded-off-untrusted-dropped", [("Forwarded", "for=127.0.0.1")], "forwarded", []),
    case(
        "forwarded-off-trusted-kept",
        [("Forwarded", "for=192.0.2.60")],
        "forwarded",
        ["for=192.0.2.60"],
        peer=TRUSTED,
    ),
]

VIA_CASES = [
    case("via-added", [], "via", ["1.1 gateway"]),
    case(
        "via-chain-appended-even-from-untrusted",
        [("Via", "1.0 fred"), ("Via", "1.1 p.example.net")],
        "via",
        ["1.0 fred, 1.1 p.example.net, 1.1 gateway"],
    ),
    case("via-http-1-0", [], "via", ["1.0 gateway"], http_version=(1, 0)),
    case("via-http-2-single-digit", [], "via", ["2 gateway"], http_version=(2, 0)),
    case("via-pseudonym-with-port", [], "via", ["1.1 edge:8443"], policy=policy(via="edge:8443")),
    case(
        "via-disabled-client-chain-passes",
        [("Via", "1.0 fred")],
        "via",
        ["1.0 fred"],
        policy=policy(via=None),
    ),
    case("via-disabled-none-added", [], "via", [], policy=policy(via=None)),
]

REQUEST_ID_CASES = [
    case(
        "request-id-client-copies-replaced",
        [("X-Request-Id", "a"), ("x-request-id", "b")],
        "x-request-id",
        ["req-1"],
    ),
    case(
        "request-id-custom-header-replaced",
        [("X-Correlation-Id", "evil")],
        "x-correlation-id",
        ["req-1"],
        policy=policy(request_id_header="X-Correlation-Id"),
    ),
    case(
        "request-id-other-name-untouched-with-custom-header",
        [("X-Request-Id", "client")],
        "x-request-id",
        ["client"],
        policy=policy(request_id_header="X-Correlation-Id"),
    ),
]


@pytest.mark.parametrize(
    ("headers", "overrides", "name", "expected"),
    [
        *HOP_BY_HOP_CASES,
        *FRAMING_CASES,
        *CONNECTION_CASES,
        *SPOOF_CASES,
        *AUTHORIZATION_CASES,
        *PROXY_ONLY_CASES,
        *SITE_CASES,
        *GUARDED_CASES,
        *X_FORWARDED_CASES,
        *FORWARDED_CASES,
        *VIA_CASES,
        *REQUEST_ID_CASES,
    ],
)
def test_upstream_header(
    headers: Headers, overrides: dict[str, Any], name: str, expected: list[str]
) -> None:
    out = upstream([*headers, SENTINEL], **overrides)
    assert values(out, name) == expected
    assert SENTINEL in out, "an ordinary header was lost"
    assert out[0] == ("Host", UPSTREAM_HOST)


def test_order_preserved_and_everything_in_its_place() -> None:
    client = [
        ("Host", "api.example.com"),
        ("User-Agent", "curl/8"),
        ("X-User-Id", "root"),
        ("Accept", "*/*"),
        ("Cookie", "a=1"),
        ("Connection", "keep-alive, X-Drop"),
        ("X-Drop", "1"),
        ("Cookie", "b=2"),
        ("X-Forwarded-For", "198.51.100.1"),
        ("Via", "1.0 fred"),
        ("Content-Length", "3"),
    ]
    out = upstream(client, peer=TRUSTED, policy=policy(forwarded=True))
    assert out == [
        ("Host", UPSTREAM_HOST),
        ("User-Agent", "curl/8"),
        ("Accept", "*/*"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("X-User-Id", "alice"),
        ("X-Client-Id", "web"),
        ("X-Forwarded-For", f"198.51.100.1, {TRUSTED}"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "api.example.com"),
        ("Forwarded", f"for={TRUSTED};proto=https;host=api.example.com"),
        ("Via", "1.0 fred, 1.1 gateway"),
        ("X-Request-Id", "req-1"),
    ]


@pytest.mark.parametrize(
    ("headers", "overrides"),
    [
        pytest.param([("X-A", "a\r\nX-User-Id: root")], {}, id="crlf-injection-in-value"),
        pytest.param([("X-A", "a\nb")], {}, id="bare-lf-in-value"),
        pytest.param([("X-A", "a\rb")], {}, id="bare-cr-in-value"),
        pytest.param([("X-A", "a\0b")], {}, id="nul-in-value"),
        pytest.param([("X_A", "a\nb")], {}, id="control-char-in-dropped-header-still-refused"),
        pytest.param([], {"add": [("X-User-Id", "alice\r\nX-Admin: 1")]}, id="crlf-in-added"),
        pytest.param([], {"add": [("X-User-Id", "alice\rX-Admin: 1")]}, id="cr-in-added"),
        pytest.param([], {"add": [("X-User-Id", "alice\nX-Admin: 1")]}, id="lf-in-added"),
        pytest.param([], {"add": [("X-User-Id", "alice\0")]}, id="nul-in-added"),
        pytest.param(
            [],
            {"add": [("X-Client-Id", "ok"), ("X-User-Id", "a\n")]},
            id="second-added-value-checked-too",
        ),
        pytest.param([("Host", "a.example"), ("Host", "b.example")], {}, id="two-host-headers"),
    ],
)
def test_upstream_rejects(headers: Headers, overrides: dict[str, Any]) -> None:
    # A 400 from the layer that raises it, never a ValueError that becomes a 500.
    with pytest.raises(BadRequest):
        upstream(headers, **overrides)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([("X-Request-Id", "abc-123")], "abc-123", id="valid-kept"),
        pytest.param([("x-request-id", "a.b:c_d-E")], "a.b:c_d-E", id="all-allowed-chars"),
        pytest.param([("X-Request-Id", "a" * 128)], "a" * 128, id="128-chars-kept"),
        pytest.param([("X-Request-Id", "a" * 129)], "generated", id="129-chars-replaced"),
        pytest.param([("X-Request-Id", "")], "generated", id="empty-replaced"),
        pytest.param([("X-Request-Id", "a b")], "generated", id="space-replaced"),
        pytest.param([("X-Request-Id", "<script>")], "generated", id="markup-replaced"),
        pytest.param([("X-Request-Id", "abc\u00e9")], "generated", id="non-ascii-replaced"),
        pytest.param([("X-Request-Id", "a/b")], "generated", id="slash-replaced"),
        pytest.param([], "generated", id="absent-generated"),
        pytest.param(
            [("X-Request-Id", "bad id"), ("X-Request-Id", "good")],
            "generated",
            id="first-copy-decides",
        ),
        pytest.param([("X-Other", "x"), ("X-Request-Id", "ok")], "ok", id="found-after-others"),
    ],
)
def test_request_id_of(headers: Headers, expected: str) -> None:
    assert request_id_of(headers, "X-Request-Id", lambda: "generated") == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            [("Set-Cookie", "a=1"), ("Content-Type", "text/plain"), ("Set-Cookie", "b=2")],
            [("Set-Cookie", "a=1"), ("Content-Type", "text/plain"), ("Set-Cookie", "b=2")],
            id="set-cookie-duplicates-and-order-preserved",
        ),
        pytest.param(
            [
                ("Connection", "keep-alive"),
                ("Keep-Alive", "timeout=5"),
                ("Upgrade", "h2c"),
                ("Proxy-Authenticate", "Basic"),
                ("Trailer", "X-T"),
                ("ETag", '"1"'),
            ],
            [("ETag", '"1"')],
            id="hop-by-hop-dropped",
        ),
        pytest.param(
            [("X-Debug", "1"), ("Connection", "close, x-debug"), ("X-Kept", "1")],
            [("X-Kept", "1")],
            id="connection-named-dropped",
        ),
        pytest.param(
            [("Content-Length", "10"), ("Transfer-Encoding", "chunked"), ("X-A", "1")],
            [("X-A", "1")],
            id="content-length-dropped-with-transfer-encoding",
        ),
        pytest.param(
            [("Content-Length", "10"), ("X-A", "1")],
            [("Content-Length", "10"), ("X-A", "1")],
            id="content-length-kept-alone",
        ),
        pytest.param(
            [
                ("Content-Length", "10"),
                ("Transfer-Encoding", "chunked"),
                ("Connection", "x-debug"),
                ("X-Debug", "1"),
                ("X-A", "1"),
            ],
            [("X-A", "1")],
            id="transfer-encoding-and-connection-named-header-both-dropped",
        ),
        pytest.param(
            [("Connection", "x-debug"), ("Transfer-Encoding", "chunked"), ("X-Debug", "1")],
            [],
            id="connection-before-transfer-encoding",
        ),
        pytest.param(
            [("Connection", "close"), ("Close", "x"), ("X-A", "1")],
            [("X-A", "1")],
            id="connection-close-names-the-reserved-close-field",
        ),
        pytest.param([], [], id="empty"),
    ],
)
def test_downstream_response_headers(headers: Headers, expected: Headers) -> None:
    assert downstream_response_headers(headers) == expected


@pytest.mark.parametrize(
    ("values_in", "expected"),
    [
        pytest.param(["close"], {"close"}, id="single"),
        pytest.param(["Close, X-Foo"], {"close", "x-foo"}, id="list-lowercased"),
        pytest.param([" ,\tkeep-alive ,, "], {"keep-alive"}, id="empty-members-and-ows"),
        pytest.param(["a", "B"], {"a", "b"}, id="several-headers"),
        pytest.param([], set(), id="none"),
    ],
)
def test_connection_tokens(values_in: list[str], expected: set[str]) -> None:
    assert connection_tokens(values_in) == expected


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: policy(via="two words"), id="via-not-a-token"),
        pytest.param(lambda: policy(via=""), id="via-empty"),
        pytest.param(lambda: policy(via="gw:"), id="via-empty-port"),
        pytest.param(lambda: policy(via="gw:http"), id="via-port-not-digits"),
        pytest.param(lambda: policy(request_id_header="X Request"), id="request-id-not-token"),
        pytest.param(lambda: policy(request_id_header="Host"), id="request-id-reserved-host"),
        pytest.param(lambda: policy(request_id_header="X-Forwarded-For"), id="request-id-xff"),
        pytest.param(lambda: Removal(frozenset(), ("",)), id="removal-empty-prefix"),
        *(
            pytest.param(
                lambda name=name: policy(proxy_only_headers=frozenset({name})),
                id=f"proxy-only-reserved-{name.lower()}",
            )
            for name in (
                "Host",
                "Connection",
                "Authorization",
                "X-Forwarded-For",
                "X-Forwarded-Proto",
                "X-Forwarded-Host",
                "Forwarded",
                "Via",
                "Transfer-Encoding",
                "Content-Length",
                "Expect",
                "TE",
                "X-Request-Id",
            )
        ),
        pytest.param(
            lambda: policy(request_id_header="X-Corr", proxy_only_headers=frozenset({"x-corr"})),
            id="proxy-only-custom-request-id-header",
        ),
        pytest.param(
            lambda: policy(guarded_headers=(("Authorization", TrustedProxies([TRUSTED])),)),
            id="guarded-reserved-authorization",
        ),
        pytest.param(
            lambda: policy(proxy_only_headers=frozenset({"X Bad"})), id="proxy-only-not-a-token"
        ),
    ],
)
def test_configuration_rejected(build: Any) -> None:
    with pytest.raises(ValueError):
        build()


IDENTITY_NAMES = ["x-user-id", "x-client-id", "x-auth-subject", "x-auth-anything"]


@st.composite
def spoofed_name(draw: st.DrawFn) -> str:
    """An identity header name in random case with any '-' possibly written as '_'."""
    name = draw(st.sampled_from(IDENTITY_NAMES))
    chars = [
        draw(st.sampled_from(["-", "_"])) if c == "-" else draw(st.sampled_from([c, c.upper()]))
        for c in name
    ]
    return "".join(chars)


@given(
    spoofs=st.lists(st.tuples(spoofed_name(), st.text("abc", max_size=3)), max_size=6),
    trusted=st.booleans(),
    connection=st.lists(st.sampled_from([*IDENTITY_NAMES, "close", "keep-alive"]), max_size=3),
)
def test_no_spoofed_identity_or_hop_by_hop_header_reaches_upstream(
    spoofs: Headers, trusted: bool, connection: list[str]
) -> None:
    client = [*spoofs, ("Connection", ", ".join(connection)), ("TE", "trailers")]
    out = upstream(client, peer=TRUSTED if trusted else UNTRUSTED)
    identity = [(n.lower().replace("_", "-"), v) for n, v in out if n.lower().startswith("x-")]
    assert [pair for pair in identity if pair[0] in IDENTITY_NAMES] == [
        ("x-user-id", "alice"),
        ("x-client-id", "web"),
    ]
    assert not [n for n, _ in out if n.lower() in HOP_BY_HOP]


# mutmut does not mutate module-level constants: every member is named here.
_HOP_BY_HOP_NAMES = [
    "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding",
    "Upgrade", "Proxy-Authenticate", "Proxy-Authorization",
]  # fmt: skip


def test_the_hop_by_hop_set_is_exactly_the_named_fields() -> None:
    assert {name.lower() for name in _HOP_BY_HOP_NAMES} == HOP_BY_HOP


@pytest.mark.parametrize("name", _HOP_BY_HOP_NAMES)
def test_every_hop_by_hop_field_is_dropped_from_responses(name: str) -> None:
    value = "chunked" if name == "Transfer-Encoding" else "x"
    headers = [(name, value), ("X-Kept", "1")]
    assert downstream_response_headers(headers) == [("X-Kept", "1")]


def test_configured_identity_name_with_underscores_catches_the_dashed_spelling() -> None:
    # Configured names and prefixes are folded ('_' to '-'), so x_user_id removes X-User-Id.
    removal = Removal(frozenset({"x_user_id"}), ("x_auth_",))
    assert removal.removes("X-User-Id") and removal.removes("X-Auth-Role")
    sent = upstream([("X-User-Id", "mallory"), ("X-Auth-Role", "admin")], removal=removal, add=())
    assert values(sent, "x-user-id") == [] and values(sent, "x-auth-role") == []


def test_connection_option_trims_only_ows() -> None:
    # RFC 9110 §5.6.3: OWS is SP and HTAB only; a form feed is part of the (invalid) option.
    assert connection_tokens([" x-a\t,\x0cx-b"]) == {"x-a", "\x0cx-b"}


def test_one_character_request_id_is_kept() -> None:
    assert request_id_of([("X-Request-Id", "a")], "X-Request-Id", lambda: "fresh") == "a"


def test_via_pseudonym_may_carry_a_port() -> None:
    sent = upstream([], policy=policy(via="gw:8443"))
    assert values(sent, "via") == ["1.1 gw:8443"]


def test_trusted_forwarded_is_extended_not_duplicated() -> None:
    sent = upstream([("Forwarded", "for=192.0.2.1")], peer=TRUSTED, policy=policy(forwarded=True))
    assert values(sent, "forwarded") == ["for=192.0.2.1, for=10.0.0.5;proto=https"]
