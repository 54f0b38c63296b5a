"""Real Redis topologies for tests: a Sentinel set and a three-master Cluster on loopback.

``SentinelSet``: one master, one replica and three ``redis-server --sentinel`` processes
watching them, on free 127.0.0.1 ports; ``fail_over()`` kills the master and returns once
every sentinel names the promoted replica and it answers as a master. ``RedisClusterSet``:
three ``redis-server --cluster-enabled yes`` masters joined by ``redis-cli --cluster
create``; ``restart_node()`` kills one and brings it back with its node identity.

Both are synchronous (``subprocess`` and blocking sockets), like ``RedisServer``: call the
slow helpers (``fail_over``, ``restart_node``) through ``asyncio.to_thread`` from a test
that keeps an event loop busy. Every process runs in its own process group under
``Children`` and is stopped by ``close()``, which the context managers always call.
Nothing here uses port 6379: every port is a free one chosen at start.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self, TypeVar

import pytest
import redis
from redis.crc import key_slot

from tests.support.processes import Children, signal_group
from tests.support.redis import RedisServerMissing, free_cluster_port, free_port

SERVICE = "gwmaster"
"""The name the sentinels monitor the master under (``cache.redis.sentinel.service``)."""

# Small timings so a failover takes a few seconds, yet not so small that a busy shared
# machine (two cores, several test runs) makes the sentinels see a live master as down.
DOWN_AFTER_MS = 600
FAILOVER_TIMEOUT_MS = 3000
CLUSTER_NODE_TIMEOUT_MS = 1000

_PROBE_KEYS = [f"topology:probe:{i}" for i in range(256)]
"""Keys spread over enough hash slots that every master owns a few."""

# `repl-diskless-sync-delay 0`: a replica syncs at once, not after the default 5 s wait.
_BASE_ARGS = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no",
              "--repl-diskless-sync-delay", "0")  # fmt: skip


def missing_binaries() -> list[str]:
    """The executables these topologies need that this machine lacks (sentinel mode is
    ``redis-server --sentinel``, so no ``redis-sentinel`` is required)."""
    return [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]


def require_binaries() -> None:
    missing = missing_binaries()
    if missing:
        raise RedisServerMissing(
            f"{' and '.join(missing)} not installed: `apt-get install redis-server redis-tools`"
        )


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0, socket_connect_timeout=1.0)


def _query(port: int, command: Callable[[redis.Redis], Any]) -> Any:
    """One command against a node; None when it does not answer (down, starting, loading)."""
    client = _client(port)
    try:
        return command(client)
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def _wait(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> float:
    """Seconds until ``condition()`` held; AssertionError naming ``what`` past ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - start


class _Node:
    """One redis-server child with its own directory and log; ``start`` may be repeated."""

    def __init__(self, children: Children, root: Path, name: str, port: int) -> None:
        self.children, self.name, self.port = children, name, port
        self.dir = root / name
        self.dir.mkdir()
        self.log = self.dir / "log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *arguments: str) -> None:
        argv = [shutil.which("redis-server") or "redis-server", *arguments]
        self.process = self.children.start(argv, stdout=self.log, stderr=self.log, cwd=self.dir)

    def wait_ready(self, timeout: float = 10.0) -> None:
        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.output()}")
            return _query(self.port, lambda c: c.ping()) is True

        _wait(answers, timeout, f"{self.name} to answer PING")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to clients; the crash a failover is for."""
        process, self.process = self.process, None
        if process is not None:
            signal_group(process.pid, signal.SIGKILL)
            self.children.stop(process)  # reaps it

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""


class _Topology:
    """Owns the temporary directory and every child; ``close`` is idempotent."""

    def __init__(self, prefix: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
        self.root = Path(self._tmp.name)
        self.children = Children()
        self.started_in = 0.0
        """Seconds ``start()`` took, for reports."""

    def close(self) -> None:
        self.children.stop_all()
        self._tmp.cleanup()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        raise NotImplementedError


def _flagged(entry: dict[str, Any]) -> bool:
    """A sentinel's view of a peer or replica that is not healthy and linked."""
    return bool(entry["is_sdown"] or entry["is_odown"] or entry["is_disconnected"])


@dataclass(frozen=True)
class Failover:
    old_master: int
    new_master: int
    seconds: float
    """From the SIGKILL until every sentinel names the new master and it accepts writes."""


