"""The authorization response at the callback (RFC 6749 §4.1.2, §4.1.2.1, RFC 9207 §2.4) and
its match against this browser's pending logins (RFC 6749 §10.12)."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from gateway.auth.sessions.callback import AuthorizationResponse, match_pending, parse_callback
from gateway.auth.sessions.errors import (
    AuthorizationRefused,
    LoginExpired,
    LoginFailed,
    StateMismatch,
)
from gateway.auth.sessions.login_state import PendingLogin, PendingLogins

ISSUER = "https://as.example"
NOW = 1_700_000_000.0


def parse(query: str | dict[str, str], *, required: bool = False) -> AuthorizationResponse:
    text = query if isinstance(query, str) else urlencode(query)
    return parse_callback(text, issuer=ISSUER, issuer_parameter_required=required)


def refused(query: str | dict[str, str], *, required: bool = False) -> LoginFailed:
    with pytest.raises(LoginFailed) as caught:
        parse(query, required=required)
    return caught.value


def test_a_successful_response_yields_code_and_state() -> None:
    assert parse({"code": "c0de", "state": "s1"}) == AuthorizationResponse("c0de", "s1")
    assert parse({"code": "c", "state": "s", "iss": ISSUER}, required=True).code == "c"


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        pytest.param({"state": "s"}, "callback_no_code", id="no-code"),
        pytest.param({"code": "c"}, "callback_no_state", id="no-state"),
        pytest.param({"code": "", "state": "s"}, "callback_no_code", id="empty-code"),
        pytest.param("code=a&code=b&state=s", "callback_repeated", id="code-twice"),
        pytest.param("code=a&state=s&state=t", "callback_repeated", id="state-twice"),
        pytest.param({"code": "c\x01", "state": "s"}, "callback_bad_code", id="control-in-code"),
        pytest.param({"code": "c" * 3000, "state": "s"}, "callback_bad_code", id="huge-code"),
        pytest.param("code=%ff&state=s", "callback_malformed", id="not-utf8"),
        pytest.param(
            "&".join(f"p{i}=1" for i in range(50)), "callback_malformed", id="too-many-fields"
        ),
        pytest.param("x=" + "a" * 9000, "callback_too_large", id="too-large"),
        pytest.param(
            {"code": "c", "state": "s", "iss": "https://evil.example"},
            "callback_wrong_issuer",
            id="mix-up-issuer",
        ),
    ],
)
def test_unusable_responses_are_precise_refusals(query: str | dict[str, str], reason: str) -> None:
    error = refused(query)
    assert error.reason == reason and error.status == 400


def test_a_server_that_sends_iss_must_always_send_it() -> None:
    assert refused({"code": "c", "state": "s"}, required=True).reason == "callback_no_issuer"


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        ("access_denied", 403, "as_access_denied"),
        ("login_required", 400, "as_login_required"),
        ("temporarily_unavailable", 400, "as_temporarily_unavailable"),
        ("<script>", 400, "as_invalid_response"),
        ("call_555_1234_for_support", 400, "as_invalid_response"),
        ("a\nb", 400, "as_invalid_response"),
    ],
)
def test_authorization_server_errors_render_a_refusal_never_a_redirect(
    error: str, status: int, reason: str
) -> None:
    failure = refused({"error": error, "error_description": "<b>phish</b>", "state": "s"})
    assert isinstance(failure, AuthorizationRefused)
    assert failure.status == status and failure.reason == reason
    body = failure.problem()
    assert "phish" not in str(body)  # the description is attacker-controlled: never echoed


def test_an_error_wins_over_a_code() -> None:
    assert isinstance(
        refused({"error": "access_denied", "code": "c", "state": "s"}), AuthorizationRefused
    )


def pending(*states: str) -> PendingLogins:
    return PendingLogins(tuple(PendingLogin(s, "n", "v" * 43, f"/{s}", NOW) for s in states))


def test_the_state_picks_its_pending_login_and_is_spent() -> None:
    found, rest = match_pending("b", pending("a", "b"), NOW + 1, 600)
    assert found.return_to == "/b"
    assert [p.state for p in rest.logins] == ["a"]


def test_no_pre_login_cookie_is_an_expired_login() -> None:
    with pytest.raises(LoginExpired):
        match_pending("a", None, NOW, 600)
    with pytest.raises(LoginExpired):
        match_pending("a", PendingLogins(), NOW, 600)


def test_a_foreign_or_replayed_state_is_a_mismatch() -> None:
    with pytest.raises(StateMismatch):
        match_pending("forged", pending("a"), NOW, 600)
    _, rest = match_pending("a", pending("a", "b"), NOW, 600)
    with pytest.raises(StateMismatch):
        match_pending("a", rest, NOW, 600)


def test_a_state_past_the_login_lifetime_is_a_mismatch() -> None:
    with pytest.raises(StateMismatch):
        match_pending("a", pending("a"), NOW + 600, 600)
