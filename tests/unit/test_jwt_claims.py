"""JwtVerifier over well-signed tokens whose claims have the wrong type or sit at a time edge.

An HMAC issuer needs no key server, so these run without sockets; the clock is the test's.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth.jwt import JwtVerifier
from gateway.problems import InvalidToken
from tests.support.issuer import TestIssuer
from tests.support.settings import Issuer

ISS = "https://hmac.example"
SECRET = "s" * 40
NOW = 1_000_000.0
BASE = {"iss": ISS, "sub": "alice", "aud": "api://x", "exp": NOW + 300, "scope": "read"}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def verifier(clock: Clock, **overrides: Any) -> JwtVerifier:
    issuer = Issuer(issuer=ISS, audiences=["api://x"], algorithms=["HS256"], hmac_secret=SECRET,
                    **overrides)  # fmt: skip
    return JwtVerifier([issuer], {}, clock=clock)


def token(claims: dict[str, Any]) -> str:
    """Exactly these claims (a None value is written as JSON null, not left out)."""
    return TestIssuer.sign({"alg": "HS256"}, claims, alg="HS256", key=SECRET.encode())


async def outcome(claims: dict[str, Any], clock: Clock | None = None, **config: Any) -> str:
    try:
        await verifier(clock or Clock(), **config).verify(token(claims))
    except InvalidToken as exc:
        return exc.reason
    return "ok"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param({"exp": None}, "malformed", id="exp-null"),
        pytest.param({"exp": True}, "malformed", id="exp-true"),
        pytest.param({"exp": str(int(NOW + 300))}, "malformed", id="exp-string"),
        pytest.param({"exp": [NOW + 300]}, "malformed", id="exp-array"),
        pytest.param({"nbf": None}, "malformed", id="nbf-null"),
        pytest.param({"iat": False}, "malformed", id="iat-false"),
        pytest.param({"sub": None}, "malformed", id="sub-null"),
        pytest.param({"sub": ["alice"]}, "malformed", id="sub-array"),
        pytest.param({"jti": 7}, "malformed", id="jti-number"),
        pytest.param({"client_id": None}, "malformed", id="client-id-null"),
        pytest.param({"azp": {"id": "web"}}, "malformed", id="azp-object"),
        pytest.param({"aud": None}, "malformed", id="aud-null"),
        pytest.param({"aud": ["api://x", 1]}, "malformed", id="aud-array-with-number"),
        pytest.param({"scope": None}, "malformed", id="scope-null"),
        pytest.param({"scope": 1}, "malformed", id="scope-number"),
        pytest.param({"scp": ["read write"]}, "malformed", id="scp-member-with-space"),
        pytest.param({"scp": ["read", None]}, "malformed", id="scp-member-null"),
    ],
)
async def test_a_registered_claim_of_the_wrong_type_is_refused(
    changes: dict[str, Any], reason: str
) -> None:
    assert await outcome(BASE | changes) == reason


async def test_null_exp_does_not_satisfy_required_exp() -> None:
    # The defect: "exp": null counted as present, and the token never expired.
    assert await outcome(BASE | {"exp": None}, required_claims=["exp"]) == "malformed"
    assert await outcome(BASE | {"exp": None}, required_claims=[]) == "malformed"


async def test_null_custom_claim_does_not_satisfy_required() -> None:
    assert await outcome(BASE | {"tenant": None}, required_claims=["tenant"]) == "missing_claim"
    assert await outcome(BASE | {"tenant": "t"}, required_claims=["tenant"]) == "ok"


async def test_neither_scope_nor_scp_is_a_token_without_scopes() -> None:
    claims = {name: value for name, value in BASE.items() if name != "scope"}
    identity = await verifier(Clock()).verify(token(claims))
    assert identity.scopes == frozenset() and identity.scope == ""


async def test_an_array_scope_is_read() -> None:
    identity = await verifier(Clock()).verify(token(BASE | {"scope": ["read", "write"]}))
    assert identity.scopes == {"read", "write"}


@pytest.mark.parametrize(
    ("claims", "offset", "leeway", "reason"),
    [
        pytest.param({"exp": NOW}, -0.5, "0s", "ok", id="just-before-exp"),
        pytest.param({"exp": NOW}, 0.0, "0s", "expired", id="exactly-at-exp"),
        pytest.param({"exp": NOW}, 30.0, "30s", "expired", id="exactly-at-exp-plus-leeway"),
        pytest.param({"exp": NOW}, 29.5, "30s", "ok", id="within-leeway-after-exp"),
        pytest.param({"nbf": NOW}, 0.0, "0s", "ok", id="exactly-at-nbf"),
        pytest.param({"nbf": NOW}, -0.5, "0s", "not_yet_valid", id="just-before-nbf"),
        pytest.param({"nbf": NOW}, -30.0, "30s", "ok", id="exactly-at-nbf-minus-leeway"),
        pytest.param({"nbf": NOW}, -30.5, "30s", "not_yet_valid", id="beyond-leeway-before-nbf"),
        pytest.param({"iat": NOW}, 0.0, "0s", "ok", id="issued-now"),
        pytest.param({"iat": NOW}, -0.5, "0s", "not_yet_valid", id="issued-just-in-the-future"),
        pytest.param({"iat": NOW}, -30.0, "30s", "ok", id="issued-in-future-exactly-leeway"),
        pytest.param({"iat": NOW}, -30.5, "30s", "not_yet_valid", id="issued-beyond-leeway"),
    ],
)
async def test_time_edges_through_the_verifier(
    claims: dict[str, Any], offset: float, leeway: str, reason: str
) -> None:
    clock = Clock()
    clock.now = NOW + offset
    exp = {"exp": NOW + 3600} if "exp" not in claims else {}
    assert await outcome(BASE | exp | claims, clock, leeway=leeway) == reason
