"""The paths the gateway answers itself for a login: the redirection endpoint (RFC 6749
§3.1.2, OIDC Core §3.1.2.5-§3.1.3), the logout path (RP-Initiated Logout 1.0 §2) and the
back-channel logout URI (Back-Channel Logout 1.0 §2.5-§2.8).

Each takes plain request values and returns a ``Reply``: no web framework here, so any
listener can serve them. Failures render themselves (``pages.problem_page``) and never
redirect; no token, code or session id reaches a log line.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import parse_qsl

from gateway.auth.sender import HeaderLookup
from gateway.auth.sessions.browser import from_another_origin
from gateway.auth.sessions.callback import match_pending, parse_callback
from gateway.auth.sessions.errors import LogoutTokenInvalid
from gateway.auth.sessions.gate import first
from gateway.auth.sessions.login import complete_login
from gateway.auth.sessions.logout import (
    check_replay,
    end_session_url,
    refuse_replay,
    verify_logout_token,
)
from gateway.auth.sessions.pages import Reply, empty, problem_page, redirect
from gateway.auth.sessions.service import LoginService
from gateway.problems import Forbidden, GatewayError, MethodNotAllowed

log = logging.getLogger(__name__)
BodyReader = Callable[[int], Awaitable[bytes]]
MAX_LOGOUT_BODY: Final = 64 * 1024
_FORM: Final = "application/x-www-form-urlencoded"


class CrossSiteLogout(Forbidden):
    slug = "cross-site-logout"
    reason = "logout_cross_site"

    def __init__(self) -> None:
        super().__init__("A sign-out must start on this site.")


async def callback(
    service: LoginService,
    method: str,
    query: str | None,
    headers: HeaderLookup,
    now: float,
    request_id: str | None = None,
) -> Reply:
    """The authorization response: match it to this browser's pending login (RFC 6749
    §10.12), exchange the code with the PKCE verifier, validate the ID token, start a session
    under a new id, and send the browser back where it was going - on this origin only. The
    response comes in the query of a GET (``response_mode=query``, the code flow's default,
    OIDC Core §3.1.2.5); nothing else is read."""
    accept = first(headers, "accept")
    cookie_fields = list(headers.getall("cookie", ()))
    counters = service.counters
    settings = service.settings
    try:
        if method != "GET":
            raise MethodNotAllowed(("GET",))
        pending = service.login_cookie.read(cookie_fields, now)
        response = parse_callback(
            query or "",
            issuer=settings.id_token.issuer,
            issuer_parameter_required=service.issuer_parameter_required(),
        )
        found, rest = match_pending(response.state, pending, now, settings.login_timeout)
    except GatewayError as error:
        counters.callbacks[error.reason] += 1
        log.info("login %s: callback refused (%s)", settings.name, error.reason)
        return problem_page(error, accept, request_id=request_id)
    # The state is spent whatever happens next: a replayed callback finds nothing to match.
    login_cookies = (
        service.login_cookie.write(rest, now) if rest.logins else service.login_cookie.clear()
    )
    try:
        session = await complete_login(
            service.client,
            response,
            found,
            endpoint=service.token_endpoint(),
            keys=service.keys,
            rules=settings.id_token,
        )
        previous = await service.store.load(cookie_fields, now)
        session_cookies = await service.store.create(session, previous, now)
    except GatewayError as error:
        counters.callbacks[error.reason] += 1
        log.info("login %s: callback failed (%s)", settings.name, error.reason)
        return problem_page(error, accept, set_cookies=login_cookies, request_id=request_id)
    counters.callbacks["ok"] += 1
    log.info("login %s: session %s started", settings.name, session.ref)
    # found.return_to passed authorize.safe_return_path: a path on this origin, nothing else.
    return redirect(
        settings.external_url + found.return_to, [*login_cookies, *session_cookies], "login_ok"
    )


async def logout(
    service: LoginService,
    method: str,
    headers: HeaderLookup,
    now: float,
    request_id: str | None = None,
) -> Reply:
    """End the session here and, when the issuer has an ``end_session_endpoint``, at the OP
    (RP-Initiated Logout 1.0 §2: ``id_token_hint`` RECOMMENDED, ``post_logout_redirect_uri``
    where it sends the browser afterwards). Only from this origin (Fetch Metadata,
    ``Origin``): a link or form elsewhere must not sign anyone out - not even on a sibling
    subdomain (``Sec-Fetch-Site: same-site``), which is another origin that may well host
    someone else's pages, and whose ``POST`` the ``Origin`` check refuses anyway."""
    accept = first(headers, "accept")
    settings = service.settings
    try:
        if method not in ("GET", "POST"):
            raise MethodNotAllowed(("GET", "POST"))
        site, origin = first(headers, "sec-fetch-site"), first(headers, "origin")
        if from_another_origin(site, origin, settings.external_url):
            raise CrossSiteLogout()
        loaded = await service.store.load(list(headers.getall("cookie", ())), now)
        clear = await service.store.delete(loaded) if loaded.present else []
        session = loaded.session
        if session is not None and session.sid is not None and settings.store.kind == "cookie":
            # A copy of the cookie elsewhere must not outlive the logout either.
            await service.store.end_sessions(session.issuer, sid=session.sid, subject=None, now=now)
    except GatewayError as error:
        return problem_page(error, accept, request_id=request_id)
    service.counters.logouts["rp"] += 1
    if session is not None:
        log.info("login %s: session %s logged out", settings.name, session.ref)
    location = settings.post_logout_redirect_uri
    try:
        end_session = service.end_session_endpoint()
    except GatewayError as error:  # ended here; the provider cannot be told safely
        return problem_page(error, accept, set_cookies=clear, request_id=request_id)
    if end_session is not None:
        location = end_session_url(
            end_session,
            client_id=settings.client.client_id,
            id_token_hint=session.id_token if session is not None else None,
            post_logout_redirect_uri=settings.post_logout_redirect_uri,
        )
    # RFC 9110 §15.4.4: 303 turns a POST into the GET the OP's page expects.
    return redirect(location, clear, "logout", status=303 if method == "POST" else 302)


