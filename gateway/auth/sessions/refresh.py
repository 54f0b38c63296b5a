"""RFC 6749 §6 refresh and RFC 9700 §4.14.2 refresh-token rotation, without races: however
many requests of one session arrive at once, on one replica or on several sharing Redis, the
token endpoint sees exactly one refresh, and everyone uses its result.

With rotation the server invalidates a refresh token at its first use and takes a second use
as a sign of theft, revoking the whole grant (RFC 9700 §4.14.2). Two concurrent refreshes
therefore log the user out - oauth2-proxy #1992, and mod_auth_openidc's documented limitation.
Here a refresh is keyed by the hash of the refresh token it spends:

* locally, one task per key, owned by this component (``asyncio.shield``: a client that
  disconnects cancels its wait, not the refresh the others wait on);
* across replicas, a lease in Redis (``SET lock NX PX lease``): the holder refreshes and
  publishes the result under the same key; the others poll for it, and if the holder dies
  its lease runs out and one of them takes over;
* the result stays readable for a grace period, so a request that still carries the old
  cookie (sent before the browser stored the new one) gets the new tokens instead of
  spending the old refresh token a second time.

A refresh the server refuses with ``invalid_grant`` ends the session (``SessionEnded``) for
every waiter; a server that is down is ``TokenEndpointUnavailable`` and nothing is remembered,
so the next request tries again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from gateway.auth.jwks import KeySetProvider
from gateway.auth.sessions.errors import TokenEndpointRefused, TokenEndpointUnavailable
from gateway.auth.sessions.id_token import IdTokenRules, verify_id_token
from gateway.auth.sessions.session import Session
from gateway.auth.sessions.token_endpoint import TokenEndpoint

log = logging.getLogger(__name__)

MAX_RECENT: Final = 10_000


class SessionEnded(Exception):
    """The authorization server will not refresh this session: log in again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Ended:
    """The shared outcome of a refused refresh."""

    def __repr__(self) -> str:
        return "ENDED"


ENDED: Final = _Ended()
Outcome = Session | _Ended
Persist = Callable[[Session], Awaitable[object]]


class ShareUnavailable(Exception):
    """The shared store (Redis) did not answer."""


class RefreshShare(Protocol):
    """What replicas share to refresh once: a lease and a published outcome per key."""

    async def outcome(self, key: bytes) -> Outcome | None: ...

    async def publish(self, key: bytes, outcome: Outcome, ttl: float) -> None: ...

    async def acquire(self, key: bytes, owner: str, lease: float) -> bool: ...

    async def release(self, key: bytes, owner: str) -> None: ...

    async def held(self, key: bytes) -> bool: ...


def refresh_key(refresh_token: str) -> bytes:
    return hashlib.sha256(refresh_token.encode()).digest()


