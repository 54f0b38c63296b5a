"""Compile sender constraints (RFC 9449 DPoP, RFC 8705 certificate binding), RFC 9728
protected resources, and each route's challenge (what its ``WWW-Authenticate`` offers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.auth.dpop import DpopPolicy
from gateway.auth.mtls import CertificateSource
from gateway.auth.policy import Policy
from gateway.auth.resource_metadata import ResourceMetadata, compile_metadata, index_by_path
from gateway.auth.sender import DpopRules, MtlsRules, SenderRules
from gateway.auth.settings import IssuerSettings
from gateway.config.loader import LoadedConfig
from gateway.config.models import Route
from gateway.config.yaml import Loc
from gateway.problems import Challenge
from gateway.proxy.trust import TrustedProxies


def sender_rules(loaded: LoadedConfig, index: int, route: Route) -> SenderRules:
    config = loaded.config
    defaults = config.defaults
    dpop = route.dpop or defaults.dpop
    certificates = route.client_certificates or defaults.client_certificates
    dpop_rules = None
    if dpop.mode != "off":
        assert dpop.external_url is not None  # the model requires it unless off
        dpop_rules = DpopRules(
            mode=dpop.mode,
            external_url=dpop.external_url,
            policy=DpopPolicy(
                algorithms=tuple(dpop.algorithms),
                max_age=dpop.max_age,
                leeway=dpop.leeway,
                max_proof_bytes=dpop.max_proof_size,
            ),
            nonce_secret=dpop.nonce.secret.get_secret_value().encode() if dpop.nonce else None,
            nonce_lifetime=dpop.nonce.lifetime if dpop.nonce else 300.0,
            forward_proof=dpop.forward_proof,
        )
        if dpop.replay.redis and config.cache.redis is None:
            where: Loc = ("routes", index, "dpop") if route.dpop else ("defaults", "dpop")
            raise loaded.source.error((*where, "replay", "redis"), "needs a cache.redis section")
    mtls_rules = None
    if certificates.mode != "off":
        where = ("routes", index) if route.client_certificates else ("defaults",)
        if certificates.source == "tls" and not _asks_for_certificates(loaded):
            raise loaded.source.error(
                (*where, "client_certificates", "source"),
                "tls needs the proxy listener to terminate TLS and ask for client "
                "certificates (listen.tls.client_auth.mode: optional or required); behind a "
                "front proxy that does, use source: header",
            )
        trusted = certificates.trusted_proxies
        if trusted is None:
            trusted = config.forwarding.trusted_proxies
        if certificates.source == "header" and not trusted:
            raise loaded.source.error(
                (*where, "client_certificates", "trusted_proxies"),
                "a certificate header is believed only from trusted proxies: list them "
                "(here or in forwarding.trusted_proxies)",
            )
        mtls_rules = MtlsRules(
            mode=certificates.mode,
            source=CertificateSource(certificates.source, certificates.header_format),
            header=certificates.header,
            peer_trusted=TrustedProxies(trusted).is_trusted,
        )
    return SenderRules(dpop=dpop_rules, mtls=mtls_rules)


def _asks_for_certificates(loaded: LoadedConfig) -> bool:
    tls = loaded.config.listen.tls
    return tls is not None and tls.client_auth.mode != "none"


@dataclass(frozen=True, slots=True)
class RouteView:
    """What the resource compile step needs to know about a compiled route."""

    name: str
    issuers: Sequence[str]  # issuer identifiers the route accepts
    policy: Policy
    sender: SenderRules
    bearer_methods: Sequence[str]


def protected_resources(
    loaded: LoadedConfig, routes: Sequence[RouteView]
) -> tuple[dict[str, ResourceMetadata], dict[str, ResourceMetadata]]:
    """(documents by well-known path, the resource of each route name that has one)."""
    by_route: dict[str, ResourceMetadata] = {}
    documents: list[ResourceMetadata] = []
    names = {route.name for route in routes}
    for position, spec in enumerate(loaded.config.resources):
        where: Loc = ("resources", position)
        unknown = sorted(set(spec.routes or ()) - names)
        if unknown:
            raise loaded.source.error((*where, "routes"), f"unknown routes: {unknown}")
        mine = [r for r in routes if spec.routes is None or r.name in spec.routes]
        servers = spec.authorization_servers or sorted({i for r in mine for i in r.issuers})
        dpop = [r.sender.dpop for r in mine if r.sender.dpop is not None]
        algs = sorted({alg for rules in dpop for alg in rules.policy.algorithms})
        scopes = spec.scopes_supported
        if scopes is None:
            scopes = sorted({s for r in mine for s in r.policy.scopes_named})
        methods: Sequence[str] | None = spec.bearer_methods_supported
        if methods is None:
            methods = sorted({m for r in mine for m in r.bearer_methods})
        try:
            document = compile_metadata(
                spec.resource,
                authorization_servers=servers,
                scopes_supported=scopes,
                bearer_methods_supported=methods,
                resource_signing_alg_values_supported=spec.resource_signing_alg_values_supported,
                dpop_signing_alg_values_supported=algs,
                dpop_bound_access_tokens_required=bool(mine)
                and all(r.sender.dpop_mode == "required" for r in mine),
                tls_client_certificate_bound_access_tokens=any(
                    r.sender.mtls_mode != "off" for r in mine
                ),
                resource_name=spec.resource_name,
                resource_documentation=spec.resource_documentation,
            )
        except ValueError as exc:
            raise loaded.source.error(where, str(exc)) from None
        documents.append(document)
        for route in mine:
            by_route.setdefault(route.name, document)
    try:
        index = index_by_path(documents)
    except ValueError as exc:
        raise loaded.source.error(("resources",), str(exc)) from None
    return index, by_route


def route_challenge(
    realm: str, resource: ResourceMetadata | None, policy: Policy, sender: SenderRules
) -> Challenge:
    """What the route's challenges offer: with a protected resource, its metadata URL and the
    scopes a client should request (RFC 9728 §5.1, MCP); with DPoP, that scheme too."""
    scope = " ".join(policy.required_scopes) if resource is not None else None
    return Challenge(
        realm=realm,
        resource_metadata=resource.metadata_url if resource is not None else None,
        scope=scope or None,
        dpop_algs=sender.dpop_algs,
        bearer=sender.dpop_mode != "required",
    )


def issuer_identifiers(
    names: Sequence[str] | None, issuers: Mapping[str, IssuerSettings]
) -> list[str]:
    """The issuer identifiers (URLs) a route accepts, by its ``issuers`` names."""
    keys = names if names is not None else list(issuers)
    return [issuers[key].issuer for key in keys]


@dataclass(frozen=True, slots=True)
class DpopReplaySettings:
    """One replay store for every DPoP route (RFC 9449 §11.1): a proof is used once, on any
    route. Set once, in ``defaults.dpop.replay`` (``dpop_replay_settings`` refuses a route
    that writes its own); ``max_entries_per_key`` is one proof key's share of the store."""

    max_entries: int
    max_entries_per_key: int  # one proof key's share of max_entries
    redis: bool
    fail_open: bool
    key_prefix: str


