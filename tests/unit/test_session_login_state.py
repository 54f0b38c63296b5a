"""RFC 7636 PKCE S256, state and nonce entropy, and the pending logins of the pre-login cookie."""

from __future__ import annotations

import re

import pytest

from gateway.auth.sessions.cookies import CookiePolicy
from gateway.auth.sessions.login_state import (
    MAX_PENDING,
    LoginCookie,
    PendingLogin,
    PendingLogins,
    code_challenge,
    random_token,
)
from gateway.auth.sessions.sealing import Sealer

NOW = 1_700_000_000.0
LIFETIME = 600.0


def test_pkce_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@pytest.mark.parametrize(
    "verifier",
    [
        pytest.param("a" * 42, id="too-short"),
        pytest.param("a" * 129, id="too-long"),
        pytest.param("a" * 42 + "+", id="not-unreserved"),
        pytest.param("a" * 42 + "=", id="padding"),
        pytest.param("a" * 42 + "é", id="non-ascii"),
    ],
)
def test_verifiers_outside_rfc_7636_4_1_are_refused(verifier: str) -> None:
    with pytest.raises(ValueError):
        code_challenge(verifier)


def test_the_unreserved_set_and_both_length_bounds_are_accepted() -> None:
    code_challenge("A-._~" + "z" * 38)
    code_challenge("0" * 128)


def test_random_tokens_carry_256_bits_and_a_valid_verifier_alphabet() -> None:
    tokens = {random_token() for _ in range(1000)}
    assert len(tokens) == 1000
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
        code_challenge(token)


def test_a_login_start_makes_distinct_state_nonce_and_verifier() -> None:
    login = PendingLogin.start("/orders", NOW)
    assert len({login.state, login.nonce, login.verifier}) == 3


def logins(count: int, start: float = NOW) -> PendingLogins:
    pending = PendingLogins()
    for index in range(count):
        pending = pending.add(
            PendingLogin.start(f"/{index}", start + index), start + index, LIFETIME
        )
    return pending


def test_several_tabs_keep_their_own_pending_login_newest_first() -> None:
    pending = logins(2)
    assert [p.return_to for p in pending.logins] == ["/1", "/0"]
    first = pending.logins[1]
    found, rest = pending.take(first.state, NOW + 5, LIFETIME)
    assert found == first
    assert [p.return_to for p in rest.logins] == ["/1"]


def test_at_most_max_pending_logins_are_kept() -> None:
    assert len(logins(MAX_PENDING + 2).logins) == MAX_PENDING


def test_a_state_is_good_once() -> None:
    pending = logins(1)
    state = pending.logins[0].state
    found, rest = pending.take(state, NOW, LIFETIME)
    assert found is not None
    assert rest.take(state, NOW, LIFETIME)[0] is None


def test_an_expired_pending_login_is_not_found_and_is_dropped() -> None:
    pending = logins(1)
    state = pending.logins[0].state
    found, rest = pending.take(state, NOW + LIFETIME, LIFETIME)
    assert found is None and rest.logins == ()
    assert (
        pending.add(PendingLogin.start("/n", NOW + LIFETIME), NOW + LIFETIME, LIFETIME).logins[1:]
        == ()
    )


def test_an_unknown_state_finds_nothing_and_keeps_the_rest() -> None:
    pending = logins(2)
    found, rest = pending.take("x" * 43, NOW, LIFETIME)
    assert found is None and rest == pending


def test_the_cookie_expires_with_its_newest_pending_login() -> None:
    assert logins(2).expires_at(LIFETIME) == NOW + 1 + LIFETIME


def test_pending_logins_round_trip_through_their_encoding() -> None:
    pending = logins(3)
    assert PendingLogins.decode(pending.encode()) == pending


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"{}", id="object"),
        pytest.param(b'["l0", []]', id="other-version"),
        pytest.param(b'["l1", {}]', id="rows-not-a-list"),
        pytest.param(b'["l1", [[1, 2, 3, 4, 5]]]', id="wrong-types"),
        pytest.param(b'["l1", [["s", "n", "short", "/", 1]]]', id="bad-verifier"),
        pytest.param(b'["l1", [["s","n","' + b"v" * 43 + b'","/", "1"]]]', id="time-a-string"),
        pytest.param(b'["l1", [' + b",".join([b"[]"] * 4) + b"]]", id="too-many"),
        pytest.param(b"[" * 100, id="deep"),
        pytest.param(b"not json", id="garbage"),
    ],
)
def test_anything_encode_did_not_write_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        PendingLogins.decode(data)


POLICY = CookiePolicy("gw_login", secure=True, max_chunks=1)


def login_cookie(secret: bytes = b"s" * 32) -> LoginCookie:
    return LoginCookie(POLICY, Sealer([secret]), LIFETIME)


def test_the_pre_login_cookie_round_trips_sealed_and_short_lived() -> None:
    cookie, pending = login_cookie(), logins(2)
    headers = cookie.write(pending, NOW + 1)
    assert len(headers) == 1 and "Max-Age=600;" in headers[0]
    assert headers[0].startswith("__Host-gw_login=") and "HttpOnly" in headers[0]
    value = headers[0].split(";")[0]
    assert pending.logins[0].verifier not in value and pending.logins[0].state not in value
    assert cookie.read([value], NOW + 1) == pending


@pytest.mark.parametrize(
    ("reader", "at"),
    [
        pytest.param(login_cookie(), NOW + 1 + LIFETIME, id="expired"),
        pytest.param(login_cookie(b"x" * 32), NOW, id="foreign-key"),
        pytest.param(
            LoginCookie(
                CookiePolicy("gw_session", secure=True, max_chunks=1), Sealer([b"s" * 32]), LIFETIME
            ),
            NOW,
            id="other-cookie-name",
        ),
    ],
)
def test_a_pre_login_cookie_that_does_not_open_is_no_pending_login(
    reader: LoginCookie, at: float
) -> None:
    value = login_cookie().write(logins(1), NOW)[0].split(";")[0]
    if reader.policy.base_name != "gw_login":
        value = value.replace("__Host-gw_login=", "__Host-gw_session=")
    assert reader.read([value], at) is None


def test_a_tampered_pre_login_cookie_is_no_pending_login() -> None:
    value = login_cookie().write(logins(1), NOW)[0].split(";")[0]
    assert login_cookie().read([value[:-3] + "AAA"], NOW) is None
    assert login_cookie().read([], NOW) is None


def test_the_oldest_pending_logins_give_way_to_fit_one_cookie() -> None:
    pending = PendingLogins()
    for index in range(3):
        pending = pending.add(PendingLogin.start("/" + "p" * 1000 + str(index), NOW), NOW, LIFETIME)
    small = LoginCookie(
        CookiePolicy("gw_login", secure=True, chunk_bytes=2000, max_chunks=1),
        Sealer([b"s" * 32]),
        LIFETIME,
    )
    value = small.write(pending, NOW)[0].split(";")[0]
    kept = small.read([value], NOW)
    assert kept is not None and kept.logins == pending.logins[:1]


def test_writing_no_pending_login_deletes_the_cookie() -> None:
    assert "Max-Age=0" in login_cookie().write(PendingLogins(), NOW)[0]


def test_the_pre_login_cookie_is_never_chunked() -> None:
    with pytest.raises(ValueError):
        LoginCookie(CookiePolicy("gw_login", secure=True), Sealer([b"s" * 32]), LIFETIME)
