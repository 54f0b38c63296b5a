"""RFC 7636 §4.1-4.2 (PKCE S256), RFC 6749 §10.12 (``state`` against CSRF), OIDC Core §3.1.2.1
and §15.5.2 (``nonce`` against replay): what a login remembers between the redirect to the
authorization server and the callback, kept in a sealed, short-lived pre-login cookie.

The cookie is the browser binding RFC 6749 §10.12 asks for: the ``state`` in the callback URL
is only good together with the sealed cookie holding it, which only the browser that started
the login has (``HttpOnly``, ``SameSite=Lax``, ``__Host-`` over TLS). A login started in a
second tab must not break the first, so the cookie holds a few pending logins, newest first,
each expiring on its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from gateway import boundedjson
from gateway.auth.sessions.cookies import (
    CookiePolicy,
    parse_cookie_header,
    render_deletion,
    render_value,
)
from gateway.auth.sessions.sealing import Sealer, SealError, bound_purpose

# RFC 7636 §4.1: "code-verifier = 43*128unreserved"; unreserved = ALPHA / DIGIT / "-" / "." /
# "_" / "~".
_VERIFIER: Final = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
RANDOM_BYTES: Final = 32  # 256 bits: RFC 7636 §7.1 asks for at least 256 bits in a verifier
MAX_PENDING: Final = 3
_FORMAT: Final = "l1"
_MAX_STATE_BYTES: Final = 8 * 1024


def random_token() -> str:
    """43 base64url characters from 256 random bits: ``state``, ``nonce`` and verifiers.

    OIDC Core §15.5.2 and RFC 6749 §10.10 want these unguessable; 256 bits is more than the
    128 the brief requires and exactly RFC 7636 §4.1's recommendation for the verifier."""
    return secrets.token_urlsafe(RANDOM_BYTES)


def code_challenge(verifier: str) -> str:
    """RFC 7636 §4.2: ``code_challenge = BASE64URL-ENCODE(SHA256(ASCII(code_verifier)))``."""
    if _VERIFIER.fullmatch(verifier) is None:
        raise ValueError("a code verifier is 43-128 unreserved characters (RFC 7636 §4.1)")
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """One login in flight. ``return_to`` is already a safe same-origin path."""

    state: str
    nonce: str
    verifier: str
    return_to: str
    started_at: float

    @classmethod
    def start(cls, return_to: str, now: float) -> PendingLogin:
        return cls(random_token(), random_token(), random_token(), return_to, now)


@dataclass(frozen=True, slots=True)
class PendingLogins:
    """The pre-login cookie's content: a few pending logins, newest first."""

    logins: tuple[PendingLogin, ...] = field(default=())

    def add(self, login: PendingLogin, now: float, lifetime: float) -> PendingLogins:
        """``login`` in front; expired ones and any beyond ``MAX_PENDING`` dropped."""
        alive = tuple(p for p in self.logins if now < p.started_at + lifetime)
        return PendingLogins((login, *alive)[:MAX_PENDING])

    def take(
        self, state: str, now: float, lifetime: float
    ) -> tuple[PendingLogin | None, PendingLogins]:
        """The pending login ``state`` names (compared in constant time, RFC 6749 §10.12), and
        what remains: a state is good for one callback only."""
        found: PendingLogin | None = None
        rest: list[PendingLogin] = []
        for pending in self.logins:
            # Every entry is compared, so timing tells nothing about which one matched.
            if hmac.compare_digest(pending.state.encode(), state.encode()):
                found = pending
            elif now < pending.started_at + lifetime:
                rest.append(pending)
        if found is not None and now >= found.started_at + lifetime:
            found = None
        return found, PendingLogins(tuple(rest))

    def expires_at(self, lifetime: float) -> float:
        return max((p.started_at for p in self.logins), default=0.0) + lifetime

    def encode(self) -> bytes:
        rows = [[p.state, p.nonce, p.verifier, p.return_to, p.started_at] for p in self.logins]
        return json.dumps([_FORMAT, rows], separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> PendingLogins:
        """``ValueError`` for anything ``encode`` did not write."""
        value = boundedjson.loads(data, max_bytes=_MAX_STATE_BYTES, max_depth=3)
        if not (isinstance(value, list) and len(value) == 2 and value[0] == _FORMAT):
            raise ValueError("not a pre-login state")
        rows = value[1]
        if not isinstance(rows, list) or len(rows) > MAX_PENDING:
            raise ValueError("not a pre-login state")
        return cls(tuple(_pending(row) for row in rows))


def _pending(row: Any) -> PendingLogin:
    if not (isinstance(row, list) and len(row) == 5):
        raise ValueError("not a pending login")
    state, nonce, verifier, return_to, started_at = row
    strings: Sequence[Any] = (state, nonce, verifier, return_to)
    if not all(isinstance(item, str) for item in strings):
        raise ValueError("not a pending login")
    if type(started_at) not in (int, float) or _VERIFIER.fullmatch(verifier) is None:
        raise ValueError("not a pending login")
    return PendingLogin(state, nonce, verifier, return_to, float(started_at))


class LoginCookie:
    """The sealed pre-login cookie: one cookie (never chunked), as short-lived as a login.

    Anything that does not open (tampered, expired, sealed for another cookie, unreadable)
    is no pending login at all, which the callback reports as an expired sign-in."""

    def __init__(
        self, policy: CookiePolicy, sealer: Sealer, lifetime: float, *, binding: str = ""
    ) -> None:
        if policy.max_chunks != 1:
            raise ValueError("the pre-login cookie is a single cookie")
        self.policy = policy
        self._purpose = bound_purpose(policy.name, binding)
        self._sealer = sealer
        self._lifetime = lifetime

    def read(self, cookie_fields: Sequence[str], now: float) -> PendingLogins | None:
        """Raises only ``AmbiguousCookie``/``CookieTooLarge`` (a request to refuse)."""
        value = parse_cookie_header(cookie_fields, self.policy).get(self.policy.name)
        if value is None:
            return None
        try:
            payload = self._sealer.open(self._purpose, value, now, max_bytes=_MAX_STATE_BYTES)
            return PendingLogins.decode(payload)
        except (SealError, ValueError):
            return None

    def write(self, pending: PendingLogins, now: float) -> list[str]:
        """``Set-Cookie`` for ``pending`` (or its deletion when none is left); the oldest
        pending logins give way when they would not fit one cookie."""
        logins = pending.logins
        while logins:
            kept = PendingLogins(logins)
            sealed = self._sealer.seal(
                self._purpose, kept.encode(), kept.expires_at(self._lifetime)
            )
            max_age = max(1, round(kept.expires_at(self._lifetime) - now))
            try:
                return render_value(self.policy, sealed, max_age, ())
            except ValueError:
                logins = logins[:-1]
        return self.clear()

    def clear(self) -> list[str]:
        return render_deletion(self.policy, {self.policy.name})
