"""Registered claim types (RFC 7519 §4.1, RFC 9068 §2.2) and the time checks at their edges."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth.claims import (
    DATE_CLAIMS,
    STRING_CLAIMS,
    RegisteredClaims,
    check_required,
    check_times,
    read_registered,
)
from gateway.problems import InvalidToken

SCOPE_CLAIMS = ("scope", "scp")


def read(claims: dict[str, Any], scope_claims: tuple[str, ...] = SCOPE_CLAIMS) -> RegisteredClaims:
    return read_registered(claims, scope_claims)


def test_the_typed_claims_are_exactly_these() -> None:
    # Module-level constants are not mutated by mutation testing: name every member here.
    assert STRING_CLAIMS == ("iss", "sub", "jti", "client_id", "azp")
    assert DATE_CLAIMS == ("exp", "nbf", "iat")


def test_well_typed_claims_are_read() -> None:
    claims = {"iss": "https://i", "sub": "alice", "jti": "j", "client_id": "app", "azp": "web",
              "aud": ["a", "b"], "exp": 2000, "nbf": 1000.5, "iat": 999,
              "scope": "read  write"}  # fmt: skip
    assert read(claims) == RegisteredClaims(
        subject="alice",
        client_id="app",
        audiences=("a", "b"),
        expires_at=2000.0,
        not_before=1000.5,
        issued_at=999.0,
        scopes=frozenset({"read", "write"}),
    )


def test_absent_claims_are_none() -> None:
    assert read({}) == RegisteredClaims(None, None, (), None, None, None, frozenset())


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        pytest.param({"client_id": "app", "azp": "web"}, "app", id="client-id-first"),
        pytest.param({"azp": "web"}, "web", id="azp-when-no-client-id"),
        pytest.param({"client_id": "", "azp": "web"}, "web", id="empty-client-id-falls-to-azp"),
    ],
)
def test_client_id(claims: dict[str, Any], expected: str) -> None:
    assert read(claims).client_id == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("a", ("a",), id="string"),
        pytest.param(["a", "b"], ("a", "b"), id="array"),
        pytest.param([], (), id="empty-array"),
    ],
)
def test_audiences(value: Any, expected: tuple[str, ...]) -> None:
    assert read({"aud": value}).audiences == expected


@pytest.mark.parametrize(
    ("claims", "scope_claims", "expected"),
    [
        pytest.param({"scope": "a b"}, SCOPE_CLAIMS, {"a", "b"}, id="scope-string"),
        pytest.param({"scope": ["a", "b"]}, SCOPE_CLAIMS, {"a", "b"}, id="scope-array"),
        pytest.param({"scp": ["a", "b"]}, SCOPE_CLAIMS, {"a", "b"}, id="scp-array"),
        pytest.param({"scp": "a b"}, SCOPE_CLAIMS, {"a", "b"}, id="scp-string-entra-style"),
        pytest.param({"scope": "a", "scp": ["b"]}, SCOPE_CLAIMS, {"a"}, id="first-claim-wins"),
        pytest.param({"scope": "a", "scp": ["b"]}, ("scp", "scope"), {"b"}, id="order-is-config"),
        pytest.param({"scope": ""}, SCOPE_CLAIMS, set(), id="empty-string"),
        pytest.param({"scope": "", "scp": ["b"]}, SCOPE_CLAIMS, set(), id="empty-first-still-wins"),
        pytest.param({}, SCOPE_CLAIMS, set(), id="neither-scope-nor-scp"),
        pytest.param({"roles": ["x"]}, ("roles",), {"x"}, id="configured-name"),
        pytest.param({"scope": 5}, ("scp",), set(), id="unconfigured-name-unchecked"),
    ],
)
def test_scopes(claims: dict[str, Any], scope_claims: tuple[str, ...], expected: set[str]) -> None:
    assert read(claims, scope_claims).scopes == expected


WRONG_TYPES = [None, True, False, 1, 1.5, [], ["a"], {}, {"a": 1}]


def _wrong_type_cases() -> list[Any]:
    cases = []
    for name in STRING_CLAIMS:
        for value in WRONG_TYPES:
            cases.append(pytest.param({name: value}, id=f"{name}={value!r}"))
    numeric_wrong = [None, True, False, "123", "", [1], {}, float("inf"), float("-inf"),
                     float("nan"), 10**400]  # fmt: skip
    for name in DATE_CLAIMS:
        for value in numeric_wrong:
            cases.append(pytest.param({name: value}, id=f"{name}={value!r:.20}"))
    for value in [None, True, 1, {}, ["a", 1], [None], [["a"]], {"a": "b"}]:
        cases.append(pytest.param({"aud": value}, id=f"aud={value!r}"))
    scope_wrong = [None, True, 1, {}, ["a", 1], [None], ["a b"], [""], [" a"], ["a\tb"], [["a"]]]
    for name in SCOPE_CLAIMS:
        for value in scope_wrong:
            cases.append(pytest.param({name: value}, id=f"{name}={value!r}"))
    return cases


@pytest.mark.parametrize("claims", _wrong_type_cases())
def test_a_wrong_type_is_a_malformed_token(claims: dict[str, Any]) -> None:
    with pytest.raises(InvalidToken) as caught:
        read(claims)
    assert caught.value.reason == "malformed"
    # RFC 6750 §3 error_description is there "to assist the client developer": it names the
    # claim at fault (never its value).
    (name,) = claims
    assert f" {name} " in caught.value.detail


def test_a_wrong_scope_type_is_refused_even_behind_a_good_one() -> None:
    with pytest.raises(InvalidToken):
        read({"scope": "a", "scp": 5})


@pytest.mark.parametrize(
    ("claims", "required", "ok"),
    [
        pytest.param({"exp": 1}, ["exp"], True, id="present"),
        pytest.param({}, ["exp"], False, id="absent"),
        pytest.param({"exp": None}, ["exp"], False, id="null-is-not-present"),
        pytest.param({"tenant": ""}, ["tenant"], True, id="empty-string-is-a-value"),
        pytest.param({"tenant": False}, ["tenant"], True, id="false-is-a-value"),
        pytest.param({"a": 1}, ["a", "b"], False, id="every-name-checked"),
        pytest.param({}, [], True, id="nothing-required"),
    ],
)
def test_required_claims(claims: dict[str, Any], required: list[str], ok: bool) -> None:
    if ok:
        check_required(claims, required)
    else:
        with pytest.raises(InvalidToken) as caught:
            check_required(claims, required)
        assert caught.value.reason == "missing_claim"


def dates(exp: float | None = None, nbf: float | None = None, iat: float | None = None) -> Any:
    return RegisteredClaims(None, None, (), exp, nbf, iat, frozenset())


# Values are exact binary fractions, so each edge is the edge and not a rounding of it.
T = 1_000_000.0
BOUNDARIES = [
    # RFC 7519 §4.1.4: refused on or after exp (+ leeway), accepted before it.
    pytest.param(dates(exp=T), T - 0.5, 0.0, None, id="exp-just-before"),
    pytest.param(dates(exp=T), T, 0.0, "expired", id="exp-exactly-at"),
    pytest.param(dates(exp=T), T + 0.5, 0.0, "expired", id="exp-just-after"),
    pytest.param(dates(exp=T), T + 29.5, 30.0, None, id="exp-within-leeway"),
    pytest.param(dates(exp=T), T + 30.0, 30.0, "expired", id="exp-exactly-at-leeway"),
    pytest.param(dates(exp=T), T - 29.5, 30.0, None, id="exp-leeway-not-subtracted-early"),
    pytest.param(dates(exp=0.0), T, 0.0, "expired", id="exp-zero-is-a-date-not-absent"),
    # RFC 7519 §4.1.5: accepted from nbf (- leeway) on, refused before it.
    pytest.param(dates(nbf=T), T, 0.0, None, id="nbf-exactly-at"),
    pytest.param(dates(nbf=T), T - 0.5, 0.0, "not_yet_valid", id="nbf-just-before"),
    pytest.param(dates(nbf=T), T - 30.0, 30.0, None, id="nbf-exactly-at-leeway"),
    pytest.param(dates(nbf=T), T - 30.5, 30.0, "not_yet_valid", id="nbf-beyond-leeway"),
    pytest.param(dates(nbf=T), T + 29.5, 30.0, None, id="nbf-past-with-leeway"),
    # iat in the future: the same rule as nbf.
    pytest.param(dates(iat=T), T, 0.0, None, id="iat-exactly-now"),
    pytest.param(dates(iat=T), T - 0.5, 0.0, "not_yet_valid", id="iat-just-in-future"),
    pytest.param(dates(iat=T), T - 30.0, 30.0, None, id="iat-future-exactly-at-leeway"),
    pytest.param(dates(iat=T), T - 30.5, 30.0, "not_yet_valid", id="iat-future-beyond-leeway"),
    pytest.param(dates(iat=T), T + 1e6, 0.0, None, id="iat-long-ago"),
    pytest.param(dates(), T, 0.0, None, id="no-dates"),
    pytest.param(dates(exp=T + 10, nbf=T + 5), T, 0.0, "not_yet_valid", id="nbf-checked-too"),
]


@pytest.mark.parametrize(("claims", "now", "leeway", "reason"), BOUNDARIES)
def test_time_boundaries(
    claims: RegisteredClaims, now: float, leeway: float, reason: str | None
) -> None:
    if reason is None:
        check_times(claims, now, leeway)
    else:
        with pytest.raises(InvalidToken) as caught:
            check_times(claims, now, leeway)
        assert caught.value.reason == reason


def test_each_time_refusal_says_which_check_failed() -> None:
    """nbf and a future iat share the reason not_yet_valid; only the error_description
    (RFC 6750 §3) tells the client developer which date to look at."""
    details = []
    for claims, now in [(dates(exp=T), T), (dates(nbf=T), T - 1), (dates(iat=T), T - 1)]:
        with pytest.raises(InvalidToken) as caught:
            check_times(claims, now, 0.0)
        details.append(caught.value.detail)
    assert len(set(details)) == 3
    assert InvalidToken.title not in details
