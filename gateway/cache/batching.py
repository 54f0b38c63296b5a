"""Auto-pipelining for the L2's request-path GETs (Redis pipelining, RESP2/3).

Redis answers pipelined commands in order, so GETs sent together cost one round trip and
one connection checkout between them. Which GETs go together is decided by the event loop:
those issued in the same iteration, which under load is a burst of requests read from
many sockets at once. The batch, not each GET, carries the time limit: one timer for all
of them. Measured in ``tests/bench/redis_l2.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any


class GetBatcher:
    """GETs issued in one loop iteration leave together, as one pipeline: one connection
    taken from the pool and one round trip for all of them (auto-pipelining). Under load the
    hot path's GETs arrive in bursts (a batch of requests read from the sockets in one
    iteration), so the per-command work of the client is paid once per burst."""

    def __init__(self, client: Any, timeout: float) -> None:
        self._client = client
        self._timeout = timeout  # per batch: one timer for all its GETs
        self._waiting: list[tuple[str, asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)  # after every GET of this iteration was issued
        self._waiting.append((key, future))
        return await future

    def _flush(self) -> None:
        batch, self._waiting = self._waiting, []
        # A task of its own: a caller that gives up (its timeout) does not cancel the others.
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[str, asyncio.Future[Any]]]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                if len(batch) == 1:
                    results = [await self._client.get(batch[0][0])]
                else:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for key, _ in batch:
                            pipe.get(key)
                        results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # each caller sees the failure (a miss, for RedisCache)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
