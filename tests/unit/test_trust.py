"""TrustedProxies: which socket peers may set X-Forwarded-* and Forwarded."""

from __future__ import annotations

import pytest

from gateway.proxy.trust import TrustedProxies, client_address

NETWORKS = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"]


@pytest.mark.parametrize(
    ("networks", "peer", "expected"),
    [
        pytest.param(NETWORKS, "192.0.2.7", True, id="ipv4-exact-address"),
        pytest.param(NETWORKS, "192.0.2.8", False, id="ipv4-neighbour-of-exact-address"),
        pytest.param(NETWORKS, "10.255.255.255", True, id="ipv4-inside-cidr-top"),
        pytest.param(NETWORKS, "10.0.0.0", True, id="ipv4-inside-cidr-bottom"),
        pytest.param(NETWORKS, "11.0.0.0", False, id="ipv4-just-outside-cidr"),
        pytest.param(NETWORKS, "2001:db8:ffff::1", True, id="ipv6-inside-cidr"),
        pytest.param(NETWORKS, "2001:db9::1", False, id="ipv6-outside-cidr"),
        pytest.param(NETWORKS, "::1", True, id="ipv6-loopback-exact"),
        pytest.param(NETWORKS, "0:0:0:0:0:0:0:1", True, id="ipv6-uncompressed-spelling"),
        pytest.param(NETWORKS, "::ffff:10.1.2.3", True, id="ipv4-mapped-peer-as-ipv4"),
        pytest.param(NETWORKS, "::ffff:11.1.2.3", False, id="ipv4-mapped-peer-outside"),
        pytest.param(["::ffff:10.0.0.0/104"], "10.9.9.9", True, id="ipv4-mapped-network"),
        pytest.param(["::ffff:10.0.0.0/104"], "::ffff:10.9.9.9", True, id="mapped-both-sides"),
        pytest.param(["::ffff:10.0.0.0/104"], "11.0.0.0", False, id="mapped-network-next-ipv4"),
        pytest.param(["::ffff:10.0.0.0/104"], "::ffff:11.0.0.1", False, id="mapped-next-mapped"),
        pytest.param(["::ffff:10.0.0.0/104"], "9.255.255.255", False, id="mapped-network-below"),
        pytest.param(["::ffff:10.0.0.0/104"], "10.255.255.255", True, id="mapped-network-top"),
        pytest.param(["::ffff:10.0.0.7/128"], "10.0.0.7", True, id="mapped-single-address"),
        pytest.param(["::ffff:10.0.0.7/128"], "10.0.0.6", False, id="mapped-single-neighbour"),
        pytest.param(["::ffff:0:0/96"], "198.51.100.1", True, id="mapped-96-is-all-ipv4"),
        pytest.param(["::ffff:0:0/96"], "2001:db8::1", False, id="mapped-96-not-ipv6"),
        pytest.param(["2001:db8::/96"], "2001:db8::5", True, id="plain-ipv6-96-stays-ipv6"),
        pytest.param(["2001:db8::/96"], "0.0.0.5", False, id="plain-ipv6-96-not-ipv4"),
        pytest.param(NETWORKS, "fe80::1%eth0", False, id="ipv6-scoped-outside"),
        pytest.param(["fe80::/10"], "fe80::1%eth0", True, id="ipv6-scoped-inside"),
        pytest.param(NETWORKS, None, False, id="no-peer-unix-socket"),
        pytest.param(NETWORKS, "", False, id="empty-peer"),
        pytest.param(NETWORKS, "not-an-ip", False, id="junk-peer"),
        pytest.param(NETWORKS, "localhost", False, id="hostname-is-not-an-address"),
        pytest.param(NETWORKS, "10.0.0.1:8080", False, id="peer-with-port-is-junk"),
        pytest.param(NETWORKS, "[::1]", False, id="bracketed-ipv6-is-junk"),
        pytest.param(NETWORKS, " 10.0.0.1", False, id="padded-peer-is-junk"),
        pytest.param([], "10.0.0.1", False, id="no-trusted-proxies"),
        pytest.param(["0.0.0.0/0"], "198.51.100.1", True, id="trust-all-ipv4"),
        pytest.param(["0.0.0.0/0"], "2001:db8::1", False, id="trust-all-ipv4-not-ipv6"),
        pytest.param([" 10.0.0.0/8 "], "10.1.1.1", True, id="config-whitespace-stripped"),
    ],
)
def test_is_trusted(networks: list[str], peer: str | None, expected: bool) -> None:
    trust = TrustedProxies(networks)
    assert trust.is_trusted(peer) is expected
    assert trust.is_trusted(peer) is expected, "cached answer differs"


@pytest.mark.parametrize(
    "networks",
    [
        pytest.param(["junk"], id="junk"),
        pytest.param([""], id="empty-entry"),
        pytest.param(["10.0.0.1/8"], id="host-bits-set"),
        pytest.param(["10.0.0.0/33"], id="ipv4-prefix-too-long"),
        pytest.param(["2001:db8::/129"], id="ipv6-prefix-too-long"),
        pytest.param(["10.0.0.0/8", "example.com"], id="hostname"),
        pytest.param([167772161], id="integer-entry"),
        pytest.param("10.0.0.1", id="bare-string-not-list"),
    ],
)
def test_rejects_bad_configuration(networks: object) -> None:
    with pytest.raises(ValueError):
        TrustedProxies(networks)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("networks", "expected"),
    [
        pytest.param([], True, id="nothing-configured"),
        pytest.param(["10.0.0.1"], False, id="one-ipv4"),
        pytest.param(["::1"], False, id="one-ipv6"),
    ],
)
def test_empty(networks: list[str], expected: bool) -> None:
    assert TrustedProxies(networks).empty is expected


