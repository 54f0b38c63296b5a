"""Start and stop the decision service's listeners (HTTP, and gRPC when configured).

Started by ``gateway.app.start_gateway`` beside the admin listener, on addresses of their
own; they read the live runtime on every check, so a reload applies to them at once.
The gRPC part (``grpcio``, ``xds-protos``: the ``envoy`` extra) is imported only when
``decision.grpc`` is set; the compile step refuses that setting where they are missing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.config.models import DecisionService
from gateway.decision.http_service import build_decision_app
from gateway.metrics import Metrics
from gateway.runtime import RuntimeHolder

log = logging.getLogger("gateway.decision")
_GRPC_GRACE = 5.0


@dataclass
class DecisionListeners:
    runner: web.AppRunner
    grpc: Any = None  # a grpc.aio.Server
    port: int = 0
    grpc_port: int = 0

    async def close(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop(_GRPC_GRACE)
        await self.runner.cleanup()


async def start_decision(
    holder: RuntimeHolder,
    metrics: Metrics,
    section: DecisionService,
    *,
    reuse_port: bool,
    limits: Mapping[str, int],
) -> DecisionListeners:
    """``limits``: the proxy listener's parser limits, so a forwarded header the proxy
    would refuse (431) is refused here too."""
    if not section.trusted_proxies:
        log.warning("decision.trusted_proxies is empty: every forward-auth check gets 400")
    app = build_decision_app(holder, metrics, section.envoy_path_prefix)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, max_line_size=limits["max_line_size"],
        max_field_size=limits["max_field_size"], max_headers=limits["max_headers"],
    )  # fmt: skip
    await runner.setup()
    listeners = DecisionListeners(runner)
    try:
        listen = section.listen
        site = web.TCPSite(runner, listen.host, listen.port, reuse_port=reuse_port)
        await site.start()
        listeners.port = _port(site)
        if section.grpc is not None:
            from gateway.decision.grpc_service import start_grpc  # compile checked it imports

            grpc = section.grpc
            listeners.grpc, listeners.grpc_port = await start_grpc(
                holder, metrics, grpc.host, grpc.port
            )
    except BaseException:
        await listeners.close()
        raise
    return listeners


def _port(site: web.TCPSite) -> int:
    sockets = getattr(site._server, "sockets", None)
    return int(sockets[0].getsockname()[1]) if sockets else 0
