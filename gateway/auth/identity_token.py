"""RFC 7519 §4.1 claims, RFC 9449 §4.2 ``htm``/``htu``: short-lived identity tokens for upstreams.

Identity headers are only as trustworthy as the network behind the gateway; a signed token
lets a service verify who called it. For each allowed request on a route with an
``identity_token`` section the gateway sends a JWT it signed itself: ``iss`` the gateway,
``aud`` the upstream, ``sub``/``client_id``/``scope`` from the validated identity, a lifetime
of at most the route's and never past the client's own token, and (by default) the method and
URL of the upstream request, so a token taken from one route cannot be replayed on another.

Signing costs tens of microseconds (ES256) to a millisecond (RS256), so tokens are cached per
identity, route, binding and key, and reused until shortly before they expire. The cache
belongs to one signer, and a signer to one compiled config: a reload that changes the key
starts with an empty cache, so no token of a retired key is handed out by the new config.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt

from gateway.auth.headers import HeaderTemplate
from gateway.auth.identity import Identity
from gateway.auth.signing_keys import JwksDocument, KeyRing, SigningKey
from gateway.routing.paths import rewrite_path
from gateway.routing.semantics import PathSemantics

DEFAULT_FORWARDING_HEADER: Final = "X-Identity-Token"
# Claims the gateway sets itself; a template may not forge or shadow them.
RESERVED_CLAIMS: Final = frozenset({"iss", "sub", "aud", "exp", "iat", "nbf", "jti",
                                    "client_id", "scope", "htm", "htu", "cnf"})  # fmt: skip
# Fields a client must not be able to replace and a proxy must not carry a token in.
_UNFIT_HEADERS: Final = frozenset({"host", "connection", "content-length", "content-type",
                                   "transfer-encoding", "te", "trailer", "upgrade", "keep-alive",
                                   "proxy-authorization", "cookie", "forwarded",
                                   "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
                                   "via"})  # fmt: skip
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# Verifiers commonly accept an exp this far in the past (clock skew), so a retired key is
# published this much longer than its last token's lifetime.
RETIRE_LEEWAY: Final = 60


@dataclass(frozen=True, slots=True, eq=False)
class IdentityTokenRoute:
    """One route's compiled ``identity_token`` section (the defaults' when it has none).

    Compared by identity: the signed-token cache keys on this object, so a reload that
    compiles new settings never reuses a token made under the old ones.
    """

    header: str
    bearer: bool  # sent as "Bearer <token>" (in Authorization)
    audience: str
    lifetime: int
    claims: tuple[tuple[str, HeaderTemplate], ...]
    bind_request: bool

    def field_value(self, token: str) -> str:
        return f"Bearer {token}" if self.bearer else token


@dataclass(frozen=True, slots=True)
class SigningSettings:
    """The compiled ``token_signing`` section."""

    issuer: str
    ring: KeyRing
    cache_entries: int
    refresh_before: float
    jwks_on_proxy: bool


def request_uri(scheme: str, host: str, port: int | None, path: str) -> str:
    """The ``htu`` of an upstream request: RFC 9449 §4.2 "without query and fragment parts",
    normalised as RFC 9449 §4.3 asks (RFC 3986 §6.2.2-6.2.3: lower-case scheme and host, no
    default port), so gateway and upstream compute the same string."""
    scheme = scheme.lower()
    authority = host.lower()
    if ":" in authority and not authority.startswith("["):
        authority = f"[{authority}]"  # an IPv6 literal (RFC 3986 §3.2.2)
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        authority = f"{authority}:{port}"
    return f"{scheme}://{authority}{path or '/'}"


@dataclass(frozen=True, slots=True)
class SignedIdentity:
    """A route's identity token and where its requests go, so the token can be bound to the
    upstream request (``htm``/``htu``) the gateway is about to send."""

    route: IdentityTokenRoute
    scheme: str
    host: str
    port: int | None
    base_path: str
    strip_prefix: str | None
    add_prefix: str | None
    semantics: PathSemantics

    def upstream_uri(self, path: str) -> str:
        """The upstream request's URI for the client's normalised ``path``."""
        rewritten = rewrite_path(path, self.strip_prefix, self.add_prefix, self.semantics)
        return request_uri(self.scheme, self.host, self.port, self.base_path + rewritten)


def build_claims(
    identity: Identity,
    route: IdentityTokenRoute,
    *,
    issuer: str,
    now: int,
    jti: str,
    method: str | None,
    uri: str | None,
) -> dict[str, Any]:
    """The claim set (pure). ``exp`` is ``now + lifetime`` but never after the client's own
    token expires: the identity token must not outlive the credential it vouches for. A
    token accepted within its issuer's leeway past ``exp`` gets one second, never an
    ``exp`` before its ``iat`` that the upstream would refuse."""
    exp = now + route.lifetime
    if identity.expires_at is not None:
        exp = min(exp, max(math.floor(identity.expires_at), now + 1))
    claims: dict[str, Any] = {}
    for name, template in route.claims:
        value = template.render_text(identity)
        if value is not None:
            claims[name] = value
    claims.update(iss=issuer, aud=route.audience, iat=now, exp=exp, jti=jti)
    if identity.subject is not None:
        claims["sub"] = identity.subject
    if identity.client_id is not None:
        claims["client_id"] = identity.client_id  # RFC 8693 §4.3
    if identity.scopes:
        claims["scope"] = identity.scope  # RFC 8693 §4.2, space-delimited
    if route.bind_request:
        if method is None or uri is None:
            raise ValueError("a request-bound identity token needs the method and the URI")
        claims["htm"] = method
        claims["htu"] = uri
    return claims


_CacheKey = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class _Entry:
    identity: Identity
    value: str  # the header's field value, ready to send
    refresh_at: float


class IdentityTokenSigner:
    """Signs identity tokens with the ring's active key, through a bounded LRU cache.

    ``clock`` is wall-clock seconds (``time.time``): ``iat``/``exp`` are NumericDates.
    """

    __slots__ = ("_cache", "_clock", "_max_entries", "_refresh_before", "_ring", "_signer",
                 "hits", "issuer", "longest_lifetime", "signed")  # fmt: skip

    def __init__(
        self,
        ring: KeyRing,
        *,
        issuer: str,
        max_entries: int = 10000,
        refresh_before: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self._ring = ring
        self._signer: SigningKey = ring.active  # fixed: a key change is a new signer
        self._max_entries = max_entries
        self._refresh_before = refresh_before
        self._clock = clock
        self._cache: OrderedDict[_CacheKey, _Entry] = OrderedDict()
        self.hits = 0
        self.signed = 0
        self.longest_lifetime = 0

    @classmethod
    def from_settings(
        cls,
        settings: SigningSettings,
        *,
        previous: IdentityTokenSigner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> IdentityTokenSigner:
        """A signer for a (re)loaded config. Keys of ``previous`` that the new config no
        longer lists stay published, never signing, for the longest lifetime ``previous``
        issued plus RETIRE_LEEWAY: tokens they signed may still be on their way."""
        ring = settings.ring
        if previous is not None:
            keep = previous.longest_lifetime + RETIRE_LEEWAY
            ring = ring.succeeding(previous.ring, now=clock(), max_lifetime=keep)
        signer = cls(
            ring,
            issuer=settings.issuer,
            max_entries=settings.cache_entries,
            refresh_before=settings.refresh_before,
            clock=clock,
        )
        if previous is not None:
            # Tokens of earlier signers (with a key this config may still list) are still in
            # flight: a later reload that drops the key must wait for them too.
            signer.longest_lifetime = previous.longest_lifetime
        return signer

    @property
    def ring(self) -> KeyRing:
        return self._ring

    @property
    def cached(self) -> int:
        return len(self._cache)

    def jwks(self) -> JwksDocument:
        """The JWK Set to answer ``/.well-known/jwks.json`` with: body, Cache-Control and
        Content-Type, made once (again only when a retiring key drops out)."""
        return self._ring.jwks(self._clock())

    def header(
        self,
        identity: Identity,
        route: IdentityTokenRoute,
        *,
        method: str | None = None,
        uri: str | None = None,
    ) -> tuple[str, str]:
        """The (name, value) to set on the upstream request. ``method`` and ``uri`` (see
        ``request_uri``) are those of the upstream request; required when the route binds.
        """
        now = self._clock()
        signer = self._signer
        # Binding and claims are part of the key: the method and URI when bound, the route
        # object (audience, lifetime, templates), who the identity is, and the signing key.
        bound = route.bind_request
        key: _CacheKey = (
            route, signer.kid, identity.issuer, identity.subject, identity.client_id,
            identity.expires_at, method if bound else None, uri if bound else None,
        )  # fmt: skip
        entry = self._cache.get(key)
        # An equal identity has equal claims; anything else (another token of the same
        # subject with other claims) is a miss and replaces the entry.
        if (
            entry is not None
            and now < entry.refresh_at
            and (entry.identity is identity or entry.identity == identity)
        ):
            self._cache.move_to_end(key)
            self.hits += 1
            return route.header, entry.value
        issued = math.floor(now)
        claims = build_claims(
            identity, route, issuer=self.issuer, now=issued, jti=secrets.token_urlsafe(16),
            method=method, uri=uri,
        )  # fmt: skip
        token = jwt.encode(claims, signer.private, algorithm=signer.alg,
                           headers={"kid": signer.kid, "typ": "JWT"})  # fmt: skip
        self.signed += 1
        value = route.field_value(token)
        lifetime = claims["exp"] - issued
        self.longest_lifetime = max(self.longest_lifetime, lifetime)
        refresh_at = claims["exp"] - min(self._refresh_before, lifetime / 2)
        if self._max_entries > 0 and refresh_at > now:
            self._cache[key] = _Entry(identity, value, refresh_at)
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return route.header, value

    def stats(self) -> Mapping[str, int]:
        """Plain counters for metrics: tokens signed, cache hits, entries held."""
        return {"signed": self.signed, "hits": self.hits, "entries": len(self._cache)}
