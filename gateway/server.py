"""Processes and signals: uvloop, ``--workers N`` on one port, reload and graceful stop.

Workers are separate processes that each bind the proxy and admin ports with SO_REUSEPORT,
so the kernel spreads connections across cores with no shared state between them; each
worker holds its own runtime, pools and caches (Redis, where configured, is the shared tier).

Light at import on purpose: with ``--workers N`` this module runs in the supervisor, which
imports only the standard library and ``gateway.supervisor``. The gateway itself (pydantic,
aiohttp, the auth and proxy cores) is imported by ``gateway.worker.prepare``, in the process
that loads and compiles the config: a bad config exits 2 there, before anything serves, and
the workers forked from it share what it loaded.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import supervisor

if TYPE_CHECKING:
    from gateway.worker import Prepared


def install_uvloop() -> bool:
    """Use uvloop when installed: it roughly halves the event loop's share of each request."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def run(config_path: Path, workers: int, *, watch: bool = False) -> int:
    """Validate the config, then serve it with ``workers`` processes; returns an exit code
    (2 for a bad config, before anything serves)."""
    if workers <= 1:
        from gateway.worker import prepare, run_worker

        prepared = prepare(config_path)
        if prepared is None:
            return 2
        run_worker(prepared, reuse_port=False, watch=watch)
        return 0

    def prepare_all() -> Prepared | None:
        from gateway.worker import prepare

        return prepare(config_path, workers)

    def serve_one(prepared: Prepared, channel: socket.socket) -> None:
        from gateway.worker import run_worker

        run_worker(prepared, True, watch, channel)

    return supervisor.start_workers(
        workers, prepare_all, serve_one, preload=os.environ.get("GATEWAY_PRELOAD", "1") != "0"
    )
