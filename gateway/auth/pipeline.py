"""authenticate → authorize → mutate: the resource-server decision (RFC 6750, RFC 7662, RFC 9068).

The pipeline takes a small ``AuthRequest`` value and a route's ``RouteAuth`` and returns a
``Decision`` (identity and the headers to set) or raises an ``AuthError``. It knows nothing
about HTTP servers, so the same code can later answer a forward-auth endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.auth.bearer import read_token
from gateway.auth.headers import IdentityHeaders
from gateway.auth.identity import Identity
from gateway.auth.jwt import JwtVerifier, NotMine
from gateway.auth.policy import Policy, check
from gateway.auth.token_cache import TokenCache, token_hash
from gateway.problems import AuthError, InvalidToken, MissingCredentials, ServiceUnavailable

TokenMode = Literal["jwt", "introspection", "auto"]
Introspect = Callable[[str], Awaitable[Identity]]


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """What the pipeline needs from a request, and nothing else."""

    authorization: Sequence[str]
    query: str | None
    form_fields: Sequence[tuple[str, str]] | None = None


@dataclass(frozen=True, slots=True)
class RouteAuth:
    """A route's compiled auth settings (defaults already merged)."""

    required: bool
    identify_anonymous: bool
    allow_query: bool
    allow_form: bool
    policy: Policy
    identity_headers: IdentityHeaders
    issuers: frozenset[str] | None  # issuer keys accepted here; None = any configured
    token_mode: TokenMode | None  # None = each issuer's own mode
    realm: str
    # Decisions for hot tokens on this route, by token hash (see AuthPipeline.run).
    decisions: dict[bytes, Decision] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Decision:
    identity: Identity | None
    headers: tuple[tuple[str, str], ...]  # shared by every request a decision is reused for


ANONYMOUS = Decision(identity=None, headers=())
_DECISIONS_PER_ROUTE = 10_000


def refuse_sender_constrained(identity: Identity) -> None:
    """RFC 9449 §7.2 / RFC 8705 §3: a token bound to a key (``cnf``: DPoP ``jkt``, mTLS
    ``x5t#S256``) proves nothing without its proof, which a Bearer request does not carry.
    This gateway verifies no proofs, so such tokens are refused rather than accepted as
    bearer tokens that anyone holding them could replay."""
    claims = identity.claims
    cnf = claims.get("cnf")
    token_type = claims.get("token_type")
    if cnf or (isinstance(token_type, str) and token_type.lower() == "dpop"):
        raise InvalidToken(
            "The access token is bound to a key and cannot be used as a bearer token.",
            reason="sender_constrained",
        )


