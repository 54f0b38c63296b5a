"""Browser logins (OIDC Core §3.1 code flow with RFC 7636 PKCE) and their sessions: the
``logins`` section, and what a route with ``auth: session`` says about them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.config.models.base import Strict
from gateway.config.models.caches import RedisConfig
from gateway.config.models.issuers import Algorithm, ClientAuth
from gateway.config.types import Duration

_PATH = r"^/[A-Za-z0-9\-._~/]*$"
_COOKIE_NAME = r"^[!#$%&'*+\-^_`|~0-9A-Za-z]+$"  # an RFC 6265 token without "."
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 §3.3 scope-token
_RESERVED_PARAMETERS = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "request",
        "request_uri",
    }
)
MIN_SECRET_CHARS = 32
ID_TOKEN_ALGORITHMS: tuple[Algorithm, ...] = ("RS256", "ES256", "PS256", "EdDSA")


class SessionCookie(Strict):
    name: str = Field(
        "gw_session",
        pattern=_COOKIE_NAME,
        max_length=64,
        description="Prefixed with __Host- when external_url is https.",
    )
    chunk_bytes: int = Field(3800, ge=1024, le=4000, description="Value bytes per cookie.")
    max_chunks: int = Field(
        2,
        ge=1,
        le=8,
        description="Cookies one session may span (all must fit one Cookie "
        "header within limits.max_header_size).",
    )
    persistent: bool = Field(
        True, description="Max-Age = the absolute timeout; false: a browser-session cookie."
    )


class SessionTimeouts(Strict):
    idle: Duration = Field(3600.0, gt=0, description="Ends after this long without a request.")
    absolute: Duration = Field(43200.0, gt=0, description="Ends this long after the login.")
    login: Duration = Field(600.0, gt=0, le=3600, description="A sign-in must finish within.")


class SessionStoreConfig(Strict):
    """``cookie``: the sealed session in the cookie (no server state). ``redis``: the cookie
    holds a random id, Redis the sealed session (revocable, small cookies, shared)."""

    type: Literal["cookie", "redis"] = "cookie"
    redis: RedisConfig | None = Field(None, description="Default: cache.redis.")
    key_prefix: str = "gw:session:"
    timeout: Duration = Field(0.5, gt=0, description="Bound on each Redis command.")


class LoginEndpoints(Strict):
    """The authorization server's endpoints; each defaults to the issuer's discovery metadata
    (authorization_endpoint, token_endpoint, end_session_endpoint)."""

    authorization: str | None = None
    token: str | None = None
    end_session: str | None = None

    @field_validator("authorization", "token", "end_session")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
                raise ValueError("expected an http(s) URL without fragment")
        return value


class Login(Strict):
    """One OpenID Connect client registration the gateway logs browsers in with."""

    name: str | None = Field(None, description="Used by routes' session.login; default: issuer.")
    issuer: str = Field(description="An issuers[] name or URL: its keys verify ID tokens.")
    client: ClientAuth
    external_url: str = Field(
        description="The origin browsers use (https://app.example.com): the redirect_uri is "
        "built on it, and https turns on Secure and the __Host- cookie prefix."
    )
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    redirect_path: str = Field("/oauth2/callback", pattern=_PATH)
    logout_path: str = Field("/oauth2/logout", pattern=_PATH)
    post_logout_redirect: str | None = Field(
        None,
        description="Registered post_logout_redirect_uri (absolute, or a path on "
        "external_url); default: external_url + '/'.",
    )
    backchannel_logout_path: str | None = Field(None, pattern=_PATH)
    authorization_parameters: dict[str, str] = Field(
        default_factory=dict,
        description="Extra authorization request parameters (prompt, acr_values, resource…).",
    )
    id_token_algorithms: list[Algorithm] = Field(default_factory=lambda: list(ID_TOKEN_ALGORITHMS))
    id_token_max_age: Duration = Field(600.0, gt=0, description="Refuse older ID tokens (iat).")
    trusted_audiences: list[str] = Field(
        default_factory=list,
        description="Other ID token audiences to accept (OIDC Core "
        "§3.1.3.7 item 3); by default only the client itself.",
    )
    endpoints: LoginEndpoints = LoginEndpoints()
    cookie: SessionCookie = SessionCookie()
    timeouts: SessionTimeouts = SessionTimeouts()
    refresh_margin: Duration = Field(60.0, description="Refresh this long before expiry.")
    refresh_lease: Duration = Field(15.0, gt=0, description="Redis lease of one refresh.")
    token_timeout: Duration = Field(5.0, gt=0, description="Bound on each token request.")
    store: SessionStoreConfig = SessionStoreConfig()
    secrets: list[SecretStr] = Field(
        min_length=1,
        description="Sealing secrets (≥ 32 characters each); the first seals, "
        "all open: add a new one in front to rotate, drop the last after the absolute timeout.",
    )
    keep_id_token: bool = Field(True, description="Keep it for id_token_hint at logout.")
    forward_access_token: bool = Field(False, description="Send Authorization: Bearer upstream.")

    @property
    def key(self) -> str:
        return self.name or self.issuer

    @property
    def secure(self) -> bool:
        return urlsplit(self.external_url).scheme == "https"

    @field_validator("external_url")
    @classmethod
    def _origin(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("expected an http(s) origin such as https://app.example.com")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError("an origin has no path, query, fragment or credentials")
        # The origin as a browser serialises it (RFC 6454 §6.2: lowercase scheme and host,
        # no default port): the Origin header of this site's own requests is compared to it.
        scheme, host = parts.scheme.lower(), parts.hostname
        try:
            port = parts.port
        except ValueError:
            raise ValueError("the origin's port is not a number from 0 to 65535") from None
        host = f"[{host}]" if ":" in host else host
        default = {"https": 443, "http": 80}[scheme]
        return f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        for scope in value:
            if _SCOPE_TOKEN.fullmatch(scope) is None:
                raise ValueError(f"{scope!r} is not a scope token (RFC 6749 §3.3)")
        # OIDC Core §3.1.2.1: "OpenID Connect requests MUST contain the openid scope value."
        return list(dict.fromkeys(["openid", *value]))

    @field_validator("secrets")
    @classmethod
    def _strong(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(len(secret.get_secret_value()) < MIN_SECRET_CHARS for secret in value):
            raise ValueError(
                f"each sealing secret needs at least {MIN_SECRET_CHARS} characters "
                "(e.g. `openssl rand -base64 32`)"
            )
        if len({secret.get_secret_value() for secret in value}) != len(value):
            raise ValueError("the sealing secrets must differ")
        return value

    @field_validator("authorization_parameters")
    @classmethod
    def _extra(cls, value: dict[str, str]) -> dict[str, str]:
        clash = sorted(_RESERVED_PARAMETERS.intersection(value))
        if clash:
            raise ValueError(f"set by the gateway, not here: {', '.join(clash)}")
        return value

    @field_validator("id_token_algorithms")
    @classmethod
    def _asymmetric(cls, value: list[Algorithm]) -> list[Algorithm]:
        if any(alg.startswith("HS") for alg in value):
            raise ValueError("ID tokens are verified with the issuer's public keys only")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Login:
        paths = [self.redirect_path, self.logout_path, self.backchannel_logout_path]
        given = [path for path in paths if path is not None]
        if len(set(given)) != len(given):
            raise ValueError("redirect_path, logout_path and backchannel_logout_path must differ")
        if self.timeouts.idle > self.timeouts.absolute:
            raise ValueError("timeouts.idle cannot be longer than timeouts.absolute")
        if self.refresh_lease <= self.token_timeout:
            raise ValueError(
                "refresh_lease must outlast token_timeout, or a slow refresh "
                "would lose its lease to a second one"
            )
        if self.post_logout_redirect is not None:
            target = urlsplit(self.post_logout_redirect)
            if not (
                self.post_logout_redirect.startswith("/") and not target.netloc
            ) and target.scheme not in ("https", "http"):
                raise ValueError("post_logout_redirect is an absolute URL or a path")
        return self

    @property
    def redirect_uri(self) -> str:
        return self.external_url + self.redirect_path

    @property
    def post_logout_redirect_uri(self) -> str:
        target = self.post_logout_redirect or "/"
        return self.external_url + target if target.startswith("/") else target


class RouteSession(Strict):
    """What ``auth: session`` means on one route.

    ``bearer: when_present``: a request with an ``Authorization`` header is judged as on an
    ``auth: required`` route (a bad token is a 401, never a login redirect); without one, the
    session decides. ``never``: only the session counts, and an ``Authorization`` header is
    refused (400), since the route would otherwise forward a credential it never checked.
    """

    login: str | None = Field(None, description="A logins[] name; default: the only login.")
    bearer: Literal["when_present", "never"] = "when_present"
    redirect: bool = Field(
        True,
        description="Send unauthenticated browsers to the login; "
        "false: always 401 (for routes only scripts call).",
    )


Loc = tuple[str | int, ...]


COOKIE_HEADER_RESERVE = 512  # bytes of a Cookie header left for other cookies and names


def login_reference_problems(
    logins: list[Login],
    issuers: Mapping[str, bool],
    routes: list[tuple[Loc, str | None, RouteSession | None]],
    *,
    shared_redis: bool,
    max_header_size: int,
) -> list[tuple[Loc, str]]:
    """The cross-references a schema cannot express, as ``(key path, message)``: login names
    unique and naming a configured issuer (``issuers``: key -> whether it uses discovery,
    without which the endpoints must be given), a Redis for the Redis store, a session's
    cookies fitting one Cookie header the listener accepts, gateway paths not shared by two
    logins, and every ``auth: session`` route naming (or defaulting to) a login. ``routes``
    holds each route's key path, effective ``auth`` and ``session``."""
    problems: list[tuple[Loc, str]] = []
    seen: dict[str, int] = {}
    paths: dict[str, int] = {}
    cookies: dict[str, int] = {}
    for index, login in enumerate(logins):
        loc: Loc = ("logins", index)
        # One cookie name per login: the pre-login cookie is the name + "_login".
        for cookie in (login.cookie.name, login.cookie.name + "_login"):
            if cookie in cookies and cookies[cookie] != index:
                problems.append(
                    (
                        (*loc, "cookie", "name"),
                        f"the cookie {cookie} is already a cookie of logins[{cookies[cookie]}]",
                    )
                )
            cookies.setdefault(cookie, index)
        if login.key in seen:
            problems.append(
                (
                    (*loc, "name"),
                    f"login {login.key!r} is already used by logins[{seen[login.key]}]",
                )
            )
        seen.setdefault(login.key, index)
        if login.issuer not in issuers:
            known = ", ".join(sorted(issuers)) or "none are configured"
            problems.append(((*loc, "issuer"), f"unknown issuer {login.issuer!r} ({known})"))
        elif not issuers[login.issuer] and None in (
            login.endpoints.authorization,
            login.endpoints.token,
        ):
            problems.append(
                (
                    (*loc, "endpoints"),
                    "endpoints.authorization and endpoints.token are needed: the issuer's "
                    "keys do not use discovery",
                )
            )
        cookie_bytes = login.cookie.chunk_bytes * login.cookie.max_chunks
        if login.store.type == "cookie" and cookie_bytes + COOKIE_HEADER_RESERVE > max_header_size:
            problems.append(
                (
                    (*loc, "cookie"),
                    f"{login.cookie.max_chunks} cookies of {login.cookie.chunk_bytes} bytes do "
                    f"not fit limits.max_header_size ({max_header_size}): lower "
                    "cookie.max_chunks, raise the limit or use the redis store",
                )
            )
        if login.store.type == "redis" and login.store.redis is None and not shared_redis:
            problems.append(((*loc, "store"), "the redis store needs store.redis or cache.redis"))
        for field in ("redirect_path", "logout_path", "backchannel_logout_path"):
            path = getattr(login, field)
            if path is None:
                continue
            if path in paths and paths[path] != index:
                problems.append(
                    ((*loc, field), f"{path} is already a path of logins[{paths[path]}]")
                )
            paths.setdefault(path, index)
    for loc, auth, session in routes:
        if auth != "session":
            if session is not None:
                problems.append(((*loc, "session"), "session applies only with auth: session"))
            continue
        name = session.login if session is not None else None
        if name is None and len(logins) != 1:
            problems.append(
                (
                    (*loc, "auth"),
                    "auth: session needs session.login when there "
                    f"is not exactly one login ({len(logins)} configured)",
                )
            )
        elif name is not None and name not in seen:
            problems.append(((*loc, "session", "login"), f"unknown login {name!r}"))
    return problems