class SentinelSet(_Topology):
    """One master, one replica, three sentinels (quorum 2) monitoring ``SERVICE``."""

    def __init__(self) -> None:
        super().__init__("redis-sentinel-test-")
        ports: set[int] = set()
        while len(ports) < 5:
            ports.add(free_port())
        names = ["server0", "server1", "sentinel0", "sentinel1", "sentinel2"]
        nodes = [_Node(self.children, self.root, n, p) for n, p in zip(names, ports, strict=True)]
        self.servers, self.sentinels = nodes[:2], nodes[2:]
        self._ids = [secrets.token_hex(20) for _ in self.sentinels]
        self.master_port = self.servers[0].port

    @property
    def hosts(self) -> list[str]:
        """``host:port`` of each sentinel, as ``cache.redis.sentinel.hosts`` takes them."""
        return [node.address for node in self.sentinels]

    @property
    def master(self) -> _Node:
        return next(node for node in self.servers if node.port == self.master_port)

    @property
    def replica(self) -> _Node:
        return next(node for node in self.servers if node.port != self.master_port)

    def start(self) -> None:
        require_binaries()
        began = time.monotonic()
        master, replica = self.master, self.replica
        master.start("--port", str(master.port), *_BASE_ARGS)
        replica.start("--port", str(replica.port), *_BASE_ARGS,
                      "--replicaof", "127.0.0.1", str(master.port))  # fmt: skip
        master.wait_ready()
        replica.wait_ready()
        self._wait_replica_synced(replica, timeout=10)
        for index, node in enumerate(self.sentinels):
            config = node.dir / "sentinel.conf"
            config.write_text(self._sentinel_config(index, node))
            node.start(str(config), "--sentinel")
        for node in self.sentinels:
            node.wait_ready()
            # Redis 7's knobs for the periods the config file cannot set: refresh INFO (what
            # demotes a switched-over master) and say hello twice a second, not every 10 s /
            # 2 s. An older Sentinel refuses the command and keeps its (slower) defaults.
            _query(node.port, lambda c: c.execute_command(
                "SENTINEL", "DEBUG", "info-period", "500", "publish-period", "500"))  # fmt: skip
        _wait(self._agreed, 15, "the sentinels to agree on the master and see the replica")
        self.started_in = time.monotonic() - began

    def _sentinel_config(self, index: int, node: _Node) -> str:
        """Each sentinel is told its peers and the replica up front (what it would write
        into this file itself after a few hello rounds), so start-up skips the ~2 s of
        discovery; ``_agreed`` still checks that they see each other live."""
        lines = [
            f"port {node.port}", "bind 127.0.0.1", "protected-mode no", f"dir {node.dir}",
            f"sentinel myid {self._ids[index]}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} 1",
            f"sentinel known-replica {SERVICE} 127.0.0.1 {self.replica.port}",
        ]  # fmt: skip
        for other, peer in enumerate(self.sentinels):
            if other != index:
                lines.append(f"sentinel known-sentinel {SERVICE} 127.0.0.1 {peer.port} "
                             f"{self._ids[other]}")  # fmt: skip
        return "\n".join(lines) + "\n"

    def _sentinel_view(self, node: _Node) -> dict[str, Any] | None:
        state = _query(node.port, lambda c: c.sentinel_master(SERVICE))
        return state if isinstance(state, dict) else None

    def _agreed(self) -> bool:
        """Every sentinel: this master, up; both other sentinels linked; the replica linked
        and reporting its master link up; and the replica replicating from this master."""
        for node in self.sentinels:
            state = self._sentinel_view(node)
            if state is None or int(state["port"]) != self.master_port:
                return False
            if state["is_sdown"] or state["is_odown"] or not state["is_master"]:
                return False
            peers = _query(node.port, lambda c: c.sentinel_sentinels(SERVICE)) or []
            replicas = _query(node.port, lambda c: c.sentinel_slaves(SERVICE)) or []
            if len(peers) != 2 or any(_flagged(peer) for peer in peers):
                return False
            if [int(r["port"]) for r in replicas if not _flagged(r)] != [self.replica.port]:
                return False
            if any(r.get("master-link-status") != "ok" for r in replicas):
                return False
        return self._replica_linked(self.replica)

    def _replica_linked(self, replica: _Node) -> bool:
        info = _query(replica.port, lambda c: c.info("replication"))
        return (
            isinstance(info, dict)
            and info.get("role") == "slave"
            and info.get("master_port") == self.master_port
            and info.get("master_link_status") == "up"
        )

    def _wait_replica_synced(self, replica: _Node, timeout: float) -> None:
        _wait(lambda: self._replica_linked(replica), timeout, f"{replica.name} to sync")

    def fail_over(self, timeout: float = 20.0) -> Failover:
        """SIGKILL the master; return once every sentinel names the replica as master and
        it answers as one (role master, accepts a write). The killed server stays down
        until ``rejoin()``."""
        old, candidate = self.master, self.replica
        began = time.monotonic()
        old.kill()
        _wait(lambda: self._promoted(candidate), timeout, f"a promotion of {candidate.name}")
        self.master_port = candidate.port
        return Failover(old.port, candidate.port, time.monotonic() - began)

    def switch_over(self, timeout: float = 20.0) -> Failover:
        """``SENTINEL FAILOVER``, as an operator does for maintenance: the master is demoted
        to a replica while alive (its clients get READONLY or are disconnected) and the
        replica promoted; returns once both serve in their new roles."""
        old, candidate = self.master, self.replica
        began = time.monotonic()
        assert _query(self.sentinels[0].port, lambda c: c.sentinel_failover(SERVICE)) is True

        def switched() -> bool:
            if not self._promoted(candidate):
                return False
            self.master_port = candidate.port
            return self._agreed()

        _wait(switched, timeout, f"a switch-over to {candidate.name}")
        return Failover(old.port, candidate.port, time.monotonic() - began)

    def _promoted(self, candidate: _Node) -> bool:
        for node in self.sentinels:
            address = _query(node.port, lambda c: c.sentinel_get_master_addr_by_name(SERVICE))
            if not address or int(address[1]) != candidate.port:
                return False
        role = _query(candidate.port, lambda c: c.role())
        return bool(role) and role[0] in (b"master", "master") and self._writable(candidate)

    @staticmethod
    def _writable(node: _Node) -> bool:
        return _query(node.port, lambda c: c.set("topology:probe", "1", px=1000)) is True

    def rejoin(self, timeout: float = 20.0) -> float:
        """Restart the server ``fail_over`` killed, as a replica of the new master, and wait
        until the sentinels count it again (the set is back to one master, one replica)."""
        began = time.monotonic()
        node = self.replica
        node.start("--port", str(node.port), *_BASE_ARGS,
                   "--replicaof", "127.0.0.1", str(self.master_port))  # fmt: skip
        node.wait_ready()
        _wait(self._agreed, timeout, f"{node.name} to rejoin as a replica")
        return time.monotonic() - began

    def subscribers(self, channel: str) -> int:
        """Clients subscribed to ``channel`` on the current master."""
        reply = _query(self.master_port, lambda c: c.execute_command("PUBSUB", "NUMSUB", channel))
        return int(reply[1]) if reply else 0

    def ensure_healthy(self) -> None:
        """Back to one master and one replica, agreed on, whatever a test left behind."""
        if not self.replica.running:
            self.rejoin()
        _wait(self._agreed, 20, "the sentinel set to be whole again")


