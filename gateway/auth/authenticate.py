"""Authenticate: which rules apply to a token on a route, and the identity they establish.

RFC 6750 §3.1 leaves to the resource server how it validates a token; this module decides
it per route, before any cache is consulted, so a cached result is only ever reused under
the rules that produced it:

* a JWT from a configured issuer is validated as the route says for that issuer: locally
  (RFC 7519 §7.2, RFC 9068 §4), by introspection (RFC 7662), or both (``introspect_jwts``);
  an issuer the route does not accept is refused here, every time, and never cached;
* an opaque token goes to the one authorization server the route assigns it (by token
  prefix when a route accepts several): it is never disclosed to another, and never sent
  to every server in turn.

What a token is worth under those rules comes from ``IdentityCache``, the one owner of
cached results, or from the verifiers on a miss.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Final

from gateway.auth.answer_policy import Value
from gateway.auth.contexts import ValidationContext
from gateway.auth.identity import Identity
from gateway.auth.identity_cache import IdentityCache
from gateway.auth.introspection import IssuerIntrospection
from gateway.auth.jwt import JwtVerifier, NotMine, ParsedJwt
from gateway.auth.rejections import Rejection
from gateway.auth.trace import Trace
from gateway.problems import InvalidToken, ServiceUnavailable

_NOT_OURS: Final = "The access token is not a JWT from a trusted issuer."


@dataclass(frozen=True, slots=True)
class IssuerPlan:
    """How one route validates one issuer's tokens."""

    context: ValidationContext
    verify_locally: bool
    introspect: bool


@dataclass(frozen=True, slots=True)
class OpaquePlan:
    """Opaque tokens starting with one of ``prefixes`` (any, when empty) go to this issuer."""

    prefixes: tuple[str, ...]
    plan: IssuerPlan


@dataclass(frozen=True, slots=True)
class TokenRules:
    """A route's validation rules, compiled: JWT plans by issuer key, opaque plans in order
    (prefixed ones first, at most one catch-all last; ``gateway check`` refuses the rest)."""

    jwt: Mapping[str, IssuerPlan]
    opaque: tuple[OpaquePlan, ...]


@dataclass(frozen=True, slots=True)
class Authenticated:
    identity: Identity
    key: bytes  # the identity cache key it lives under
    introspected: bool


