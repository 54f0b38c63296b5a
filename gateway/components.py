"""The started parts of a runtime, each behind one small protocol.

A ``Component`` says whether it is ready, what an operator should know (``/readyz`` notes
that do not make the gateway unready), which metric families it exports (read at scrape
time, so they cost nothing per request), and how it closes. ``Runtime`` holds a list of
them and asks each in turn, instead of collecting callbacks from everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from prometheus_client.core import Metric

from gateway.auth.breaker import STATE_VALUES, Breaker
from gateway.auth.identity_cache import IdentityCache
from gateway.auth.identity_token import IdentityTokenSigner
from gateway.auth.introspection import IssuerIntrospection
from gateway.auth.jwks import KeySetProvider
from gateway.auth.sessions.logins import Logins
from gateway.metrics import counter_family, gauge_family
from gateway.proxy.pool import UpstreamPool


def _breaker_notes(endpoint: str, breakers: Mapping[str, Breaker]) -> list[tuple[str, str]]:
    """A breaker that is not closed is worth an operator's look (not unreadiness: JWTs
    with known keys, and cached tokens, still pass)."""
    return [
        (f"breaker:{endpoint}:{key}", breaker.state)
        for key, breaker in breakers.items()
        if breaker.state != "closed"
    ]


def _breaker_metrics(endpoint: str, breakers: Mapping[str, Breaker]) -> Iterable[Metric]:
    yield gauge_family(
        "gateway_circuit_breaker_state", "0 closed, 1 open, 2 half-open; by issuer, endpoint.",
        ["issuer", "endpoint"],
        {(k, endpoint): STATE_VALUES[b.state] for k, b in breakers.items()},
    )  # fmt: skip
    yield counter_family(
        "gateway_circuit_breaker_opens", "Times a control-plane breaker opened.",
        ["issuer", "endpoint"], {(k, endpoint): float(b.opened) for k, b in breakers.items()},
    )  # fmt: skip


class Component(Protocol):
    def readiness(self) -> Iterable[tuple[str, bool]]: ...

    def notes(self) -> Iterable[tuple[str, str]]: ...

    def metric_families(self) -> Iterable[Metric]: ...

    async def close(self) -> None: ...


class KeySets:
    """Every issuer's key-set provider: the gateway is ready once each has keys."""

    def __init__(self, providers: Mapping[str, KeySetProvider]) -> None:
        self.providers = providers

    def readiness(self) -> Iterable[tuple[str, bool]]:
        return [(f"keys:{key}", provider.ready) for key, provider in self.providers.items()]

    def notes(self) -> Iterable[tuple[str, str]]:
        return _breaker_notes("keys", {k: p.breaker for k, p in self.providers.items()})

    def metric_families(self) -> Iterable[Metric]:
        yield counter_family(
            "gateway_keyset_fetches", "Key-set (JWKS) fetches attempted, by issuer.",
            ["issuer"], {(k,): float(p.fetch_count) for k, p in self.providers.items()},
        )  # fmt: skip
        yield from _breaker_metrics("keys", {k: p.breaker for k, p in self.providers.items()})

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()


class Introspectors:
    """The introspection clients; a server that refuses our credentials is noted."""

    def __init__(self, clients: Mapping[str, IssuerIntrospection]) -> None:
        self.clients = clients

    def readiness(self) -> Iterable[tuple[str, bool]]:
        return ()

    def notes(self) -> Iterable[tuple[str, str]]:
        refused = [
            (f"introspection:{key}", "client credentials refused")
            for key, client in self.clients.items()
            if client.credentials_refused
        ]
        breakers = {k: c.breaker for k, c in self.clients.items()}
        return [*refused, *_breaker_notes("introspection", breakers)]

    def metric_families(self) -> Iterable[Metric]:
        yield counter_family(
            "gateway_introspection_calls", "HTTP calls to introspection endpoints, by issuer.",
            ["issuer"], {(k,): float(c.calls) for k, c in self.clients.items()},
        )  # fmt: skip
        yield from _breaker_metrics(
            "introspection", {k: c.breaker for k, c in self.clients.items()}
        )

    async def close(self) -> None:
        return None


