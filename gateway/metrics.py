"""Prometheus metrics for the admin listener's ``/metrics``.

Per-request series (requests, latency, auth decisions, in-flight) are updated on the request
path through label children resolved once and kept in a dict, so a request costs a dict
lookup and an increment. Everything a component already counts (key-set fetches, cache
tiers, introspection calls, Redis errors, reloads) is read at scrape time by a collector,
so it costs nothing per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gateway.state import RuntimeHolder

_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _ComponentCollector(Collector):
    """Turns components' own counters into metric families at scrape time."""

    def __init__(self, source: Callable[[], Iterable[Metric]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return self._source()


class Metrics:
    """Every metric the gateway exports, in a registry of its own (one per process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Requests answered, by route, method and status.",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds", "Whole-request latency, by route.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream_seconds = Histogram(
            "gateway_upstream_duration_seconds",
            "Time from sending a request upstream to its response head, by upstream.",
            ["upstream"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.auth_decisions = Counter(
            "gateway_auth_decisions", "Auth decisions by outcome (allow/deny/anonymous), reason.",
            ["outcome", "reason"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("gateway_requests_in_flight", "Requests being handled.", registry=r)
        self.config_reloads = Counter(
            "gateway_config_reloads", "Config reloads by result (ok/rejected).", ["result"],
            registry=r,
        )  # fmt: skip
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._upstream_children: dict[str, Any] = {}
        self._decision_children: dict[tuple[str, str], Any] = {}
        self._sources: list[Callable[[], Iterable[Metric]]] = []
        r.register(_ComponentCollector(self._collect_components))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        child = self._request_children.get(key)
        if child is None:
            label = method if method in _KNOWN_METHODS else "OTHER"
            child = self._request_children[key] = self.requests.labels(route, label, str(status))
        child.inc()
        latency = self._latency_children.get(route)
        if latency is None:
            latency = self._latency_children[route] = self.request_seconds.labels(route)
        latency.observe(seconds)

    def observe_upstream(self, upstream: str, seconds: float) -> None:
        child = self._upstream_children.get(upstream)
        if child is None:
            child = self._upstream_children[upstream] = self.upstream_seconds.labels(upstream)
        child.observe(seconds)

    def observe_decision(self, outcome: str, reason: str) -> None:
        key = (outcome, reason)
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.auth_decisions.labels(outcome, reason)
        child.inc()

    def add_source(self, source: Callable[[], Iterable[Metric]]) -> None:
        """A component's scrape-time metrics (``source`` must be cheap and non-blocking)."""
        self._sources.append(source)

    def _collect_components(self) -> Iterable[Metric]:
        for source in self._sources:
            yield from source()


def counter_family(
    name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], float]
) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family


def gauge_family(
    name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], float]
) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family


def runtime_metrics(holder: RuntimeHolder) -> Iterable[Metric]:
    """Scrape-time metrics of the live runtime: key sets, token cache, upstream pools."""
    runtime = holder.current
    for source in runtime.metric_sources:
        yield from source()
    yield gauge_family(
        "gateway_upstream_connections", "Open upstream connections, by upstream and state.",
        ["upstream", "state"],
        {(name, state): float(count) for name, pool in runtime.pools.items()
         for state, count in (("open", pool.open_connections), ("idle", pool.idle_connections))},
    )  # fmt: skip
    ready, checks = runtime.ready()
    yield gauge_family(
        "gateway_ready", "1 when the component is ready.", ["component"],
        {("all",): float(ready and not holder.draining)}
        | {(name,): float(ok) for name, ok in checks.items()},
    )  # fmt: skip
