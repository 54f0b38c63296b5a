"""Trusted forwarding peers for RFC 7239 ``Forwarded`` and the de-facto ``X-Forwarded-*`` headers.

Anyone can type ``X-Forwarded-For: 127.0.0.1``. Those headers only mean something when the
socket peer that sent them is a proxy we run, so the proxy asks this class, once per
request, whether the peer may speak for the client (the model is aiohttp-remotes'
trusted hosts). Networks are parsed and reduced to integer masks at construction; a
lookup is a dictionary hit for a repeat peer and a few integer ``&`` otherwise.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

_CACHE_LIMIT = 1024

_Masks = tuple[tuple[int, int], ...]


def _network(text: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parse one configured entry, refusing anything ambiguous at startup.

    ``ip_network`` parses strictly by default and so rejects ``10.0.0.1/8``: host bits in a
    CIDR are usually a typo for a narrower range, and guessing wider would trust more peers
    than the operator meant. Strictness also means an IPv6 network with an IPv4-mapped
    address (``::ffff:0:0/96``) has a prefix of at least 96.
    """
    if not isinstance(text, str):
        # ip_network(5) would quietly mean 0.0.0.5/32.
        raise ValueError(f"trusted proxy entry must be a string, got {type(text).__name__}")
    try:
        network = ipaddress.ip_network(text.strip())
    except ValueError as exc:
        raise ValueError(f"invalid trusted proxy address or network {text!r}: {exc}") from None
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            # Peers in ::ffff:0:0/96 are compared as IPv4, so their networks must be too.
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _masks(networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> _Masks:
    both = list(networks)
    v4 = [n for n in both if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in both if isinstance(n, ipaddress.IPv6Network)]
    masks = [(int(n.network_address), int(n.netmask)) for n in ipaddress.collapse_addresses(v4)]
    masks += [(int(n.network_address), int(n.netmask)) for n in ipaddress.collapse_addresses(v6)]
    return tuple(masks)


class TrustedProxies:
    """The peers (IPs or CIDRs, IPv4 and IPv6) allowed to set forwarding headers."""

    __slots__ = ("_cache", "_v4", "_v6")

    def __init__(self, networks: Iterable[str]) -> None:
        if isinstance(networks, str):
            # A bare string iterates as characters; fail loudly instead of trusting "1".
            raise ValueError("trusted proxies must be a list of addresses, not one string")
        parsed = [_network(text) for text in networks]
        self._v4 = _masks(n for n in parsed if isinstance(n, ipaddress.IPv4Network))
        self._v6 = _masks(n for n in parsed if isinstance(n, ipaddress.IPv6Network))
        self._cache: dict[str, bool] = {}

    @property
    def empty(self) -> bool:
        return not (self._v4 or self._v6)

    def is_trusted(self, peer: str | None) -> bool:
        """Whether ``peer`` (the client socket's IP) is one of ours.

        No peer (a Unix socket) and text that is not an IP are never trusted: failing
        closed only costs the upstream a forwarded address, failing open lets a client
        choose its own.
        """
        if peer is None or not (self._v4 or self._v6):
            return False
        cached = self._cache.get(peer)
        if cached is not None:
            return cached
        result = self._lookup(peer)
        if len(self._cache) >= _CACHE_LIMIT:
            # Clearing beats LRU bookkeeping: peers repeat, so the cache refills at once,
            # and a flood of distinct addresses cannot grow it without bound.
            self._cache.clear()
        self._cache[peer] = result
        return result

    def _lookup(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address):
            mapped = address.ipv4_mapped
            if mapped is not None:
                address = mapped
        masks = self._v4 if isinstance(address, ipaddress.IPv4Address) else self._v6
        value = int(address)
        return any(value & mask == network for network, mask in masks)

    def __repr__(self) -> str:
        return f"TrustedProxies(v4={len(self._v4)}, v6={len(self._v6)})"


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: TrustedProxies
) -> str | None:
    """The client's address: the socket peer, or, when the peer is one of our proxies, the
    right-most ``X-Forwarded-For`` entry that is not (nginx's ``real_ip_recursive on``).

    Each proxy appends the address it received from, so only the entries our own proxies
    wrote can be believed: walking from the right and stopping at the first untrusted
    entry gives the last hop a client could not choose. A client that puts addresses of its
    own on the left gains nothing; an entry that is no IP (``unknown``, a hostname, junk)
    ends the walk at the hop that wrote it, so the answer is never text a client typed.
    """
    if peer is None or not trusted.is_trusted(peer):
        return peer
    address = peer
    for value in reversed(forwarded_for):
        for entry in reversed(value.split(",")):
            candidate = _address_of(entry)
            if candidate is None:
                return address
            address = candidate
            if not trusted.is_trusted(candidate):
                return address
    return address


def _address_of(entry: str) -> str | None:
    """One ``X-Forwarded-For`` entry as a canonical IP, or None (a port or brackets are
    accepted, as some proxies write ``[2001:db8::1]:443`` or ``192.0.2.1:5000``; anything
    else after the address, ``[::1]junk`` or ``192.0.2.1:x``, makes it no address)."""
    text = entry.strip()
    if text.startswith("["):
        text, _, after = text[1:].partition("]")
        if after and not _is_port(after):
            return None
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
        if not _is_port(":" + port):
            return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _is_port(text: str) -> bool:
    """``":" 1*DIGIT``, the port some proxies append to an address."""
    return text[:1] == ":" and text[1:].isascii() and text[1:].isdigit()
