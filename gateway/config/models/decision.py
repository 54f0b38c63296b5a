"""The forward-auth decision service: its listeners, whom it believes, and host-proxy caching.

The service answers nginx ``auth_request``, Traefik ``ForwardAuth``, Caddy ``forward_auth``
and Envoy ``ext_authz`` (HTTP and gRPC) with the proxy's own decisions, never forwarding.
It reads the original request only from headers a host proxy wrote, so it believes them
only from ``trusted_proxies``; with none configured every check is refused (400).
"""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from gateway.config.models.base import Strict
from gateway.config.types import Duration


class DecisionListen(Strict):
    host: str = "127.0.0.1"
    port: int = Field(9902, ge=0, le=65535)


class DecisionGrpc(Strict):
    """Envoy ``ext_authz`` over gRPC (``envoy.service.auth.v3.Authorization/Check``)."""

    host: str = "127.0.0.1"
    port: int = Field(9903, ge=0, le=65535)


class DecisionCache(Strict):
    """How long a host proxy may reuse an allow (``Cache-Control: private, max-age``)."""

    max_age: Duration = Field(
        0.0,
        description="Upper bound of max-age on allow answers; 0 (the default): "
        "no-store. Never beyond the token's exp or the identity cache's TTLs.",
    )


class DecisionService(Strict):
    listen: DecisionListen = DecisionListen()
    grpc: DecisionGrpc | None = Field(None, description="Set to serve Envoy ext_authz gRPC.")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Peers (IPs or CIDRs) whose forwarded-request headers are believed: the "
        "host proxies. Empty: every check is refused with 400.",
    )
    envoy_path_prefix: str = Field(
        "/envoy",
        description="Envoy ext_authz http_service path_prefix: the original path follows it.",
    )
    cache: DecisionCache = DecisionCache()

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value

    @field_validator("envoy_path_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        segments = value.split("/")[1:]
        if not value.startswith("/") or value.endswith("/") or not all(segments):
            raise ValueError("a path such as /envoy: starting with '/', not ending with one")
        if value.strip("/") in ("nginx", "traefik", "caddy"):
            raise ValueError(f"{value!r} is another host proxy's endpoint")
        return value
