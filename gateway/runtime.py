"""Start a compiled config: the ``Runtime`` the request path reads, and its components.

``gateway.compiler`` turns a config into frozen values with no I/O; ``start_runtime``
creates what those values describe — upstream pools, key-set providers, introspection
clients, the identity cache and its Redis tier — and returns a ``Runtime``. Reload
compiles and starts a whole new runtime and swaps one reference
(``RuntimeHolder.current``); a request keeps the runtime it started with, so in-flight
requests finish on their own config.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.core import Metric

from gateway.accesslog import AccessLog
from gateway.auth.answer_policy import Value
from gateway.auth.authenticate import Authenticator
from gateway.auth.decide import Decider
from gateway.auth.identity_cache import EvictionReport, IdentityCache
from gateway.auth.identity_token import IdentityTokenSigner
from gateway.auth.introspection import IssuerIntrospection
from gateway.auth.jwks import KeySetProvider
from gateway.auth.jwt import JwtVerifier
from gateway.auth.replay import MemoryReplayStore, RedisReplayStore, ReplayStore
from gateway.auth.sessions.logins import Logins
from gateway.auth.sessions.service import LoginMemory, LoginService
from gateway.auth.settings import IssuerSettings
from gateway.cache.memory import MemoryCache
from gateway.cache.sealing import Sealer
from gateway.cache.settings import RedisSettings
from gateway.cache.tiered import TieredCache
from gateway.compiler import CompiledConfig
from gateway.components import (
    Component,
    IdentityCacheComponent,
    IdentityTokens,
    Introspectors,
    KeySets,
    LoginsComponent,
    Pools,
)
from gateway.limits import Limits
from gateway.metrics import gauge_family
from gateway.proxy.pool import UpstreamPool
from gateway.tracing import Tracing, make_tracing

_NEGATIVE_ENTRY_BYTES = 512


@dataclass(slots=True)
class Runtime:
    """One config, compiled and started; its components live as long as it does."""

    compiled: CompiledConfig
    pools: dict[str, UpstreamPool]
    decider: Decider
    identity_cache: IdentityCache
    replay: ReplayStore | None
    signer: IdentityTokenSigner | None
    limits: Limits
    key_sets: KeySets
    components: list[Component]
    logins: Logins = field(default_factory=lambda: Logins({}))  # browser login (issue 18)
    access_log: AccessLog | None = None
    tracing: Tracing | None = None
    in_flight: int = 0  # requests started on this runtime and not finished yet
    _pools: Pools = field(init=False)

    def __post_init__(self) -> None:
        self._pools = next(c for c in self.components if isinstance(c, Pools))

    def ready(self) -> tuple[bool, dict[str, bool]]:
        """Overall readiness and each component's, for /readyz."""
        checks = {name: ok for component in self.components for name, ok in component.readiness()}
        return all(checks.values()), checks

    def notes(self) -> dict[str, str]:
        return {name: note for component in self.components for name, note in component.notes()}

    def metric_families(self, draining: bool) -> Iterable[Metric]:
        for component in self.components:
            yield from component.metric_families()
        ready, checks = self.ready()
        samples: dict[tuple[str, ...], float] = {("all",): float(ready and not draining)}
        samples.update(((name,), float(ok)) for name, ok in checks.items())
        yield gauge_family(
            "gateway_ready", "1 when the component is ready.", ["component"], samples
        )

    async def evict_token(self, digest: bytes) -> EvictionReport:
        return await self.identity_cache.evict_token(digest)

    async def evict_subject(self, subject: str) -> EvictionReport:
        return await self.identity_cache.evict_subject(subject)

    def retire(self) -> None:
        """A newer runtime took over: stop keeping idle upstream connections."""
        self._pools.retire()

    async def close(self) -> None:
        for component in reversed(self.components):
            await component.close()


@dataclass(slots=True)
class RuntimeHolder:
    """The single mutable reference to the live runtime."""

    current: Runtime
    draining: bool = False


def _issuer_ssl(issuer: IssuerSettings) -> ssl.SSLContext | None:
    ca = issuer.http.ca_file
    return ssl.create_default_context(cafile=str(ca)) if ca else None


def _identity_cache(compiled: CompiledConfig) -> IdentityCache:
    settings = compiled.cache
    redis = None
    sealer = None
    if compiled.redis is not None:
        from gateway.cache.redis import RedisCache  # redis-py only where configured

        redis = RedisCache(compiled.redis, f"{settings.key_prefix}evict")
        sealer = Sealer(compiled.sealing_keys)
    shared: TieredCache[Value] = TieredCache(
        MemoryCache(settings.l1_max_entries, settings.l1_max_bytes),
        MemoryCache(settings.l1_max_entries, settings.l1_max_entries * _NEGATIVE_ENTRY_BYTES),
        redis,
        sealer,
        serve_stale=settings.serve_stale,
        group_ttl=settings.max_ttl + settings.serve_stale,
    )
    return IdentityCache(settings, shared, compiled.contexts, len(compiled.routes))


