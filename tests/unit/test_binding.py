"""RFC 9449 §6, §7.1, §7.2 and RFC 8705 §3: reading cnf, and which proofs a request needs."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth.binding import (
    UNBOUND,
    Binding,
    Mode,
    ProofsNeeded,
    Scheme,
    required_proofs,
    token_binding,
)
from gateway.auth.dpop_errors import DpopBoundAsBearer, InvalidDpopToken
from gateway.problems import InvalidToken, MissingCredentials

JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
X5T = "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg0"


@pytest.mark.parametrize(
    ("claims", "binding"),
    [
        ({}, UNBOUND),
        ({"cnf": {"jkt": JKT}}, Binding(jkt=JKT)),
        ({"cnf": {"x5t#S256": X5T}}, Binding(x5t_s256=X5T)),
        ({"cnf": {"jkt": JKT, "x5t#S256": X5T}}, Binding(JKT, X5T)),
        ({"cnf": {"jkt": JKT}, "token_type": "DPoP"}, Binding(jkt=JKT)),
        ({"token_type": "Bearer"}, UNBOUND),
    ],
    ids=["none", "jkt", "x5t", "both", "introspected-dpop", "bearer-type"],
)
def test_binding_is_read(claims: dict[str, Any], binding: Binding) -> None:
    assert token_binding(claims) == binding


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"cnf": "jkt"}, "bad_confirmation"),
        ({"cnf": {"jkt": 5}}, "bad_confirmation"),
        ({"cnf": {"jkt": "short"}}, "bad_confirmation"),
        ({"cnf": {"jkt": JKT[:-1] + "B"}}, "bad_confirmation"),  # non-canonical last char
        ({"cnf": {"x5t#S256": JKT + "="}}, "bad_confirmation"),
        ({"cnf": {"jwk": {"kty": "EC"}}}, "sender_constrained"),
        ({"cnf": {"kid": "k1"}}, "sender_constrained"),
        ({"cnf": {"jkt": JKT, "x5t": "sha1"}}, "sender_constrained"),
        ({"cnf": {}}, "sender_constrained"),
        ({"token_type": "DPoP"}, "bad_confirmation"),
        ({"token_type": "dpop", "cnf": {"x5t#S256": X5T}}, "bad_confirmation"),
    ],
    ids=[
        "cnf-string",
        "jkt-number",
        "jkt-short",
        "jkt-noncanonical",
        "x5t-padded",
        "cnf-jwk",
        "cnf-kid",
        "cnf-sha1-x5t",
        "cnf-empty",
        "dpop-type-no-cnf",
        "dpop-type-x5t-only",
    ],
)
def test_malformed_or_unverifiable_bindings_are_refused(
    claims: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidToken) as refused:
        token_binding(claims)
    assert refused.value.reason == reason


ALGS = ("ES256",)
DPOP = Binding(jkt=JKT)
MTLS = Binding(x5t_s256=X5T)
BOTH = Binding(JKT, X5T)
Row = tuple[Scheme, Binding, Mode, Mode, "ProofsNeeded | type[Exception]", str | None]
TABLE: dict[str, Row] = {
    "bearer-unbound-off": ("bearer", UNBOUND, "off", "off", ProofsNeeded(False, False), None),
    "bearer-unbound-optional": (
        "bearer",
        UNBOUND,
        "optional",
        "optional",
        ProofsNeeded(False, False),
        None,
    ),
    "bearer-unbound-dpop-required": (
        "bearer",
        UNBOUND,
        "required",
        "off",
        InvalidDpopToken,
        "dpop_required",
    ),
    "bearer-unbound-mtls-required": (
        "bearer",
        UNBOUND,
        "off",
        "required",
        InvalidToken,
        "mtls_required",
    ),
    "bearer-dpop-bound-off": ("bearer", DPOP, "off", "off", InvalidToken, "sender_constrained"),
    "bearer-dpop-bound-optional": (
        "bearer",
        DPOP,
        "optional",
        "off",
        DpopBoundAsBearer,
        "dpop_bound_as_bearer",
    ),
    "bearer-dpop-bound-required": (
        "bearer",
        DPOP,
        "required",
        "off",
        DpopBoundAsBearer,
        "dpop_bound_as_bearer",
    ),
    "dpop-scheme-off": ("dpop", DPOP, "off", "off", MissingCredentials, "missing"),
    "dpop-unbound": ("dpop", UNBOUND, "optional", "off", InvalidDpopToken, "dpop_unbound"),
    "dpop-mtls-bound-only": (
        "dpop",
        MTLS,
        "required",
        "optional",
        InvalidDpopToken,
        "dpop_unbound",
    ),
    "dpop-bound-optional": ("dpop", DPOP, "optional", "off", ProofsNeeded(True, False), None),
    "dpop-bound-required": ("dpop", DPOP, "required", "off", ProofsNeeded(True, False), None),
    "mtls-bound-off": ("bearer", MTLS, "off", "off", InvalidToken, "sender_constrained"),
    "mtls-bound-optional": ("bearer", MTLS, "off", "optional", ProofsNeeded(False, True), None),
    "mtls-bound-required": ("bearer", MTLS, "off", "required", ProofsNeeded(False, True), None),
    "both-bound-both-checked": (
        "dpop",
        BOTH,
        "optional",
        "optional",
        ProofsNeeded(True, True),
        None,
    ),
    "both-bound-mtls-off": ("dpop", BOTH, "required", "off", InvalidToken, "sender_constrained"),
}


@pytest.mark.parametrize("row", TABLE.values(), ids=TABLE.keys())
def test_required_proofs(row: Row) -> None:
    scheme, binding, dpop, mtls, expected, reason = row
    if isinstance(expected, ProofsNeeded):
        assert required_proofs(scheme, binding, dpop=dpop, mtls=mtls, dpop_algs=ALGS) == expected
        return
    with pytest.raises(expected) as refused:
        required_proofs(scheme, binding, dpop=dpop, mtls=mtls, dpop_algs=ALGS)
    assert type(refused.value) is expected
    assert refused.value.reason == reason  # type: ignore[attr-defined]
