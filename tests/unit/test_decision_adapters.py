"""The forward-auth adapters' pure parts: reading a forwarded request, answering a verdict."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.decide import Allow, Deny
from gateway.auth.identity import Identity
from gateway.auth.settings import CacheSettings
from gateway.decision.answers import ENVOY_REMOVE, http_answer
from gateway.decision.forwarded import (
    BadForwarded,
    from_envoy_http,
    from_forward_auth,
    from_nginx,
)
from gateway.decision.grpc_service import check_response, from_check_request, peer_ip
from gateway.decision.verdict import Verdict, allow_max_age
from gateway.problems import (
    InsufficientScope,
    InvalidPath,
    InvalidToken,
    MethodNotAllowed,
    MissingCredentials,
    NotFound,
    ServiceUnavailable,
)
from gateway.proxy.headers import ForwardingPolicy, Removal, upstream_request_headers
from gateway.proxy.trust import TrustedProxies

NGINX = [("X-Original-URI", "/a?b=1"), ("X-Original-Method", "POST"),
         ("X-Forwarded-Host", "api.example"), ("Authorization", "Bearer t")]  # fmt: skip
TRAEFIK = [("X-Forwarded-Uri", "/a?b=1"), ("X-Forwarded-Method", "POST"),
           ("X-Forwarded-Host", "api.example"), ("X-Forwarded-Proto", "https"),
           ("Authorization", "Bearer t")]  # fmt: skip


def test_nginx_reads_the_original_request() -> None:
    forwarded = from_nginx(NGINX)
    assert (forwarded.method, forwarded.target, forwarded.host) == ("POST", "/a?b=1", "api.example")
    assert forwarded.authorization == ("Bearer t",)


def test_traefik_and_caddy_read_x_forwarded() -> None:
    forwarded = from_forward_auth(TRAEFIK)
    assert (forwarded.method, forwarded.target, forwarded.host) == ("POST", "/a?b=1", "api.example")


@pytest.mark.parametrize(
    "prefix_or_port",
    [("X-Forwarded-Prefix", "/admin"), ("X-Forwarded-Port", "9999"), ("X-Original-URL", "/x")],
)
def test_prefix_and_port_never_change_the_request(prefix_or_port: tuple[str, str]) -> None:
    assert from_forward_auth([*TRAEFIK, prefix_or_port]).target == "/a?b=1"
    assert from_nginx([*NGINX, prefix_or_port]).target == "/a?b=1"


@pytest.mark.parametrize("missing", ["X-Original-URI", "X-Original-Method", "X-Forwarded-Host"])
def test_nginx_without_a_fact_is_refused(missing: str) -> None:
    with pytest.raises(BadForwarded, match=missing):
        from_nginx([h for h in NGINX if h[0] != missing])


@pytest.mark.parametrize("twice", ["X-Forwarded-Uri", "X-Forwarded-Method", "x-forwarded-host"])
def test_a_repeated_fact_is_refused_not_picked(twice: str) -> None:
    with pytest.raises(BadForwarded, match="more than once"):
        from_forward_auth([*TRAEFIK, (twice, "/other")])


@pytest.mark.parametrize(
    ("method", "target"),
    [("GET", "/a b"), ("GET", "/a\x7f"), ("GET", ""), ("GE T", "/a"), ("", "/a"),
     ("GET", "/caf\u00e9"), ("X" * 40, "/a")],
)  # fmt: skip
def test_what_no_request_line_could_carry_is_refused(method: str, target: str) -> None:
    with pytest.raises(BadForwarded):
        from_forward_auth(
            [
                ("X-Forwarded-Method", method),
                ("X-Forwarded-Uri", target),
                ("X-Forwarded-Host", "h"),
            ]
        )


def test_a_connect_is_refused_before_any_route_is_asked() -> None:
    """CONNECT names no resource; a TRACE does, and is refused once routed (its Allow the
    route's methods, as the proxy answers: test_decision_service)."""
    with pytest.raises(MethodNotAllowed):
        from_forward_auth([("X-Forwarded-Method", "CONNECT"), ("X-Forwarded-Uri", "/"),
                           ("X-Forwarded-Host", "h")])  # fmt: skip
    traced = from_forward_auth([("X-Forwarded-Method", "TRACE"), ("X-Forwarded-Uri", "/"),
                                ("X-Forwarded-Host", "h")])  # fmt: skip
    assert traced.method == "TRACE"


@pytest.mark.parametrize(
    ("raw", "target"),
    [("/envoy/a/b?c", "/a/b?c"), ("/envoy", "/"), ("/envoy?x=1", "/?x=1"),
     ("/envoy//a", "//a"), ("/envoy/", "/")],
)  # fmt: skip
def test_envoy_http_takes_the_path_after_the_prefix(raw: str, target: str) -> None:
    assert from_envoy_http("DELETE", raw, [("Host", "h")], "/envoy").target == target


@pytest.mark.parametrize(
    ("headers", "host"),
    [([("Host", "api.example")], "api.example"), ([("host", "api.example")], "api.example"),
     ([("Authorization", "Bearer t")], None), ([("Host", "")], None)],
)  # fmt: skip
def test_envoy_http_reads_the_original_host_and_does_without_one(
    headers: list[tuple[str, str]], host: str | None
) -> None:
    """Envoy sends the original ``:authority`` as ``Host``; a check without one (an HTTP/1.0
    client's) is no configuration error: it matches only routes that name no host."""
    assert from_envoy_http("GET", "/envoy/a", headers, "/envoy").host == host


@pytest.mark.parametrize("raw", ["/envoyx/a", "/%65nvoy/a", "/other"])
def test_envoy_http_refuses_a_path_without_the_prefix(raw: str) -> None:
    with pytest.raises(BadForwarded):
        from_envoy_http("GET", raw, [("Host", "h")], "/envoy")


# --- answers ---------------------------------------------------------------------------


def identity(exp_in: float | None = 300) -> Identity:
    return Identity(
        issuer="https://issuer", subject="alice", client_id="web", scopes=frozenset({"read"}),
        audiences=("api",), expires_at=None if exp_in is None else time.time() + exp_in,
        token_kind="jwt",
    )  # fmt: skip


ALLOW = Allow(identity(), (("X-Auth-Subject", "alice"),), "header")


def deny(error: Exception) -> Verdict:
    return Verdict(Deny(error), None)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["nginx", "traefik", "caddy", "envoy-http"])
