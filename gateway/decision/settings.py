"""The decision service's compiled settings (the ``decision`` section of the config).

Compiled with the rest of the config (``gateway check`` refuses a bad one) and carried on
the runtime, so a reload changes whom the service trusts at once; the listeners'
addresses are fixed at start, like the proxy's.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from gateway.config.loader import LoadedConfig
from gateway.proxy.trust import TrustedProxies


@dataclass(frozen=True, slots=True)
class DecisionSettings:
    trusted: TrustedProxies  # host proxies whose forwarded-request headers are believed
    # Host proxies and the proxies in front of them (forwarding.trusted_proxies): the
    # X-Forwarded-For entries skipped to find the client a rate-limit ``ip`` key counts.
    forwarders: TrustedProxies
    envoy_path_prefix: str
    max_age: float  # bound on Cache-Control max-age for allow answers; 0: no-store


def decision_settings(loaded: LoadedConfig) -> DecisionSettings | None:
    """The compiled ``decision`` section, or None when the service is off."""
    section = loaded.config.decision
    if section is None:
        return None
    try:
        trusted = TrustedProxies(section.trusted_proxies)
        forwarders = TrustedProxies(
            [*section.trusted_proxies, *loaded.config.forwarding.trusted_proxies]
        )
    except ValueError as exc:
        raise loaded.source.error(("decision", "trusted_proxies"), str(exc)) from None
    if section.grpc is not None and not _grpc_installed():
        raise loaded.source.error(
            ("decision", "grpc"),
            "Envoy ext_authz over gRPC needs grpcio and xds-protos: "
            "pip install 'oauth-gateway[envoy]'",
        )
    return DecisionSettings(trusted, forwarders, section.envoy_path_prefix, section.cache.max_age)


def _grpc_installed() -> bool:
    try:
        return importlib.util.find_spec("envoy.service.auth.v3.external_auth_pb2_grpc") is not None
    except ImportError:  # a missing parent package
        return False