async def backchannel_logout(
    service: LoginService,
    method: str,
    headers: HeaderLookup,
    read_body: BodyReader,
    now: float,
    peer: str | None = None,
    request_id: str | None = None,
) -> Reply:
    """§2.5: the OP POSTs ``logout_token`` as a form; §2.6 validates it; §2.7 ends the
    sessions it names - here on every replica, through Redis - and §2.8 answers 200 (or 400
    with an OAuth ``error``), ``Cache-Control: no-store``."""
    settings = service.settings
    try:
        if method != "POST":
            raise MethodNotAllowed(("POST",))
        content_type = (first(headers, "content-type") or "").split(";")[0].strip().lower()
        if content_type != _FORM:
            raise LogoutTokenInvalid(
                "A logout request is a form (application/x-www-form-urlencoded).",
                reason="logout_not_form",
            )
        token = _logout_token(await read_body(MAX_LOGOUT_BODY))
        request = await verify_logout_token(
            token, provider=service.keys, rules=settings.logout, now=now
        )
        await refuse_replay(request, service.replay)
        ended = await service.store.end_sessions(
            request.issuer, sid=request.sid, subject=request.subject, now=now
        )
        # A concurrent delivery of the same token may have recorded it first: its sessions
        # are ended either way.
        with contextlib.suppress(LogoutTokenInvalid):
            await check_replay(request, service.replay)
    except GatewayError as error:
        log.info("login %s: back-channel logout refused (%s)", settings.name, error.reason)
        return problem_page(error, None, request_id=request_id)
    service.counters.logouts["backchannel"] += 1
    log.info(
        "login %s: back-channel logout from %s ended %d session(s)", settings.name, peer, ended
    )
    return empty(200, "backchannel_logout")


def _logout_token(body: bytes) -> str:
    """The one ``logout_token`` of the form; parameters appear at most once (RFC 6749 §3.1)."""
    try:
        pairs = parse_qsl(
            body.decode("ascii"), strict_parsing=True, errors="strict", max_num_fields=16
        )
    except (ValueError, UnicodeDecodeError):
        raise LogoutTokenInvalid(
            "The logout request is not a readable form.", reason="logout_bad_form"
        ) from None
    tokens = [value for name, value in pairs if name == "logout_token"]
    if len(tokens) != 1:
        raise LogoutTokenInvalid(
            "The logout request must carry exactly one logout_token.", reason="logout_no_token"
        )
    return tokens[0]
