"""Back-Channel Logout 1.0 §2.4/§2.6 logout tokens rule by rule (real keys), jti replay, and
RP-Initiated Logout 1.0 §2 URLs."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.auth.sessions.errors import LogoutTokenInvalid
from gateway.auth.sessions.logout import (
    BACKCHANNEL_EVENT,
    LogoutRequest,
    LogoutRules,
    MemoryReplayGuard,
    check_replay,
    end_session_url,
    refuse_replay,
    validate_logout_token,
)
from tests.support.signing import SigningKeys

ISSUER = "https://as.example"
CLIENT = "web-app"
KEYS = SigningKeys()
NOW = time.time()
RULES = LogoutRules(issuer=ISSUER, client_id=CLIENT, algorithms=frozenset({"RS256", "ES256"}))


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT,
        "iat": int(NOW),
        "exp": int(NOW) + 120,
        "jti": "j-1",
        "sub": "alice",
        "sid": "op-session-1",
        "events": {BACKCHANNEL_EVENT: {}},
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def validate(token: str) -> LogoutRequest:
    return validate_logout_token(token, keys=KEYS.key_set, rules=RULES, now=NOW)


def reason(token: str) -> str:
    with pytest.raises(LogoutTokenInvalid) as caught:
        validate(token)
    assert caught.value.status == 400
    assert caught.value.problem()["error"] == "invalid_request"
    return caught.value.reason


@pytest.mark.parametrize("typ", [None, "logout+jwt", "application/logout+jwt", "Logout+JWT", "JWT"])
def test_a_valid_logout_token_names_whom_to_log_out(typ: str | None) -> None:
    request = validate(KEYS.sign(claims(), header={"typ": typ}))
    assert request == LogoutRequest(ISSUER, "alice", "op-session-1", "j-1", int(NOW) + 120 + 30)


def test_sid_alone_or_sub_alone_is_enough() -> None:
    assert validate(KEYS.sign(claims(sub=None))).subject is None
    assert validate(KEYS.sign(claims(sid=None))).sid is None


def test_without_exp_the_replay_window_is_the_age_bound() -> None:
    assert validate(KEYS.sign(claims(exp=None))).replay_until == int(NOW) + 120 + 30


@pytest.mark.parametrize(
    ("changes", "header", "expected"),
    [
        pytest.param({}, {"typ": "at+jwt"}, "logout_wrong_type", id="typ-access-token"),
        pytest.param({}, {"typ": "secevent+jwt"}, "logout_wrong_type", id="typ-other"),
        pytest.param({}, {"typ": 1}, "logout_wrong_type", id="typ-number"),
        pytest.param({}, {"alg": "none"}, "logout_bad_algorithm", id="alg-none"),
        pytest.param({"iss": "https://evil.example"}, {}, "logout_bad_issuer", id="iss"),
        pytest.param({"aud": "other"}, {}, "logout_bad_audience", id="aud"),
        pytest.param(
            {"aud": [CLIENT, "x"], "azp": CLIENT}, {}, "logout_untrusted_audience", id="aud-extra"
        ),
        pytest.param({"iat": None}, {}, "logout_missing_iat", id="iat-missing"),
        pytest.param({"iat": int(NOW) - 300}, {}, "logout_too_old", id="iat-too-old"),
        pytest.param({"iat": int(NOW) + 300}, {}, "logout_not_yet_valid", id="iat-future"),
        pytest.param({"exp": int(NOW) - 60}, {}, "logout_expired", id="expired"),
        pytest.param({"sub": None, "sid": None}, {}, "logout_no_subject", id="neither-sub-nor-sid"),
        pytest.param({"events": None}, {}, "logout_no_event", id="events-missing"),
        pytest.param({"events": {"other": {}}}, {}, "logout_no_event", id="events-other"),
        pytest.param(
            {"events": {BACKCHANNEL_EVENT: "yes"}}, {}, "logout_no_event", id="event-not-an-object"
        ),
        pytest.param({"events": [BACKCHANNEL_EVENT]}, {}, "logout_no_event", id="events-list"),
        pytest.param({"nonce": "n"}, {}, "logout_has_nonce", id="nonce-present"),
        pytest.param({"jti": None}, {}, "logout_missing_jti", id="jti-missing"),
        pytest.param({"jti": 7}, {}, "logout_malformed", id="jti-number"),
        pytest.param({"sid": 7}, {}, "logout_malformed", id="sid-number"),
    ],
)
def test_every_rule_refuses_its_violation(
    changes: dict[str, Any], header: dict[str, Any], expected: str
) -> None:
    assert reason(KEYS.sign(claims(**changes), header=header)) == expected


def test_a_tampered_signature_is_refused() -> None:
    assert reason(KEYS.sign(claims())[:-4] + "AAAA") == "logout_bad_signature"


def test_an_id_token_is_never_a_logout_token() -> None:
    """Cross-JWT confusion (§4.1): an ID token has a nonce and no events member."""
    id_token = KEYS.sign(claims(events=None, nonce="n", jti=None))
    assert reason(id_token) in {"logout_no_event", "logout_has_nonce"}


async def test_a_jti_is_accepted_once_until_its_window_ends() -> None:
    clock = [NOW]
    guard = MemoryReplayGuard(clock=lambda: clock[0])
    request = validate(KEYS.sign(claims()))
    await check_replay(request, guard)
    with pytest.raises(LogoutTokenInvalid) as caught:
        await check_replay(request, guard)
    assert caught.value.reason == "logout_replayed"
    clock[0] = request.replay_until
    await check_replay(request, guard)  # forgotten once it would fail the age check anyway


async def test_refusing_a_replay_does_not_record_the_token() -> None:
    """The endpoint records a jti only after the sessions ended: a store that failed in
    between leaves the provider's retry usable."""
    clock = [NOW]
    guard = MemoryReplayGuard(clock=lambda: clock[0])
    request = validate(KEYS.sign(claims()))
    await refuse_replay(request, guard)
    await refuse_replay(request, guard)  # still unrecorded
    await check_replay(request, guard)
    with pytest.raises(LogoutTokenInvalid):
        await refuse_replay(request, guard)
    clock[0] = request.replay_until
    await refuse_replay(request, guard)  # forgotten with its window


