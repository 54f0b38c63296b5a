"""Token endpoint answers (RFC 6749 §5.1, §5.2): what is a usable answer, what is a refusal,
and what is the server failing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.auth.sessions.errors import TokenEndpointRefused, TokenEndpointUnavailable
from gateway.auth.sessions.token_response import (
    MAX_EXPIRES_IN,
    MAX_RESPONSE_BYTES,
    TokenResponse,
    parse_token_response,
)

GOOD = {
    "access_token": "at-1",
    "token_type": "Bearer",
    "expires_in": 300,
    "refresh_token": "rt-1",
    "id_token": "eyJh.eyJi.c2ln",
    "scope": "openid email",
}


def answer(status: int = 200, **changes: Any) -> bytes:
    document = {k: v for k, v in (GOOD | changes).items() if v is not None}
    return json.dumps(document).encode()


def test_a_full_answer_is_read() -> None:
    assert parse_token_response(200, answer()) == TokenResponse(
        "at-1", "Bearer", 300, "rt-1", "eyJh.eyJi.c2ln", "openid email"
    )


def test_optional_members_may_be_absent() -> None:
    tokens = parse_token_response(
        200, answer(expires_in=None, refresh_token=None, id_token=None, scope=None)
    )
    assert (tokens.expires_in, tokens.refresh_token, tokens.id_token, tokens.scope) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(("given", "canonical"), [("bearer", "Bearer"), ("DPOP", "DPoP")])
def test_token_type_is_case_insensitive(given: str, canonical: str) -> None:
    assert parse_token_response(200, answer(token_type=given)).token_type == canonical


def test_a_dpop_token_is_not_usable_by_the_gateway() -> None:
    with pytest.raises(TokenEndpointUnavailable) as caught:
        parse_token_response(200, answer(token_type="DPoP")).require_bearer()
    assert caught.value.reason == "token_not_bearer"


def test_expires_in_is_held_to_a_year() -> None:
    assert parse_token_response(200, answer(expires_in=10**12)).expires_in == MAX_EXPIRES_IN
    assert parse_token_response(200, answer(expires_in=60.0)).expires_in == 60


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"access_token": None}, id="no-access-token"),
        pytest.param({"access_token": ""}, id="empty-access-token"),
        pytest.param({"access_token": 5}, id="access-token-number"),
        pytest.param({"access_token": "a\nb"}, id="access-token-control"),
        pytest.param({"access_token": "a" * 20000}, id="huge-access-token"),
        pytest.param({"token_type": None}, id="no-token-type"),
        pytest.param({"token_type": "mac"}, id="unknown-token-type"),
        pytest.param({"expires_in": "300"}, id="expires-in-string"),
        pytest.param({"expires_in": -1}, id="expires-in-negative"),
        pytest.param({"expires_in": True}, id="expires-in-bool"),
        pytest.param({"expires_in": 1.5}, id="expires-in-fraction"),
        pytest.param({"refresh_token": ["x"]}, id="refresh-token-list"),
        pytest.param({"id_token": "not a jwt"}, id="id-token-garbage"),
        pytest.param({"id_token": 1}, id="id-token-number"),
        pytest.param({"scope": 3}, id="scope-number"),
    ],
)
def test_a_malformed_success_is_unusable(changes: dict[str, Any]) -> None:
    with pytest.raises(TokenEndpointUnavailable):
        parse_token_response(200, answer(**changes))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"a":1,"a":2}', id="duplicate-member"),
        pytest.param(b"[" * 100 + b"]" * 100, id="deep"),
        pytest.param(b" " * (MAX_RESPONSE_BYTES + 1), id="oversized"),
        pytest.param(b'{"access_token":NaN}', id="nan"),
    ],
)
def test_a_body_that_is_not_a_bounded_json_object_is_unusable(body: bytes) -> None:
    with pytest.raises(TokenEndpointUnavailable):
        parse_token_response(200, body)


@pytest.mark.parametrize(("status", "error"), [(400, "invalid_grant"), (401, "invalid_client")])
def test_rfc_6749_5_2_errors_are_refusals(status: int, error: str) -> None:
    with pytest.raises(TokenEndpointRefused) as caught:
        parse_token_response(status, json.dumps({"error": error}).encode())
    assert caught.value.error == error
    assert caught.value.status == (400 if error == "invalid_grant" else 502)


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, b'{"error":"server_error"}'), (400, b'{"message":"x"}'), (302, b"{}"), (503, b"")],
)
def test_other_failures_are_unavailability(status: int, body: bytes) -> None:
    with pytest.raises(TokenEndpointUnavailable):
        parse_token_response(status, body)


def test_tokens_never_appear_in_the_repr() -> None:
    text = repr(parse_token_response(200, answer()))
    assert "at-1" not in text and "rt-1" not in text and "eyJ" not in text