def dpop_replay_settings(loaded: LoadedConfig, routes: Sequence[Any]) -> DpopReplaySettings | None:
    """The one replay store (RFC 9449 §11.1) every DPoP route shares: ``defaults.dpop.replay``.

    A proof's ``jti`` must be unique per key whichever route it is sent to, so routes cannot
    keep separate stores; a route that writes a different ``replay`` is an error rather than
    a setting quietly ignored or merged.
    """
    config = loaded.config
    shared = config.defaults.dpop.replay
    enabled = False
    for index, route in enumerate(config.routes):
        dpop = route.dpop or config.defaults.dpop
        if dpop.mode == "off":
            continue
        enabled = True
        own = route.dpop is not None and "replay" in route.dpop.model_fields_set
        if own and dpop.replay != shared:
            raise loaded.source.error(
                ("routes", index, "dpop", "replay"),
                "the replay store is shared by every route: set it once in defaults.dpop.replay",
            )
    if not enabled:
        return None
    per_key = shared.max_entries_per_key
    return DpopReplaySettings(
        max_entries=shared.max_entries,
        max_entries_per_key=max(1, shared.max_entries // 10) if per_key is None else per_key,
        redis=shared.redis,
        fail_open=shared.on_redis_error == "fail_open",
        key_prefix=shared.key_prefix,
    )