async def test_the_same_jti_from_another_issuer_is_another_token() -> None:
    guard = MemoryReplayGuard()
    await check_replay(LogoutRequest(ISSUER, "a", None, "j", NOW + 60), guard)
    await check_replay(LogoutRequest("https://other.example", "a", None, "j", NOW + 60), guard)


async def test_the_replay_memory_is_bounded() -> None:
    guard = MemoryReplayGuard(max_entries=3)
    for index in range(10):
        assert await guard.first_use(f"j{index}", NOW * 2)
    assert len(guard._seen) <= 3


def test_the_end_session_url_carries_the_hint_and_the_return() -> None:
    url = end_session_url(
        "https://as.example/logout?ui=1",
        client_id=CLIENT,
        id_token_hint="eyJ.x.y",
        post_logout_redirect_uri="https://app/",
        state="st",
    )
    parts = urlsplit(url)
    assert parts.path == "/logout"
    assert parse_qs(parts.query) == {
        "ui": ["1"],
        "client_id": [CLIENT],
        "id_token_hint": ["eyJ.x.y"],
        "post_logout_redirect_uri": ["https://app/"],
        "state": ["st"],
    }


def test_without_a_hint_only_the_client_is_named() -> None:
    url = end_session_url(
        "https://as.example/logout",
        client_id=CLIENT,
        id_token_hint=None,
        post_logout_redirect_uri=None,
    )
    assert parse_qs(urlsplit(url).query) == {"client_id": [CLIENT]}


def test_an_end_session_endpoint_with_a_fragment_is_refused() -> None:
    with pytest.raises(ValueError):
        end_session_url(
            "https://as.example/logout#x",
            client_id=CLIENT,
            id_token_hint=None,
            post_logout_redirect_uri=None,
        )
