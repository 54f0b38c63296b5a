"""OIDC Core §3.1 and RFC 6265: one login config and one session route, compiled into plain
frozen values (``gateway.compiler.sessions`` makes them from the ``logins`` section), so the
auth core never reads the operator's file format."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.auth.sessions.id_token import IdTokenRules
from gateway.auth.sessions.logout import LogoutRules
from gateway.auth.sessions.store import Lifetimes
from gateway.auth.settings import ClientCredentials
from gateway.cache.settings import RedisSettings


@dataclass(frozen=True, slots=True)
class EndpointOverrides:
    """Endpoints given in the config; None: the issuer's discovery metadata says."""

    authorization: str | None = None
    token: str | None = None
    end_session: str | None = None


@dataclass(frozen=True, slots=True)
class CookieSettings:
    name: str
    secure: bool  # external_url is https: Secure and the __Host- prefix
    chunk_bytes: int
    max_chunks: int
    persistent: bool


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """``cookie``: the sealed session in the cookie. ``redis``: a random id in the cookie, the
    session sealed in Redis (``redis`` is then set, with ``sealing_keys`` from its config)."""

    kind: Literal["cookie", "redis"]
    key_prefix: str
    timeout: float
    redis: RedisSettings | None = None  # the store's Redis, or the shared cache's
    sealing_keys: tuple[bytes, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class LoginSettings:
    """One OpenID Connect client registration the gateway logs browsers in with."""

    name: str
    issuer_key: str  # the issuers[] entry whose key set verifies ID and logout tokens
    client: ClientCredentials
    external_url: str  # the origin browsers use, without a trailing "/"
    scopes: tuple[str, ...]
    redirect_path: str
    logout_path: str
    backchannel_logout_path: str | None
    post_logout_redirect_uri: str
    authorization_parameters: Mapping[str, str]
    id_token: IdTokenRules
    logout: LogoutRules
    endpoints: EndpointOverrides
    cookie: CookieSettings
    lifetimes: Lifetimes
    login_timeout: float
    refresh_margin: float
    refresh_lease: float
    token_timeout: float
    store: StoreSettings
    secrets: tuple[bytes, ...] = field(repr=False)  # seal the cookies (AES-256-GCM via HKDF)
    keep_id_token: bool = True
    forward_access_token: bool = False
    allow_http: bool = False  # the issuer's insecure_http: plain http beyond loopback
    ca_file: Path | None = None

    @property
    def redirect_uri(self) -> str:
        return self.external_url + self.redirect_path

    @property
    def paths(self) -> frozenset[str]:
        """The gateway's own paths for this login (never a place to return to)."""
        given = (self.redirect_path, self.logout_path, self.backchannel_logout_path)
        return frozenset(path for path in given if path is not None)


@dataclass(frozen=True, slots=True)
class SessionRoute:
    """What ``auth: session`` means on one route.

    ``bearer_when_present``: a request with a token is judged as on an ``auth: required``
    route (a bad token is a 401, never a redirect); else only the session counts and an
    ``Authorization`` header is refused. ``redirect``: unauthenticated navigations go to the
    login; False: always the 401 (routes only scripts call).
    """

    login: str
    bearer_when_present: bool = True
    redirect: bool = True