class Authenticator:
    """Turns (route rules, token) into an identity through the identity cache."""

    def __init__(
        self,
        verifier: JwtVerifier | None,
        introspectors: Mapping[str, IssuerIntrospection],
        cache: IdentityCache,
    ) -> None:
        self._verifier = verifier
        self._introspectors = introspectors
        self._cache = cache

    async def authenticate(
        self, rules: TokenRules, token: str, digest: bytes, trace: Trace | None = None
    ) -> Authenticated:
        """The identity behind ``token`` under ``rules``; raises ``InvalidToken`` (401) or
        ``ServiceUnavailable`` (503, never cached). ``trace``: see ``gateway.auth.trace``."""
        parsed: ParsedJwt | None = None
        plan: IssuerPlan | None = None
        if self._verifier is not None:
            try:
                parsed = self._verifier.parse(token)
            except NotMine:
                parsed = None
        if parsed is not None:
            plan = rules.jwt.get(parsed.issuer_key)
            if trace is not None:
                header = parsed.header
                trace.add("token", "jwt", issuer=parsed.payload.get("iss"),
                          alg=header.get("alg"), kid=header.get("kid"),
                          accepted_here=plan is not None)  # fmt: skip
            if plan is None:
                # Route-level: the same token may be right for another route.
                raise InvalidToken("The token's issuer is not accepted here.", reason="bad_issuer")
        else:
            plan = _opaque_plan(rules, token)
            if trace is not None:
                issuer = "(no issuer of this route)" if plan is None else plan.context.issuer.issuer
                trace.add("token", "not a trusted JWT", introspected_by=issuer)
            if plan is None:
                raise InvalidToken(_NOT_OURS, reason="malformed")
        key = plan.context.key(digest)
        if plan.introspect:
            steps = len(trace.steps) if trace is not None else 0
            value = await self._cache.introspected(
                plan.context, digest, lambda: self._load(plan, token, parsed, trace)
            )
            if trace is not None and len(trace.steps) == steps:  # no load ran: a cached answer
                trace.add("introspection", "cache", served_by="the identity cache")
            return Authenticated(
                _accepted(value, plan.context.issuer.leeway), key, introspected=True
            )
        assert parsed is not None  # a local-only plan exists only for JWT issuers
        cached = self._cache.local(key)
        if trace is not None:
            trace.add("cache", "miss" if cached is None else "hit", tier="verified JWTs")
        if cached is None:
            epoch = self._cache.epoch
            cached = await self._verify(parsed, trace)
            self._cache.remember_local(key, cached, epoch=epoch, token_size=len(token))
        return Authenticated(_accepted(cached, plan.context.issuer.leeway), key, introspected=False)

    async def _verify(self, parsed: ParsedJwt, trace: Trace | None) -> Value:
        assert self._verifier is not None
        try:
            identity = await self._verifier.verify_parsed(parsed)
        except InvalidToken as error:
            if trace is not None:
                trace.add("signature and claims", "fail", reason=error.reason)
            return Rejection.from_error(error)
        if trace is not None:
            trace.add("signature and claims", "ok", checked="signature, iss, aud, exp/nbf/iat")
        return identity

    async def _load(
        self, plan: IssuerPlan, token: str, parsed: ParsedJwt | None, trace: Trace | None
    ) -> Value:
        """The uncached answer: a local check first where the plan asks for one (a forged
        JWT never reaches the authorization server), then the authorization server."""
        if plan.verify_locally and parsed is not None:
            local = await self._verify(parsed, trace)
            if isinstance(local, Rejection):
                return local
        if trace is not None:
            trace.add("introspection", "called", endpoint_of=plan.context.issuer.issuer)
        introspector = self._introspectors.get(plan.context.issuer.key)
        if introspector is None:
            raise ServiceUnavailable(
                "Token introspection is not available.", reason="introspection_error"
            )
        try:
            identity = await introspector.introspect(token)
        except InvalidToken as error:
            return Rejection.from_error(error)
        if identity is None:
            # RFC 7662 §2.2: active false — revoked, expired, or never issued.
            return Rejection.of("inactive", "The access token is not active.")
        return identity if parsed is None else _keep_binding(identity, parsed.payload)


def _keep_binding(identity: Identity, payload: Mapping[str, Any]) -> Value:
    """An introspected JWT keeps the binding its own ``cnf`` states (RFC 7800 §3.1).

    RFC 9449 §6.2 and RFC 8705 §3.2 have the answer for a bound token carry its ``cnf``;
    one that leaves it out must not turn the JWT into a bearer token anyone holding it can
    use. The JWT's ``cnf`` then counts: the server just called exactly these bytes active,
    so their claims are its own (and an unsigned claim here can only add a check). An
    answer that names another binding contradicts the token and is refused.
    """
    stated = payload.get("cnf")
    if stated is None:
        return identity
    answered = identity.claims.get("cnf")
    if answered is None:
        return replace(identity, claims=MappingProxyType({**identity.claims, "cnf": stated}))
    if answered != stated:
        return Rejection.of("bad_confirmation", "The introspection answer binds the token to "
                            "another key than the token itself names.")  # fmt: skip
    return identity


def _opaque_plan(rules: TokenRules, token: str) -> IssuerPlan | None:
    for candidate in rules.opaque:
        if not candidate.prefixes or token.startswith(candidate.prefixes):
            return candidate.plan
    return None


def _accepted(value: Value, leeway: float) -> Identity:
    """The identity a check produced or a cache kept, if it is still good now.

    RFC 7519 §4.1.4: never on or after exp, whatever a cache (or stale serving) kept, but
    with the issuer's ``leeway`` for clock skew, as the check itself allows it (``exp``
    within the leeway is accepted: the README's "bounded leeway" applies to all three)."""
    if isinstance(value, Rejection):
        raise value.error()
    if value.expires_at is not None and value.expires_at + leeway <= time.time():
        raise InvalidToken("The token has expired.", reason="expired")
    return value