async def start_runtime(
    compiled: CompiledConfig,
    control: aiohttp.ClientSession,
    *,
    wait_for_keys: float = 0.0,
    previous: Runtime | None = None,
) -> Runtime:
    """Start ``compiled``. ``control`` is the control plane's HTTP client (key sets,
    discovery, introspection), never shared with proxied traffic. ``wait_for_keys`` bounds
    how long to wait for the first key sets (reload waits, so the new config goes live
    with keys in hand; start-up does not, and readiness says so)."""
    _check_replay_kept(compiled, previous)
    loop = asyncio.get_running_loop()
    config = compiled.config
    pools = {name: UpstreamPool(target, loop) for name, target in compiled.upstreams.items()}
    providers = {
        issuer.key: KeySetProvider(issuer, control, ssl=_issuer_ssl(issuer))
        for issuer in compiled.issuers
    }
    verifier = JwtVerifier(compiled.issuers, providers) if compiled.issuers else None
    introspectors = {
        issuer.key: IssuerIntrospection(
            issuer, control, _metadata_of(providers[issuer.key]), ssl=_issuer_ssl(issuer)
        )
        for issuer in compiled.issuers
        if issuer.introspection is not None
    }
    cache = _identity_cache(compiled)
    replay = _replay_store(compiled, previous)
    signer = None
    if compiled.signing is not None:
        retiring = previous.signer if previous is not None else None
        signer = IdentityTokenSigner.from_settings(compiled.signing, previous=retiring)
    limits = Limits(compiled, previous.limits if previous is not None else None)
    logins, login_redis = _start_logins(compiled, providers, control, previous)
    decider = Decider(
        Authenticator(verifier, introspectors, cache),
        cache,
        compiled.max_token_size,
        replay,
        limiter=limits.limiter,
        signer=signer,
        sessions=logins if logins.services else None,
    )
    key_sets = KeySets(providers)
    runtime = Runtime(
        compiled=compiled,
        pools=pools,
        decider=decider,
        identity_cache=cache,
        replay=replay,
        key_sets=key_sets,
        signer=signer,
        limits=limits,
        components=[
            Pools(pools),
            limits,
            *([IdentityTokens(signer)] if signer is not None else []),
            key_sets,
            Introspectors(introspectors),
            IdentityCacheComponent(cache),
            *([LoginsComponent(logins, login_redis)] if logins.services else []),
        ],
        logins=logins,
        access_log=AccessLog(config.logging.format) if config.logging.access_log else None,
        tracing=make_tracing(config.tracing.enabled),
    )
    try:
        await asyncio.gather(*(p.start() for p in providers.values()))
        if previous is not None:
            for key, provider in providers.items():
                if (old := previous.key_sets.providers.get(key)) is not None:
                    provider.inherit(old)
        await cache.start()
        await limits.start(previous.limits if previous is not None else None)
        if wait_for_keys > 0 and providers:
            await _wait_ready(list(providers.values()), wait_for_keys)
    except BaseException:
        await runtime.close()
        raise
    return runtime


def _check_replay_kept(compiled: CompiledConfig, previous: Runtime | None) -> None:
    """Refuse a reload that changes the replay store ``_replay_store`` keeps: kept, it would
    go on with its old settings (say, memory only where the new config shares proofs
    through Redis, or the old Redis where the new config names another), and a proof used
    here would pass at another replica.

    Refused rather than rebuilt, like a change of ``replay`` itself: a store started afresh
    on the new Redis would not know the proofs the old one holds, so each of them could be
    used once more during their lifetime; a restart makes that an operator's choice."""
    if previous is None or previous.replay is None or compiled.dpop_replay is None:
        return
    if previous.compiled.dpop_replay != compiled.dpop_replay:
        raise compiled.loaded.source.error(
            ("defaults", "dpop", "replay"),
            "the DPoP replay store is kept across reloads: restart to change it",
        )
    if compiled.dpop_replay.redis and previous.compiled.redis != compiled.redis:
        raise compiled.loaded.source.error(
            ("cache", "redis"),
            "the DPoP replay store (defaults.dpop.replay.redis) keeps its Redis across "
            "reloads: restart to move it to another Redis",
        )


def _replay_store(compiled: CompiledConfig, previous: Runtime | None) -> ReplayStore | None:
    """The DPoP replay store; kept across a reload (a proof must not become usable again
    because the config changed), and shared through Redis where a route asks for it."""
    settings = compiled.dpop_replay
    if settings is None:
        return None
    if previous is not None and previous.replay is not None:
        return previous.replay
    memory = MemoryReplayStore(settings.max_entries, max_per_key=settings.max_entries_per_key)
    if not settings.redis or compiled.redis is None:
        return memory
    from gateway.cache.redis import make_client  # redis-py only where configured

    return RedisReplayStore(
        make_client(compiled.redis, max_connections=16),
        memory,
        key_prefix=settings.key_prefix,
        timeout=compiled.redis.timeout,
        fail_open=settings.fail_open,
    )


def _start_logins(
    compiled: CompiledConfig,
    providers: Mapping[str, KeySetProvider],
    control: aiohttp.ClientSession,
    previous: Runtime | None,
) -> tuple[Logins, list[Any]]:
    """Each login's service (sharing its issuer's key-set provider and one Redis client per
    Redis), with the in-memory replay guards of the runtime it replaces."""
    clients: dict[RedisSettings, Any] = {}
    services: dict[str, LoginService] = {}
    for settings in compiled.logins:
        redis = None
        if settings.store.redis is not None:
            redis = clients.get(settings.store.redis)
            if redis is None:
                from gateway.cache.redis import make_client  # redis-py only where configured

                redis = clients[settings.store.redis] = make_client(
                    settings.store.redis, max_connections=32
                )
        old = previous.logins.services.get(settings.name) if previous is not None else None
        memory = old.memory if old is not None else LoginMemory()
        services[settings.name] = LoginService(
            settings, providers[settings.issuer_key], control, redis=redis, memory=memory
        )
    return Logins(services), list(clients.values())


def _metadata_of(provider: KeySetProvider) -> Callable[[], Mapping[str, Any] | None]:
    """The issuer's discovery metadata as it is now (it may load after start-up)."""
    return lambda: provider.metadata


async def _wait_ready(providers: Sequence[KeySetProvider], limit: float) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not all(p.ready for p in providers):
        if asyncio.get_running_loop().time() >= deadline:
            return
        await asyncio.sleep(0.05)