class SessionRefresher:
    """Single-flight refreshes for every session of one login config."""

    def __init__(
        self,
        refresh: Callable[[Session], Awaitable[Session]],
        *,
        share: RefreshShare | None = None,
        grace: float = 60.0,
        lease: float = 15.0,
        wait: float = 20.0,
        poll: float = 0.025,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._refresh = refresh
        self._share = share
        self._grace = grace
        self._lease = lease
        self._wait = wait
        self._poll = poll
        self._clock = clock
        self._flights: dict[bytes, asyncio.Task[Outcome]] = {}
        self._recent: OrderedDict[bytes, tuple[float, Outcome]] = OrderedDict()
        self.refreshes = 0  # calls this replica made to the token endpoint

    async def refresh(self, session: Session, *, persist: Persist | None = None) -> Session:
        """The refreshed session (maybe refreshed by another request or replica), or
        ``SessionEnded``. ``persist`` (the Redis store's update) runs once, by the winner,
        before the outcome is published, so no replica reads a result the store lacks."""
        if session.refresh_token is None:
            raise SessionEnded("no_refresh_token")
        key = refresh_key(session.refresh_token)
        outcome = self._remembered(key)
        if outcome is None:
            task = self._flights.get(key)
            if task is None:
                task = asyncio.create_task(self._run(key, session, persist), name="session-refresh")
                self._flights[key] = task
                task.add_done_callback(lambda done: self._landed(key, done))
            outcome = await asyncio.shield(task)
        if isinstance(outcome, _Ended):
            raise SessionEnded("refresh_refused")
        return outcome

    async def close(self) -> None:
        tasks = list(self._flights.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- internals -----------------------------------------------------------------------

    def _remembered(self, key: bytes) -> Outcome | None:
        entry = self._recent.get(key)
        if entry is None:
            return None
        if self._clock() >= entry[0]:
            del self._recent[key]
            return None
        return entry[1]

    def _landed(self, key: bytes, task: asyncio.Task[Outcome]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if task.cancelled() or task.exception() is not None:
            return  # a failure is not remembered: the next request tries again
        self._recent[key] = (self._clock() + self._grace, task.result())
        while len(self._recent) > MAX_RECENT:
            self._recent.popitem(last=False)

    async def _run(self, key: bytes, session: Session, persist: Persist | None) -> Outcome:
        if self._share is not None:
            try:
                return await self._shared(self._share, key, session, persist)
            except ShareUnavailable:
                # Redis is down: refresh here. Another replica may race us, which at worst
                # costs that user a new login; refusing would cost every user their session.
                log.warning("refresh of session %s without the shared lock", session.ref)
        return await self._call(session, persist)

    async def _shared(
        self, share: RefreshShare, key: bytes, session: Session, persist: Persist | None
    ) -> Outcome:
        deadline = self._clock() + self._wait
        owner = secrets.token_hex(16)
        while True:
            found = await share.outcome(key)
            if found is not None:
                return found
            if await share.acquire(key, owner, self._lease):
                try:
                    # The previous holder may have published between our read and our lease.
                    found = await share.outcome(key)
                    if found is not None:
                        return found
                    outcome = await self._call(session, persist)
                    try:
                        await share.publish(key, outcome, self._grace)
                    except ShareUnavailable:
                        # The refresh token is spent: never fall back to spending it again.
                        log.warning("refresh of session %s not shared", session.ref)
                    return outcome
                finally:
                    await share.release(key, owner)
            while True:
                if self._clock() >= deadline:
                    raise TokenEndpointUnavailable(
                        "The session's tokens are being refreshed elsewhere; try again.",
                        reason="refresh_wait_timeout",
                    )
                await asyncio.sleep(self._poll)
                found = await share.outcome(key)
                if found is not None:
                    return found
                if not await share.held(key):
                    break  # the holder failed or its lease ran out: try to take over

    async def _call(self, session: Session, persist: Persist | None) -> Outcome:
        self.refreshes += 1
        try:
            refreshed = await self._refresh(session)
        except TokenEndpointRefused as exc:
            if exc.error != "invalid_grant":
                raise  # a configuration problem (invalid_client…): the session stays
            log.info("refresh of session %s refused: invalid_grant", session.ref)
            return ENDED
        if persist is not None:
            await persist(refreshed)
        return refreshed


async def refresh_tokens(
    session: Session,
    *,
    endpoint: TokenEndpoint,
    keys: KeySetProvider,
    rules: IdTokenRules,
    clock: Callable[[], float] = time.time,
) -> Session:
    """One refresh at the token endpoint: RFC 6749 §6, with the new ID token (if any) checked
    per OIDC Core §12.2 - same issuer, audience and subject, no nonce to match."""
    assert session.refresh_token is not None
    tokens = (await endpoint.refresh(session.refresh_token)).require_bearer()
    now = clock()
    id_token = None
    if tokens.id_token is not None:
        id_token = await verify_id_token(
            tokens.id_token,
            provider=keys,
            rules=rules,
            now=now,
            nonce=None,
            access_token=tokens.access_token,
            subject=session.subject,
        )
    return session.refreshed(tokens, id_token, tokens.id_token, now)
