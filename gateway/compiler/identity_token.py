"""Compile the signed identity token settings (issue 17): the key ring and each route's token.

Keys are loaded from their files now (a missing, unreadable or unusable key is a config
error, never a key generated per process); a route's section becomes an
``IdentityTokenRoute``. Errors are ``SettingError``s whose ``loc`` is the key path below the
section, which the caller turns into file, line and key path.
"""

from __future__ import annotations

from gateway.auth.headers import HeaderTemplate
from gateway.auth.identity_token import (
    _UNFIT_HEADERS,
    DEFAULT_FORWARDING_HEADER,
    RESERVED_CLAIMS,
    IdentityTokenRoute,
    SignedIdentity,
    SigningSettings,
)
from gateway.auth.signing_keys import KeyFileError, KeyRing, KeySpec
from gateway.config.errors import SettingError
from gateway.config.loader import LoadedConfig
from gateway.config.models import Route
from gateway.config.models.identity_token import RouteIdentityToken, TokenSigning
from gateway.config.yaml import Loc
from gateway.proxy.targets import UpstreamTarget
from gateway.routing.semantics import PathSemantics


def compile_signing(section: TokenSigning) -> SigningSettings:
    """Load the keys; a key that is missing, unreadable or cannot sign its algorithm raises
    SettingError at ``keys[i]``, a ring that cannot work (no signer, a kid twice) at ``keys``."""
    specs = [KeySpec(file=k.file, kid=k.kid, alg=k.alg, active=k.active) for k in section.keys]
    try:
        ring = KeyRing.load(specs, jwks_max_age=int(section.jwks.max_age))
    except KeyFileError as exc:
        raise SettingError(("keys", exc.index), str(exc)) from None
    except ValueError as exc:
        raise SettingError(("keys",), str(exc)) from None
    return SigningSettings(
        issuer=section.issuer,
        ring=ring,
        cache_entries=section.cache.max_entries,
        refresh_before=section.cache.refresh_before,
        jwks_on_proxy=section.jwks.on_proxy,
    )


def compile_route_token(
    section: RouteIdentityToken | None,
    *,
    upstream: str,
    forward_authorization: bool,
    signing: SigningSettings | None,
) -> IdentityTokenRoute | None:
    """A route's settings; None when it sends no identity token. Raises SettingError with
    the key path below the ``identity_token`` section."""
    if section is None or not section.enabled:
        return None
    if signing is None:
        raise SettingError((), "identity tokens need a top-level token_signing section")
    default = DEFAULT_FORWARDING_HEADER if forward_authorization else "Authorization"
    header = section.header or default
    lowered = header.lower()
    if lowered == "authorization" and forward_authorization:
        raise SettingError(("header",), "Authorization still carries the client's token here "
                           "(forward_authorization); name another header")  # fmt: skip
    if lowered in _UNFIT_HEADERS:
        raise SettingError(("header",), f"{header} cannot carry an identity token")
    claims: list[tuple[str, HeaderTemplate]] = []
    for name, template in section.claims.items():
        if not name:
            raise SettingError(("claims",), "a claim needs a name")
        if name in RESERVED_CLAIMS:
            raise SettingError(("claims", name), f"claim {name!r} is set by the gateway itself")
        try:
            claims.append((name, HeaderTemplate.compile(template)))
        except ValueError as exc:
            raise SettingError(("claims", name), str(exc)) from None
    return IdentityTokenRoute(
        header=header,
        bearer=lowered == "authorization",
        audience=section.audience or upstream,
        lifetime=int(section.lifetime),
        claims=tuple(claims),
        bind_request=section.bind_request,
    )


def signing_settings(loaded: LoadedConfig) -> SigningSettings | None:
    """The top-level ``token_signing``, keys loaded (or None without the section)."""
    section = loaded.config.token_signing
    if section is None:
        return None
    try:
        return compile_signing(section)
    except SettingError as exc:
        raise loaded.source.error(("token_signing", *exc.loc), str(exc)) from None


def signed_identity(
    loaded: LoadedConfig,
    index: int,
    route: Route,
    target: UpstreamTarget,
    semantics: PathSemantics,
    signing: SigningSettings | None,
) -> SignedIdentity | None:
    """A route's identity token and its upstream's address (for the request binding)."""
    defaults = loaded.config.defaults
    section = route.identity_token or defaults.identity_token
    forward = defaults.forward_authorization
    if route.forward_authorization is not None:
        forward = route.forward_authorization
    try:
        compiled = compile_route_token(
            section, upstream=route.upstream, forward_authorization=forward, signing=signing
        )
    except SettingError as exc:
        where: Loc = ("routes", index) if route.identity_token else ("defaults",)
        raise loaded.source.error((*where, "identity_token", *exc.loc), str(exc)) from None
    if compiled is None:
        return None
    return SignedIdentity(
        route=compiled,
        scheme="https" if target.ssl is not None else "http",
        host=target.host or "localhost",
        port=target.port,
        base_path=target.base_path,
        strip_prefix=route.rewrite.strip_prefix if route.rewrite else None,
        add_prefix=route.rewrite.add_prefix if route.rewrite else None,
        semantics=semantics,
    )
