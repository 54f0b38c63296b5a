"""A request's target, host, method and credentials → its route and decision (RFC 9112 §3.2,
RFC 3986 §5.2.4, RFC 9110 §9.1, RFC 6750 §2): the one implementation every caller shares.

The proxy listener (``gateway.handler``), the forward-auth decision service
(``gateway.decision``) and ``gateway explain`` all go through these functions and
nothing else: the same origin form, the same normalisation with the same refusals, the same
path-parameter rule, the same route table and the same ``Decider``. A forwarded request is
judged exactly as the proxy would judge it arriving directly, and refused where the host
proxy would forward another path than the one judged; a test walks the callers' source to
hold every one of them to this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.accesslog import RequestRecord
from gateway.auth.decide import NO_HEADERS, Decider, Decision, RequestFacts
from gateway.auth.sender import HeaderLookup
from gateway.auth.trace import Trace
from gateway.compiler import CompiledConfig, CompiledRoute
from gateway.methods import NEVER_RELAYED, relayed_methods
from gateway.problems import InvalidPath, MethodNotAllowed
from gateway.routing.paths import Target, escapes_normalised, normalise_target
from gateway.routing.request_target import match_path, origin_form


@dataclass(frozen=True, slots=True)
class Located:
    """Where a request goes: its normalised target, the path routes matched, the route."""

    target: Target  # the normalised path (what the upstream receives) and the raw query
    path: str  # the path as routes match it (parameters removed where they are allowed)
    route: CompiledRoute


def locate(
    compiled: CompiledConfig,
    raw_target: str,
    host: str | None,
    method: str,
    record: RequestRecord | None = None,
) -> Located:
    """The route for a request target as the client sent it (origin or absolute form).

    Raises ``BadRequest`` (a target that is no path, an absolute form naming another host,
    a Host that is no host), ``InvalidPath`` (whatever the normaliser refuses), ``NotFound``
    or ``MethodNotAllowed``. ``record`` gets the normalised path as soon as there is one and
    the route's name once it matched, so a refusal is logged with what was known.
    """
    return route_of(compiled, target_of(raw_target, host, record), host, method, record)


def refuse_unless_sent_as_judged(raw_target: str, host: str | None, located: Located) -> None:
    """For a caller that only judges a request another proxy forwards (forward auth):
    ``InvalidPath`` unless the path as sent is the normal path judged, up to equivalent
    escapes (RFC 3986 §6.2.2.1-2).

    The proxy forwards the path it judged; a host proxy forwards the client's own (nginx
    ``proxy_pass`` without a URI, Caddy, Traefik v2, Envoy without ``normalize_path``).
    Judged as ``/public``, ``/admin/%2e%2e/public`` would reach an upstream that does not
    resolve dot segments as a request under ``/admin``."""
    sent = origin_form(raw_target, host).partition("?")[0]
    if escapes_normalised(sent) != located.target.path:
        raise InvalidPath(
            "The forwarded path is not in normal form (dot or empty segments): the host "
            "proxy would send the upstream another path than the one judged."
        )


def target_of(raw_target: str, host: str | None, record: RequestRecord | None = None) -> Target:
    """The normalised target (the first half of ``locate``, for a caller that answers some
    paths itself before any route is asked, as the proxy does RFC 9728 metadata)."""
    target = normalise_target(origin_form(raw_target, host))
    if record is not None:
        record.path = target.path
    return target


def route_of(
    compiled: CompiledConfig,
    target: Target,
    host: str | None,
    method: str,
    record: RequestRecord | None = None,
) -> Located:
    """The route for a normalised target (the second half of ``locate``).

    A TRACE is refused here, once routed, by the proxy and the forward-auth service alike:
    never relayed (``gateway.methods``), it still names a resource, so its 405 lists what
    that accepts (RFC 9110 §15.5.6), and a path no route serves is a 404 like any other.
    """
    path = match_path(target.path, path_parameters=compiled.path_parameters)
    # The table normalises Host itself (and answers 400 for one that is no host).
    route = compiled.table.match(host, path, method)
    if record is not None:
        record.route = route.name
    if method in NEVER_RELAYED:
        raise MethodNotAllowed(relayed_methods(compiled.table.allowed(host, path)))
    return Located(target, path, route)


def request_facts(
    located: Located,
    method: str,
    host: str | None,
    authorization: Sequence[str],
    form_fields: Sequence[tuple[str, str]] | None = None,
    *,
    headers: HeaderLookup = NO_HEADERS,
    peer: str | None = None,
    tls_certificate: bytes | None = None,
    client_ip: str | None = None,
) -> RequestFacts:
    """What the decision may know about the request: nothing beyond these values
    (``headers`` are read only for DPoP proofs and a front proxy's certificate header)."""
    return RequestFacts(
        method=method,
        host=host,
        path=located.path,
        query=located.target.query,
        authorization=authorization,
        form_fields=form_fields,
        headers=headers,
        request_path=located.target.path,
        peer=peer,
        tls_certificate=tls_certificate,
        client_ip=client_ip,
    )


async def decide(
    decider: Decider, located: Located, facts: RequestFacts, trace: Trace | None = None
) -> Decision:
    """The route's decision for ``facts`` (``trace``: ``gateway explain`` only)."""
    return await decider.decide(located.route.auth, facts, trace)
