"""Max-Forwards at this hop, and the ``Allow`` of an OPTIONS answered here (RFC 9110 §7.6.2,
§9.3.7, §10.2.1).

RFC 9110 §7.6.2: "Each intermediary that receives a TRACE or OPTIONS request containing a
Max-Forwards header field MUST check and update its value prior to forwarding the request.
If the received value is zero (0), the intermediary MUST NOT forward the request; instead,
the intermediary MUST respond as the final recipient." A value above zero is forwarded as
"the lesser of a) the received value decremented by one (1) or b) the recipient's maximum
supported value" (``MAX_SUPPORTED`` here); "A recipient MAY ignore a Max-Forwards header
field received with any other request methods", and the gateway passes it on unchanged.

Only OPTIONS is counted here: TRACE is the other method the RFC names, and the gateway
relays no TRACE at any Max-Forwards (``request_decision.route_of`` refuses it with 405 once
routed, its ``Allow`` the resource's methods), so it is the final recipient of every TRACE.
It answers 405 rather than the echo §9.3.8 describes: an echo reflects the request's
credentials to whatever script can send it ("cross-site tracing"), and §9.3.8 asks the
final recipient to "exclude any request fields that are likely to contain sensitive data",
which a gateway whose requests carry bearer tokens, cookies, DPoP proofs and site-specific
secrets cannot list with certainty. TRACE is optional (§9.1: only GET and HEAD are
required), so 405 is an answer the RFC allows.

Pure functions over the decoded field list; the handler calls them once the request was
routed and authorised like any other, so Max-Forwards never skips a 401, 403, 404 or 405.
"""

from __future__ import annotations

from gateway.methods import relayed_methods
from gateway.problems import BadRequest

Header = tuple[str, str]

MAX_SUPPORTED = 2**31 - 1  # far beyond any chain of proxies; fits an upstream's 32-bit int
_COUNTED = frozenset({"OPTIONS"})


def _received(value: str) -> int:
    """The hop count of one Max-Forwards value (RFC 9110 §7.6.2: ``1*DIGIT``), at most
    ``MAX_SUPPORTED + 1`` so that a value of any length costs no big-number arithmetic."""
    if not value or not value.isascii() or not value.isdigit():
        raise BadRequest("Max-Forwards must be a number of hops (RFC 9110 §7.6.2).")
    significant = value.lstrip("0")
    if len(significant) > len(str(MAX_SUPPORTED)):
        return MAX_SUPPORTED + 1
    return min(int(significant or "0"), MAX_SUPPORTED + 1)


def next_hop_fields(method: str, fields: list[Header]) -> list[Header] | None:
    """The client's fields as the upstream is to get them, or None when the gateway is the
    request's final recipient (an OPTIONS received with ``Max-Forwards: 0``).

    ``fields`` itself for a method Max-Forwards does not count, or without the field;
    otherwise a copy with the value decremented in place. Raises ``BadRequest`` (400) for a
    value that is not ``1*DIGIT``, or for the field sent twice (its value is no list).
    """
    if method not in _COUNTED:
        return fields
    found = [index for index, (name, _) in enumerate(fields) if name.lower() == "max-forwards"]
    if not found:
        return fields
    if len(found) > 1:
        raise BadRequest("The request has more than one Max-Forwards header.")
    index = found[0]
    name, value = fields[index]
    remaining = _received(value)
    if remaining == 0:
        return None
    updated = list(fields)
    updated[index] = (name, str(min(remaining - 1, MAX_SUPPORTED)))
    return updated


def allow_value(methods: frozenset[str] | None) -> str:
    """The ``Allow`` field value for the methods a route table accepts on a resource."""
    return ", ".join(relayed_methods(methods))
