"""OIDC Core §3.1 and Discovery 1.0 §3: one login config, started - its endpoints (from the
config, else the issuer's discovery metadata), its session store, its pre-login cookie, its
single-flight refresher and its logout-token replay guard - and the counters its metrics
read.

What replicas must share lives in Redis when one is configured (the Redis store's sessions,
or the cookie store's revocations; refresh leases and outcomes; seen logout tokens), and in
memory otherwise. Memory state that guards against replays (revocations, seen ``jti``s) is
handed from one runtime to the next on reload (``LoginMemory``): a config change must not
make a revoked session or a used logout token good again.
"""

from __future__ import annotations

import logging
import ssl as ssl_module
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway.auth.discovery import is_loopback
from gateway.auth.jwks import KeySetProvider
from gateway.auth.sessions.cookies import CookiePolicy
from gateway.auth.sessions.errors import (
    IdTokenInvalid,
    LoginRedirect,
    TokenEndpointRefused,
)
from gateway.auth.sessions.login import LoginClient, start_login
from gateway.auth.sessions.login_state import LoginCookie, PendingLogins
from gateway.auth.sessions.logout import MemoryReplayGuard, ReplayGuard
from gateway.auth.sessions.redis_store import (
    RedisRefreshShare,
    RedisReplayGuard,
    RedisRevocations,
    RedisSessionStore,
)
from gateway.auth.sessions.refresh import Persist, SessionRefresher, refresh_tokens
from gateway.auth.sessions.sealing import Sealer, login_binding
from gateway.auth.sessions.session import Session
from gateway.auth.sessions.settings import LoginSettings
from gateway.auth.sessions.store import CookieSessionStore, Loaded, MemoryRevocations, SessionStore
from gateway.auth.sessions.token_endpoint import TokenEndpoint
from gateway.problems import GatewayError, ServiceUnavailable

log = logging.getLogger(__name__)
LOGIN_COOKIE_SUFFIX = "_login"
REFRESH_GRACE = 60.0  # a refresh's result serves requests still carrying the old cookie


@dataclass
class LoginMemory:
    """A login's in-process state that outlives a reload."""

    revocations: MemoryRevocations = field(default_factory=MemoryRevocations)
    replay: MemoryReplayGuard = field(default_factory=MemoryReplayGuard)


@dataclass
class LoginCounters:
    """Read at scrape time (``gateway.components.LoginsComponent``)."""

    redirects: int = 0  # unauthenticated navigations sent to the authorization endpoint
    callbacks: Counter[str] = field(default_factory=Counter)  # by outcome: ok, or the reason
    refreshes: Counter[str] = field(default_factory=Counter)  # ok, ended, failed
    logouts: Counter[str] = field(default_factory=Counter)  # rp, backchannel
    ended: Counter[str] = field(default_factory=Counter)  # sessions refused: idle, revoked…


def _url(value: Any) -> str | None:
    """An endpoint from metadata (untrusted): an http(s) URL with a host, without fragment."""
    if not isinstance(value, str) or len(value) > 2048:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
        return None
    return value


