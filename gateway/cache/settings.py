"""Where the shared cache lives and how long a command may take: plain values, compiled from
the config, so ``gateway.cache`` never reads the operator's file format."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Exactly one of ``url`` or ``sentinel_hosts`` (with ``sentinel_service``)."""

    url: str | None = None
    sentinel_hosts: tuple[tuple[str, int], ...] = ()
    sentinel_service: str | None = None
    cluster: bool = False
    timeout: float = 0.1  # one command on the request path
    admin_timeout: float = 5.0  # evictions: an operator waits, a client does not
