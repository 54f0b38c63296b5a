"""Identity tokens: route settings, claims, request binding, and the signed-token cache
(hits until near expiry, never across routes, bindings, identities or a key change)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth.identity import Identity
from gateway.auth.identity_token import (
    IdentityTokenRoute,
    IdentityTokenSigner,
    SigningSettings,
    build_claims,
    request_uri,
)
from gateway.auth.signing_keys import KeyRing, KeySpec
from gateway.compiler.identity_token import compile_route_token
from gateway.config.errors import SettingError
from gateway.config.models.identity_token import RouteIdentityToken

ISSUER = "https://gateway.example/"
NOW = 1_900_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def who(expires_in: float | None = 3600, **claims: Any) -> Identity:
    return Identity(
        issuer="https://as.example/",
        subject=claims.pop("sub", "alice"),
        client_id=claims.pop("client_id", "app-1"),
        scopes=frozenset({"orders:read", "orders:write"}),
        audiences=("api://orders",),
        expires_at=None if expires_in is None else NOW + expires_in,
        token_kind="jwt",
        claims=claims,
    )


def ring(tmp_path: Path, name: str = "a", key: Any = None) -> KeyRing:
    key = key or ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / f"{name}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                     serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    return KeyRing.load([KeySpec(path, kid=name)])


SIGNING = SigningSettings(ISSUER, None, 10, 10.0, False)  # type: ignore[arg-type]


def settings(forward_authorization: bool = False, **section: Any) -> IdentityTokenRoute:
    compiled = compile_route_token(
        RouteIdentityToken(**section), upstream="orders",
        forward_authorization=forward_authorization, signing=SIGNING,
    )  # fmt: skip
    assert compiled is not None
    return compiled


def claims_of(value: str) -> dict[str, Any]:
    token = value.removeprefix("Bearer ")
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


# --- settings ----------------------------------------------------------------------------


def test_defaults_header_audience_lifetime_binding() -> None:
    own = settings()
    assert (own.header, own.bearer, own.audience, own.lifetime, own.bind_request) == (
        "Authorization", True, "orders", 60, True,
    )  # fmt: skip
    assert own.field_value("t") == "Bearer t"
    beside = settings(forward_authorization=True)
    assert (beside.header, beside.bearer) == ("X-Identity-Token", False)
    assert beside.field_value("t") == "t"
    named = settings(header="X-Caller", audience="https://orders.internal/", lifetime="5m")
    assert (named.header, named.audience, named.lifetime) == (
        "X-Caller", "https://orders.internal/", 300,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("section", "forward", "loc", "message"),
    [
        pytest.param({"header": "Authorization"}, True, ("header",), "still carries",
                     id="authorization-while-forwarding"),
        pytest.param({"header": "Host"}, False, ("header",), "cannot carry", id="host"),
        pytest.param({"claims": {"sub": "{email}"}}, False, ("claims", "sub"),
                     "set by the gateway", id="reserved-claim"),
        pytest.param({"claims": {"htu": "x"}}, False, ("claims", "htu"), "set by the gateway",
                     id="reserved-binding"),
        pytest.param({"claims": {"e": "{nope}"}}, False, ("claims", "e"), "unknown placeholder",
                     id="bad-template"),
        pytest.param({"claims": {"": "x"}}, False, ("claims",), "needs a name", id="no-name"),
    ],
)  # fmt: skip
def test_settings_errors(
    section: dict[str, Any], forward: bool, loc: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SettingError, match=message) as caught:
        compile_route_token(RouteIdentityToken(**section), upstream="orders",
                            forward_authorization=forward, signing=SIGNING)  # fmt: skip
    assert caught.value.loc == loc


def test_no_section_or_disabled_means_no_token_and_a_section_needs_signing() -> None:
    off = RouteIdentityToken(enabled=False)
    assert compile_route_token(None, upstream="o", forward_authorization=False,
                               signing=None) is None  # fmt: skip
    assert compile_route_token(off, upstream="o", forward_authorization=False,
                               signing=None) is None  # fmt: skip
    with pytest.raises(SettingError, match="token_signing"):
        compile_route_token(RouteIdentityToken(), upstream="o", forward_authorization=False,
                            signing=None)  # fmt: skip


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("HTTP", "Orders.Internal", 80, "/v1/orders"), "http://orders.internal/v1/orders"),
        (("https", "orders", 443, "/a"), "https://orders/a"),
        (("https", "orders", 8443, "/a"), "https://orders:8443/a"),
        (("http", "::1", 9000, "/a"), "http://[::1]:9000/a"),
        (("http", "orders", None, ""), "http://orders/"),
    ],
)
def test_request_uri_is_normalised(parts: tuple[Any, ...], expected: str) -> None:
    assert request_uri(*parts) == expected


# --- claims ------------------------------------------------------------------------------


def test_claims_from_the_identity_and_the_route() -> None:
    route = settings(claims={"email": "{email}", "tenant": "t-{claims.tenant}", "n": "{name}"})
    claims = build_claims(
        who(email="josé@example.com", tenant="42"), route, issuer=ISSUER, now=int(NOW),
        jti="j1", method="POST", uri="http://orders/v1/orders",
    )  # fmt: skip
    assert claims == {
        "iss": ISSUER, "sub": "alice", "client_id": "app-1", "aud": "orders",
        "scope": "orders:read orders:write", "iat": int(NOW), "exp": int(NOW) + 60,
        "jti": "j1", "htm": "POST", "htu": "http://orders/v1/orders",
        # Template claims are JSON strings: unescaped; a missing source omits the claim.
        "email": "josé@example.com", "tenant": "t-42",
    }  # fmt: skip


def test_exp_never_passes_the_clients_token() -> None:
    route = settings()
    soon = build_claims(who(expires_in=12.7), route, issuer=ISSUER, now=int(NOW), jti="j",
                        method="GET", uri="http://o/")  # fmt: skip
    assert soon["exp"] == int(NOW) + 12
    unbounded = build_claims(who(expires_in=None), route, issuer=ISSUER, now=int(NOW), jti="j",
                             method="GET", uri="http://o/")  # fmt: skip
    assert unbounded["exp"] == int(NOW) + 60
    # Accepted 10 s past exp within the leeway: a second, not an exp before iat.
    late = build_claims(who(expires_in=-10), route, issuer=ISSUER, now=int(NOW), jti="j",
                        method="GET", uri="http://o/")  # fmt: skip
    assert (late["iat"], late["exp"]) == (int(NOW), int(NOW) + 1)


def test_absent_subject_client_and_scope_are_omitted_and_binding_can_be_off() -> None:
    bare = Identity(issuer="i", subject=None, client_id=None, scopes=frozenset(),
                    audiences=(), expires_at=None, token_kind="opaque")  # fmt: skip
    claims = build_claims(bare, settings(bind_request=False), issuer=ISSUER, now=1, jti="j",
                          method=None, uri=None)  # fmt: skip
    assert set(claims) == {"iss", "aud", "iat", "exp", "jti"}
    with pytest.raises(ValueError, match="needs the method and the URI"):
        build_claims(bare, settings(), issuer=ISSUER, now=1, jti="j", method=None, uri=None)


# --- the signer and its cache ----------------------------------------------------------


def test_a_cache_hit_returns_the_same_token_until_shortly_before_expiry(tmp_path: Path) -> None:
    clock = Clock()
    signer = IdentityTokenSigner(ring(tmp_path), issuer=ISSUER, clock=clock)
    route, identity = settings(), who()
    first = signer.header(identity, route, method="GET", uri="http://orders/a")
    assert first[0] == "Authorization" and first[1].startswith("Bearer ")
    clock.now += 49.9  # lifetime 60 s, replaced 10 s before exp
    assert signer.header(identity, route, method="GET", uri="http://orders/a") == first
    assert (signer.signed, signer.hits) == (1, 1)
    clock.now += 0.1
    renewed = signer.header(identity, route, method="GET", uri="http://orders/a")
    assert renewed != first
    assert claims_of(renewed[1])["iat"] == int(NOW + 50)
    assert signer.signed == 2


def test_a_short_lived_client_token_is_renewed_at_half_its_remaining_life(
    tmp_path: Path,
) -> None:
    clock = Clock()
    signer = IdentityTokenSigner(ring(tmp_path), issuer=ISSUER, clock=clock)
    identity, route = who(expires_in=8), settings(bind_request=False)
    first = signer.header(identity, route)
    assert claims_of(first[1])["exp"] == int(NOW) + 8
    clock.now += 3.9
    assert signer.header(identity, route) == first
    clock.now += 0.2
    renewed = signer.header(identity, route)
    assert renewed != first
    assert claims_of(renewed[1])["exp"] == int(NOW) + 8  # still never past the client's


def test_a_bound_token_is_never_served_for_another_method_or_path(tmp_path: Path) -> None:
    signer = IdentityTokenSigner(ring(tmp_path), issuer=ISSUER, clock=Clock())
    route, identity = settings(), who()
    get_a = signer.header(identity, route, method="GET", uri="http://orders/a")
    post_a = signer.header(identity, route, method="POST", uri="http://orders/a")
    get_b = signer.header(identity, route, method="GET", uri="http://orders/b")
    assert len({get_a, post_a, get_b}) == 3
    assert (claims_of(post_a[1])["htm"], claims_of(get_b[1])["htu"]) == ("POST", "http://orders/b")
    # Unbound tokens are shared across paths of one route, and only of that route.
    unbound = settings(bind_request=False)
    assert signer.header(identity, unbound, method="GET", uri="http://orders/a") == (
        signer.header(identity, unbound, method="PUT", uri="http://orders/c")
    )
    other = settings(bind_request=False, audience="billing")
    assert claims_of(signer.header(identity, other)[1])["aud"] == "billing"


def test_another_identity_or_claims_never_hits(tmp_path: Path) -> None:
    signer = IdentityTokenSigner(ring(tmp_path), issuer=ISSUER, clock=Clock())
    route = settings(bind_request=False, claims={"role": "{claims.role}"})
    admin = signer.header(who(role="admin"), route)
    # The same subject, client and expiry but other claims: a miss, never admin's token.
    user = signer.header(who(role="user"), route)
    assert claims_of(user[1])["role"] == "user"
    assert claims_of(admin[1])["role"] == "admin"
    # An equal identity (a fresh object from a revalidation) hits.
    assert signer.header(who(role="user"), route) == user
    assert signer.hits == 1


def test_a_key_change_drops_the_cache_and_new_tokens_use_the_new_key(tmp_path: Path) -> None:
    old_ring, new_ring = ring(tmp_path, "old"), ring(tmp_path, "new")
    old = IdentityTokenSigner(old_ring, issuer=ISSUER, clock=Clock())
    route, identity = settings(bind_request=False), who()
    before = old.header(identity, route)
    assert jwt.get_unverified_header(before[1].removeprefix("Bearer "))["kid"] == "old"
    # A reload with another key: a new signer, whose cache starts empty.
    reloaded = SigningSettings(ISSUER, new_ring, 10, 10.0, False)
    signer = IdentityTokenSigner.from_settings(reloaded, previous=old, clock=Clock())
    assert signer.cached == 0
    after = signer.header(identity, route)
    assert after != before
    assert jwt.get_unverified_header(after[1].removeprefix("Bearer "))["kid"] == "new"
    assert [key.kid for key in signer.ring.published(NOW)] == ["new", "old"]


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    signer = IdentityTokenSigner(ring(tmp_path), issuer=ISSUER, max_entries=3, clock=Clock())
    route = settings()
    for index in range(10):
        signer.header(who(), route, method="GET", uri=f"http://orders/{index}")
    assert signer.cached == 3
    off = IdentityTokenSigner(ring(tmp_path), issuer=ISSUER, max_entries=0, clock=Clock())
    off.header(who(), route, method="GET", uri="http://orders/a")
    assert off.cached == 0
    assert off.stats() == {"signed": 1, "hits": 0, "entries": 0}


@pytest.mark.parametrize("make", [lambda: ec.generate_private_key(ec.SECP256R1()),
                                  lambda: rsa.generate_private_key(65537, 2048)],
                         ids=["es256", "rs256"])  # fmt: skip
def test_tokens_verify_against_the_published_key(tmp_path: Path, make: Any) -> None:
    keys = ring(tmp_path, key=make())
    signer = IdentityTokenSigner(keys, issuer=ISSUER)
    identity = Identity(issuer="https://as.example/", subject="alice", client_id="app",
                        scopes=frozenset({"read"}), audiences=("api",),
                        expires_at=time.time() + 300, token_kind="jwt")  # fmt: skip
    _, value = signer.header(identity, settings(), method="GET", uri="http://orders/a")
    jwk = jwt.PyJWKSet.from_json(signer.jwks().body.decode())[keys.active.kid]
    decoded = jwt.decode(value.removeprefix("Bearer "), jwk.key, algorithms=[keys.active.alg],
                         audience="orders", issuer=ISSUER)  # fmt: skip
    assert decoded["sub"] == "alice"


def test_a_retired_key_outlives_its_tokens_across_several_reloads(tmp_path: Path) -> None:
    """A reload that keeps the key makes a signer that has signed nothing yet; a later
    reload that drops the key must still publish it for as long as the first signer's
    tokens live, not only for the leeway."""
    clock = Clock()
    old_ring, new_ring = ring(tmp_path, "old"), ring(tmp_path, "new")
    first = IdentityTokenSigner(old_ring, issuer=ISSUER, clock=clock)
    first.header(who(), settings(bind_request=False, lifetime=600))
    same = IdentityTokenSigner.from_settings(
        SigningSettings(ISSUER, old_ring, 10, 10.0, False), previous=first, clock=clock
    )
    clock.now += 1
    rotated = IdentityTokenSigner.from_settings(
        SigningSettings(ISSUER, new_ring, 10, 10.0, False), previous=same, clock=clock
    )
    clock.now += 300  # the first signer's token is still valid
    assert [key.kid for key in rotated.ring.published(clock.now)] == ["new", "old"]