class AuthPipeline:
    """Validates tokens through a cache of verified tokens and checks route policies."""

    def __init__(
        self,
        *,
        verifier: JwtVerifier | None,
        token_cache: TokenCache,
        max_token_size: int,
        introspectors: Mapping[str, Introspect] | None = None,
        issuer_modes: Mapping[str, TokenMode] | None = None,
        introspect_jwts: frozenset[str] = frozenset(),
        issuer_keys: Mapping[str, str] | None = None,
        introspection_ttl: float = 30.0,
    ) -> None:
        self._verifier = verifier
        self._cache = token_cache
        self._max_token_size = max_token_size
        self._introspectors = dict(introspectors or {})
        self._modes = dict(issuer_modes or {})
        self._introspect_jwts = introspect_jwts
        self._introspection_ttl = introspection_ttl
        # Identities carry the issuer URL; routes name issuers by key (name or URL).
        self._key_of_issuer = dict(issuer_keys or {})

    async def run(self, route: RouteAuth, request: AuthRequest) -> Decision:
        token = read_token(
            request.authorization,
            request.query,
            request.form_fields,
            allow_query=route.allow_query,
            allow_form=route.allow_form,
            max_size=self._max_token_size,
        )
        if token is None:
            if route.required:
                raise MissingCredentials()
            return ANONYMOUS
        digest = token_hash(token)
        try:
            identity = await self.authenticate(token, route, digest)
        except AuthError:
            if route.required:
                raise
            # An anonymous route never fails for a bad token; it just gets no identity.
            return ANONYMOUS
        if not route.required and not route.identify_anonymous:
            return ANONYMOUS
        # A hot token's cache hit returns the very same Identity object, and the route's
        # policy and templates are fixed: its decision is remembered per route. An entry is
        # used only while the token cache still hands out that object, so expiry and
        # eviction govern it as they govern the identity.
        remembered = route.decisions.get(digest)
        if remembered is not None and remembered.identity is identity:
            return remembered
        if route.required:
            check(route.policy, identity)
        headers = tuple(route.identity_headers.render(identity))
        decision = Decision(identity=identity, headers=headers)
        if len(route.decisions) >= _DECISIONS_PER_ROUTE:
            route.decisions.clear()
        route.decisions[digest] = decision
        return decision

    async def authenticate(
        self, token: str, route: RouteAuth, digest: bytes | None = None
    ) -> Identity:
        """The identity behind ``token``, from the verified-token cache when possible.

        Only what is true of the token itself is cached (valid, or rejected for a reason of
        its own); whether this route accepts its issuer is checked afterwards, every time.
        Introspected identities are cached here too, for at most the introspection L1 TTL,
        so a hot opaque token costs what a hot JWT costs; evictions reach this cache too.
        """
        key = token_hash(token) if digest is None else digest
        cached = self._cache.get(key)
        if isinstance(cached, Identity):
            identity = cached
        elif cached is not None:
            # The cached error is shared: drop the traceback a previous raise attached.
            raise cached.with_traceback(None)
        else:
            epoch = self._cache.epoch
            try:
                identity = await self._validate(token, route)
                refuse_sender_constrained(identity)
            except InvalidToken as error:
                # Remember rejections briefly, so replaying a bad token costs a hash, not a
                # signature check. Unavailability (503) is never cached.
                self._cache.put_rejection(key, error)
                raise
            if self._cache.epoch == epoch:  # not across an eviction: it may predate it
                issuer_key = self._key_of_issuer.get(identity.issuer, identity.issuer)
                opaque = identity.token_kind == "opaque"  # noqa: S105 - a kind, not a secret
                introspected = opaque or issuer_key in self._introspect_jwts
                # An introspected answer lives here no longer than in the introspection
                # cache's L1, so revocation reaches a hot token just as soon.
                ttl = self._introspection_ttl if introspected else None
                self._cache.put(key, identity, max_ttl=ttl)
        self._check_issuer_allowed(identity, route)
        return identity

    def _check_issuer_allowed(self, identity: Identity, route: RouteAuth) -> None:
        key = self._key_of_issuer.get(identity.issuer, identity.issuer)
        if route.issuers is not None and key not in route.issuers:
            raise InvalidToken("The token's issuer is not accepted here.", reason="bad_issuer")

    async def _validate(self, token: str, route: RouteAuth) -> Identity:
        verifier = self._verifier
        if verifier is None:
            return await self._introspect(token, route)
        try:
            parsed = verifier.parse(token)
        except NotMine:
            # Not a JWT from a trusted issuer: an opaque token, for introspection if allowed.
            return await self._introspect(token, route)
        mode = route.token_mode or self._modes.get(parsed.issuer_key, "jwt")
        if mode == "introspection":
            return await self._introspect(token, route, parsed.issuer_key)
        identity = await verifier.verify_parsed(parsed)
        if parsed.issuer_key in self._introspect_jwts:
            return await self._introspect(token, route, parsed.issuer_key)
        return identity

    async def _introspect(
        self, token: str, route: RouteAuth, issuer_key: str | None = None
    ) -> Identity:
        if issuer_key is None:
            issuer_key = self._introspection_issuer(route)
        if issuer_key is None:
            raise InvalidToken("The access token is malformed.", reason="malformed")
        introspect = self._introspectors.get(issuer_key)
        if introspect is None:
            raise ServiceUnavailable(
                "Token introspection is not available.", reason="introspection_error"
            )
        return await introspect(token)

    def _introspection_issuer(self, route: RouteAuth) -> str | None:
        """The first issuer that may introspect opaque tokens on this route."""
        for key, mode in self._modes.items():
            if key not in self._introspectors:
                continue
            if route.issuers is not None and key not in route.issuers:
                continue
            if (route.token_mode or mode) in ("introspection", "auto"):
                return key
        return None
