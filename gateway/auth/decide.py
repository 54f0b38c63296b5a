"""The resource server's decision (RFC 6750, RFC 7662, RFC 9068): one function for every caller.

``Decider.decide(route, facts)`` takes what a request says (method, host, normalised path,
the headers and parameters that carry credentials) and a route's compiled auth rules, and
returns ``Allow`` (the identity and the headers to set) or ``Deny`` (an error that renders
itself: status, RFC 9457 body, RFC 6750 challenge). The proxy listener, the forward-auth
decision service and ``gateway explain`` all call it; none of them re-implements a step.

    authenticate  the credential → an identity, through the context-keyed identity cache
    authorize     the route's policy (scopes, claims), after the cache, every time
    mutate        the identity headers the upstream may trust

It knows nothing about HTTP servers: no aiohttp, no proxy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.auth.authenticate import Authenticator, TokenRules
from gateway.auth.bearer import read_credential
from gateway.auth.headers import IdentityHeaders
from gateway.auth.identity import Identity
from gateway.auth.identity_cache import IdentityCache, Memo
from gateway.auth.policy import Policy, check
from gateway.auth.trace import Trace
from gateway.problems import AuthError, GatewayError, InvalidToken, MissingCredentials

TokenSource = Literal["header", "query", "form"]
Header = tuple[str, str]


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the decision may know about a request, and nothing else."""

    method: str
    host: str | None
    path: str  # normalised, as the route table matched it
    query: str | None
    authorization: Sequence[str]
    form_fields: Sequence[tuple[str, str]] | None = None


@dataclass(frozen=True, slots=True)
class RouteAuth:
    """One route's compiled auth rules (``defaults`` already merged)."""

    id: int  # the route's index: names its memo of hot decisions
    required: bool
    identify_anonymous: bool
    allow_query: bool
    allow_form: bool
    policy: Policy
    identity_headers: IdentityHeaders
    tokens: TokenRules


@dataclass(frozen=True, slots=True)
class Allow:
    """Let the request through; ``headers`` are shared by every request a hot decision
    serves, so callers must not mutate them."""

    identity: Identity | None
    headers: tuple[Header, ...]
    token_source: TokenSource | None  # where the credential was, so it can be removed
    reason: str = "ok"


@dataclass(frozen=True, slots=True)
class Deny:
    """Refuse the request with ``error`` (an ``AuthError`` or ``ServiceUnavailable``)."""

    error: GatewayError

    @property
    def reason(self) -> str:
        return self.error.reason


Decision = Allow | Deny
ANONYMOUS = Allow(identity=None, headers=(), token_source=None, reason="anonymous")


def token_digest(token: str) -> bytes:
    """How every cache names a token: its SHA-256, never the token (RFC 6750 §5.3)."""
    return hashlib.sha256(token.encode()).digest()


class Decider:
    """Holds what a decision needs at request time: the authenticator and the identity
    cache of one runtime."""

    def __init__(self, authenticator: Authenticator, cache: IdentityCache, max_token_size: int):
        self._authenticator = authenticator
        self._cache = cache
        self._max_token_size = max_token_size

    async def decide(
        self, route: RouteAuth, facts: RequestFacts, trace: Trace | None = None
    ) -> Decision:
        """The decision for ``facts`` on ``route``. ``trace`` (``gateway explain`` only; None
        on the request path) records what each step did."""
        try:
            return await self._decide(route, facts, trace)
        except GatewayError as error:  # AuthError, or ServiceUnavailable (503)
            if trace is not None:
                trace.add("decision", "deny", status=error.status, reason=error.reason)
            return Deny(error.with_traceback(None))

    async def _decide(self, route: RouteAuth, facts: RequestFacts, trace: Trace | None) -> Allow:
        credential = read_credential(
            facts.authorization,
            facts.query,
            facts.form_fields,
            allow_query=route.allow_query,
            allow_form=route.allow_form,
            max_size=self._max_token_size,
        )
        if trace is not None:
            trace.add("credential", "none" if credential is None else "found",
                      source=None if credential is None else credential.source,
                      required=route.required)  # fmt: skip
        if credential is None:
            if route.required:
                raise MissingCredentials()
            return ANONYMOUS
        if not route.required and not route.identify_anonymous:
            # An anonymous route neither validates nor introspects what it will not use.
            return Allow(None, (), credential.source, reason="anonymous")
        token = credential.token
        digest = token_digest(token)
        memo = self._cache.memo(route.id, digest)
        if memo is not None:
            decision = memo.decision
            assert isinstance(decision, Allow)
            if decision.token_source == credential.source:
                if trace is not None:
                    trace.add("decision", "hit", cache="the route's remembered decision")
                return decision
        try:
            found = await self._authenticator.authenticate(route.tokens, token, digest, trace)
            identity = found.identity
            refuse_sender_constrained(identity)
            if route.required:
                if trace is not None:
                    trace_policy(trace, route.policy, identity)
                check(route.policy, identity)
        except (AuthError, GatewayError) as error:
            if route.required:
                raise
            if trace is not None:
                trace.add("anonymous", "ok", ignored=error.reason)
            # An anonymous route never fails for a bad token; it just gets no identity.
            return Allow(None, (), credential.source, reason="anonymous")
        allow = Allow(identity, tuple(route.identity_headers.render(identity)), credential.source)
        self._cache.remember_decision(
            route.id, digest, Memo(found.key, identity, allow, found.introspected)
        )
        return allow


def trace_policy(trace: Trace, policy: Policy, identity: Identity) -> None:
    """Record what ``check`` is about to compare: scopes required against present, and each
    claim rule with its result (``ClaimTest.matches``, the function ``check`` uses)."""
    trace.add("scopes", "checking", all=policy.scopes_all, any=policy.scopes_any,
              present=identity.scopes)  # fmt: skip
    for test in policy.claims:
        passed = test.matches(identity.claims)
        shown = ", ".join(repr(value) for value in test.values)
        trace.add("claim", "ok" if passed else "fail", claim=test.name, rule=f"{test.op} {shown}")


def refuse_sender_constrained(identity: Identity) -> None:
    """RFC 9449 §7.2 / RFC 8705 §3: a token bound to a key (``cnf``: DPoP ``jkt``, mTLS
    ``x5t#S256``) proves nothing without its proof, which a Bearer request does not carry.
    Such tokens are refused rather than accepted as bearer tokens that anyone holding them
    could replay. A property of the request, checked after the cache, every time."""
    claims = identity.claims
    cnf = claims.get("cnf")
    token_type = claims.get("token_type")
    if cnf or (isinstance(token_type, str) and token_type.lower() == "dpop"):
        raise InvalidToken(
            "The access token is bound to a key and cannot be used as a bearer token.",
            reason="sender_constrained",
        )
