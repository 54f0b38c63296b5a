"""Route authorisation: scopes (RFC 6750 §3.1 insufficient_scope), then claim rules."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth.identity import Identity
from gateway.auth.policy import ALLOW_ALL, check
from gateway.compiler.auth import policy_of
from gateway.config.models import Require
from gateway.problems import Forbidden, InsufficientScope


def identity(scopes: str = "", **claims: Any) -> Identity:
    return Identity(
        issuer="https://issuer.example/",
        subject="alice",
        client_id="app",
        scopes=frozenset(scopes.split()),
        audiences=("api",),
        expires_at=None,
        token_kind="jwt",
        claims=claims,
    )


def policy(**require: Any):
    return policy_of(Require.model_validate(require))


ALL_RW = {"scopes": {"all": ["read", "write"]}}
ANY_AB = {"scopes": {"any": ["a", "b"]}}


@pytest.mark.parametrize(
    ("require", "who"),
    [
        pytest.param({}, identity(), id="empty-require-allows-anyone"),
        pytest.param(ALL_RW, identity("read write extra"), id="all-scopes-present"),
        pytest.param(ANY_AB, identity("b"), id="one-of-any-scopes"),
        pytest.param(
            {"scopes": {"all": ["read"], "any": ["a", "b"]}}, identity("read a"), id="all-and-any"
        ),
        pytest.param(
            {"claims": {"tenant": {"equals": "acme"}}}, identity(tenant="acme"), id="equals-string"
        ),
        pytest.param(
            {"claims": {"level": {"equals": 1}}},
            identity(level=1.0),
            id="equals-int-matches-json-float",
        ),
        pytest.param(
            {"claims": {"admin": {"equals": True}}}, identity(admin=True), id="equals-bool"
        ),
        pytest.param(
            {"claims": {"env": {"one_of": ["dev", "prod"]}}}, identity(env="prod"), id="one-of"
        ),
        pytest.param(
            {"claims": {"roles": {"contains": "admin"}}},
            identity(roles=["user", "admin"]),
            id="contains-in-list",
        ),
        pytest.param(
            {"claims": {"roles": {"contains": "admin"}}},
            identity(roles="user admin"),
            id="contains-word-in-string",
        ),
    ],
)
def test_allows(require: dict, who: Identity) -> None:
    check(policy(**require), who)


@pytest.mark.parametrize(
    ("require", "who"),
    [
        pytest.param(ALL_RW, identity("read"), id="one-of-all-missing"),
        pytest.param(ALL_RW, identity(), id="no-scopes"),
        pytest.param(ANY_AB, identity("c"), id="none-of-any"),
        pytest.param(
            {"scopes": {"all": ["read"], "any": ["a"]}}, identity("a"), id="any-ok-all-missing"
        ),
        pytest.param(
            ALL_RW, identity("read", scope="read write"), id="scope-claim-is-not-identity-scopes"
        ),
    ],
)
def test_insufficient_scope(require: dict, who: Identity) -> None:
    with pytest.raises(InsufficientScope):
        check(policy(**require), who)


@pytest.mark.parametrize(
    ("rule", "who"),
    [
        pytest.param({"equals": "acme"}, identity(), id="missing-claim"),
        pytest.param({"equals": "acme"}, identity(tenant=None), id="null-claim"),
        pytest.param({"equals": "acme"}, identity(tenant="ACME"), id="equals-is-case-sensitive"),
        pytest.param({"equals": 1}, identity(tenant=True), id="true-is-not-1"),
        pytest.param({"equals": True}, identity(tenant=1), id="1-is-not-true"),
        pytest.param({"equals": 1}, identity(tenant="1"), id="string-1-is-not-1"),
        pytest.param(
            {"equals": "acme"}, identity(tenant=["acme"]), id="equals-does-not-look-inside-list"
        ),
        pytest.param({"one_of": [1, 2]}, identity(tenant=True), id="one-of-type-aware"),
        pytest.param(
            {"contains": "admin"},
            identity(tenant=["administrator"]),
            id="contains-needs-whole-item",
        ),
        pytest.param(
            {"contains": "admin"}, identity(tenant="administrators"), id="contains-needs-whole-word"
        ),
        pytest.param({"contains": 1}, identity(tenant=[True]), id="contains-type-aware"),
        pytest.param({"contains": "a"}, identity(tenant={"a": 1}), id="contains-on-object"),
    ],
)
def test_claim_rule_refuses(rule: dict, who: Identity) -> None:
    with pytest.raises(Forbidden) as caught:
        check(policy(claims={"tenant": rule}), who)
    assert "'tenant'" in caught.value.detail


def test_required_scopes_are_all_and_the_first_of_any_sorted() -> None:
    """RFC 6750 §3 "the scope necessary": one any-of scope is, the whole list is not."""
    required = policy(scopes={"all": ["write", "read"], "any": ["b", "a"]})
    with pytest.raises(InsufficientScope) as caught:
        check(required, identity("read"))
    assert caught.value.required == ("b", "read", "write")
    assert 'scope="b read write"' in caught.value.challenge("gw")
    assert required.scopes_named == ("a", "b", "read", "write")


@pytest.mark.parametrize(
    ("scopes", "asked"),
    [
        pytest.param({"any": ["b", "a"]}, ("b",), id="any-alone"),
        pytest.param({"all": ["a"], "any": ["b", "a"]}, ("a",), id="an-all-of-scope-satisfies-any"),
        pytest.param({"all": ["a"]}, ("a",), id="all-alone"),
    ],
)
def test_the_challenge_asks_for_one_sufficient_set(scopes: dict, asked: tuple[str, ...]) -> None:
    required = policy(scopes=scopes)
    assert required.required_scopes == asked
    check(required, identity(" ".join(asked)))  # enough: no refusal


def test_scopes_are_checked_before_claims() -> None:
    both = policy(scopes={"all": ["read"]}, claims={"tenant": {"equals": "acme"}})
    with pytest.raises(InsufficientScope):
        check(both, identity("", tenant="other"))


def test_forbidden_detail_never_shows_the_value() -> None:
    rule = policy(claims={"tenant": {"one_of": ["acme", "globex"]}})
    with pytest.raises(Forbidden) as caught:
        check(rule, identity(tenant="s3cr3t-tenant"))
    rendered = caught.value.problem_bytes().decode() + caught.value.challenge("gw")
    assert "s3cr3t" not in rendered
    assert "acme" not in rendered


def test_empty_require_compiles_to_allow_all() -> None:
    assert policy() is ALLOW_ALL
    assert ALLOW_ALL.required_scopes == ()


@pytest.mark.parametrize(
    "scope",
    [pytest.param("read write", id="space-in-scope"), pytest.param('a"b', id="quote-in-scope")],
)
def test_scope_that_no_token_can_carry_is_refused_at_compile(scope: str) -> None:
    with pytest.raises(ValueError, match="scope token"):
        policy(scopes={"any": [scope]})


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        pytest.param("tenant", True, id="plain"),
        pytest.param("https://example.com/roles", True, id="uri-claim-name"),
        pytest.param("a b", True, id="space-is-describable"),
        pytest.param("~!#[]", True, id="printable-ascii-edges"),
        pytest.param('a"b', False, id="double-quote-would-end-the-challenge-string"),
        pytest.param("a\\b", False, id="backslash"),
        pytest.param("a\r\nb", False, id="crlf"),
        pytest.param("a\x7fb", False, id="del"),
        pytest.param("t\u00e9nant", False, id="non-ascii"),
        pytest.param("", False, id="empty"),
    ],
)
def test_a_claim_name_is_quoted_in_the_challenge_only_when_it_is_safe_there(
    name: str, shown: bool
) -> None:
    """RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E; anything else would
    break (or inject into) the WWW-Authenticate header, so the name is left out."""
    from gateway.auth.policy import compile_policy

    rule = compile_policy((), (), {name: ("equals", ("x",))})
    with pytest.raises(Forbidden) as caught:
        check(rule, identity(**{name: "y"}))
    challenge = caught.value.challenge("gw")
    assert (f"'{name}'" in caught.value.detail) is shown
    assert "\r" not in challenge and "\n" not in challenge
    if not shown:
        assert "a claim" in caught.value.detail


@pytest.mark.parametrize(
    ("op", "values", "ok"),
    [
        pytest.param("equals", ("a",), True, id="equals-one"),
        pytest.param("equals", ("a", "b"), False, id="equals-two"),
        pytest.param("equals", (), False, id="equals-none"),
        pytest.param("contains", ("a", "b"), False, id="contains-two"),
        pytest.param("contains", (), False, id="contains-none"),
        pytest.param("one_of", ("a",), True, id="one-of-one"),
        pytest.param("one_of", ("a", "b"), True, id="one-of-two"),
        pytest.param("one_of", (), False, id="one-of-none-could-never-match"),
    ],
)
def test_a_claim_rule_takes_its_number_of_values(op: Any, values: tuple, ok: bool) -> None:
    """``equals`` and ``contains`` compare with one value; a second one would be silently
    ignored (only ``values[0]`` is read), so it is refused at load, as is an empty rule."""
    from gateway.auth.policy import compile_policy

    if ok:
        compile_policy((), (), {"tenant": (op, values)})
    else:
        with pytest.raises(ValueError):
            compile_policy((), (), {"tenant": (op, values)})