class LoginService:
    """One login config's started parts. ``keys`` is the issuer's key-set provider, shared
    with bearer validation (one fetch of discovery and keys per issuer)."""

    def __init__(
        self,
        settings: LoginSettings,
        keys: KeySetProvider,
        http: aiohttp.ClientSession,
        *,
        redis: Any | None,
        memory: LoginMemory,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.memory = memory  # handed to the next runtime's service of this login
        self.counters = LoginCounters()
        self._http = http
        self._clock = clock
        self._ssl = (
            ssl_module.create_default_context(cafile=str(settings.ca_file))
            if settings.ca_file is not None
            else None
        )
        self._token_endpoints: dict[str, TokenEndpoint] = {}
        self._refused_endpoints: set[str] = set()  # plain-http endpoints already warned of
        cookie = settings.cookie
        self.session_policy = CookiePolicy(
            cookie.name, cookie.secure, cookie.chunk_bytes, cookie.max_chunks
        )
        self.login_policy = CookiePolicy(
            cookie.name + LOGIN_COOKIE_SUFFIX, cookie.secure, max_chunks=1
        )
        cookie_sealer = Sealer(settings.secrets)
        binding = login_binding(
            settings.external_url, settings.id_token.issuer, settings.client.client_id
        )
        self.login_cookie = LoginCookie(
            self.login_policy, cookie_sealer, settings.login_timeout, binding=binding
        )
        self.client = LoginClient(
            name=settings.name,
            issuer=settings.id_token.issuer,
            client_id=settings.client.client_id,
            redirect_uri=settings.redirect_uri,
            scopes=settings.scopes,
            extra_parameters=settings.authorization_parameters,
            keep_id_token=settings.keep_id_token,
        )
        store = settings.store
        share = None
        self.replay: ReplayGuard = memory.replay
        self.store: SessionStore
        if redis is not None:
            redis_sealer = Sealer(store.sealing_keys)
            prefix, timeout = store.key_prefix, store.timeout
            share = RedisRefreshShare(
                redis, redis_sealer, key_prefix=prefix, timeout=timeout, clock=clock
            )
            self.replay = RedisReplayGuard(redis, key_prefix=prefix, timeout=timeout, clock=clock)
        if store.kind == "redis":
            assert redis is not None  # the compiler requires a Redis for this store
            self.store = RedisSessionStore(
                redis, self.session_policy, Sealer(store.sealing_keys), settings.lifetimes,
                key_prefix=store.key_prefix, timeout=store.timeout,
                persistent=cookie.persistent,
            )  # fmt: skip
        else:
            revocations = (
                RedisRevocations(redis, key_prefix=store.key_prefix, timeout=store.timeout)
                if redis is not None
                else memory.revocations
            )
            self.store = CookieSessionStore(
                self.session_policy, cookie_sealer, settings.lifetimes, revocations,
                persistent=cookie.persistent, binding=binding,
            )  # fmt: skip
        self.refresher = SessionRefresher(
            self._refresh_once,
            share=share,
            grace=REFRESH_GRACE,
            lease=settings.refresh_lease,
            wait=settings.refresh_lease + settings.token_timeout,
        )

    # --- endpoints -----------------------------------------------------------------------

    def _metadata(self, name: str) -> str | None:
        metadata = self.keys.metadata
        return _url(metadata.get(name)) if metadata is not None else None

    def _over_tls(self, endpoint: str | None) -> str | None:
        """``endpoint``, or ``ServiceUnavailable`` for one in plain http beyond loopback
        without the issuer's ``insecure_http``: RFC 6749 §3.1 requires TLS at the
        authorization endpoint (the user's credentials), RFC 9700 §2.6 for every OAuth
        exchange, and the logout URL carries the ID token (``id_token_hint``). The token
        endpoint keeps the same rule. Warned once per URL, not per request."""
        if endpoint is None or urlsplit(endpoint).scheme == "https" or self.settings.allow_http:
            return endpoint
        if is_loopback(urlsplit(endpoint).hostname or ""):
            return endpoint
        if endpoint not in self._refused_endpoints:
            self._refused_endpoints.add(endpoint)
            log.warning("login %s: refusing the plain-http endpoint %s", self.settings.name,
                        endpoint)  # fmt: skip
        raise ServiceUnavailable(
            "The identity provider's endpoint does not use TLS.", reason="login_metadata"
        )

    def authorization_endpoint(self) -> str:
        endpoint = self._over_tls(
            self.settings.endpoints.authorization or self._metadata("authorization_endpoint")
        )
        if endpoint is None:
            raise ServiceUnavailable(
                "The identity provider's metadata is not available yet.", reason="login_metadata"
            )
        return endpoint

    def end_session_endpoint(self) -> str | None:
        """RP-Initiated Logout 1.0 §2.1: ``end_session_endpoint`` in the metadata; None when
        the provider has none, ``ServiceUnavailable`` for one that is refused (a logout
        must not look done while the provider's session lives on)."""
        return self._over_tls(
            self.settings.endpoints.end_session or self._metadata("end_session_endpoint")
        )

    def issuer_parameter_required(self) -> bool:
        """RFC 9207 §3: a server that says so sends ``iss`` with every authorization response."""
        metadata = self.keys.metadata or {}
        return metadata.get("authorization_response_iss_parameter_supported") is True

    def token_endpoint(self) -> TokenEndpoint:
        url = self.settings.endpoints.token or self._metadata("token_endpoint")
        if url is None:
            raise ServiceUnavailable(
                "The identity provider's metadata is not available yet.", reason="login_metadata"
            )
        endpoint = self._token_endpoints.get(url)
        if endpoint is None:
            try:
                endpoint = TokenEndpoint(
                    self._http, url, self.settings.client, timeout=self.settings.token_timeout,
                    allow_http=self.settings.allow_http, ssl=self._ssl, clock=self._clock,
                )  # fmt: skip
            except ValueError as exc:
                log.warning("login %s: unusable token endpoint: %s", self.settings.name, exc)
                raise ServiceUnavailable(
                    "The identity provider's token endpoint is not usable.",
                    reason="login_metadata",
                ) from None
            self._token_endpoints = {url: endpoint}  # metadata changed: forget the old one
        return endpoint

    # --- the request path ----------------------------------------------------------------

    def login_redirect(
        self, return_to: str, cookie_fields: list[str], now: float, clear: list[str]
    ) -> LoginRedirect:
        """The 302 to the authorization endpoint for a new login that will bring the browser
        back to ``return_to`` (already a safe same-origin path); earlier pending logins of
        this browser (other tabs) stay in the pre-login cookie."""
        endpoint = self.authorization_endpoint()
        pending = self.login_cookie.read(cookie_fields, now) or PendingLogins()
        try:
            login, url = start_login(self.client, endpoint, return_to, now)
        except ValueError:
            raise ServiceUnavailable(
                "The identity provider's authorization endpoint is not usable.",
                reason="login_metadata",
            ) from None
        cookies = self.login_cookie.write(pending.add(login, now, self.settings.login_timeout), now)
        self.counters.redirects += 1
        return LoginRedirect(url, [*clear, *cookies])

    def persist(self, loaded: Loaded) -> Persist | None:
        """How the refresh winner stores its result before sharing it (the Redis store)."""
        if isinstance(self.store, RedisSessionStore):
            return self.store.persist(loaded)
        return None

    async def _refresh_once(self, session: Session) -> Session:
        """The one call to the token endpoint a refresh makes, counted by outcome."""
        try:
            refreshed = await refresh_tokens(
                session,
                endpoint=self.token_endpoint(),
                keys=self.keys,
                rules=self.settings.id_token,
                clock=self._clock,
            )
        except TokenEndpointRefused as exc:
            self.counters.refreshes["ended" if exc.error == "invalid_grant" else "failed"] += 1
            raise
        except IdTokenInvalid:
            self.counters.refreshes["ended"] += 1
            log.warning("refresh of session %s: the new ID token was refused", session.ref)
            raise
        except GatewayError:
            self.counters.refreshes["failed"] += 1
            raise
        self.counters.refreshes["ok"] += 1
        log.info("session %s refreshed (login %s)", session.ref, self.settings.name)
        return refreshed

    async def close(self) -> None:
        await self.refresher.close()