def test_cache_stays_bounded_and_correct_across_clears() -> None:
    trust = TrustedProxies(["10.0.0.0/16"])
    peers = [f"10.{i // 256}.{i % 256}.1" for i in range(3000)]
    for _ in range(2):
        answers = [trust.is_trusted(peer) for peer in peers]
        assert answers == [peer.startswith("10.0.") for peer in peers]
    assert 0 < len(trust._cache) <= 1024


def test_an_entry_of_another_type_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="got int"):
        TrustedProxies([167772161])  # type: ignore[list-item]


class _Lookups:
    """Counts the lookups the cache lets through to the mask comparison."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.peers: list[str] = []
        original = TrustedProxies._lookup

        def counted(trust: TrustedProxies, peer: str) -> bool:
            self.peers.append(peer)
            return original(trust, peer)

        monkeypatch.setattr(TrustedProxies, "_lookup", counted)


def test_a_repeat_peer_is_answered_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = _Lookups(monkeypatch)
    trust = TrustedProxies(["10.0.0.0/8"])
    assert [trust.is_trusted("10.0.0.1") for _ in range(3)] == [True] * 3
    assert [trust.is_trusted("192.0.2.1") for _ in range(3)] == [False] * 3
    assert lookups.peers == ["10.0.0.1", "192.0.2.1"]


def test_no_peer_or_no_networks_needs_no_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = _Lookups(monkeypatch)
    assert TrustedProxies(["10.0.0.0/8"]).is_trusted(None) is False
    assert TrustedProxies([]).is_trusted("10.0.0.1") is False
    assert lookups.peers == []


def test_the_cache_is_cleared_when_it_holds_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = _Lookups(monkeypatch)
    trust = TrustedProxies(["10.0.0.0/8"])
    peers = [f"10.0.{i // 256}.{i % 256}" for i in range(1024)]  # exactly the limit
    for peer in peers:
        trust.is_trusted(peer)
    trust.is_trusted("192.0.2.1")  # the cache is full: cleared, then this one kept
    trust.is_trusted(peers[0])
    assert lookups.peers[-1] == peers[0] and len(lookups.peers) == 1026


# --- client_address: the client through trusted proxies (rate-limit keys) ----------------


@pytest.mark.parametrize(
    ("peer", "chain", "expected"),
    [
        # An untrusted peer is the client, whatever it wrote.
        ("198.51.100.7", ["203.0.113.9"], "198.51.100.7"),
        # One of our proxies: the entry it appended.
        ("10.0.0.2", ["203.0.113.9"], "203.0.113.9"),
        # Addresses a client put on the left are never reached.
        ("10.0.0.2", ["1.2.3.4, 203.0.113.9"], "203.0.113.9"),
        # Two of our proxies in a row: skip both.
        ("10.0.0.2", ["1.2.3.4, 203.0.113.9, 10.0.0.3"], "203.0.113.9"),
        ("10.0.0.2", ["1.2.3.4", "203.0.113.9", "10.0.0.3"], "203.0.113.9"),
        # Junk ends the walk at the proxy that wrote it, never at client text.
        ("10.0.0.2", ["203.0.113.9, unknown"], "10.0.0.2"),
        ("10.0.0.2", ["203.0.113.9, unknown, 10.0.0.3"], "10.0.0.3"),
        # Only our proxies all the way: the left-most of them.
        ("10.0.0.2", ["10.0.0.4, 10.0.0.3"], "10.0.0.4"),
        # No header from a trusted peer: the peer.
        ("10.0.0.2", [], "10.0.0.2"),
        # Ports and brackets, and IPv6 canonicalised.
        ("10.0.0.2", ["[2001:DB8::1]:443"], "2001:db8::1"),
        ("10.0.0.2", ["192.0.2.1:5000"], "192.0.2.1"),
        ("10.0.0.2", ["192.0.2.1:5"], "192.0.2.1"),
        ("10.0.0.2", ["[2001:db8::1]:5"], "2001:db8::1"),
        # Anything else after the address makes the entry junk: the walk ends there.
        ("10.0.0.2", ["[2001:db8::1]junk"], "10.0.0.2"),
        ("10.0.0.2", ["[2001:db8::1]:"], "10.0.0.2"),
        ("10.0.0.2", ["[2001:db8::1]:44x"], "10.0.0.2"),
        ("10.0.0.2", ["192.0.2.1:x"], "10.0.0.2"),
        ("10.0.0.2", ["192.0.2.1:"], "10.0.0.2"),
        ("10.0.0.2", ["192.0.2.1:\u0665"], "10.0.0.2"),  # a non-ASCII digit is no port
        ("fd00::2", ["2001:db8:0:0::7"], "2001:db8::7"),
        (None, ["203.0.113.9"], None),
    ],
)
def test_client_address_walks_trusted_hops_from_the_right(
    peer: str | None, chain: list[str], expected: str | None
) -> None:
    ours = TrustedProxies(["10.0.0.0/8", "fd00::/8"])  # built here: see tests/mutation
    assert client_address(peer, chain, ours) == expected


def test_client_address_trusts_nothing_without_trusted_proxies() -> None:
    assert client_address("10.0.0.2", ["203.0.113.9"], TrustedProxies([])) == "10.0.0.2"
