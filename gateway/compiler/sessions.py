"""Compile the ``logins`` section and each route's ``session`` (OIDC Core §3.1 browser login)
into ``gateway.auth.sessions.settings`` values: pure, like the rest of the compiler.

The loader has already checked the cross-references (issuers exist, names and paths are
unique, a Redis exists for the Redis store); what is left is turning them into values and
refusing what only compiling can see (a client key that does not load).
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.auth.client_auth import check_client_auth
from gateway.auth.sessions.id_token import IdTokenRules
from gateway.auth.sessions.logout import LogoutRules
from gateway.auth.sessions.settings import (
    CookieSettings,
    EndpointOverrides,
    LoginSettings,
    SessionRoute,
    StoreSettings,
)
from gateway.auth.sessions.store import Lifetimes
from gateway.auth.settings import IssuerSettings
from gateway.compiler.auth import client_credentials, redis_settings
from gateway.config.loader import LoadedConfig
from gateway.config.models import Route
from gateway.config.models.sessions import Login


def login_settings(
    loaded: LoadedConfig, issuers: Mapping[str, IssuerSettings]
) -> tuple[LoginSettings, ...]:
    return tuple(
        _login(loaded, index, login, issuers[login.issuer])
        for index, login in enumerate(loaded.config.logins)
    )


def route_session(loaded: LoadedConfig, route: Route) -> SessionRoute | None:
    """The route's session rules when its (inherited) ``auth`` is ``session``."""
    config = loaded.config
    if (route.auth or config.defaults.auth) != "session":
        return None
    session = route.session or config.defaults.session
    name = session.login if session is not None else None
    if name is None:
        name = config.logins[0].key  # the loader made sure there is exactly one
    return SessionRoute(
        login=name,
        bearer_when_present=session is None or session.bearer == "when_present",
        redirect=session is None or session.redirect,
    )


def _login(loaded: LoadedConfig, index: int, login: Login, issuer: IssuerSettings) -> LoginSettings:
    client = client_credentials(login.client)
    try:
        check_client_auth(client)
    except (OSError, ValueError, TypeError) as exc:
        raise loaded.source.error(("logins", index, "client"), str(exc)) from None
    algorithms = frozenset(login.id_token_algorithms)
    trusted = frozenset(login.trusted_audiences)
    return LoginSettings(
        name=login.key,
        issuer_key=issuer.key,
        client=client,
        external_url=login.external_url,
        scopes=tuple(login.scopes),
        redirect_path=login.redirect_path,
        logout_path=login.logout_path,
        backchannel_logout_path=login.backchannel_logout_path,
        post_logout_redirect_uri=login.post_logout_redirect_uri,
        authorization_parameters=dict(login.authorization_parameters),
        id_token=IdTokenRules(
            issuer=issuer.issuer,
            client_id=login.client.client_id,
            algorithms=algorithms,
            trusted_audiences=trusted,
            max_age=login.id_token_max_age,
            leeway=issuer.leeway,
        ),
        logout=LogoutRules(
            issuer=issuer.issuer,
            client_id=login.client.client_id,
            algorithms=algorithms,
            trusted_audiences=trusted,
            leeway=issuer.leeway,
        ),
        endpoints=EndpointOverrides(
            login.endpoints.authorization, login.endpoints.token, login.endpoints.end_session
        ),
        cookie=CookieSettings(
            name=login.cookie.name,
            secure=login.secure,
            chunk_bytes=login.cookie.chunk_bytes,
            max_chunks=login.cookie.max_chunks,
            persistent=login.cookie.persistent,
        ),
        lifetimes=Lifetimes(idle=login.timeouts.idle, absolute=login.timeouts.absolute),
        login_timeout=login.timeouts.login,
        refresh_margin=login.refresh_margin,
        refresh_lease=login.refresh_lease,
        token_timeout=login.token_timeout,
        store=_store(loaded, index, login),
        secrets=tuple(secret.get_secret_value().encode() for secret in login.secrets),
        keep_id_token=login.keep_id_token,
        forward_access_token=login.forward_access_token,
        allow_http=issuer.http.insecure_http,
        ca_file=issuer.http.ca_file,
    )


def _store(loaded: LoadedConfig, index: int, login: Login) -> StoreSettings:
    """The Redis a login uses: its own ``store.redis``, else the shared ``cache.redis``. The
    cookie store uses it too, when there is one, for what replicas must share (revocations
    from back-channel logout, refresh leases, seen logout tokens). Values in it are sealed
    with that Redis config's ``key``/``keys``, as every value the gateway puts in Redis."""
    store = login.store
    redis = store.redis or loaded.config.cache.redis
    try:
        compiled = redis_settings(redis)
    except ValueError as exc:
        raise loaded.source.error(("logins", index, "store", "redis"), str(exc)) from None
    return StoreSettings(
        kind=store.type,
        key_prefix=store.key_prefix,
        timeout=store.timeout,
        redis=compiled,
        sealing_keys=tuple(redis.sealing_keys) if redis is not None else (),
    )
