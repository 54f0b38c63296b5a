"""The compiled config the request path reads (``Runtime``) and every ``web.AppKey``.

A ``Runtime`` is built whole from a validated config and then only read. Reload builds a
new one and swaps a single reference (``RuntimeHolder.current``); a request keeps the
runtime it started with, so in-flight requests finish on their own config.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client.core import Metric

from gateway.accesslog import AccessLog
from gateway.auth.introspection import IssuerIntrospection
from gateway.auth.jwks import KeySetProvider
from gateway.auth.pipeline import AuthPipeline, RouteAuth
from gateway.auth.token_cache import TokenCache
from gateway.config.loader import LoadedConfig
from gateway.metrics import Metrics
from gateway.proxy.headers import ForwardingPolicy, Removal
from gateway.proxy.upstreams import UpstreamPool, UpstreamTarget
from gateway.routing.table import RouteTable
from gateway.tracing import Tracing


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """Everything the handler needs about one route, precomputed at load."""

    index: int
    name: str
    upstream: UpstreamTarget
    pool: UpstreamPool
    strip_prefix: str | None
    add_prefix: str | None
    websocket: bool
    auth: RouteAuth
    forward_authorization: bool
    removal: Removal


@dataclass(slots=True)
class Runtime:
    """One loaded config, compiled; its pools and key providers live as long as it does."""

    loaded: LoadedConfig
    table: RouteTable[CompiledRoute]
    routes: tuple[CompiledRoute, ...]
    pipeline: AuthPipeline
    forwarding: ForwardingPolicy
    pools: dict[str, UpstreamPool]
    providers: dict[str, KeySetProvider]
    token_cache: TokenCache
    introspection: dict[str, IssuerIntrospection]
    realm: str
    in_flight: int = 0  # requests started on this runtime and not finished yet
    path_parameters: bool = False
    access_log: AccessLog | None = None
    tracing: Tracing | None = None
    readiness: list[Callable[[], tuple[str, bool]]] = field(default_factory=list)
    # Informational states for /readyz that do not make the gateway unready (a degraded
    # shared cache still serves from memory and the authorization server).
    notes: list[Callable[[], tuple[str, str]]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Scrape-time metric families of this runtime's components.
    metric_sources: list[Callable[[], Iterable[Metric]]] = field(default_factory=list)

    def ready(self) -> tuple[bool, dict[str, bool]]:
        """Overall readiness and each component's, for /readyz."""
        checks = dict(check() for check in self.readiness)
        return all(checks.values()), checks

    async def evict_token(self, digest: bytes) -> None:
        """Forget a token (by SHA-256) in every cache here and, via Redis, in every replica."""
        self.token_cache.evict(digest)
        for client in self.introspection.values():
            await client.cache.evict_token(digest.hex())

    async def evict_subject(self, subject: str) -> int:
        dropped = self.token_cache.evict_subject(subject)
        for client in self.introspection.values():
            dropped += await client.cache.evict_subject(subject)
        return dropped

    async def close(self) -> None:
        for closer in reversed(self.closers):
            await closer()
        for pool in self.pools.values():
            await pool.close()


@dataclass(slots=True)
class RuntimeHolder:
    """The single mutable reference to the live runtime."""

    current: Runtime
    draining: bool = False


HOLDER = web.AppKey("holder", RuntimeHolder)
METRICS = web.AppKey("metrics", Metrics)
