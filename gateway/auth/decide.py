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

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from gateway.auth import sender
from gateway.auth.authenticate import Authenticator, TokenRules
from gateway.auth.bearer import read_credential
from gateway.auth.digests import token_digest
from gateway.auth.headers import IdentityHeaders
from gateway.auth.identity import Identity
from gateway.auth.identity_cache import IdentityCache, Memo
from gateway.auth.identity_token import IdentityTokenSigner, SignedIdentity
from gateway.auth.policy import Policy, check
from gateway.auth.ratelimit_keys import RouteLimits
from gateway.auth.ratelimiter import RateLimiter
from gateway.auth.replay import ReplayStore
from gateway.auth.sender import OFF, HeaderLookup, Presented, SenderRules, TokenType
from gateway.auth.sessions.settings import SessionRoute
from gateway.auth.trace import Trace
from gateway.problems import Challenge, GatewayError, InvalidRequest, MissingCredentials

TokenSource = Literal["header", "query", "form"]
Header = tuple[str, str]


class _NoHeaders:
    def getall(self, key: str, default: Sequence[str], /) -> Sequence[str]:
        return default


NO_HEADERS: HeaderLookup = _NoHeaders()


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the decision may know about a request, and nothing else."""

    method: str
    host: str | None
    path: str  # normalised, as the route table matched it
    query: str | None
    authorization: Sequence[str]
    form_fields: Sequence[tuple[str, str]] | None = None
    headers: HeaderLookup = NO_HEADERS  # DPoP proofs, a front proxy's certificate header
    request_path: str | None = None  # the normalised path as sent (default: ``path``)
    peer: str | None = None  # the client's address (who may set certificate headers)
    tls_certificate: bytes | None = None  # the client certificate's DER, from TLS
    client_ip: str | None = None  # the client, through trusted proxies (rate-limit keys)


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
    sender: SenderRules = OFF  # DPoP (RFC 9449) and certificate binding (RFC 8705)
    challenge: Challenge = field(default_factory=Challenge)  # what WWW-Authenticate offers
    rate_limits: RouteLimits | None = None  # applied after authentication and policy
    identity_token: SignedIdentity | None = None  # a token the gateway signs for the upstream
    session: SessionRoute | None = None  # auth: session (browser login)


@dataclass(frozen=True, slots=True)
class Allow:
    """Let the request through; ``headers`` are shared by every request a hot decision
    serves, so callers must not mutate them."""

    identity: Identity | None
    headers: tuple[Header, ...]
    token_source: TokenSource | None  # where the credential was, so it can be removed
    reason: str = "ok"
    token_type: TokenType | None = None  # Bearer, DPoP or mTLS, for the access log
    remove: tuple[str, ...] = ()  # request headers that must not reach the upstream
    response_headers: tuple[Header, ...] = ()  # for the client's response (RateLimit fields)
    token_digest: bytes | None = None  # the validated token's SHA-256 (what evictions name)


@dataclass(frozen=True, slots=True)
class Deny:
    """Refuse the request with ``error`` (an ``AuthError`` or ``ServiceUnavailable``)."""

    error: GatewayError

    @property
    def reason(self) -> str:
        return self.error.reason


Decision = Allow | Deny
ANONYMOUS = Allow(identity=None, headers=(), token_source=None, reason="anonymous")
_PROOF = ("dpop",)  # the request header a DPoP route keeps from its upstream


class Sessions(Protocol):
    """Browser sessions (``gateway.auth.sessions.logins.Logins``): a session route's decision
    when no token came, and the gateway's cookies taken out of every allowed request."""

    async def allow(self, route: RouteAuth, facts: RequestFacts, trace: Trace | None) -> Allow: ...

    def strip_cookies(self, facts: RequestFacts, allow: Allow) -> Allow: ...