def test_allow_is_200_with_the_identity_headers(kind: str) -> None:
    answer = http_answer(kind, Verdict(ALLOW, None), "r", "id")  # type: ignore[arg-type]
    assert answer.status == 200
    assert ("X-Auth-Subject", "alice") in answer.headers
    assert ("Cache-Control", "no-store") in answer.headers


def test_envoy_is_told_which_client_headers_to_remove() -> None:
    verdict = Verdict(ALLOW, None, remove_headers=("x_auth_subject", "x-auth-extra"))
    answer = http_answer("envoy-http", verdict, "r", "id")
    assert (ENVOY_REMOVE, "x_auth_subject,x-auth-extra") in answer.headers
    assert all(name != ENVOY_REMOVE for name, _ in http_answer("nginx", verdict, "r", "i").headers)


@pytest.mark.parametrize(
    ("error", "status", "nginx_status"),
    [
        (MissingCredentials(), 401, 401),
        (InvalidToken("bad"), 401, 401),
        (InsufficientScope(["admin"]), 403, 403),
        (ServiceUnavailable("keys"), 503, 503),
        (InvalidPath("enc"), 400, 403),
        (NotFound(), 404, 403),
        (MethodNotAllowed(["GET"]), 405, 403),
    ],
    ids=lambda v: v if isinstance(v, int) else type(v).__name__,
)
def test_deny_statuses(error: Exception, status: int, nginx_status: int) -> None:
    for kind in ("traefik", "caddy", "envoy-http"):
        answer = http_answer(kind, deny(error), "r", "id")  # type: ignore[arg-type]
        assert answer.status == status, kind
        assert ("Cache-Control", "no-store") in answer.headers
    nginx = http_answer("nginx", deny(error), "r", "id")
    # nginx relays 401 and 403 only (503 is the documented exception: fail closed as 500).
    assert nginx.status == nginx_status
    assert nginx.status in (401, 403, 503)
    if nginx_status != status:
        assert ("X-Gateway-Status", str(status)) in nginx.headers


def test_the_challenge_travels_with_a_401_and_a_403() -> None:
    for error in (MissingCredentials(), InsufficientScope(["admin"])):
        for kind in ("nginx", "traefik"):
            headers = dict(http_answer(kind, deny(error), "api", "id").headers)  # type: ignore[arg-type]
            assert headers["WWW-Authenticate"].startswith('Bearer realm="api"')


# --- decision caching ------------------------------------------------------------------

CACHE = CacheSettings(max_ttl=120.0, verified_max_ttl=300.0)


@pytest.mark.parametrize(
    ("bound", "exp_in", "expected"),
    [(0, 300, 0), (30, 300, 30), (600, 300, 120), (30, 10.5, 10), (30, 0.5, 0), (30, -5, 0),
     (30, None, 30)],
)  # fmt: skip
def test_max_age_never_outlives_the_token_or_the_cache(
    bound: float, exp_in: float | None, expected: int
) -> None:
    allow = Allow(identity(exp_in), (), "header")
    now = time.time()
    got = allow_max_age(allow, bound, CACHE, now)
    assert abs(got - expected) <= 1 and got <= expected


def test_an_anonymous_allow_is_bounded_by_the_setting_alone() -> None:
    assert allow_max_age(Allow(None, (), None), 45, CACHE, time.time()) == 45


def test_max_age_appears_only_when_enabled() -> None:
    on = http_answer("nginx", Verdict(ALLOW, None, max_age=30), "r", "i")
    assert ("Cache-Control", "private, max-age=30") in on.headers


