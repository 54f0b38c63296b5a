"""The original request as a host proxy forwarded it (RFC 9110 §9.1, RFC 9112 §3.2, RFC 7239).

A forward-auth check is not the request it is about: the host proxy describes that request
in headers of its own (nginx: ``X-Original-URI``/``-Method``; Traefik and Caddy:
``X-Forwarded-Uri``/``-Method``/``-Host``; Envoy: the path after a prefix, or the gRPC
``AttributeContext``). Each reader here takes only those values, refuses a missing or
repeated one (400) rather than guessing, and returns the same four facts a request on the
proxy listener has: method, raw target, host, Authorization fields. What happens next is
``gateway.request_decision``'s, exactly as for a proxied request.

Never read: ``X-Forwarded-Prefix`` and ``X-Forwarded-Port`` (a prefix a proxy stripped or a
port it listened on chooses no route, and trusting them was a published bypass), and the
client's own copies of these headers (the host proxy overwrites them; the service believes
only peers in ``decision.trusted_proxies``, checked before any reader runs).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.problems import BadRequest
from gateway.proxy.requests import refuse_connect

HostProxy = Literal["nginx", "traefik", "caddy", "envoy-http", "envoy-grpc"]
Header = tuple[str, str]

# RFC 9110 §9.1: method = token.
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")
# RFC 9112 §3.2: a request target is visible ASCII, no space; what it may be beyond that is
# the normaliser's to say, as for a request line.
_TARGET = re.compile(r"[\x21-\x7e]+")


class UntrustedPeer(BadRequest):
    """The peer is not one of ``decision.trusted_proxies``: its headers mean nothing."""

    slug = "untrusted-forwarder"
    reason = "untrusted_peer"


class BadForwarded(BadRequest):
    """The host proxy did not describe the original request (a configuration error)."""

    slug = "bad-forwarded-request"
    reason = "bad_forwarded"


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """The original request, as much of it as a decision may know."""

    method: str
    target: str  # as the client sent it: normalised by ``locate``, never here
    host: str | None
    authorization: tuple[str, ...]
    header_names: tuple[str, ...]  # every field name forwarded (Envoy removes the forbidden)
    headers: tuple[Header, ...] = ()  # every field (DPoP proofs, a certificate header)


def values_of(headers: Sequence[Header], name: str) -> list[str]:
    wanted = name.lower()
    return [value for key, value in headers if key.lower() == wanted]


def _one(headers: Sequence[Header], name: str, *, required: bool = True) -> str | None:
    values = values_of(headers, name)
    if len(values) > 1:
        raise BadForwarded(f"{name} was sent more than once.")
    if not values:
        if required:
            raise BadForwarded(f"The host proxy did not send {name}.")
        return None
    return values[0]


def forwarded_request(
    method: str | None, target: str | None, host: str | None, headers: Sequence[Header]
) -> ForwardedRequest:
    """Check what a reader found: a method token, a target of visible ASCII."""
    if method is None or _METHOD.fullmatch(method) is None:
        raise BadForwarded("The forwarded method is not an HTTP method.")
    refuse_connect(method)
    if target is None or _TARGET.fullmatch(target) is None:
        raise BadForwarded("The forwarded request target is not a request target.")
    return ForwardedRequest(
        method=method,
        target=target,
        host=host or None,
        authorization=tuple(values_of(headers, "Authorization")),
        header_names=tuple(name for name, _ in headers),
        headers=tuple(headers),
    )


def from_nginx(headers: Sequence[Header]) -> ForwardedRequest:
    """nginx ``auth_request``: ``X-Original-URI: $request_uri``, ``X-Original-Method:
    $request_method``, ``X-Forwarded-Host: $host`` (README "Forward auth")."""
    return forwarded_request(
        _one(headers, "X-Original-Method"),
        _one(headers, "X-Original-URI"),
        _one(headers, "X-Forwarded-Host"),
        headers,
    )


def from_forward_auth(headers: Sequence[Header]) -> ForwardedRequest:
    """Traefik ``ForwardAuth`` and Caddy ``forward_auth``: both write ``X-Forwarded-Method``,
    ``-Uri`` and ``-Host`` themselves, over whatever the client sent."""
    return forwarded_request(
        _one(headers, "X-Forwarded-Method"),
        _one(headers, "X-Forwarded-Uri"),
        _one(headers, "X-Forwarded-Host"),
        headers,
    )


def from_envoy_http(
    method: str, raw_path: str, headers: Sequence[Header], prefix: str
) -> ForwardedRequest:
    """Envoy ``ext_authz`` ``http_service``: the original method, the original target after
    ``path_prefix``, and ``Host`` (Envoy sends the original ``:authority``)."""
    rest = raw_path[len(prefix) :] if raw_path.startswith(prefix) else None
    if rest is not None and not rest.startswith("/"):
        # "/envoy" or "/envoy?x" asks about "/" (Envoy appends the path to the prefix as is).
        rest = "/" + rest if rest == "" or rest.startswith("?") else None
    return forwarded_request(method, rest, _one(headers, "Host", required=False), headers)