class Decider:
    """Holds what a decision needs at request time: the authenticator and the identity
    cache of one runtime."""

    def __init__(
        self,
        authenticator: Authenticator,
        cache: IdentityCache,
        max_token_size: int,
        replay: ReplayStore | None = None,
        *,
        limiter: RateLimiter | None = None,
        signer: IdentityTokenSigner | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._cache = cache
        self._max_token_size = max_token_size
        self._replay = replay  # DPoP proofs seen (RFC 9449 §11.1)
        self._limiter = limiter
        self._signer = signer
        self._sessions = sessions  # None: no logins configured

    async def decide(
        self, route: RouteAuth, facts: RequestFacts, trace: Trace | None = None
    ) -> Decision:
        """The decision for ``facts`` on ``route``. ``trace`` (``gateway explain`` only; None
        on the request path) records what each step did."""
        try:
            allow = await self._decide(route, facts, trace)
            dpop = route.sender.dpop
            if dpop is not None and not dpop.forward_proof and not allow.remove:
                # An anonymous allow too: the proof was for the gateway (RFC 9449 §4.3), and
                # a route that lets a request through without checking it forwards it no more.
                allow = replace(allow, remove=_PROOF)
            if route.rate_limits is not None or route.identity_token is not None:
                try:
                    allow = self._finish(route, facts, allow)
                except GatewayError as error:
                    # A session refreshed for this request is stored even though it is
                    # refused (RateLimited): the browser must not keep spent tokens.
                    error.carry_cookies(allow.response_headers)
                    raise
            if self._sessions is not None:
                allow = self._sessions.strip_cookies(facts, allow)
            return allow
        except GatewayError as error:  # AuthError, or ServiceUnavailable (503)
            if trace is not None:
                trace.add("decision", "deny", status=error.status, reason=error.reason)
            return Deny(error.with_traceback(None))

    async def _decide(self, route: RouteAuth, facts: RequestFacts, trace: Trace | None) -> Allow:
        session = route.session
        if session is not None and not session.bearer_when_present:
            # bearer: never - only the session counts; a header it would forward unchecked
            # is refused rather than ignored.
            if facts.authorization:
                raise InvalidRequest("This route takes a browser session, not a bearer token.")
            return await self._session(route, facts, trace)
        credential = read_credential(
            facts.authorization,
            facts.query,
            facts.form_fields,
            allow_query=route.allow_query,
            allow_form=route.allow_form,
            max_size=self._max_token_size,
            allow_dpop=route.sender.dpop_mode != "off",
            unread_query_counts=route.required or route.identify_anonymous,
        )
        if trace is not None:
            trace.add("credential", "none" if credential is None else "found",
                      source=None if credential is None else credential.source,
                      required=route.required)  # fmt: skip
        if credential is None:
            if session is not None:
                return await self._session(route, facts, trace)
            if route.required:
                raise MissingCredentials()
            return ANONYMOUS
        if not route.required and not route.identify_anonymous:
            # An anonymous route neither validates nor introspects what it will not use.
            return Allow(None, (), credential.source, reason="anonymous")
        token = credential.token
        digest = token_digest(token)
        memo = self._cache.memo(route.id, digest)
        if memo is not None and credential.scheme == "bearer":
            decision = memo.decision  # only unbound tokens are remembered (below)
            assert isinstance(decision, Allow)
            if decision.token_source == credential.source:
                if trace is not None:
                    trace.add("decision", "hit", cache="the route's remembered decision")
                return decision
        try:
            found = await self._authenticator.authenticate(route.tokens, token, digest, trace)
            identity = found.identity
            # Whether the request proves the key a token is bound to is a fact about the
            # request: decided after the cache, every time (RFC 9449 §7.1, RFC 8705 §3).
            token_type = await sender.check(
                route.sender, credential.scheme, identity, token, _presented(facts), self._replay
            )
            if trace is not None:
                trace.add("binding", "ok", presented_as=token_type)
            if route.required:
                if trace is not None:
                    trace_policy(trace, route.policy, identity)
                check(route.policy, identity)
        except GatewayError as error:
            if route.required:
                raise
            if trace is not None:
                trace.add("anonymous", "ok", ignored=error.reason)
            # An anonymous route never fails for a bad token; it just gets no identity.
            return Allow(None, (), credential.source, reason="anonymous")
        dpop = route.sender.dpop
        # The proof was for the gateway; the upstream gets it only where configured.
        remove = _PROOF if dpop is not None and not dpop.forward_proof else ()
        allow = Allow(
            identity,
            tuple(route.identity_headers.render(identity)),
            credential.source,
            token_type=token_type,
            remove=remove,
            token_digest=digest,
        )
        unbound = sender.binding_of(identity) is sender.UNBOUND
        if unbound and credential.scheme == "bearer":  # a bound token is proved every time
            self._cache.remember_decision(
                route.id, digest, Memo(found.key, identity, allow, found.introspected)
            )
        return allow

    async def _session(self, route: RouteAuth, facts: RequestFacts, trace: Trace | None) -> Allow:
        # The compiler sets RouteAuth.session only where a login is configured.
        assert self._sessions is not None
        return await self._sessions.allow(route, facts, trace)

    def _finish(self, route: RouteAuth, facts: RequestFacts, allow: Allow) -> Allow:
        """Limit, then mutate: the rate limits (after authentication and policy, so the key
        is trustworthy and refused requests never count) and the signed identity token
        (bound to this request: made for every request, from a cache)."""
        identity = allow.identity
        fields: tuple[Header, ...] = ()
        if route.rate_limits is not None and self._limiter is not None:
            ip = facts.client_ip or facts.peer or ""
            fields = self._limiter.check(
                route.rate_limits, identity, ip, FirstValues(facts.headers)
            )
        headers = allow.headers
        signed = route.identity_token
        if signed is not None and identity is not None and self._signer is not None:
            uri = signed.upstream_uri(facts.request_path or facts.path)
            headers = (*headers, self._signer.header(identity, signed.route, method=facts.method,
                                                     uri=uri))  # fmt: skip
        return replace(allow, headers=headers, response_headers=(*allow.response_headers, *fields))


class FirstValues:
    """A request header's first value by name: what a rate-limit key reads."""

    __slots__ = ("_headers",)

    def __init__(self, headers: HeaderLookup) -> None:
        self._headers = headers

    def get(self, key: str, /) -> str | None:
        values = self._headers.getall(key, ())
        return values[0] if values else None


def _presented(facts: RequestFacts) -> Presented:
    return Presented(
        method=facts.method,
        path=facts.request_path or facts.path,
        headers=facts.headers,
        peer=facts.peer,
        tls_certificate=facts.tls_certificate,
    )


def trace_policy(trace: Trace, policy: Policy, identity: Identity) -> None:
    """Record what ``check`` is about to compare: scopes required against present, and each
    claim rule with its result (``ClaimTest.matches``, the function ``check`` uses)."""
    trace.add("scopes", "checking", all=policy.scopes_all, any=policy.scopes_any,
              present=identity.scopes)  # fmt: skip
    for test in policy.claims:
        passed = test.matches(identity.claims)
        shown = ", ".join(repr(value) for value in test.values)
        trace.add("claim", "ok" if passed else "fail", claim=test.name, rule=f"{test.op} {shown}")
