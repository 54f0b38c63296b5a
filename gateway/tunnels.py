"""Open WebSocket tunnels and the tokens that opened them (RFC 6455; RFC 6750 §5.3; RFC 7009 §2).

A request is judged once, but a tunnel lives on after its decision. So the gateway keeps
every open tunnel here with what it was allowed on: its route (each route bounds how many
it keeps open, answering 503 beyond), its token's SHA-256 and its subject's hash (never
the token or the subject). A tunnel is closed when the token's ``exp`` passes, and when the
identity cache evicts the token or the subject, locally or on another replica's word: a
revoked user is cut off, not only refused next time.

One registry serves the whole process, across reloads: the live runtime's identity cache
tells it of evictions (``IdentityCache.add_eviction_listener``), and tunnels opened under an
older config stay counted and revocable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from gateway.auth.answer_policy import subject_hash
from gateway.auth.identity import Identity
from gateway.problems import ServiceUnavailable
from gateway.proxy.tunnel import Tunnel
from gateway.proxy.ws_frames import POLICY_VIOLATION


class TunnelRegistry:
    """Every tunnel of this process: counted per route, indexed by token and subject."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._per_route: dict[str, int] = {}  # open or opening
        self._by_token: dict[str, set[Tunnel]] = {}
        self._by_subject: dict[str, set[Tunnel]] = {}
        self._bound: set[Tunnel] = set()  # opened with a token
        self._open: set[Tunnel] = set()

    def __len__(self) -> int:
        return len(self._open)

    def reserve(self, route: str, limit: int) -> None:
        """Hold a place for a tunnel on ``route`` while its handshake runs; 503 when the
        route's ``websocket.max_connections`` are all taken."""
        count = self._per_route.get(route, 0)
        if count >= limit:
            raise ServiceUnavailable(
                "This route has as many open WebSockets as it allows.", reason="websocket_limit"
            )
        self._per_route[route] = count + 1

    def release(self, route: str) -> None:
        count = self._per_route.get(route, 0) - 1
        if count > 0:
            self._per_route[route] = count
        else:
            self._per_route.pop(route, None)

    def track(
        self, route: str, tunnel: Tunnel, identity: Identity | None, digest: bytes | None
    ) -> None:
        """A reserved place became an open tunnel, opened with ``identity`` (None: no token
        was validated) presented as the token whose SHA-256 is ``digest``."""
        self._open.add(tunnel)
        token = digest.hex() if digest is not None else None
        subject = (
            subject_hash(identity.subject)
            if identity is not None and identity.subject is not None
            else None
        )
        if identity is not None:
            self._bound.add(tunnel)
            if identity.expires_at is not None:
                # RFC 7519 §4.1.4: not accepted "on or after" exp; nor kept open past it.
                tunnel.close_after(identity.expires_at - self._wall())
        if token is not None:
            self._by_token.setdefault(token, set()).add(tunnel)
        if subject is not None:
            self._by_subject.setdefault(subject, set()).add(tunnel)

        def forget(_: object) -> None:
            self._open.discard(tunnel)
            self._bound.discard(tunnel)
            self._unindex(self._by_token, token, tunnel)
            self._unindex(self._by_subject, subject, tunnel)
            self.release(route)

        tunnel.closed.add_done_callback(forget)

    @staticmethod
    def _unindex(index: dict[str, set[Tunnel]], key: str | None, tunnel: Tunnel) -> None:
        if key is None:
            return
        tunnels = index.get(key)
        if tunnels is not None:
            tunnels.discard(tunnel)
            if not tunnels:
                del index[key]

    def evicted(self, kind: str, key: str) -> None:
        """The identity cache's eviction listener: ``("token", sha256 hex)``, ``("subject",
        subject sha256 hex)``, or ``("all", "")`` when evictions may have been missed (then
        every tunnel opened with a token closes, since none can be re-checked)."""
        if kind == "token":
            doomed = set(self._by_token.get(key, ()))
        elif kind == "subject":
            doomed = set(self._by_subject.get(key, ()))
        else:
            doomed = set(self._bound)
        reason = "revocations may have been missed" if kind == "all" else "the token was revoked"
        for tunnel in doomed:
            tunnel.close(POLICY_VIOLATION, reason)

    async def drain(self, seconds: float) -> None:
        """Give open tunnels ``seconds`` to end, then close the rest."""
        waiting = [tunnel.closed for tunnel in self._open]
        if waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await asyncio.gather(*waiting)
        await self.close()

    async def close(self) -> None:
        tunnels = list(self._open)
        for tunnel in tunnels:
            tunnel.close()
        if tunnels:
            await asyncio.wait([tunnel.closed for tunnel in tunnels], timeout=2.0)
