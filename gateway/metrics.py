"""Prometheus metrics for the admin listener's ``/metrics``.

Per-request series (requests, latency, auth decisions, in-flight) are plain dicts of counts
on the request path, turned into metric families at scrape time: prometheus_client's own
metric objects take a lock on every update, which showed in profiles of the request path.
Everything a component already counts (key-set fetches, cache tiers, introspection calls,
Redis errors) is read at scrape time too, so it costs nothing per request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BOUNDS = (*(repr(float(b)) for b in _LATENCY_BUCKETS), "+Inf")

Samples = dict[tuple[str, ...], float]


class _ComponentCollector(Collector):
    """Turns counters kept elsewhere into metric families at scrape time."""

    def __init__(self, source: Callable[[], Iterable[Metric]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return self._source()


class _Latency:
    """A histogram as plain counts: observing is a bisect and two additions, no lock (the
    event loop is the only writer)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip(_BOUNDS, self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class Metrics:
    """Every metric the gateway exports, in a registry of its own (one per process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.config_reloads = Counter(
            "gateway_config_reloads", "Config reloads by result (ok/rejected).", ["result"],
            registry=self.registry,
        )  # fmt: skip
        self.in_flight = 0
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latency: dict[str, _Latency] = {}
        self._upstream: dict[str, _Latency] = {}
        self._decisions: dict[tuple[str, str, str, str], int] = {}
        self._checks: dict[tuple[str, int], int] = {}
        self._check_latency: dict[str, _Latency] = {}
        self._sources: list[Callable[[], Iterable[Metric]]] = [self._request_families]
        self.registry.register(_ComponentCollector(self._collect_components))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = _Latency()
        latency.observe(seconds)

    def observe_upstream(self, upstream: str, seconds: float) -> None:
        latency = self._upstream.get(upstream)
        if latency is None:
            latency = self._upstream[upstream] = _Latency()
        latency.observe(seconds)

    def observe_decision(
        self, outcome: str, reason: str, mode: str = "proxy", host_proxy: str = "none"
    ) -> None:
        """One decision; ``mode`` is ``proxy`` or ``decision`` (the forward-auth service),
        ``host_proxy`` the kind of proxy that asked (nginx, traefik, caddy, envoy-http,
        envoy-grpc; ``none`` for the proxy listener)."""
        key = (outcome, reason, mode, host_proxy)
        self._decisions[key] = self._decisions.get(key, 0) + 1

    def observe_check(self, host_proxy: str, status: int, seconds: float) -> None:
        """One forward-auth check answered to a host proxy."""
        key = (host_proxy, status)
        self._checks[key] = self._checks.get(key, 0) + 1
        latency = self._check_latency.get(host_proxy)
        if latency is None:
            latency = self._check_latency[host_proxy] = _Latency()
        latency.observe(seconds)

    def add_source(self, source: Callable[[], Iterable[Metric]]) -> None:
        """A component's scrape-time metrics (``source`` must be cheap and non-blocking)."""
        self._sources.append(source)

    def _collect_components(self) -> Iterable[Metric]:
        for source in self._sources:
            yield from source()

    def _request_families(self) -> Iterable[Metric]:
        requests: Samples = {}
        for (route, method, status), count in self._requests.items():
            label = method if method in _KNOWN_METHODS else "OTHER"
            key = (route, label, str(status))
            requests[key] = requests.get(key, 0.0) + count
        yield counter_family(
            "gateway_requests", "Requests answered, by route, method and status.",
            ["route", "method", "status"], requests,
        )  # fmt: skip
        yield counter_family(
            "gateway_auth_decisions",
            "Auth decisions by outcome (allow/deny/anonymous), reason, mode (proxy/decision) "
            "and the host proxy that asked.",
            ["outcome", "reason", "mode", "host_proxy"],
            {k: float(v) for k, v in self._decisions.items()},
        )  # fmt: skip
        yield counter_family(
            "gateway_decision_checks", "Forward-auth checks answered, by host proxy and status.",
            ["host_proxy", "status"],
            {(kind, str(status)): float(n) for (kind, status), n in self._checks.items()},
        )  # fmt: skip
        yield _histogram(
            "gateway_decision_check_duration_seconds", "Forward-auth check latency.",
            "host_proxy", self._check_latency,
        )  # fmt: skip
        yield _histogram(
            "gateway_request_duration_seconds", "Whole-request latency, by route.", "route",
            self._latency,
        )  # fmt: skip
        yield _histogram(
            "gateway_upstream_duration_seconds",
            "Time from sending a request upstream to its response head, by upstream.",
            "upstream", self._upstream,
        )  # fmt: skip
        yield gauge_family(
            "gateway_requests_in_flight", "Requests being handled.", [],
            {(): float(self.in_flight)},
        )  # fmt: skip


def _histogram(name: str, doc: str, label: str, series: dict[str, _Latency]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, latency in series.items():
        family.add_metric([value], latency.cumulative(), latency.sum)
    return family


def counter_family(name: str, doc: str, labels: list[str], values: Samples) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family


def gauge_family(name: str, doc: str, labels: list[str], values: Samples) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family
