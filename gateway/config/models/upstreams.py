"""Upstream services: where they are, how they read paths, how long to wait, how many
connections."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from gateway.config.models.base import Strict
from gateway.config.types import Duration


class UpstreamTimeouts(Strict):
    connect: Duration = 5.0
    read: Duration = Field(60.0, description="Longest wait for the next byte of the response.")
    total: Duration | None = Field(None, description="Bound on the whole exchange; null: none.")


class UpstreamPool(Strict):
    max_connections: int = Field(256, ge=1, le=65536)
    idle_timeout: Duration = 60.0


class UpstreamTLS(Strict):
    ca_file: Path | None = None
    verify: bool = True
    server_name: str | None = None


class PathRules(Strict):
    """How the service behind an upstream reads a path (deploy/PATHS.md).

    Routes to the upstream are matched on the path as it reads it, so that a spelling it
    serves as a protected path is judged by the protected route. A key left out inherits
    from ``defaults.paths``; left out there too, it is the strict reading (RFC 3986).
    """

    case: Literal["sensitive", "insensitive"] | None = Field(
        None, description="insensitive: /ADMIN is /admin (Express, ASP.NET Core, IIS)."
    )
    trailing_slash: Literal["significant", "ignored"] | None = Field(
        None, description="ignored: /admin/ is /admin (Express, ASP.NET Core, Spring < 6)."
    )
    trailing_dot: Literal["significant", "ignored"] | None = Field(
        None, description="ignored: /admin. and /admin./x are /admin, /admin/x (IIS, Windows)."
    )
    trailing_space: Literal["significant", "ignored"] | None = Field(
        None, description="ignored: /admin%20 is /admin (IIS, Windows file names)."
    )


class Upstream(Strict):
    url: str = Field(description="http://host:port[/base], https://…, or unix:/path/to.sock")
    paths: PathRules = PathRules()
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    pool: UpstreamPool = UpstreamPool()
    tls: UpstreamTLS = UpstreamTLS()
    preserve_host: bool = Field(False, description="Send the client's Host instead of the URL's.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value.startswith("unix:"):
            path = value.removeprefix("unix:").removeprefix("//")
            if not path.startswith("/"):
                raise ValueError("a unix socket URL must be unix:/absolute/path.sock")
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http://, https:// or unix: URL with a host")
        if not parts.hostname.isascii():
            # Host goes upstream as bytes (RFC 9110 §7.2 uri-host is ASCII): no IDN guessing.
            raise ValueError("the host must be ASCII (an international name in its xn-- form)")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("an upstream URL may not carry a query, fragment or credentials")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("the port is not a number from 1 to 65535") from None
        return value
