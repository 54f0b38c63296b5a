"""One forward-auth check: the forwarded request judged by the proxy's own steps.

``judge`` is the whole of the service's logic and it decides nothing itself: it calls
``gateway.request_decision`` (locate → facts → decide, the functions the proxy listener
calls) and then works out what the host proxy needs beyond allow/deny: which client
headers it must remove (the proxy's ``Removal`` rules, for Envoy, which can remove them),
and for how long it may reuse an allow (RFC 9111 §5.2.2.1 ``max-age``; off by default).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.accesslog import RequestRecord
from gateway.auth.bearer import ACCESS_TOKEN_PARAM
from gateway.auth.decide import Allow, Decision, Deny
from gateway.auth.settings import CacheSettings
from gateway.compiler import CompiledRoute
from gateway.decision.forwarded import ForwardedRequest
from gateway.problems import Challenge, GatewayError, UriTooLong
from gateway.request_decision import (
    decide,
    locate,
    refuse_unless_sent_as_judged,
    request_facts,
)
from gateway.runtime import Runtime


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    route: CompiledRoute | None
    remove_headers: tuple[str, ...] = ()  # client fields the upstream must not receive
    remove_query: tuple[str, ...] = ()  # query parameters the upstream must not receive
    max_age: int = 0  # seconds a host proxy may reuse this allow; 0: no-store

    def challenge(self, realm: str) -> Challenge | str:
        """What a refusal's challenge offers, as the proxy renders it: the route's (its DPoP
        scheme and ``algs``, RFC 9728 ``resource_metadata``, the scope to ask for), or the
        bare realm for a refusal before any route matched."""
        return self.route.auth.challenge if self.route is not None else realm


async def judge(
    runtime: Runtime,
    forwarded: ForwardedRequest,
    record: RequestRecord,
    *,
    peer: str | None,
    client_ip: str | None,
) -> Verdict:
    """The proxy's decision for ``forwarded``; every refusal is a ``Deny``.

    ``peer`` is the host proxy (who may set a certificate header, as a front proxy may on
    the proxy listener); ``client_ip`` is the client the host proxy reports, which a
    rate-limit ``ip`` key counts.
    """
    compiled = runtime.compiled
    try:
        if len(forwarded.target) > compiled.config.limits.max_request_line:
            # RFC 9112 §3: the proxy listener's parser refuses such a target with 414.
            raise UriTooLong("The request target is too long.")
        located = locate(compiled, forwarded.target, forwarded.host, forwarded.method, record)
        refuse_unless_sent_as_judged(forwarded.target, forwarded.host, located)
        facts = request_facts(
            located, forwarded.method, forwarded.host, forwarded.authorization,
            headers=CIMultiDictProxy(CIMultiDict(forwarded.headers)),
            peer=peer, client_ip=client_ip,
        )  # fmt: skip
        decision = await decide(runtime.decider, located, facts)
    except GatewayError as error:  # refused before the decision: 400, 404, 405
        return Verdict(Deny(error.with_traceback(None)), None)
    route = located.route
    if isinstance(decision, Deny):
        return Verdict(decision, route)
    decision = cookie_for_upstream(decision, forwarded.headers)
    settings = compiled.decision
    bound = settings.max_age if settings is not None else 0.0
    if route.auth.rate_limits is not None:
        bound = 0.0  # a reused allow is a request no limit counted
    if any(name == "Cookie" for name, _ in decision.headers):
        bound = 0.0  # this request's cookies: reusable only under a key holding them, which
        # README's nginx key does; a host proxy's own key might not
    signed = route.auth.identity_token
    if signed is not None and compiled.signing is not None:
        # The allow carries a signed identity token, which the signer hands out until
        # refresh_before (or half its lifetime) before its exp: reused no longer than that,
        # it never reaches the upstream expired.
        bound = min(bound, compiled.signing.refresh_before, signed.route.lifetime / 2)
    in_query = decision.token_source == "query"  # noqa: S105 - a place, not a secret
    return Verdict(
        decision,
        route,
        remove_headers=removed_headers(route, decision, forwarded.header_names),
        remove_query=(ACCESS_TOKEN_PARAM,) if in_query and not route.forward_authorization else (),
        max_age=allow_max_age(decision, bound, compiled.cache, time.time()),
    )


def cookie_for_upstream(allow: Allow, headers: Sequence[tuple[str, str]]) -> Allow:
    """``allow`` saying which ``Cookie`` the upstream gets.

    The proxy takes the gateway's cookies (a browser session) out of what it forwards
    (``Logins.strip_cookies``, already applied: a ``Cookie`` to set, or ``cookie`` to
    remove); a host proxy forwards the client's own, so its recipe copies the check's
    ``Cookie`` over the client's (nginx ``proxy_set_header``, Traefik
    ``authResponseHeaders``, Caddy, Envoy ``allowed_upstream_headers``), and every allow
    names it, the client's cookies as sent when none was the gateway's: the same recipe is
    right with or without browser logins."""
    if "cookie" in allow.remove or any(name == "Cookie" for name, _ in allow.headers):
        return allow
    sent = [value for name, value in headers if name.lower() == "cookie"]
    if not sent:
        return allow
    return replace(allow, headers=(*allow.headers, ("Cookie", "; ".join(sent))))


def removed_headers(route: CompiledRoute, allow: Allow, names: tuple[str, ...]) -> tuple[str, ...]:
    """The client's fields the proxy would not forward: identity names and prefixes in any
    case or with ``_`` (``Removal.removes``), and Authorization where the route keeps the
    token from its upstream, and what the decision keeps from it (``Allow.remove``: the
    DPoP proof, RFC 9449, unless ``forward_proof``). Names the allow sets are overwritten,
    not removed."""
    setting = {name.lower() for name, _ in allow.headers}
    removed: dict[str, None] = {}
    for name in names:
        lname = name.lower()
        if lname in setting:
            continue
        if (
            route.removal.removes(lname)
            or lname in allow.remove
            or (lname == "authorization" and not route.forward_authorization)
        ):
            removed[lname] = None
    return tuple(removed)


def allow_max_age(allow: Allow, bound: float, cache: CacheSettings, now: float) -> int:
    """How long a host proxy may reuse an allow: at most ``bound``, never past the token's
    ``exp`` (RFC 7519 §4.1.4) and never longer than this gateway would itself keep the
    identity (the identity cache's TTLs), so caching adds at most ``bound`` to how late a
    revocation bites. Whole seconds, rounded down; 0 means do not store."""
    if bound <= 0:
        return 0
    identity = allow.identity
    if identity is None:  # an anonymous allow depends on no token
        return int(bound)
    # The host proxy's cache key holds the method, host, URI and Authorization (README
    # "Decision caching"), nothing else. An allow that rests on more is never reusable: a
    # browser session (its cookie), a DPoP proof (RFC 9449 §4.3: one proof, one request)
    # or a client certificate (RFC 8705 §3: checked on every request). Reusing one would
    # let a stolen bound token pass without its key, or one user's session serve another.
    if allow.token_source not in ("header", "query") or allow.token_type in ("DPoP", "mTLS"):
        return 0
    limit = min(bound, cache.max_ttl, cache.verified_max_ttl)
    if identity.expires_at is not None:
        limit = min(limit, identity.expires_at - now)
    return max(0, math.floor(limit))