# --- the proxy's removal rules, asked by name -----------------------------------------

REMOVAL = Removal(frozenset({"x-auth-subject", "x-user"}), ("x-auth-",))
NAMES = ["X-Auth-Subject", "x_auth_subject", "X-AUTH-OTHER", "X-User", "X_User", "Accept",
         "X-Request-Id", "Authorization", "X-Authz", "x-auth", "Foo_Bar"]  # fmt: skip


@given(st.lists(st.sampled_from(NAMES) | st.text("xXaAuU_-", min_size=1, max_size=8)))
def test_removes_agrees_with_what_the_proxy_forwards(names: list[str]) -> None:
    headers = [(name, "v") for name in names]
    forwarded = upstream_request_headers(
        headers, peer="203.0.113.1", scheme="http", http_version=(1, 1), request_id="r",
        policy=ForwardingPolicy(TrustedProxies([]), x_forwarded=False, via=None),
        removal=REMOVAL, add=(), host="h", keep_authorization=True,
    )  # fmt: skip
    kept = {name for name, _ in forwarded}
    for name in names:
        assert REMOVAL.removes(name) == (name not in kept), name


# --- Envoy gRPC ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "ip"),
    [("ipv4:127.0.0.1:5000", "127.0.0.1"), ("ipv6:[::1]:5000", "::1"), ("unix:/tmp/s", None),
     ("ipv6:::1", None), ("", None)],
)  # fmt: skip
def test_grpc_peer(peer: str, ip: str | None) -> None:
    assert peer_ip(peer) == ip


def test_a_check_request_becomes_the_forwarded_request() -> None:
    from envoy.service.auth.v3 import external_auth_pb2

    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.host = "PUT", "/a/b?c=1", "api.example"
    http.headers.update({"authorization": "Bearer t", ":path": "/a/b?c=1", "x_auth_sub": "e"})
    forwarded = from_check_request(request)
    assert (forwarded.method, forwarded.target, forwarded.host) == (
        "PUT",
        "/a/b?c=1",
        "api.example",
    )
    assert forwarded.authorization == ("Bearer t",)
    assert "x_auth_sub" in forwarded.header_names


def test_grpc_allow_and_deny_shapes() -> None:
    from google.rpc import code_pb2

    ok = check_response(Verdict(ALLOW, None, ("x_auth_subject",), ("access_token",)), "r", "i")
    assert ok.status.code == code_pb2.OK
    assert [(h.header.key, h.header.value) for h in ok.ok_response.headers] == [
        ("X-Auth-Subject", "alice")
    ]
    assert list(ok.ok_response.headers_to_remove) == ["x_auth_subject"]
    assert list(ok.ok_response.query_parameters_to_remove) == ["access_token"]
    denied = check_response(deny(InsufficientScope(["admin"])), "api", "i")
    assert denied.status.code == code_pb2.PERMISSION_DENIED
    assert denied.denied_response.status.code == 403
    headers = {h.header.key: h.header.value for h in denied.denied_response.headers}
    assert 'scope="admin"' in headers["WWW-Authenticate"]
    assert '"status":403' in denied.denied_response.body
    assert check_response(deny(MissingCredentials()), "r", "i").status.code == (
        code_pb2.UNAUTHENTICATED
    )


def test_grpc_keeps_every_set_cookie_of_a_refusal() -> None:
    """Envoy applies OVERWRITE_IF_EXISTS_OR_ADD as set-and-replace: every Set-Cookie sent
    so kept only the last (a pre-login cookie in chunks arrived incomplete)."""
    from envoy.config.core.v3 import base_pb2

    error = MissingCredentials()
    error.carry_cookies([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("set-cookie", "c=3")])
    denied = check_response(deny(error), "r", "i").denied_response
    cookies = [(h.header.value, h.append_action) for h in denied.headers
               if h.header.key.lower() == "set-cookie"]  # fmt: skip
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    append = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
    assert cookies == [("a=1", overwrite), ("b=2", append), ("c=3", append)]


@pytest.mark.parametrize(
    ("source", "token_type"),
    [(None, None), ("form", "Bearer"), ("header", "DPoP"), ("header", "mTLS")],
    ids=["session-cookie", "form-body", "dpop-bound", "certificate-bound"],
)
def test_an_allow_resting_on_more_than_the_cache_key_is_never_reusable(
    source: str | None, token_type: str | None
) -> None:
    """The host proxy keys a cached allow on method, host, URI and Authorization: a session
    cookie, a form token, a DPoP proof or a client certificate is not in that key, so such
    an allow reused would serve another user or a stolen bound token without its key."""
    allow = Allow(identity(300), (), source, token_type=token_type)  # type: ignore[arg-type]
    assert allow_max_age(allow, 60, CACHE, time.time()) == 0
    bearer = Allow(identity(300), (), "header", token_type="Bearer")
    assert allow_max_age(bearer, 60, CACHE, time.time()) == 60