@dataclass(frozen=True)
class Restart:
    port: int
    down_for: float
    seconds: float
    """From the SIGKILL until every node reports ``cluster_state:ok`` and knows all three."""


class RedisClusterSet(_Topology):
    """Three masters, no replicas, every slot covered (``cluster-require-full-coverage``
    at its default, yes: while a node is down past the node timeout, the whole cluster
    refuses commands, the hard case for a client)."""

    def __init__(self) -> None:
        super().__init__("redis-cluster-test-")
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_cluster_port())
        self.nodes = [_Node(self.children, self.root, f"node{i}", p) for i, p in enumerate(ports)]

    @property
    def url(self) -> str:
        """One startup node is enough: the client discovers the others (CLUSTER SLOTS)."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def _start_node(self, node: _Node) -> None:
        node.start("--port", str(node.port), *_BASE_ARGS, "--cluster-enabled", "yes",
                   "--cluster-config-file", "nodes.conf",
                   "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS))  # fmt: skip

    def start(self) -> None:
        require_binaries()
        began = time.monotonic()
        for node in self.nodes:
            self._start_node(node)
        for node in self.nodes:
            node.wait_ready()
        create = subprocess.run(
            [shutil.which("redis-cli") or "redis-cli", "--cluster", "create",
             *(node.address for node in self.nodes), "--cluster-yes"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout.decode()}"
                               f"{create.stderr.decode()}")  # fmt: skip
        self._wait_healthy(timeout=20)
        self.started_in = time.monotonic() - began

    def _healthy(self) -> bool:
        """Every node: state ok, all slots assigned and served, and three known nodes."""
        for node in self.nodes:
            info = _query(node.port, lambda c: c.execute_command("CLUSTER INFO"))
            if not isinstance(info, dict):
                return False
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                return False
            if int(info.get("cluster_known_nodes", 0)) != 3:
                return False
            if not self._writable(node):
                return False
        return True

    def _writable(self, node: _Node) -> bool:
        """A write to a key of a slot this node serves (a new master refuses writes for a
        moment after the cluster forms, and a restarted one until it is known again)."""
        mine = self._slot_ranges(node).get(node.port, [])
        key = next((k for k in _PROBE_KEYS if any(lo <= key_slot(k.encode()) <= hi
                                                  for lo, hi in mine)), None)  # fmt: skip
        return key is not None and _query(node.port, lambda c: c.set(key, "1", px=1000)) is True

    @staticmethod
    def _slot_ranges(node: _Node) -> dict[int, list[tuple[int, int]]]:
        """CLUSTER SLOTS as ``node`` sees it: each master's port and its slot ranges."""
        ranges: dict[int, list[tuple[int, int]]] = {}
        for entry in _query(node.port, lambda c: c.execute_command("CLUSTER SLOTS")) or []:
            ranges.setdefault(int(entry[2][1]), []).append((int(entry[0]), int(entry[1])))
        return ranges

    def _wait_healthy(self, timeout: float) -> float:
        return _wait(self._healthy, timeout, "cluster_state:ok on every node", poll=0.05)

    def node_serving(self, key: str) -> int:
        """The index of the node that owns ``key``'s hash slot (a channel name works too:
        a client picks its pub/sub node that way)."""
        slot = key_slot(key.encode())
        for port, ranges in self._slot_ranges(self.nodes[0]).items():
            if any(lo <= slot <= hi for lo, hi in ranges):
                return next(i for i, node in enumerate(self.nodes) if node.port == port)
        raise AssertionError(f"no node owns slot {slot}")

    def subscribers_per_node(self, channel: str) -> list[int]:
        """How many clients each node has subscribed to ``channel`` (classic pub/sub: a
        node counts only its own subscribers), in node order."""
        counts = []
        for node in self.nodes:
            reply = _query(node.port, lambda c: c.execute_command("PUBSUB", "NUMSUB", channel))
            counts.append(int(reply[1]) if reply else 0)
        return counts

    def subscribers(self, channel: str) -> int:
        """Clients subscribed to ``channel`` on any node."""
        return sum(self.subscribers_per_node(channel))

    def keys_per_node(self, pattern: str) -> list[int]:
        """How many keys matching ``pattern`` each node holds, in node order."""
        return [
            len(_query(node.port, lambda c: list(c.scan_iter(match=pattern, count=1000))) or [])
            for node in self.nodes
        ]

    def node_holding(self, pattern: str) -> int | None:
        """The index of the first node holding a key matching ``pattern``, if any does."""
        return next((i for i, count in enumerate(self.keys_per_node(pattern)) if count), None)

    def ensure_healthy(self) -> None:
        """Every node running and the cluster ok, whatever a test left behind."""
        for node in self.nodes:
            if not node.running:
                self._start_node(node)
                node.wait_ready()
        self._wait_healthy(30)

    def restart_node(self, index: int, *, down_for: float = 0.0, timeout: float = 30.0) -> Restart:
        """SIGKILL node ``index``, keep it down ``down_for`` seconds (past the node timeout
        the other masters mark it failed and the cluster refuses every command), start it
        again on its port with its ``nodes.conf`` (same identity and slots, no data), and
        return once the cluster is healthy."""
        node = self.nodes[index]
        began = time.monotonic()
        node.kill()
        time.sleep(down_for)
        self._start_node(node)
        node.wait_ready()
        self._wait_healthy(timeout)
        return Restart(node.port, down_for, time.monotonic() - began)


def _teardown_on_sigterm() -> None:
    """A run stopped by SIGTERM (a CI timeout, ``timeout 600 pytest``) would die without
    tearing down fixtures, leaving five or three servers behind: turn it into the
    KeyboardInterrupt pytest handles by finishing the session. Only where nobody else chose
    a handler, and only from the main thread (the one that may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


T = TypeVar("T", SentinelSet, RedisClusterSet)


def running(topology: T) -> Iterator[T]:
    """For a fixture: ``topology`` started, and always closed after. Without the binaries
    the test is skipped with the install hint, except under CI (``CI`` set), where it fails:
    CI must never pass by skipping these suites."""
    _teardown_on_sigterm()
    try:
        topology.start()
    except RedisServerMissing as exc:
        topology.close()
        reason = str(exc)
    except BaseException:
        topology.close()
        raise
    else:
        reason = None
    if reason is not None:  # outside the except block: no chained traceback in the report
        if in_ci():
            pytest.fail(f"{reason}; CI must run the Redis topology tests", pytrace=False)
        pytest.skip(reason)
    try:
        yield topology
    finally:
        topology.close()
