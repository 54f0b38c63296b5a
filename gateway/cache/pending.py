"""Evictions Redis has not taken yet, kept to be replayed once it answers again.

An eviction that cannot reach Redis is not lost: an entry a failed DEL left behind (a
promoted replica still holds it) must not be served after the outage, and replicas that
missed the message must still hear it. The queue is bounded (``PENDING_MAX`` operations,
republishes included; past it a republish goes first, else the oldest, with a warning) and
replayed oldest first.

A message that got through while its DEL did not (a Redis Cluster node holding the entries
or their group index is down, the node carrying PUBLISH is up) is kept as a *republish*
behind the deletion: a replica that heard it emptied its memory, may have read the entry
the DEL left behind from a node still up, and would serve it until its TTL. It is sent only
in a replay where every deletion before it succeeded, so it never arrives before the entry
is gone. A kept message replayed while a deletion before it still fails is the same case:
it stays, as a republish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

log = logging.getLogger(__name__)

Operation = tuple[str, tuple[str, ...]]
"""("delete", keys) | ("group", (g,)) | ("publish", (p,)) | ("republish", (p,))."""
DELETIONS: Final = frozenset({"delete", "group"})
PENDING_MAX: Final = 1024


class PendingEvictions:
    """The kept evictions of one Redis client, in the order they were made."""

    def __init__(self, limit: int = PENDING_MAX) -> None:
        self._queue: deque[Operation] = deque()
        self._limit = limit
        self._replaying = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._queue)

    def keep(self, operation: Operation) -> None:
        """Queue ``operation`` last. The same republish already queued moves here (behind
        every deletion now waiting). At the limit a republish is dropped before a deletion
        or a first message: those are evictions some replica has not heard of at all."""
        if operation[0] == "republish":
            with contextlib.suppress(ValueError):
                self._queue.remove(operation)
        if len(self._queue) >= self._limit:
            log.warning("redis unavailable: dropping the oldest eviction kept for replay")
            republish = next((kept for kept in self._queue if kept[0] == "republish"), None)
            if republish is None:
                self._queue.popleft()
            else:
                self._queue.remove(republish)
        self._queue.append(operation)

    def deletion_waiting(self) -> bool:
        """Whether a deletion is kept: a message sent now must be sent again after it."""
        return any(kind in DELETIONS for kind, _ in self._queue)

    async def replay(self, apply: Callable[[Operation], Awaitable[object]]) -> None:
        """Apply every kept eviction, oldest first; those applied leave the queue. Raises the
        first failure once all were tried, so the command waiting on the replay is a miss.
        A republish is skipped while a deletion before it fails; a message sent then stays
        behind that deletion as a republish."""
        async with self._replaying:
            failure: Exception | None = None
            deletion_failed = False
            for operation in list(self._queue):
                kind, values = operation
                if kind == "republish" and deletion_failed:
                    continue
                try:
                    await apply(operation)
                except Exception as exc:  # kept for the next attempt
                    failure = failure or exc
                    deletion_failed = deletion_failed or kind in DELETIONS
                    continue
                self._settle(
                    operation,
                    ("republish", values) if kind == "publish" and deletion_failed else None,
                )
            if failure is not None:
                raise failure

    def _settle(self, applied: Operation, replacement: Operation | None) -> None:
        """``applied`` leaves the queue (``replacement`` takes its place). It may be gone
        already: a ``keep`` at the limit during the replay dropped it."""
        for index, kept in enumerate(self._queue):
            if kept == applied:
                if replacement is None:
                    del self._queue[index]
                else:
                    self._queue[index] = replacement
                return
