"""RFC 6750 §3.1 (insufficient_scope) and RFC 6749 §3.3 (scope): may this identity use a route?

A route's ``require`` section is compiled once into a ``Policy`` of frozensets and claim tests;
``check`` is then a few set operations per request and knows nothing about HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.auth.identity import Identity
from gateway.problems import Forbidden, InsufficientScope

ClaimOp = Literal["equals", "one_of", "contains"]
Scalar = str | int | float | bool

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# RFC 6750 §3: error_description characters, so a claim name can be quoted in the challenge.
_DESCRIBABLE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")


def _kind(value: Any) -> type:
    """JSON's kinds: bool apart from numbers, and 1 the same number as 1.0."""
    if isinstance(value, bool):
        return bool
    if isinstance(value, int | float):
        return float
    return type(value)


def _same(claim: Any, expected: Scalar) -> bool:
    # A plain == would let True satisfy `equals: 1` and 1 satisfy `equals: "1"`.
    return _kind(claim) is _kind(expected) and claim == expected


@dataclass(frozen=True, slots=True)
class ClaimTest:
    """One compiled claim rule. ``quotable``: whether the refusal may name the claim."""

    name: str
    op: ClaimOp
    values: tuple[Scalar, ...]
    quotable: bool

    @classmethod
    def compile(cls, name: str, op: ClaimOp, values: tuple[Scalar, ...]) -> ClaimTest:
        if not values or (op != "one_of" and len(values) != 1):
            raise ValueError(f"claim {name!r}: {op}: one_of takes values, the others one value")
        return cls(name, op, values, _DESCRIBABLE.fullmatch(name) is not None)

    def matches(self, claims: Mapping[str, Any]) -> bool:
        # An absent claim reads as null, which no rule's scalar equals (nor is a list or string).
        value = claims.get(self.name)
        if self.op == "equals":
            return _same(value, self.values[0])
        if self.op == "one_of":
            return any(_same(value, v) for v in self.values)
        expected = self.values[0]
        if isinstance(value, list | tuple):
            return any(_same(item, expected) for item in value)
        # A space-delimited string claim (RFC 6749 §3.3 style, e.g. "roles": "a b") holds words.
        return isinstance(value, str) and isinstance(expected, str) and expected in value.split()


@dataclass(frozen=True, slots=True)
class Policy:
    scopes_all: frozenset[str]
    scopes_any: frozenset[str]
    claims: tuple[ClaimTest, ...]
    asked_of_any: str | None = None
    """The any-of scope a challenge asks for: the first listed, unless an all-of one is
    in the list too (that one already satisfies it)."""

    @property
    def required_scopes(self) -> tuple[str, ...]:
        """What the challenge's ``scope`` lists. RFC 6750 §3: "the scope necessary to access
        the protected resource": every all-of scope and one of the any-of list. Listing the
        whole any-of list would say each is needed, and a client that asks for what the
        challenge names (MCP's does) would ask for more than it needs."""
        asked = {self.asked_of_any} if self.asked_of_any is not None else set()
        return tuple(sorted(self.scopes_all | asked))

    @property
    def scopes_named(self) -> tuple[str, ...]:
        """Every scope the policy names, all-of and any-of (RFC 9728 ``scopes_supported``)."""
        return tuple(sorted(self.scopes_all | self.scopes_any))


ALLOW_ALL = Policy(frozenset(), frozenset(), ())


def compile_policy(
    scopes_all: Sequence[str],
    scopes_any: Sequence[str],
    claims: Mapping[str, tuple[ClaimOp, tuple[Scalar, ...]]],
) -> Policy:
    """Compile at load; a ValueError names a scope that no token could ever carry."""
    for scope in (*scopes_all, *scopes_any):
        if _SCOPE_TOKEN.fullmatch(scope) is None:
            raise ValueError(f"{scope!r} is not an RFC 6749 §3.3 scope token")
    tests = tuple(ClaimTest.compile(name, op, values) for name, (op, values) in claims.items())
    if not (scopes_all or scopes_any or tests):
        return ALLOW_ALL
    satisfied = not scopes_any or not set(scopes_any).isdisjoint(scopes_all)
    asked = None if satisfied else scopes_any[0]
    return Policy(frozenset(scopes_all), frozenset(scopes_any), tests, asked)


def check(policy: Policy, identity: Identity) -> None:
    """Raise unless the identity satisfies the policy: scopes first, then claims."""
    scopes = identity.scopes
    if not policy.scopes_all <= scopes or (
        policy.scopes_any and policy.scopes_any.isdisjoint(scopes)
    ):
        # RFC 6750 §3.1: insufficient_scope "The resource server SHOULD respond with the HTTP
        # 403 (Forbidden) status code and MAY include the "scope" attribute with the scope
        # necessary to access the protected resource."
        raise InsufficientScope(required=policy.required_scopes)
    for test in policy.claims:
        if not test.matches(identity.claims):
            # The detail never holds the claim's value, and names the claim only where RFC 6750
            # §3's error_description characters can carry it.
            raise Forbidden(
                f"the token's '{test.name}' claim does not satisfy this route"
                if test.quotable
                else "a claim of the token does not satisfy this route"
            )
