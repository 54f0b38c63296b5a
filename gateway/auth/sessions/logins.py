"""Every login config of a runtime, and the three ways the request path meets them (OIDC Core
§3.1, RFC 6265):

* ``answer``: the gateway's own login paths (callback, logout, back-channel logout), asked
  by the listener before any route is matched;
* ``allow``: a session route's decision, asked by ``Decider.decide`` when no token came;
* ``strip_cookies``: on every route, the gateway's cookies are taken out of what the
  upstream receives (a Redis session id is as good as the session);
* ``response_filter``: on every route, an upstream's ``Set-Cookie`` for one of the gateway's
  cookies is taken out of what the browser receives.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Literal

from gateway.auth.decide import Allow, RequestFacts, RouteAuth
from gateway.auth.sender import HeaderLookup
from gateway.auth.sessions import endpoints
from gateway.auth.sessions.cookies import CookiePolicy, set_cookie_name, without_owned
from gateway.auth.sessions.endpoints import BodyReader
from gateway.auth.sessions.gate import session_allow
from gateway.auth.sessions.pages import Reply
from gateway.auth.sessions.service import LoginService
from gateway.auth.trace import Trace

log = logging.getLogger(__name__)
Endpoint = Literal["callback", "logout", "backchannel"]
Header = tuple[str, str]


class Logins:
    def __init__(
        self, services: Mapping[str, LoginService], clock: Callable[[], float] = time.time
    ) -> None:
        self.services = dict(services)
        self._clock = clock
        self._endpoints: dict[str, tuple[LoginService, Endpoint]] = {}
        for service in self.services.values():
            settings = service.settings
            self._endpoints[settings.redirect_path] = (service, "callback")
            self._endpoints[settings.logout_path] = (service, "logout")
            if settings.backchannel_logout_path is not None:
                self._endpoints[settings.backchannel_logout_path] = (service, "backchannel")
        self.paths = frozenset(self._endpoints)
        self._policies: tuple[CookiePolicy, ...] = tuple(
            policy
            for service in self.services.values()
            for policy in (service.session_policy, service.login_policy)
        )
        # Upstream Set-Cookie fields dropped, by upstream (gateway_upstream_cookies_dropped).
        self.dropped_cookies: Counter[str] = Counter()

    async def answer(
        self,
        method: str,
        path: str,
        query: str | None,
        headers: HeaderLookup,
        read_body: BodyReader,
        peer: str | None = None,
        request_id: str | None = None,
    ) -> Reply | None:
        """The answer for one of the login paths (``path`` normalised, ``query`` raw), or
        None for any other path. ``read_body(limit)`` reads the whole request body (raising
        ``ContentTooLarge`` past ``limit``); only the back-channel logout calls it."""
        found = self._endpoints.get(path)
        if found is None:
            return None
        service, kind = found
        now = self._clock()
        if kind == "callback":
            return await endpoints.callback(service, method, query, headers, now, request_id)
        if kind == "logout":
            return await endpoints.logout(service, method, headers, now, request_id)
        return await endpoints.backchannel_logout(
            service, method, headers, read_body, now, peer, request_id
        )

    async def allow(self, route: RouteAuth, facts: RequestFacts, trace: Trace | None) -> Allow:
        assert route.session is not None
        service = self.services[route.session.login]
        return await session_allow(service, route.session, route, facts, trace, self._clock())

    def strip_cookies(self, facts: RequestFacts, allow: Allow) -> Allow:
        """``allow`` with the request's ``Cookie`` rewritten without the gateway's cookies (a
        ``Cookie`` among the headers to add replaces the client's), or removed when nothing
        else was in it."""
        if not self._policies:
            return allow
        rest = without_owned(facts.headers.getall("cookie", ()), self._policies)
        if rest is None:
            return allow
        if rest:
            return replace(allow, headers=(*allow.headers, ("Cookie", rest)))
        return replace(allow, remove=(*allow.remove, "cookie"))

    def response_filter(self, upstream: str) -> Callable[[list[Header]], list[Header]] | None:
        """What an upstream response's fields go through before the browser sees them: None
        without logins. Every route, not only the session routes: a browser keeps cookies
        per host, not per path (RFC 6265 §8.5, §8.6: "cookies do not provide isolation by
        port" nor by path), so any upstream answering on the gateway's host could otherwise
        overwrite the session cookie (fixating a session of the attacker's choice, or
        logging the user out) or plant a second one beside it."""
        if not self._policies:
            return None
        return lambda headers: self._without_our_cookies(headers, upstream)

    def _without_our_cookies(self, headers: list[Header], upstream: str) -> list[Header]:
        """``headers`` without the ``Set-Cookie`` fields for a cookie of ours (in whatever
        spelling a browser would store under our name), the others kept byte for byte and
        in order. Counted by upstream; logged with the cookie's name, never its value."""
        kept: list[Header] = []
        for item in headers:
            if item[0].lower() == "set-cookie":
                name = set_cookie_name(item[1])
                owner = next((p for p in self._policies if p.owns(name)), None)
                if owner is not None:
                    # Warned once per upstream, then counted: a misbehaving application
                    # that sets it on every answer must not flood the log.
                    first = upstream not in self.dropped_cookies
                    self.dropped_cookies[upstream] += 1
                    log.log(
                        logging.WARNING if first else logging.DEBUG,
                        "upstream %s set the gateway's cookie %s: the field was dropped",
                        upstream, owner.name,
                    )  # fmt: skip
                    continue
            kept.append(item)
        return kept

    async def close(self) -> None:
        for service in self.services.values():
            await service.close()
