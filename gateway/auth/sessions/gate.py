"""OIDC Core §3.1 on the request path: a session route's decision when the request carries
no token - the browser's session, refreshed when due (RFC 6749 §6), touched for the idle
timeout, turned into the one ``Identity`` shape - or, without one, a login redirect for a
navigation and a 401 for everything else (RFC 6750 §3.1).

Called from ``Decider.decide`` only; the route's policy, rate limits and signed identity
token then apply exactly as to a bearer token.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from gateway.auth.decide import Allow, RequestFacts, RouteAuth
from gateway.auth.policy import check
from gateway.auth.sender import HeaderLookup
from gateway.auth.sessions.authorize import safe_return_path
from gateway.auth.sessions.browser import SAFE_METHODS, from_another_origin, wants_login_redirect
from gateway.auth.sessions.errors import CrossSiteRequest, IdTokenInvalid, SessionRequired
from gateway.auth.sessions.refresh import SessionEnded
from gateway.auth.sessions.service import LoginService
from gateway.auth.sessions.session import (
    Session,
    access_expired,
    refresh_due,
    session_identity,
    touch_due,
)
from gateway.auth.sessions.settings import SessionRoute
from gateway.auth.sessions.store import Loaded
from gateway.auth.trace import Trace
from gateway.problems import GatewayError

log = logging.getLogger(__name__)


def first(headers: HeaderLookup, name: str) -> str | None:
    values = headers.getall(name, ())
    return values[0] if values else None


async def session_allow(
    service: LoginService,
    rules: SessionRoute,
    route: RouteAuth,
    facts: RequestFacts,
    trace: Trace | None = None,
    now: float | None = None,
) -> Allow:
    """The decision for a request judged by its session; raises ``LoginRedirect``,
    ``SessionRequired``, ``CrossSiteRequest`` (an unsafe method another origin's page
    sent: the cookie would otherwise authorise it) or the policy's refusal."""
    now = time.time() if now is None else now
    if facts.method not in SAFE_METHODS and from_another_origin(
        first(facts.headers, "sec-fetch-site"),
        first(facts.headers, "origin"),
        service.settings.external_url,
    ):
        raise CrossSiteRequest()
    cookie_fields = list(facts.headers.getall("cookie", ()))
    loaded = await service.store.load(cookie_fields, now)
    found = loaded.session
    if found is not None and (
        found.login != service.settings.name or found.issuer != service.settings.id_token.issuer
    ):
        # Secrets (or a Redis) shared with another login: a session of one is not the
        # other's. The cookie store's seal binds origin, issuer and client already.
        loaded = replace(loaded, session=None, problem="other_login")
    if loaded.session is None:
        reason = "no_session"
        if loaded.problem is not None:
            service.counters.ended[loaded.problem] += 1
            reason = f"session_{loaded.problem}"
        if trace is not None:
            trace.add("session", "none", problem=loaded.problem)
        clear = await service.store.delete(loaded) if loaded.present else []
        raise _unauthenticated(service, rules, facts, cookie_fields, now, clear, reason)
    session, set_cookies = await _current(service, rules, facts, loaded, cookie_fields, now)
    identity = session_identity(session, service.client.client_id)
    if trace is not None:
        trace.add("session", "found", login=service.settings.name, ref=session.ref)
    try:
        check(route.policy, identity)
    except GatewayError as error:
        error.set_cookies = (*error.set_cookies, *set_cookies)  # a refresh is kept even so
        raise
    headers = route.identity_headers.render(identity)
    if service.settings.forward_access_token:
        headers.append(("Authorization", f"{session.token_type} {session.access_token}"))
    return Allow(
        identity,
        tuple(headers),
        None,
        reason="session",
        response_headers=tuple(("Set-Cookie", cookie) for cookie in set_cookies),
    )


async def _current(
    service: LoginService,
    rules: SessionRoute,
    facts: RequestFacts,
    loaded: Loaded,
    cookie_fields: list[str],
    now: float,
) -> tuple[Session, list[str]]:
    """The session to serve this request with, and the ``Set-Cookie`` values that store it
    (refreshed, touched or re-sealed under the current key)."""
    session = loaded.session
    assert session is not None
    settings = service.settings
    changed = loaded.reseal
    if (
        settings.forward_access_token
        and session.refresh_token is None
        and access_expired(session, now)
    ):
        # The upstream would get an expired token and nothing can renew it: log in again
        # (silently, while the provider's own session lasts).
        service.counters.ended["access_expired"] += 1
        clear = await service.store.delete(loaded)
        raise _unauthenticated(
            service, rules, facts, cookie_fields, now, clear, "session_access_expired"
        )
    if refresh_due(session, now, margin=settings.refresh_margin):
        try:
            session = await service.refresher.refresh(session, persist=service.persist(loaded))
            # The Redis store's winner persisted it; the cookie store writes it in every
            # answer (each carries the same refreshed session).
            changed = changed or settings.store.kind == "cookie"
        except (SessionEnded, IdTokenInvalid) as exc:
            # RFC 6749 §5.2 invalid_grant (expired, revoked, or a reuse the server took for
            # theft), or a refreshed ID token that fails OIDC Core §12.2: the session is over.
            reason = exc.reason if isinstance(exc, SessionEnded) else "refresh_id_token"
            service.counters.ended[reason] += 1
            clear = await service.store.delete(loaded)
            raise _unauthenticated(
                service, rules, facts, cookie_fields, now, clear, f"session_{reason}"
            ) from None
        except GatewayError as exc:
            if access_expired(session, now):
                raise  # the token endpoint is down and the access token is gone: 503
            log.warning(
                "refresh of session %s failed (%s); its access token is still valid",
                session.ref, exc.reason,
            )  # fmt: skip
    # No touch within twice the refresh margin of expiry: a write of the pre-refresh
    # session racing a concurrent refresh could otherwise put spent tokens back.
    lifetimes = settings.lifetimes
    if touch_due(session, now, idle=lifetimes.idle) and not refresh_due(
        session, now, margin=2 * settings.refresh_margin
    ):
        session = session.touched(now)
        changed = True
    if not changed:
        return session, []
    set_cookies = await service.store.update(session, loaded, now)
    if settings.store.kind == "redis" and set_cookies:
        # The Redis store answers an update with deletions only when the session is gone
        # (a logout on another replica ended it meanwhile).
        service.counters.ended["gone"] += 1
        raise _unauthenticated(
            service, rules, facts, cookie_fields, now, set_cookies, "session_gone"
        )
    return session, set_cookies


def _unauthenticated(
    service: LoginService,
    rules: SessionRoute,
    facts: RequestFacts,
    cookie_fields: list[str],
    now: float,
    clear: list[str],
    reason: str,
) -> GatewayError:
    """A navigation goes to the login (issue 18: GET, prefers HTML, no ``Authorization``,
    no ``X-Requested-With``, ``Sec-Fetch-Mode: navigate`` when sent); anything else gets the
    401 with the route's challenge, never a redirect (oauth2-proxy #2918)."""
    headers = facts.headers
    navigation = wants_login_redirect(
        facts.method,
        accept=first(headers, "accept"),
        authorization=bool(facts.authorization),
        x_requested_with=bool(headers.getall("x-requested-with", ())),
        sec_fetch_mode=first(headers, "sec-fetch-mode"),
    )
    if not (rules.redirect and navigation):
        return SessionRequired(clear, reason)
    target = facts.request_path or facts.path
    if facts.query:
        target = f"{target}?{facts.query}"
    return_to = safe_return_path(target, reserved=service.settings.paths)
    return service.login_redirect(return_to, cookie_fields, now, clear)
