"""Upstream targets: where a route's service is and how long to wait for it, resolved once.

An upstream URL (``http://``, ``https://`` or ``unix:``; a path is a base prefix) is parsed at
compile time into an ``UpstreamTarget``, including its TLS context (RFC 9110 §4.3.4: the
server certificate is verified against the CA bundle and the name), so nothing about the
upstream is parsed or negotiated per request.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """An upstream as compiled from config: where to connect and how long to wait."""

    name: str
    host: str | None
    port: int | None
    unix_path: str | None
    base_path: str
    host_header: str
    ssl: ssl.SSLContext | None
    server_hostname: str | None
    connect_timeout: float
    read_timeout: float
    total_timeout: float | None
    max_connections: int
    idle_timeout: float
    preserve_host: bool


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """An upstream as the compile step hands it over: plain values from the config."""

    url: str
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    total_timeout: float | None = None
    max_connections: int = 256
    idle_timeout: float = 60.0
    ca_file: Path | None = None
    verify: bool = True
    server_name: str | None = None
    preserve_host: bool = False


def make_target(name: str, spec: UpstreamSpec) -> UpstreamTarget:
    """Resolve an upstream URL once at load; nothing is parsed per request. Raises
    ``OSError``/``ssl.SSLError`` for a CA file that does not load."""
    common: dict[str, Any] = {
        "name": name,
        "connect_timeout": spec.connect_timeout,
        "read_timeout": spec.read_timeout,
        "total_timeout": spec.total_timeout,
        "max_connections": spec.max_connections,
        "idle_timeout": spec.idle_timeout,
        "preserve_host": spec.preserve_host,
    }
    if spec.url.startswith("unix:"):
        path = spec.url.removeprefix("unix:").removeprefix("//")
        return UpstreamTarget(
            host=None, port=None, unix_path=path, base_path="", host_header="localhost",
            ssl=None, server_hostname=None, **common,
        )  # fmt: skip
    parts = urlsplit(spec.url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname or ""
    default_port = port == (443 if tls else 80)
    host_in_header = f"[{host}]" if ":" in host else host
    context: ssl.SSLContext | None = None
    if tls:
        context = ssl.create_default_context(cafile=str(spec.ca_file) if spec.ca_file else None)
        if not spec.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    return UpstreamTarget(
        host=host,
        port=port,
        unix_path=None,
        base_path=parts.path.rstrip("/"),
        host_header=host_in_header if default_port else f"{host_in_header}:{port}",
        ssl=context,
        server_hostname=(spec.server_name or host) if tls else None,
        **common,
    )
