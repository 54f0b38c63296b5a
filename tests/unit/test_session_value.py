"""The session value: its encoding, idle and absolute timeouts, the refresh rule, the
identity it becomes, and that no token or id ever shows in a repr."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from gateway.auth.sessions.id_token import IdToken
from gateway.auth.sessions.session import (
    Session,
    access_expired,
    access_expiry,
    decode_session,
    encode_session,
    ended,
    ends_at,
    new_session_id,
    refresh_due,
    session_id_hash,
    session_identity,
    touch_due,
)
from gateway.auth.sessions.token_response import MAX_EXPIRES_IN, TokenResponse

NOW = 1_700_000_000.0
IDLE, ABSOLUTE = 3600.0, 43200.0
ID_TOKEN = IdToken(
    subject="alice",
    sid="op-1",
    expires_at=NOW + 300,
    issued_at=NOW,
    claims=MappingProxyType(
        {
            "sub": "alice",
            "email": "a@example.com",
            "nonce": "n",
            "at_hash": "h",
            "iat": 1,
            "exp": 2,
            "azp": "web-app",
            "groups": ["ops"],
        }
    ),
)
TOKENS = TokenResponse("at-secret", "Bearer", 300, "rt-secret", "id.token.raw", "openid email")


def login(**overrides: Any) -> Session:
    session = Session.from_login(
        login="web",
        issuer="https://as.example",
        id_token=ID_TOKEN,
        tokens=TOKENS,
        now=NOW,
        keep_id_token=True,
        raw_id_token="id.token.raw",
    )
    return replace(session, **overrides)


def test_a_login_makes_a_session_from_the_tokens_and_the_users_claims() -> None:
    session = login()
    assert (session.subject, session.sid, session.access_expires_at) == ("alice", "op-1", NOW + 300)
    assert (session.created_at, session.last_seen) == (NOW, NOW)
    assert dict(session.claims) == {
        "sub": "alice",
        "email": "a@example.com",
        "azp": "web-app",
        "groups": ["ops"],
    }


def test_every_login_gets_a_new_handle_of_128_random_bits() -> None:
    assert login().handle != login().handle
    handle = login().handle
    assert len(handle) == 22 and len(base64.urlsafe_b64decode(handle + "==")) == 16


def test_a_login_keeps_the_id_token_only_when_asked_and_an_expiry_only_when_given() -> None:
    session = Session.from_login(
        login="web",
        issuer="https://as.example",
        id_token=ID_TOKEN,
        tokens=replace(TOKENS, expires_in=None),
        now=NOW,
        keep_id_token=False,
        raw_id_token="id.token.raw",
    )
    assert (session.id_token, session.access_expires_at) == (None, None)


def test_the_encoding_round_trips() -> None:
    session = login()
    assert decode_session(encode_session(session)) == session


def test_a_session_without_the_optional_fields_round_trips() -> None:
    session = login(sid=None, refresh_token=None, id_token=None, access_expires_at=None, scope=None)
    assert decode_session(encode_session(session)) == session


def test_the_encoding_is_compact() -> None:
    assert len(encode_session(login())) < 300
    # No whitespace between members and UTF-8 rather than \u escapes: the most compact JSON.
    encoded = encode_session(login(claims=MappingProxyType({"name": "Zoë 李", "sub": "alice"})))
    assert "Zoë 李".encode() in encoded
    minimal = json.dumps(json.loads(encoded), separators=(",", ":"), ensure_ascii=False)
    assert len(encoded) == len(minimal.encode())


@pytest.mark.parametrize(
    "data",
    [b"[]", b'["s0"]', b"{}", b"x", b'["s1"' + b',"x"' * 14 + b"]", b"[" * 64],
)
def test_anything_else_does_not_decode(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_session(data)


_FIELDS = [
    "format", "login", "issuer", "subject", "sid", "claims", "access_token", "token_type",
    "refresh_token", "id_token", "access_expires_at", "scope", "created_at", "last_seen",
    "handle",
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("login", "1"),
        ("issuer", "null"),
        ("subject", "[]"),
        ("access_token", "null"),
        ("token_type", "1"),
        ("handle", "{}"),
        ("sid", "1"),
        ("refresh_token", "[]"),
        ("id_token", "true"),
        ("scope", "1"),
        ("claims", "[]"),
        ("claims", '"x"'),
        ("access_expires_at", '"soon"'),
        ("access_expires_at", "true"),
        ("access_expires_at", "1e400"),
        ("created_at", "true"),
        ("created_at", "1e400"),
        ("created_at", "null"),
        ("last_seen", "false"),
        ("last_seen", "-1e400"),
        ("last_seen", '"now"'),
    ],
)
def test_a_field_of_the_wrong_type_does_not_decode(name: str, raw: str) -> None:
    """Booleans are not numbers here, nor is a number too large for a float (infinite)."""
    fields = json.loads(encode_session(login()))
    fields[_FIELDS.index(name)] = "@@"
    data = json.dumps(fields).replace('"@@"', raw).encode()
    with pytest.raises(ValueError):
        decode_session(data)


def test_no_token_or_handle_is_in_the_repr() -> None:
    session = login()
    text = repr(session)
    for secret in ("at-secret", "rt-secret", "id.token.raw", session.handle):
        assert secret not in text
    assert session.ref in text and len(session.ref) == 12


@pytest.mark.parametrize(
    ("created", "last_seen", "now", "expected"),
    [
        pytest.param(NOW, NOW, NOW + IDLE - 1, None, id="alive"),
        pytest.param(NOW, NOW, NOW + IDLE, "idle", id="idle"),
        pytest.param(
            NOW, NOW + ABSOLUTE - 10, NOW + ABSOLUTE, "absolute", id="absolute-despite-activity"
        ),
        pytest.param(NOW, NOW + 7200, NOW + 7200 + IDLE - 1, None, id="activity-extends-idle"),
    ],
)
def test_idle_and_absolute_timeouts(
    created: float, last_seen: float, now: float, expected: str | None
) -> None:
    session = login(created_at=created, last_seen=last_seen)
    assert ended(session, now, idle=IDLE, absolute=ABSOLUTE) == expected


def test_the_end_is_the_nearer_of_both_limits() -> None:
    assert ends_at(login(), idle=IDLE, absolute=ABSOLUTE) == NOW + IDLE
    late = login(last_seen=NOW + ABSOLUTE - 60)
    assert ends_at(late, idle=IDLE, absolute=ABSOLUTE) == NOW + ABSOLUTE


def test_activity_is_recorded_at_most_once_a_minute() -> None:
    session = login()
    assert not touch_due(session, NOW + 59, idle=IDLE)
    assert touch_due(session, NOW + 60, idle=IDLE)
    assert touch_due(session, NOW + 30, idle=300)  # a tenth of a short idle timeout
    assert not touch_due(session, NOW + 29, idle=300)


def test_refresh_is_due_within_the_margin_and_only_with_a_refresh_token() -> None:
    session = login()
    assert not refresh_due(session, NOW + 239, margin=60)
    assert refresh_due(session, NOW + 240, margin=60)
    assert not refresh_due(login(refresh_token=None), NOW + 400, margin=60)
    assert not refresh_due(login(access_expires_at=None), NOW + 400, margin=60)
    assert access_expired(session, NOW + 300) and not access_expired(session, NOW + 299)


def test_a_refresh_replaces_tokens_and_keeps_what_it_did_not_send() -> None:
    before = login()
    refreshed = before.refreshed(
        TokenResponse("at-2", "Bearer", 600, None, None, None), None, None, NOW + 250
    )
    assert (refreshed.access_token, refreshed.refresh_token) == ("at-2", "rt-secret")
    assert (refreshed.id_token, refreshed.scope) == ("id.token.raw", "openid email")
    assert refreshed.access_expires_at == NOW + 850
    assert (refreshed.handle, refreshed.created_at) == (before.handle, before.created_at)
    assert refreshed.claims == before.claims


def test_a_refresh_takes_the_new_id_tokens_claims_and_the_new_token_type() -> None:
    new_id_token = replace(
        ID_TOKEN, claims=MappingProxyType({"sub": "alice", "email": "b@example.com", "iat": 5})
    )
    refreshed = login().refreshed(
        TokenResponse("at-2", "DPoP", None, None, "new.id.tok", None),
        new_id_token,
        "new.id.tok",
        NOW + 250,
    )
    assert dict(refreshed.claims) == {"sub": "alice", "email": "b@example.com"}
    assert (refreshed.token_type, refreshed.access_expires_at) == ("DPoP", None)


def test_a_rotated_refresh_token_replaces_the_old_one() -> None:
    refreshed = login().refreshed(
        TokenResponse("at-2", "Bearer", 600, "rt-2", "new.id.tok", "x"), None, "new.id.tok", NOW
    )
    assert (refreshed.refresh_token, refreshed.id_token, refreshed.scope) == (
        "rt-2",
        "new.id.tok",
        "x",
    )


def test_the_session_becomes_the_one_identity_shape() -> None:
    identity = session_identity(login(), "web-app")
    assert identity.subject == "alice" and identity.client_id == "web-app"
    assert (identity.issuer, identity.audiences) == ("https://as.example", ("web-app",))
    assert identity.expires_at == NOW + 300
    assert identity.scopes == frozenset({"openid", "email"})
    assert identity.token_kind == "session"
    assert identity.claims["scope"] == "openid email" and identity.claims["groups"] == ["ops"]


@pytest.mark.parametrize(
    ("claims", "client_id"),
    [
        pytest.param({"sub": "alice", "azp": "first-app"}, "first-app", id="azp"),
        pytest.param({"sub": "alice"}, "web-app", id="no-azp"),
        pytest.param({"sub": "alice", "azp": 7}, "web-app", id="azp-not-a-string"),
    ],
)
def test_the_identitys_client_is_the_id_tokens_azp_else_the_logins_client(
    claims: dict[str, Any], client_id: str
) -> None:
    """README (sessions, Upstream): the ID token's ``azp``, else the login's ``client_id``."""
    identity = session_identity(login(claims=MappingProxyType(claims)), "web-app")
    assert identity.client_id == client_id


def test_a_session_without_a_granted_scope_has_no_scopes() -> None:
    identity = session_identity(login(scope=None), "web-app")
    assert identity.scopes == frozenset() and "scope" not in identity.claims


def test_session_ids_are_random_256_bit_and_stored_hashed() -> None:
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 43 for i in ids)
    some = next(iter(ids))
    assert len(session_id_hash(some)) == 32 and some.encode() not in session_id_hash(some)


_PROTOCOL = ["nonce", "at_hash", "c_hash", "s_hash", "jti", "iat", "nbf", "exp", "auth_time", "typ"]


@pytest.mark.parametrize("name", _PROTOCOL)
def test_every_protocol_claim_is_left_out_of_the_session(name: str) -> None:
    from gateway.auth.sessions.session import identity_claims

    kept = identity_claims({name: "x", "sub": "alice", "email": "a@example.com"})
    assert dict(kept) == {"sub": "alice", "email": "a@example.com"}


def test_the_protocol_claims_are_exactly_those_tested() -> None:
    from gateway.auth.sessions import session

    assert set(_PROTOCOL) == session._PROTOCOL_CLAIMS


def _jwt(claims: Any) -> str:
    def part(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


@pytest.mark.parametrize(
    ("access_token", "expires_in", "expected"),
    [
        pytest.param("opaque", 300, NOW + 300, id="expires-in"),
        pytest.param(_jwt({"exp": NOW + 900}), 300, NOW + 300, id="expires-in-wins"),
        pytest.param(_jwt({"exp": NOW + 900}), None, NOW + 900, id="jwt-exp-without-expires-in"),
        pytest.param(_jwt({"exp": int(NOW) - 5}), None, NOW - 5, id="jwt-already-expired"),
        pytest.param(_jwt({"exp": NOW + 10**12}), None, NOW + MAX_EXPIRES_IN, id="jwt-exp-capped"),
        pytest.param("opaque", None, None, id="opaque-without-expires-in"),
        pytest.param("a.b", None, None, id="two-parts"),
        pytest.param("a.%%%.c", None, None, id="payload-not-base64url"),
        pytest.param(_jwt([1]), None, None, id="payload-not-an-object"),
        pytest.param(_jwt({"exp": True}), None, None, id="exp-bool"),
        pytest.param(_jwt({"exp": "1700000900"}), None, None, id="exp-string"),
        pytest.param(_jwt({"sub": "x"}), None, None, id="no-exp"),
    ],
)  # fmt: skip
def test_the_access_token_ends_at_expires_in_else_its_own_exp(
    access_token: str, expires_in: int | None, expected: float | None
) -> None:
    """RFC 6749 §5.1: expires_in is only RECOMMENDED. Without it the session had taken a JWT
    access token to last forever: never refreshed, forwarded after it died."""
    tokens = replace(TOKENS, access_token=access_token, expires_in=expires_in)
    assert access_expiry(tokens, NOW) == expected
    session = Session.from_login(login="web", issuer="https://as.example", id_token=ID_TOKEN,
                                 tokens=tokens, now=NOW, keep_id_token=False,
                                 raw_id_token="id.token.raw")  # fmt: skip
    assert session.access_expires_at == expected
    assert session.refreshed(tokens, None, None, NOW).access_expires_at == expected