class IdentityCacheComponent:
    """The identity cache: a degraded shared tier is a note, not unreadiness (the gateway
    still serves from memory and the authorization server)."""

    def __init__(self, cache: IdentityCache) -> None:
        self.cache = cache

    def readiness(self) -> Iterable[tuple[str, bool]]:
        return ()

    def notes(self) -> Iterable[tuple[str, str]]:
        shared = self.cache.shared
        if shared.redis is None:
            return ()
        notes = [("cache", "degraded" if shared.degraded else "ok")]
        if shared.redis.pending:  # evictions Redis has not taken yet: replayed when it does
            notes.append(("cache_pending_evictions", str(shared.redis.pending)))
        return notes

    def metric_families(self) -> Iterable[Metric]:
        shared = self.cache.shared
        events: dict[tuple[str, ...], float] = {
            (name,): float(value) for name, value in shared.stats.items()
        }
        events[("evictions_received",)] = float(self.cache.evictions_received)
        events[("eviction_resyncs",)] = float(self.cache.resyncs_received)
        redis = shared.redis
        if redis is not None:
            events[("redis_errors",)] = float(redis.errors)
        entries = self.cache.memory_entries()
        yield counter_family(
            "gateway_introspection_cache_events", "Introspection cache events (l1_hits, "
            "l1_misses, l2_hits, l2_misses, l2_rejected, loads, coalesced, …).",
            ["event"], events,
        )  # fmt: skip
        yield gauge_family(
            "gateway_identity_cache_entries", "Entries held in memory, by tier.",
            ["tier"], {(tier,): float(count) for tier, count in entries.items()},
        )  # fmt: skip
        yield gauge_family(
            "gateway_token_cache_entries", "Verified tokens (and rejections) held in memory.",
            [], {(): float(entries["verified"] + entries["rejected"])},
        )  # fmt: skip

    async def close(self) -> None:
        await self.cache.close()


class IdentityTokens:
    """The signer of identity tokens: how many it signed and served from its cache."""

    def __init__(self, signer: IdentityTokenSigner) -> None:
        self.signer = signer

    def readiness(self) -> Iterable[tuple[str, bool]]:
        return ()

    def notes(self) -> Iterable[tuple[str, str]]:
        return ()

    def metric_families(self) -> Iterable[Metric]:
        stats = self.signer.stats()
        yield counter_family(
            "gateway_identity_tokens", "Identity tokens for upstreams: signed, or from cache.",
            ["event"], {("signed",): float(stats["signed"]), ("cached",): float(stats["hits"])},
        )  # fmt: skip

    async def close(self) -> None:
        return None


class Pools:
    """The upstream connection pools of one runtime."""

    def __init__(self, pools: Mapping[str, UpstreamPool]) -> None:
        self.pools = pools

    def readiness(self) -> Iterable[tuple[str, bool]]:
        return ()

    def notes(self) -> Iterable[tuple[str, str]]:
        return ()

    def metric_families(self) -> Iterable[Metric]:
        yield gauge_family(
            "gateway_upstream_connections", "Open upstream connections, by upstream and state.",
            ["upstream", "state"],
            {(name, state): float(count) for name, pool in self.pools.items()
             for state, count in (("open", pool.open_connections),
                                  ("idle", pool.idle_connections))},
        )  # fmt: skip

    def retire(self) -> None:
        for pool in self.pools.values():
            pool.retire()

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()


class LoginsComponent:
    """Browser logins: sign-ins started and their callbacks by outcome, refreshes, logouts,
    sessions refused (by why), and the Redis clients the logins own."""

    def __init__(self, logins: Logins, redis_clients: Iterable[Any] = ()) -> None:
        self.logins = logins
        self._redis = list(redis_clients)

    def readiness(self) -> Iterable[tuple[str, bool]]:
        return ()

    def notes(self) -> Iterable[tuple[str, str]]:
        return ()

    def metric_families(self) -> Iterable[Metric]:
        services = self.logins.services
        yield counter_family(
            "gateway_login_redirects", "Browsers sent to the authorization endpoint, by login.",
            ["login"], {(name,): float(s.counters.redirects) for name, s in services.items()},
        )  # fmt: skip
        yield counter_family(
            "gateway_upstream_cookies_dropped",
            "Upstream Set-Cookie fields for the gateway's own cookies, dropped, by upstream.",
            ["upstream"],
            {(name,): float(count) for name, count in self.logins.dropped_cookies.items()},
        )
        for metric, doc, label, attribute in _LOGIN_COUNTERS:
            yield counter_family(
                metric, doc, ["login", label],
                {(name, key): float(count) for name, s in services.items()
                 for key, count in getattr(s.counters, attribute).items()},
            )  # fmt: skip

    async def close(self) -> None:
        await self.logins.close()
        for client in self._redis:
            await client.aclose()


_LOGIN_COUNTERS = (
    ("gateway_login_callbacks", "Login callbacks, by login and outcome (ok or the refusal).",
     "outcome", "callbacks"),
    ("gateway_session_refreshes", "Token refreshes at the token endpoint (ok, ended, failed).",
     "outcome", "refreshes"),
    ("gateway_logouts", "Logouts, by login and kind (rp, backchannel).", "kind", "logouts"),
    ("gateway_sessions_refused", "Session cookies that named no live session, by reason.",
     "reason", "ended"),
)  # fmt: skip
