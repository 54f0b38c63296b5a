"""Server-side sessions in Redis, and what replicas share through it: revocations (cookie
store), seen logout-token ``jti``s, and the refresh lease and outcome.

The cookie holds only a random 256-bit session id; Redis holds the session under
``prefix + "s:" + hex(SHA-256(id))``, sealed with the AEAD for exactly that key, so a Redis
dump reveals neither an id that opens a session nor a token, and a value copied to another
key does not open. Entries live as long as the absolute timeout. Two bounded, expiring
indexes (sorted sets scored by expiry) map an issuer's ``sid`` and ``sub`` to the sessions
they name, for back-channel logout on every replica.

Unlike the introspection cache, Redis is the source of truth here: an unanswered command is
``ServiceUnavailable`` (503), never a session and never a silent miss. redis-py is used
through the client passed in (``redis_client`` imports it lazily, so cookie-store
deployments never load it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

from gateway.auth.sessions.cookies import (
    CookiePolicy,
    parse_cookie_header,
    render_deletion,
    render_value,
)
from gateway.auth.sessions.refresh import ENDED, Outcome, ShareUnavailable
from gateway.auth.sessions.sealing import Sealer, SealError
from gateway.auth.sessions.session import (
    Session,
    decode_session,
    encode_session,
    ended,
    new_session_id,
    session_id_hash,
)
from gateway.auth.sessions.store import Lifetimes, Loaded, RevocationKind, Revocations
from gateway.problems import ServiceUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_SESSIONS_PER_INDEX: Final = 64
MAX_VALUE_BYTES: Final = 96 * 1024
_SESSION_ID: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_ENDED_MARK: Final = b"\x00ended"
_REVOCATION_TAGS: Final[dict[RevocationKind, str]] = {"handle": "h", "sid": "sid", "sub": "sub"}
# Delete the lock only if we still hold it: a holder whose lease ran out must not delete the
# lease someone else took since.
_RELEASE: Final = """
if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end
return 0
"""


def redis_client(url: str, timeout: float) -> Any:
    """A redis-py asyncio client for ``url``, imported only when a Redis store is configured."""
    from redis.asyncio import Redis

    return Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, max_connections=64
    )


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class _Commands:
    """Every command bounded by ``timeout``; any failure becomes ``error``'s exception."""

    def __init__(self, client: Any, timeout: float, error: Callable[[], Exception]) -> None:
        self.client = client
        self._timeout = timeout
        self._error = error
        self.errors = 0

    async def run(self, command: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await command()
        except Exception as exc:  # redis-py, OSError, uvloop's RuntimeError: all "no answer"
            self.errors += 1
            log.warning("redis command failed: %s", type(exc).__name__)
            raise self._error() from None


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable("The session store is not available.", reason="session_store")


class RedisSessionStore:
    def __init__(
        self,
        client: Any,
        policy: CookiePolicy,
        sealer: Sealer,
        lifetimes: Lifetimes,
        *,
        key_prefix: str,
        timeout: float,
        persistent: bool = True,
    ) -> None:
        self.policy = policy
        self._redis = _Commands(client, timeout, _unavailable)
        self._sealer = sealer
        self._lifetimes = lifetimes
        self._prefix = key_prefix
        self._persistent = persistent

    def session_key(self, id_hash: bytes) -> str:
        return f"{self._prefix}s:{id_hash.hex()}"

    def _index_keys(self, session: Session) -> list[str]:
        keys = [f"{self._prefix}sub:{_digest(session.issuer, session.subject)}"]
        if session.sid is not None:
            keys.append(f"{self._prefix}sid:{_digest(session.issuer, session.sid)}")
        return keys

    async def load(self, cookie_fields: Sequence[str], now: float) -> Loaded:
        cookies = parse_cookie_header(cookie_fields, self.policy)
        present = frozenset(cookies)
        if not cookies:
            return Loaded(None, present)
        session_id = cookies.get(self.policy.name)
        if len(cookies) != 1 or session_id is None or _SESSION_ID.fullmatch(session_id) is None:
            return Loaded(None, present, problem="malformed_id")
        key = self.session_key(session_id_hash(session_id))
        sealed = await self._redis.run(lambda: self._redis.client.get(key))
        if sealed is None:
            return Loaded(None, present, problem="unknown_session")
        try:
            session = decode_session(self._open(key, sealed, now))
        except SealError as exc:
            return Loaded(None, present, problem=exc.reason)
        except ValueError:
            return Loaded(None, present, problem="undecodable")
        problem = ended(session, now, idle=self._lifetimes.idle, absolute=self._lifetimes.absolute)
        if problem is not None:
            return Loaded(None, present, problem=problem, session_id=session_id)
        reseal = not self._sealer.is_current(sealed.decode("ascii"))
        return Loaded(session, present, session_id=session_id, reseal=reseal)

    async def create(self, session: Session, previous: Loaded | None, now: float) -> list[str]:
        """A new id for every login (session fixation: an id known before the login never
        names the session after it); the previous session is deleted."""
        session_id = new_session_id()
        key = self.session_key(session_id_hash(session_id))
        remaining = session.created_at + self._lifetimes.absolute - now
        sealed = self._seal(key, session)
        end = now + remaining

        async def write() -> None:
            async with self._redis.client.pipeline(transaction=False) as pipe:
                pipe.set(key, sealed, px=_ms(remaining))
                for index in self._index_keys(session):
                    pipe.zadd(index, {key: end})
                    pipe.zremrangebyscore(index, "-inf", now)
                    # Bounded: keep the newest sessions (the highest expiry scores).
                    pipe.zremrangebyrank(index, 0, -(MAX_SESSIONS_PER_INDEX + 1))
                    pipe.pexpire(index, _ms(remaining))
                await pipe.execute()

        await self._redis.run(write)
        if previous is not None and previous.session_id is not None:
            await self._remove(previous)
        present = previous.present if previous is not None else frozenset()
        return render_value(
            self.policy, session_id, round(remaining) if self._persistent else None, present
        )

    async def update(self, session: Session, loaded: Loaded, now: float) -> list[str]:
        """``XX KEEPTTL``: never resurrect a session a logout deleted meanwhile, never extend
        the absolute lifetime. A session that is gone gets its cookies cleared."""
        assert loaded.session_id is not None
        key = self.session_key(session_id_hash(loaded.session_id))
        sealed = self._seal(key, session)
        stored = await self._redis.run(
            lambda: self._redis.client.set(key, sealed, xx=True, keepttl=True)
        )
        return [] if stored else render_deletion(self.policy, loaded.present)

    def persist(self, loaded: Loaded) -> Callable[[Session], Awaitable[object]]:
        """``update`` for ``SessionRefresher.refresh(persist=…)``."""
        return lambda session: self.update(session, loaded, session.last_seen)

    async def delete(self, loaded: Loaded) -> list[str]:
        if loaded.session_id is not None:
            await self._remove(loaded)
        return render_deletion(self.policy, loaded.present)

    async def end_sessions(
        self, issuer: str, *, sid: str | None, subject: str | None, now: float
    ) -> int:
        if sid is not None:
            index = f"{self._prefix}sid:{_digest(issuer, sid)}"
        elif subject is not None:
            index = f"{self._prefix}sub:{_digest(issuer, subject)}"
        else:
            return 0

        async def remove() -> int:
            members = await self._redis.client.zrange(index, 0, -1)
            # One DEL per key: in a cluster the keys live in different hash slots.
            async with self._redis.client.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.delete(member.decode("ascii"))
                pipe.delete(index)
                deleted = await pipe.execute()
            return int(sum(deleted[:-1]))

        return await self._redis.run(remove)

    async def _remove(self, loaded: Loaded) -> None:
        assert loaded.session_id is not None
        key = self.session_key(session_id_hash(loaded.session_id))

        async def remove() -> None:
            async with self._redis.client.pipeline(transaction=False) as pipe:
                pipe.delete(key)
                if loaded.session is not None:
                    for index in self._index_keys(loaded.session):
                        pipe.zrem(index, key)
                await pipe.execute()

        await self._redis.run(remove)

    def _seal(self, key: str, session: Session) -> str:
        # Redis expires the key; the sealed expiry is the absolute end, a second guard.
        end = session.created_at + self._lifetimes.absolute
        return self._sealer.seal(key, encode_session(session), end)

    def _open(self, key: str, sealed: bytes, now: float) -> bytes:
        try:
            text = sealed.decode("ascii")
        except UnicodeDecodeError:
            raise SealError("malformed") from None
        return self._sealer.open(key, text, now, max_bytes=MAX_VALUE_BYTES)


class RedisRevocations(Revocations):
    """The cookie store's revocations, shared by every replica: a key per ``sid`` and per
    ``sub``, expiring with the longest session; one ``MGET`` per session read."""

    def __init__(self, client: Any, *, key_prefix: str, timeout: float) -> None:
        self._redis = _Commands(client, timeout, _unavailable)
        self._prefix = key_prefix

    def _key(self, kind: RevocationKind, issuer: str, value: str) -> str:
        return f"{self._prefix}rv:{_REVOCATION_TAGS[kind]}:{_digest(issuer, value)}"

    async def _record(
        self, issuer: str, kind: RevocationKind, value: str | None, now: float, ttl: float
    ) -> None:
        if value is None:
            return
        key = self._key(kind, issuer, value)
        await self._redis.run(lambda: self._redis.client.set(key, repr(now), px=_ms(ttl)))

    async def is_revoked(self, session: Session) -> bool:
        sub_key = self._key("sub", session.issuer, session.subject)
        sid_key = self._key("sid", session.issuer, session.sid) if session.sid else sub_key
        handle_key = self._key("handle", session.issuer, session.handle)
        by_sid, by_sub, by_handle = await self._redis.run(
            lambda: self._redis.client.mget(sid_key, sub_key, handle_key)
        )
        # As MemoryRevocations: only sessions made before the revocation are revoked.
        try:
            return any(
                value is not None and session.created_at <= float(value)
                for value in (by_sid if session.sid else None, by_sub, by_handle)
            )
        except ValueError:
            return True  # not a value we wrote: fail closed


class RedisReplayGuard:
    """Back-Channel Logout §2.6 step 8 across replicas: ``SET NX`` per ``jti`` until the token
    could no longer pass the age check."""

    def __init__(
        self, client: Any, *, key_prefix: str, timeout: float, clock: Callable[[], float]
    ) -> None:
        self._redis = _Commands(client, timeout, _unavailable)
        self._prefix = key_prefix
        self._clock = clock

    def _key(self, jti_key: str) -> str:
        return f"{self._prefix}jti:{_digest(jti_key)}"

    async def seen(self, jti_key: str) -> bool:
        key = self._key(jti_key)
        return bool(await self._redis.run(lambda: self._redis.client.exists(key)))

    async def first_use(self, jti_key: str, until: float) -> bool:
        key = self._key(jti_key)
        ttl = until - self._clock()
        if ttl <= 0:
            return True
        stored = await self._redis.run(
            lambda: self._redis.client.set(key, b"1", nx=True, px=_ms(ttl))
        )
        return bool(stored)


class RedisRefreshShare:
    """``RefreshShare`` in Redis: ``rl:`` leases, ``rr:`` outcomes sealed for their key."""

    def __init__(
        self,
        client: Any,
        sealer: Sealer,
        *,
        key_prefix: str,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._redis = _Commands(client, timeout, ShareUnavailable)
        self._sealer = sealer
        self._prefix = key_prefix
        self._clock = clock
        self._release = client.register_script(_RELEASE)

    def _lock(self, key: bytes) -> str:
        return f"{self._prefix}rl:{key.hex()}"

    def _result(self, key: bytes) -> str:
        return f"{self._prefix}rr:{key.hex()}"

    async def outcome(self, key: bytes) -> Outcome | None:
        name = self._result(key)
        sealed = await self._redis.run(lambda: self._redis.client.get(name))
        if sealed is None:
            return None
        try:
            payload = self._sealer.open(
                name, sealed.decode("ascii"), self._clock(), max_bytes=MAX_VALUE_BYTES
            )
            return ENDED if payload == _ENDED_MARK else decode_session(payload)
        except (SealError, ValueError, UnicodeDecodeError):
            log.warning("ignoring a refresh outcome that does not open")
            return None

    async def publish(self, key: bytes, outcome: Outcome, ttl: float) -> None:
        name = self._result(key)
        payload = encode_session(outcome) if isinstance(outcome, Session) else _ENDED_MARK
        sealed = self._sealer.seal(name, payload, self._clock() + ttl)
        await self._redis.run(lambda: self._redis.client.set(name, sealed, px=_ms(ttl)))

    async def acquire(self, key: bytes, owner: str, lease: float) -> bool:
        name = self._lock(key)
        won = await self._redis.run(
            lambda: self._redis.client.set(name, owner, nx=True, px=_ms(lease))
        )
        return bool(won)

    async def release(self, key: bytes, owner: str) -> None:
        name = self._lock(key)
        with contextlib.suppress(ShareUnavailable):  # the lease runs out by itself
            await self._redis.run(lambda: self._release(keys=[name], args=[owner]))

    async def held(self, key: bytes) -> bool:
        name = self._lock(key)
        return bool(await self._redis.run(lambda: self._redis.client.exists(name)))
