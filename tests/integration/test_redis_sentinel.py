"""The Redis L2 through a real Sentinel set: shared answers, eviction, and a failover.

One master, one replica and three sentinels run for the module (tests/support/
redis_topologies.py); two gateways share them. The failover test kills the master while
clients keep sending requests, then puts the killed server back as a replica, so the set
has its shape again for whatever runs next.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from tests.support import redis_fleet as fleet
from tests.support.introspection import TestIntrospectionServer
from tests.support.issuer import TestIssuer
from tests.support.redis_topologies import SERVICE, SentinelSet, running
from tests.support.upstream import RecordingUpstream


@pytest.fixture(scope="module")
def sentinel_module() -> Iterator[SentinelSet]:
    yield from running(SentinelSet())


@pytest.fixture
def sentinel_set(sentinel_module: SentinelSet) -> Iterator[SentinelSet]:
    yield sentinel_module
    sentinel_module.ensure_healthy()  # the killed master back as a replica, and agreed


@pytest.fixture
async def introspection() -> AsyncIterator[TestIntrospectionServer]:
    server = TestIntrospectionServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def pair(
    tmp_path: Path,
    sentinel_set: SentinelSet,
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
    upstream: RecordingUpstream,
) -> AsyncIterator[list[Gateway]]:
    target = {"sentinel": {"hosts": sentinel_set.hosts, "service": SERVICE}}
    config = fleet.fleet_config(issuer, introspection, upstream, target, f"t:{uuid.uuid4().hex}:")
    async with fleet.gateway_pair(tmp_path, config) as gateways:
        await fleet.warmed(gateways, introspection)
        yield gateways


async def test_an_answer_introspected_by_one_gateway_is_served_to_the_other_from_redis(
    pair: list[Gateway], introspection: TestIntrospectionServer, upstream: RecordingUpstream
) -> None:
    a, b = pair
    token = fleet.opaque_token(introspection, subject="alice")
    calls, hits, received = (
        introspection.calls,
        fleet.cache_of(b).stats["l2_hits"],
        len(upstream.received),
    )
    async with aiohttp.ClientSession() as session:
        assert await fleet.get(session, a, token) == 200
        assert await fleet.get(session, b, token) == 200
    assert introspection.calls - calls == 1
    assert fleet.cache_of(b).stats["l2_hits"] - hits == 1
    subjects = [r.header("X-Auth-Subject") for r in upstream.received[received:]]
    assert subjects == ["alice", "alice"]
    assert not (fleet.degraded(a) or fleet.degraded(b))


async def test_an_eviction_on_one_gateway_reaches_the_other_through_sentinel(
    pair: list[Gateway], introspection: TestIntrospectionServer
) -> None:
    await fleet.evicted_everywhere(pair, introspection)
    assert fleet.evictions_received(pair[1]) == 1


@pytest.mark.parametrize("event", ["master-killed", "switch-over"])
async def test_a_failover_under_load_fails_no_request_and_the_cache_recovers(
    pair: list[Gateway],
    sentinel_set: SentinelSet,
    issuer: TestIssuer,
    introspection: TestIntrospectionServer,
    event: str,
) -> None:
    """``master-killed``: SIGKILL, the sentinels promote the replica (clients see refused
    connections until then). ``switch-over``: SENTINEL FAILOVER, the master is demoted while
    alive (clients see READONLY or are disconnected)."""
    happen = sentinel_set.fail_over if event == "master-killed" else sentinel_set.switch_over
    report = await fleet.event_under_load(
        pair, issuer, introspection, happen, sentinel_set.subscribers
    )
    print(f"\nsentinel {event}: started in {sentinel_set.started_in:.2f}s; {report.summary()}")
    assert report.load.count("jwt") > 100 and report.load.count("opaque") > 50
    assert report.load.failures == [], report.load.failures[:10]
    assert report.last_accepted() < report.recovered_at  # evicted during the event
    assert report.refused_after_recovery == 10
    await fleet.evicted_everywhere(pair, introspection)  # pub/sub works on the new master
