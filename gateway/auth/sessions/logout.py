"""OpenID Connect Back-Channel Logout 1.0 §2.4 and §2.6 (logout tokens) and RP-Initiated Logout
1.0 §2 (the ``end_session_endpoint`` redirect).

A logout token arrives unsolicited from the network and ends sessions, so it is checked like
an ID token and then some: explicitly typed when typed at all, an ``events`` member that
makes it unmistakably a logout token, no ``nonce`` (so it can never pass as an ID token, nor
an ID token as it), a ``jti`` remembered until the token could no longer be accepted, so a
captured one cannot be replayed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlencode, urlsplit

from gateway.auth.jwks import KeySetProvider
from gateway.auth.sessions import claims as checks
from gateway.auth.sessions.errors import LogoutTokenInvalid
from gateway.auth.sessions.jws import (
    JwsInvalid,
    KeyLookup,
    UnknownSigningKey,
    verify_compact,
    with_key_refetch,
)
from gateway.problems import ServiceUnavailable

BACKCHANNEL_EVENT: Final = "http://schemas.openid.net/event/backchannel-logout"
# §2.4: "Logout Tokens SHOULD be explicitly typed" with "logout+jwt"; RFC 7515 §4.1.9 lets the
# "application/" prefix be omitted and makes the comparison case-insensitive. "JWT" is the
# untyped default some servers send (Keycloak), treated as no type at all.
_LOGOUT_TYPES: Final = frozenset({"logout+jwt", "application/logout+jwt"})
_UNTYPED: Final = frozenset({"jwt", "application/jwt"})
DEFAULT_MAX_AGE: Final = 120.0  # §4: OPs are encouraged to use "at most two minutes"
MAX_SEEN_JTIS: Final = 100_000


@dataclass(frozen=True, slots=True)
class LogoutRules:
    issuer: str
    client_id: str
    algorithms: frozenset[str]
    trusted_audiences: frozenset[str] = frozenset()
    max_age: float = DEFAULT_MAX_AGE
    leeway: float = 30.0


@dataclass(frozen=True, slots=True)
class LogoutRequest:
    """Whom to log out: every session with this ``sid`` at the issuer, or, without a ``sid``,
    every session of ``subject`` (§2.4: "the intent is that all sessions at the RP for the
    End-User identified by the iss and sub Claims be logged out")."""

    issuer: str
    subject: str | None
    sid: str | None
    jti: str
    replay_until: float


class ReplayGuard(Protocol):
    async def first_use(self, jti_key: str, until: float) -> bool:
        """True the first time ``jti_key`` is seen before ``until``; False for a replay."""
        ...

    async def seen(self, jti_key: str) -> bool:
        """Whether ``jti_key`` was used (and not forgotten yet), without recording it."""
        ...


def validate_logout_token(
    token: str, *, keys: KeyLookup, rules: LogoutRules, now: float
) -> LogoutRequest:
    """§2.6 steps 2-7; step 8 (``jti`` replay) is ``check_replay``, with I/O. Every failure
    is ``LogoutTokenInvalid`` (400, §2.6: "If any of the validation steps fails, reject the
    Logout Token and return an HTTP 400 Bad Request error"), except an unknown key, which
    the caller refetches for once."""
    try:
        # Steps 2-3: the signature and alg "in the same way that an ID Token signature is
        # validated", and "an alg with the value none MUST NOT be used" (verify_compact).
        verified = verify_compact(token, keys, rules.algorithms)
        return _checked(verified.header, verified.claims, rules, now)
    except UnknownSigningKey:
        raise
    except JwsInvalid as exc:
        raise LogoutTokenInvalid(
            f"The logout token was refused: {exc.detail}", reason=f"logout_{exc.reason}"
        ) from None


async def verify_logout_token(
    token: str, *, provider: KeySetProvider, rules: LogoutRules, now: float
) -> LogoutRequest:
    """``validate_logout_token`` against the issuer's live key set (one refetch for a new kid).
    Keys not loaded yet is a 503, which the OP may retry; an unknown key is a 400."""
    try:
        return await with_key_refetch(
            provider, lambda keys: validate_logout_token(token, keys=keys, rules=rules, now=now)
        )
    except UnknownSigningKey as exc:
        if not provider.ready:
            raise ServiceUnavailable(
                "The identity provider's signing keys are not available.", reason="keys_unavailable"
            ) from None
        raise LogoutTokenInvalid(
            f"The logout token was refused: {exc.detail}", reason="logout_unknown_key"
        ) from None


def _checked(
    header: Mapping[str, Any], claims: Mapping[str, Any], rules: LogoutRules, now: float
) -> LogoutRequest:
    typ = header.get("typ")
    if typ is not None and (
        not isinstance(typ, str) or typ.lower() not in _LOGOUT_TYPES | _UNTYPED
    ):
        raise JwsInvalid("The token is typed for another purpose.", "wrong_type")
    # Step 4: "Validate the iss, aud, iat, and exp Claims in the same way they are validated
    # in ID Tokens." exp is checked when present; iat bounds the age either way.
    checks.check_issuer(claims, rules.issuer)
    checks.check_audience(claims, rules.client_id, rules.trusted_audiences)
    exp, iat = checks.check_times(
        claims, now, leeway=rules.leeway, max_age=rules.max_age, exp_required=False
    )
    # Step 5: "Verify that the Logout Token contains a sub Claim, a sid Claim, or both."
    subject = checks.string(claims, "sub", required=False, max_length=255)
    sid = checks.string(claims, "sid", required=False)
    if subject is None and sid is None:
        raise JwsInvalid("The token names neither a sub nor a sid.", "no_subject")
    # Step 6: events "whose value is JSON object containing the member name
    # http://schemas.openid.net/event/backchannel-logout"; §2.4: "The corresponding member
    # value MUST be a JSON object".
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
        raise JwsInvalid("The token is not a back-channel logout event.", "no_event")
    # Step 7: "Verify that the Logout Token does not contain a nonce Claim."
    if "nonce" in claims:
        raise JwsInvalid("A logout token must not carry a nonce.", "has_nonce")
    # §2.4: jti REQUIRED; step 8 needs it.
    jti = checks.string(claims, "jti", required=True, max_length=256)
    assert jti is not None
    # A replayed token is refused until it could no longer pass the checks above anyway.
    horizon = iat + rules.max_age + rules.leeway
    replay_until = min(horizon, exp + rules.leeway) if exp is not None else horizon
    return LogoutRequest(rules.issuer, subject, sid, jti, replay_until)


def _replay_key(request: LogoutRequest) -> str:
    return f"{request.issuer}\x00{request.jti}"


async def check_replay(request: LogoutRequest, guard: ReplayGuard) -> None:
    """§2.6 step 8: "Optionally verify that another Logout Token with the same jti value has
    not been recently received." Not optional here: a captured token must not end sessions
    again (say, of the user's next login with the same sid)."""
    if not await guard.first_use(_replay_key(request), request.replay_until):
        raise LogoutTokenInvalid("The logout token was already used.", reason="logout_replayed")


async def refuse_replay(request: LogoutRequest, guard: ReplayGuard) -> None:
    """``check_replay``'s test without recording the token: the endpoint records it only
    once the sessions are ended, so a store that failed leaves the OP's retry usable."""
    if await guard.seen(_replay_key(request)):
        raise LogoutTokenInvalid("The logout token was already used.", reason="logout_replayed")


class MemoryReplayGuard:
    """Seen ``jti``s of one process, bounded: past ``max_entries`` the oldest go first, which
    only ever reopens a token that is about to stop passing the age check anyway."""

    def __init__(self, max_entries: int = MAX_SEEN_JTIS, clock: Any = time.time) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    async def first_use(self, jti_key: str, until: float) -> bool:
        now = self._clock()
        while self._seen:
            oldest, expiry = next(iter(self._seen.items()))
            if expiry > now and len(self._seen) < self._max:
                break
            del self._seen[oldest]
        if jti_key in self._seen:
            return False
        self._seen[jti_key] = until
        return True

    async def seen(self, jti_key: str) -> bool:
        expiry = self._seen.get(jti_key)
        return expiry is not None and expiry > self._clock()


def end_session_url(
    endpoint: str,
    *,
    client_id: str,
    id_token_hint: str | None,
    post_logout_redirect_uri: str | None,
    state: str | None = None,
) -> str:
    """RP-Initiated Logout 1.0 §2: ``id_token_hint`` is RECOMMENDED (the OP then knows which
    session to end without asking); ``client_id`` lets the OP find a registered
    ``post_logout_redirect_uri`` when no hint is sent; ``state`` comes back with the
    redirect. The endpoint's own query is kept, as for the authorization endpoint."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
        raise ValueError("the end_session_endpoint must be an http(s) URL without fragment")
    params = {"client_id": client_id}
    if id_token_hint:
        params["id_token_hint"] = id_token_hint
    if post_logout_redirect_uri:
        params["post_logout_redirect_uri"] = post_logout_redirect_uri
    if state:
        params["state"] = state
    query = urlencode(params)
    base = endpoint.split("?", 1)[0]
    return f"{base}?{parts.query}&{query}" if parts.query else f"{base}?{query}"
