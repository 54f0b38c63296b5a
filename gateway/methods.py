"""The HTTP methods the gateway relays (RFC 9110 §9), shared by the configuration (a route
cannot name one it never relays) and the request path (a 405's ``Allow``).

Never relayed: CONNECT (the gateway is no open proxy, §9.3.6) and TRACE (an echo would
reflect the request's credentials, "cross-site tracing"; §9.3.8 asks the final recipient
to leave out what is sensitive, which a gateway cannot list with certainty).
"""

from __future__ import annotations

from typing import Final

NEVER_RELAYED: Final = frozenset({"CONNECT", "TRACE"})
# RFC 9110 §9.3 and RFC 5789 (PATCH): what a route accepting any method is relayed.
ANY_METHOD: Final = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def relayed_methods(methods: frozenset[str] | None) -> tuple[str, ...]:
    """The methods a resource accepts as ``Allow`` lists them (RFC 9110 §10.2.1):
    ``RouteTable.allowed``'s (None means any), without the methods never relayed."""
    return ANY_METHOD if methods is None else tuple(sorted(methods - NEVER_RELAYED))
