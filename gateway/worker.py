"""One worker process: prepare (import, load, compile) and serve a config until told to stop.

``prepare`` is where the gateway's modules are imported and the config is loaded and
compiled; under ``--workers N`` it runs once, before the workers are forked, so they share
what it loaded (``gateway.supervisor``). ``serve`` runs the listeners until SIGTERM/SIGINT,
reloads on SIGHUP (or a changed file), and drains on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import boundedjson, supervisor
from gateway.server import install_uvloop

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.compiler import CompiledConfig
    from gateway.config.loader import LoadedConfig

log = logging.getLogger("gateway.server")


def load_for_run(config_path: Path) -> LoadedConfig:
    """The config file with the environment's overrides (listeners, log level and format)."""
    from gateway.config.environment import apply_environment
    from gateway.config.loader import load_config

    return apply_environment(load_config(config_path), os.environ)


@dataclass(frozen=True)
class Prepared:
    """A config loaded and compiled, with the gateway's modules imported: what a worker
    starts from."""

    path: Path
    loaded: LoadedConfig
    compiled: CompiledConfig
    workers: int = 1


def unshared_logins(loaded: LoadedConfig, workers: int) -> str | None:
    """Why ``workers`` processes cannot serve this config, or None. Without a Redis a
    browser login keeps in memory, per process, what every process of a replica must share:
    the one refresh of a session (a browser's parallel connections land on different
    workers, and two refreshes with a rotating refresh token revoke the grant), the
    revocations of a logout (honoured by one worker, ignored by the others) and the logout
    tokens seen. Refused rather than served half-working."""
    config = loaded.config
    alone = [
        login.key for login in config.logins if (login.store.redis or config.cache.redis) is None
    ]
    if workers <= 1 or not alone:
        return None
    return (
        f"logins {', '.join(alone)}: with --workers {workers}, refreshes, logouts and logout "
        "tokens must be shared through Redis; configure cache.redis (or the login's "
        "store.redis), or run one worker"
    )


def prepare(config_path: Path, workers: int = 1) -> Prepared | None:
    """Import the gateway, load and compile the config, set up logging and the event loop
    policy; None (the error printed) when the config is bad, or cannot be served by
    ``workers`` processes."""
    from gateway.accesslog import configure_logging
    from gateway.app import start_gateway  # noqa: F401 - imported here, shared by the workers
    from gateway.compiler import compile_config
    from gateway.config.errors import ConfigError

    try:
        loaded = load_for_run(config_path)
        compiled = compile_config(loaded)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return None
    problem = unshared_logins(loaded, workers)
    if problem is not None:
        print(f"{config_path}: {problem}", file=sys.stderr)
        return None
    if compiled.redis is not None:
        import gateway.cache.redis  # noqa: F401 - redis-py, only where configured
    logging_config = loaded.config.logging
    configure_logging(logging_config.level, logging_config.format)
    install_uvloop()
    return Prepared(config_path, loaded, compiled, workers)


async def _watch(path: Path, on_change: Callable[[], None], interval: float = 1.0) -> None:
    """Poll the config file's mtime and size (works for ConfigMap symlink swaps too)."""

    def stamp() -> tuple[float, int] | None:
        try:
            info = path.stat()
        except OSError:
            return None
        return info.st_mtime, info.st_size

    last = stamp()
    while True:
        await asyncio.sleep(interval)
        current = stamp()
        if current is not None and current != last:
            last = current
            on_change()


def _worker_channel(
    channel: socket.socket | None,
) -> tuple[Callable[[dict[str, Any]], None] | None, Callable[[Gateway], None]]:
    """This worker's side of the supervisor's relay: a function that sends a message to the
    sibling workers, and one that starts delivering theirs to the gateway."""
    if channel is None:
        return None, lambda _gateway: None
    channel.setblocking(False)

    def relay(message: dict[str, Any]) -> None:
        payload = json.dumps(message, separators=(",", ":")).encode()
        if not supervisor.send(channel, payload):
            raise OSError("the supervisor channel did not take the message")

    def listen(gateway: Gateway) -> None:
        def readable() -> None:
            try:
                payload = channel.recv(supervisor.MAX_MESSAGE + 1)
            except (BlockingIOError, InterruptedError):
                return
            if not payload:
                asyncio.get_running_loop().remove_reader(channel.fileno())
                return
            try:
                message = boundedjson.loads(payload, max_bytes=supervisor.MAX_MESSAGE, max_depth=2)
            except ValueError:
                log.warning("ignoring a malformed message from the supervisor")
                return
            if isinstance(message, dict):
                gateway.receive_eviction(message)

        asyncio.get_running_loop().add_reader(channel.fileno(), readable)

    return relay, listen


async def serve(
    prepared: Prepared,
    *,
    reuse_port: bool,
    watch: bool = False,
    channel: socket.socket | None = None,
) -> None:
    """Run one worker until SIGTERM/SIGINT; SIGHUP (or a changed file, with ``watch``)
    reloads the config file. ``channel`` connects it to its sibling workers."""
    from gateway.app import start_gateway
    from gateway.config.errors import ConfigError

    config_path = prepared.path
    relay, listen = _worker_channel(channel)
    try:
        gateway = await start_gateway(
            prepared.loaded, reuse_port=reuse_port, relay=relay, compiled=prepared.compiled
        )
    except OSError as exc:  # a port taken, an address not this host's: said, not traced
        log.error("cannot start: %s", exc)
        raise SystemExit(1) from None
    listen(gateway)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def reload() -> None:
        try:
            new = load_for_run(config_path)
        except ConfigError as error:
            gateway.metrics.config_reloads.labels("rejected").inc()
            log.error("config reload rejected, keeping the running config:\n%s", error)
            return
        problem = unshared_logins(new, prepared.workers)
        if problem is not None:
            gateway.metrics.config_reloads.labels("rejected").inc()
            log.error("config reload rejected, keeping the running config: %s", problem)
            return
        try:
            await gateway.reload(new)  # counts its own outcome
        except ConfigError as error:
            log.error("config reload rejected, keeping the running config:\n%s", error)
            return
        except Exception:
            gateway.metrics.config_reloads.labels("rejected").inc()
            log.exception("config reload failed, keeping the running config")
            return
        log.info("config reloaded from %s", config_path)

    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = asyncio.ensure_future(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    watcher = asyncio.ensure_future(_watch(config_path, on_hup)) if watch else None
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    config = prepared.loaded.config
    log.info(
        "gateway listening on %s:%d (admin %s:%d)",
        config.listen.host, gateway.proxy_port, config.admin.host, gateway.admin_port,
    )  # fmt: skip
    try:
        await stop.wait()
        log.info("stopping: readiness off, draining in-flight requests")
        if watcher is not None:
            watcher.cancel()
        await gateway.shutdown(gateway.holder.current.compiled.config.shutdown.readiness_delay)
    finally:
        await gateway.close()


def run_worker(
    prepared: Prepared, reuse_port: bool, watch: bool, channel: socket.socket | None = None
) -> None:
    # Everything prepared so far (imports, the compiled config) lives as long as the
    # process. Frozen, the collector no longer walks it: a full collection over it took
    # ~25 ms, 18 times in a 12 s bench run, and set the p99 (tests/bench/README.md). The
    # cost: if a reload replaces this first config, its reference cycles are never
    # collected (once; later configs are not frozen).
    gc.freeze()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(prepared, reuse_port=reuse_port, watch=watch, channel=channel))
