"""Where sessions live: the interface both stores share, and the cookie store (RFC 6265 cookies
holding the sealed session itself, chunked when large).

The cookie store needs no server state, which is why it is the default; its price is that a
session cannot be deleted from the server side, only refused: back-channel logout (and any
other "end every session of this user") records a revocation that every read checks, kept
until the longest session could have lived anyway.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal, Protocol

from gateway.auth.sessions.cookies import (
    ChunkError,
    CookiePolicy,
    join_chunks,
    parse_cookie_header,
    render_deletion,
    render_value,
)
from gateway.auth.sessions.sealing import Sealer, SealError, bound_purpose
from gateway.auth.sessions.session import Session, decode_session, encode_session, ended, ends_at
from gateway.problems import GatewayError

MAX_SEALED_BYTES: Final = 64 * 1024
MAX_REVOCATIONS: Final = 100_000

RevocationKind = Literal["handle", "sid", "sub"]


@dataclass(frozen=True, slots=True)
class Lifetimes:
    idle: float
    absolute: float


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a request's cookies gave: a live session, or why not (``problem``, a label for
    logs and metrics), and which of our cookies it carried (to delete the stale ones)."""

    session: Session | None
    present: frozenset[str]
    problem: str | None = None
    session_id: str | None = field(default=None, repr=False)  # Redis store; never logged
    reseal: bool = False  # sealed with a key that no longer seals: write it back (rotation)


class SessionTooLarge(GatewayError):
    slug = "session-too-large"
    reason = "session_too_large"

    def __init__(self) -> None:
        super().__init__("The session does not fit into cookies; configure the Redis store.")


class SessionStore(Protocol):
    policy: CookiePolicy

    async def load(self, cookie_fields: Sequence[str], now: float) -> Loaded:
        """The request's live session, if any. Raises only for a request to refuse
        (``AmbiguousCookie``, ``CookieTooLarge``) or a store that cannot answer (503)."""
        ...

    async def create(self, session: Session, previous: Loaded | None, now: float) -> list[str]:
        """Store a session made by a login, under a new id (ids rotate at every login), end
        the ``previous`` one, and return the ``Set-Cookie`` values."""
        ...

    async def update(self, session: Session, loaded: Loaded, now: float) -> list[str]:
        """Store a changed session (touched, refreshed) under its id."""
        ...

    async def delete(self, loaded: Loaded) -> list[str]:
        """End the session and return ``Set-Cookie`` values that clear our cookies."""
        ...

    async def end_sessions(
        self, issuer: str, *, sid: str | None, subject: str | None, now: float
    ) -> int:
        """Back-channel logout: end every session with this ``sid`` or, without one, of this
        ``subject``; returns how many (for the cookie store: the revocations recorded)."""
        ...


class Revocations(ABC):
    """What refuses cookie-store sessions the server cannot delete. A revocation names the
    most precise thing it was given - one session's ``handle``, else the OP session's
    ``sid``, else the ``sub`` (Back-Channel Logout §2.4: a logout token names one or both) -
    and only sessions made up to then are refused: a later login is a new session."""

    async def revoke(
        self,
        issuer: str,
        *,
        sid: str | None,
        subject: str | None,
        now: float,
        ttl: float,
        handle: str | None = None,
    ) -> None:
        """Revoke one session (its ``handle``), else every session of the ``sid``, else of
        the ``subject``, made up to ``now``, for ``ttl`` seconds."""
        if handle is not None:
            await self._record(issuer, "handle", handle, now, ttl)
        elif sid is not None:
            await self._record(issuer, "sid", sid, now, ttl)
        else:
            await self._record(issuer, "sub", subject, now, ttl)

    @abstractmethod
    async def _record(
        self, issuer: str, kind: RevocationKind, value: str | None, now: float, ttl: float
    ) -> None:
        """Keep that ``kind``'s ``value`` revoked as of ``now`` for ``ttl`` seconds (``value``
        is ``None`` only for a ``sub`` revocation given no subject)."""

    @abstractmethod
    async def is_revoked(self, session: Session) -> bool:
        """Whether a revocation of the session itself, its ``sid`` or its ``sub`` came after
        the session was made."""


