"""The whole config file."""

from __future__ import annotations

from pydantic import Field

from gateway.config.models.base import Strict
from gateway.config.models.caches import IntrospectionCache, TokenCache
from gateway.config.models.decision import DecisionService
from gateway.config.models.identity_token import TokenSigning
from gateway.config.models.issuers import Issuer
from gateway.config.models.listeners import AdminListen, Forwarding, Limits, Listen
from gateway.config.models.operations import LoggingConfig, Shutdown, Tracing
from gateway.config.models.ratelimit import RateLimiting
from gateway.config.models.routes import Route, RouteDefaults
from gateway.config.models.sender_constraint import ProtectedResource
from gateway.config.models.sessions import Login
from gateway.config.models.upstreams import Upstream


class GatewayConfig(Strict):
    listen: Listen = Listen()
    admin: AdminListen = AdminListen()
    decision: DecisionService | None = None  # the forward-auth decision service; off
    limits: Limits = Limits()
    logging: LoggingConfig = LoggingConfig()
    tracing: Tracing = Tracing()
    shutdown: Shutdown = Shutdown()
    forwarding: Forwarding = Forwarding()
    upstreams: dict[str, Upstream] = Field(min_length=1)
    issuers: list[Issuer] = Field(default_factory=list)
    logins: list[Login] = Field(default_factory=list)
    token_cache: TokenCache = TokenCache()
    cache: IntrospectionCache = IntrospectionCache()
    token_signing: TokenSigning | None = None
    rate_limiting: RateLimiting = RateLimiting()
    resources: list[ProtectedResource] = Field(
        default_factory=list, description="RFC 9728 protected resources (metadata for MCP)."
    )
    defaults: RouteDefaults = RouteDefaults()
    routes: list[Route] = Field(min_length=1)
