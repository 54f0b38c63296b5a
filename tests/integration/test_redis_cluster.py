"""The Redis L2 through a real three-master Redis Cluster: shared answers, eviction, and
node restarts under load.

Three masters, no replicas, every slot covered (tests/support/redis_topologies.py), for the
module; two gateways share them. The nodes play three parts for the eviction bus: the one
both gateways subscribe on, the one owning the channel's hash slot (where redis-py would
send PUBLISH), and one holding only keys. Each restart test takes down one of them while
clients keep sending requests; kept down past the cluster's node timeout, a node takes the
whole cluster into its failed state, where every keyed command is refused.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from tests.support import redis_fleet as fleet
from tests.support.introspection import TestIntrospectionServer
from tests.support.issuer import TestIssuer
from tests.support.redis_topologies import RedisClusterSet, running
from tests.support.upstream import RecordingUpstream


@pytest.fixture(scope="module")
def cluster_set() -> Iterator[RedisClusterSet]:
    yield from running(RedisClusterSet())


@pytest.fixture
def cluster(cluster_set: RedisClusterSet) -> Iterator[RedisClusterSet]:
    yield cluster_set
    cluster_set.ensure_healthy()  # whatever a failed test left down


@pytest.fixture
async def introspection() -> AsyncIterator[TestIntrospectionServer]:
    server = TestIntrospectionServer()
    await server.start()
    yield server
    await server.close()


@dataclass(frozen=True)
class Roles:
    """Node indexes: where both subscriptions are, who owns the channel's slot, the rest."""

    subscriber: int
    channel_owner: int
    other: int


@dataclass(frozen=True)
class Fleet:
    gateways: list[Gateway]
    prefix: str
    roles: Roles


@pytest.fixture
async def pair(
    tmp_path: Path,
    cluster: RedisClusterSet,
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
    upstream: RecordingUpstream,
) -> AsyncIterator[Fleet]:
    """Two gateways whose eviction channel hashes to a node other than the one they
    subscribe on (a few prefixes are tried), so the three parts fall on three nodes."""
    for attempt in range(20):
        prefix = f"t:{uuid.uuid4().hex}:"
        target = {"url": cluster.url, "cluster": True}
        config = fleet.fleet_config(issuer, introspection, upstream, target, prefix)
        (tmp_path / str(attempt)).mkdir()
        async with fleet.gateway_pair(tmp_path / str(attempt), config) as gateways:
            channel = fleet.redis_of(gateways[0]).channel
            subscribers = cluster.subscribers_per_node(channel)
            assert sorted(subscribers) == [0, 0, 2], subscribers  # both on one node
            subscriber, owner = subscribers.index(2), cluster.node_serving(channel)
            if owner != subscriber:
                (other,) = {0, 1, 2} - {subscriber, owner}
                await fleet.warmed(gateways, introspection)
                yield Fleet(gateways, prefix, Roles(subscriber, owner, other))
                return
    raise AssertionError("no prefix put the channel's slot away from the subscriptions")


async def test_answers_spread_over_every_master_are_served_to_the_other_gateway(
    pair: Fleet, introspection: TestIntrospectionServer, cluster: RedisClusterSet
) -> None:
    """Tokens are drawn until every master holds an answer (at least 12, at most 60):
    the keys' slots are random, and 12 alone leave a master empty about once in 40 runs."""
    a, b = pair.gateways
    tokens: list[str] = []
    calls, hits = introspection.calls, fleet.cache_of(b).stats["l2_hits"]
    per_node = cluster.keys_per_node(f"{pair.prefix}*")
    async with aiohttp.ClientSession() as session:
        while len(tokens) < 12 or (len(tokens) < 60 and not all(per_node)):
            tokens.append(token := fleet.opaque_token(introspection))
            assert await fleet.get(session, a, token) == 200
            assert await fleet.get(session, b, token) == 200
            per_node = cluster.keys_per_node(f"{pair.prefix}*")
    assert introspection.calls - calls == len(tokens)
    assert fleet.cache_of(b).stats["l2_hits"] - hits == len(tokens)
    assert all(count > 0 for count in per_node), per_node


async def test_an_eviction_on_one_gateway_reaches_the_other_through_the_cluster(
    pair: Fleet, introspection: TestIntrospectionServer
) -> None:
    await fleet.evicted_everywhere(pair.gateways, introspection)
    assert fleet.evictions_received(pair.gateways[1]) == 1


async def restart_under_load(
    pair: Fleet,
    cluster: RedisClusterSet,
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
    node: int,
    down_for: float,
) -> fleet.EventReport:
    """The revoked token's entry lives on the node restarted: while it is down no replica can
    read that entry, so whether one accepts the token depends on what it heard, not on when
    the cluster declares the node failed (a replica that read an entry the eviction could
    not delete is tests/integration/test_eviction_replay.py's case)."""
    restart = partial(cluster.restart_node, node, down_for=down_for)

    def placed(token: str) -> bool:
        return cluster.node_holding(fleet.entry_pattern(pair.prefix, token)) == node

    report = await fleet.event_under_load(
        pair.gateways, issuer, introspection, restart, cluster.subscribers, placed
    )
    print(f"\ncluster, node {node} of {pair.roles}: started in {cluster.started_in:.2f}s; "
          f"{report.summary()}")  # fmt: skip
    assert report.load.count("jwt") > 100 and report.load.count("opaque") > 50
    assert report.load.failures == [], report.load.failures[:10]
    assert report.refused_after_recovery == 10  # evicted during the event: refused after it
    await fleet.evicted_everywhere(pair.gateways, introspection)
    return report


async def test_the_subscription_node_down_past_the_node_timeout_delays_no_eviction_long(
    pair: Fleet,
    cluster: RedisClusterSet,
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
) -> None:
    """Both subscriptions move to a live node after one resubscription interval (1 s) and
    the gap empties B's L1, so B stops accepting the evicted token then (about 1 s after
    the eviction; 2.5 s allows a busy machine), not when the node is back (5 s and more)."""
    report = await restart_under_load(
        pair, cluster, issuer, introspection, pair.roles.subscriber, down_for=3.0
    )
    assert report.last_accepted() < 2.5, report.revoked_accepted


async def test_the_channel_slot_node_down_past_the_node_timeout_loses_no_eviction(
    pair: Fleet,
    cluster: RedisClusterSet,
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
) -> None:
    """The eviction is published through a live node (PUBLISH needs no slot, even while
    the cluster refuses keyed commands) and heard at once on the subscriptions, which the
    cluster client's reconnections never cut: no gap, so no resync (the message comes again
    after A replays the deletion the failed cluster refused)."""
    report = await restart_under_load(
        pair, cluster, issuer, introspection, pair.roles.channel_owner, down_for=3.0
    )
    assert report.revoked_accepted == []
    assert fleet.evictions_received(pair.gateways[1]) >= 1
    assert fleet.resyncs_received(pair.gateways[1]) == 0  # B heard it: no gap


async def test_a_quick_restart_of_a_node_holding_only_keys_loses_no_eviction(
    pair: Fleet,
    cluster: RedisClusterSet,
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
) -> None:
    """Back within the node timeout, so the other nodes keep serving their slots; the
    eviction is tried at once, not held back by the breaker its slots' errors opened."""
    report = await restart_under_load(
        pair, cluster, issuer, introspection, pair.roles.other, down_for=0.0
    )
    assert report.revoked_accepted == []