class MemoryRevocations(Revocations):
    """One process's revocations (a single replica). Bounded: past ``max_entries`` the oldest
    revocation is forgotten, the one closest to not mattering any more."""

    def __init__(
        self, max_entries: int = MAX_REVOCATIONS, clock: Callable[[], float] = time.time
    ) -> None:
        # key -> (revoked_at, expires_at)
        self._entries: OrderedDict[tuple[str, str, str], tuple[float, float]] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    async def _record(
        self, issuer: str, kind: RevocationKind, value: str | None, now: float, ttl: float
    ) -> None:
        key = (issuer, kind, value or "")
        self._entries.pop(key, None)
        self._entries[key] = (now, now + ttl)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def is_revoked(self, session: Session) -> bool:
        """Whether a revocation of the session itself, its ``sid`` or its ``sub`` came after
        the session was made: a later login (even under the same OP session, say after a
        logout the user cancelled at the OP) is a new session, not a revoked one."""
        if not self._entries:
            return False
        now = self._clock()
        keys = [
            (session.issuer, "sub", session.subject),
            (session.issuer, "handle", session.handle),
        ]
        if session.sid is not None:
            keys.append((session.issuer, "sid", session.sid))
        for key in keys:
            found = self._live(key, now)
            if found is not None and session.created_at <= found:
                return True
        return False

    def _live(self, key: tuple[str, str, str], now: float) -> float | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._entries[key]
            return None
        return entry[0]


class CookieSessionStore:
    """The whole session, sealed (AEAD) for the cookie's name - and the ``binding`` (the
    login's origin, issuer and client, ``sealing.bound_purpose``) - and split into chunks."""

    def __init__(
        self,
        policy: CookiePolicy,
        sealer: Sealer,
        lifetimes: Lifetimes,
        revocations: Revocations,
        *,
        persistent: bool = True,
        binding: str = "",
    ) -> None:
        self.policy = policy
        self._purpose = bound_purpose(policy.name, binding)
        self._sealer = sealer
        self._lifetimes = lifetimes
        self._revocations = revocations
        self._persistent = persistent

    async def load(self, cookie_fields: Sequence[str], now: float) -> Loaded:
        cookies = parse_cookie_header(cookie_fields, self.policy)
        present = frozenset(cookies)
        if not cookies:
            return Loaded(None, present)
        try:
            sealed = join_chunks(self.policy, cookies)
            assert sealed is not None  # cookies is not empty
            payload = self._sealer.open(self._purpose, sealed, now, max_bytes=MAX_SEALED_BYTES)
            session = decode_session(payload)
        except (ChunkError, SealError) as exc:
            return Loaded(None, present, problem=exc.reason)
        except ValueError:
            return Loaded(None, present, problem="undecodable")
        problem = ended(session, now, idle=self._lifetimes.idle, absolute=self._lifetimes.absolute)
        if problem is None and await self._revocations.is_revoked(session):
            problem = "revoked"
        if problem is not None:
            return Loaded(None, present, problem=problem)
        return Loaded(session, present, reseal=not self._sealer.is_current(sealed))

    async def create(self, session: Session, previous: Loaded | None, now: float) -> list[str]:
        # The old session's cookies are overwritten or deleted by render_value, and the old
        # session revoked (a copy of its cookie must not outlive the new login either).
        if previous is not None and previous.session is not None:
            await self._revoke(previous.session)
        return self._render(session, previous.present if previous else frozenset(), now)

    async def update(self, session: Session, loaded: Loaded, now: float) -> list[str]:
        return self._render(session, loaded.present, now)

    async def delete(self, loaded: Loaded) -> list[str]:
        """The cookies cleared, and the session revoked: the browser may drop them, but a
        copy elsewhere (a stolen cookie, another device's sync) holds the same sealed
        session, which only a revocation of its handle refuses (a ``sid`` may be absent)."""
        if loaded.session is not None:
            await self._revoke(loaded.session)
        return render_deletion(self.policy, loaded.present)

    async def _revoke(self, session: Session) -> None:
        """Revoke this one session (by its handle, new at every login) until it would have
        ended anyway."""
        ttl = session.created_at + self._lifetimes.absolute - session.last_seen
        await self._revocations.revoke(
            session.issuer, sid=None, subject=None, handle=session.handle,
            now=session.last_seen, ttl=max(1.0, ttl),
        )  # fmt: skip

    async def end_sessions(
        self, issuer: str, *, sid: str | None, subject: str | None, now: float
    ) -> int:
        await self._revocations.revoke(
            issuer, sid=sid, subject=subject, now=now, ttl=self._lifetimes.absolute
        )
        return 1

    def _render(self, session: Session, present: frozenset[str], now: float) -> list[str]:
        expires_at = ends_at(session, idle=self._lifetimes.idle, absolute=self._lifetimes.absolute)
        max_age = round(session.created_at + self._lifetimes.absolute - now)
        for candidate in (session, replace(session, id_token=None)):
            # The ID token only serves as the logout hint (RP-Initiated Logout §2, which only
            # RECOMMENDS it): the first thing to give up when the cookies would overflow.
            sealed = self._sealer.seal(self._purpose, encode_session(candidate), expires_at)
            try:
                return render_value(
                    self.policy, sealed, max_age if self._persistent else None, present
                )
            except ValueError:
                continue
        raise SessionTooLarge()
