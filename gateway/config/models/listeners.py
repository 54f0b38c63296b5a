"""Listeners, HTTP limits and forwarding-header trust (RFC 7239)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.config.models.base import Strict
from gateway.config.types import Duration, HeaderName


class ClientAuth(Strict):
    """Whether the TLS handshake asks for a client certificate (RFC 8446 §4.3.2)."""

    mode: Literal["none", "optional", "required"] = Field(
        "none",
        description="optional: a certificate is asked for and, when sent, must chain to "
        "ca_file; required: no certificate, no connection. Fixed until a restart.",
    )
    ca_file: Path | None = Field(None, description="PEM CAs client certificates chain to.")

    @model_validator(mode="after")
    def _needs_ca(self) -> ClientAuth:
        if self.mode != "none" and self.ca_file is None:
            raise ValueError("client certificates need ca_file (the CAs they must chain to)")
        return self


class ListenTls(Strict):
    """TLS on the proxy listener (RFC 8446; RFC 9325's recommendations)."""

    cert_file: Path = Field(description="PEM: the certificate, then its intermediates.")
    key_file: Path = Field(description="PEM private key, unencrypted.")
    min_version: Literal["1.2", "1.3"] = "1.2"
    client_auth: ClientAuth = ClientAuth()
    watch_interval: Duration = Field(
        30.0,
        ge=0,
        description="How often the files are checked for a renewal (0: only on reload).",
    )


class Listen(Strict):
    host: str = "0.0.0.0"  # noqa: S104 - a gateway listens on every interface by default
    port: int = Field(8080, ge=0, le=65535)
    tls: ListenTls | None = None


class AdminListen(Strict):
    host: str = "127.0.0.1"
    port: int = Field(9901, ge=0, le=65535)
    token: SecretStr | None = Field(
        None,
        description="Bearer token required by admin actions (POST /cache/evict); required "
        "unless the admin listener is bound to loopback.",
    )

    @field_validator("token")
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            # ${GATEWAY_ADMIN_TOKEN} set but empty: an open admin API by accident.
            raise ValueError("the admin token is empty (is its environment variable set?)")
        return value


class Limits(Strict):
    """Bounds on what a client may send before the gateway refuses it."""

    max_request_line: int = Field(8190, ge=256, le=65536, description="bytes (else 400/414)")
    max_header_size: int = Field(8190, ge=256, le=65536, description="bytes per field (431)")
    max_headers: int = Field(100, ge=8, le=1000, description="header fields (431)")
    max_token_size: int = Field(8192, ge=256, le=65536, description="bytes of a bearer token")
    keepalive_timeout: Duration = 75.0
    header_timeout: Duration = Field(
        10.0,
        gt=0,
        description="Longest time a client may take to send a request head (408 and close).",
    )
    path_parameters: bool = Field(
        False,
        description="Allow ';' in paths. Off: servlet-style upstreams read /admin;x/y as "
        "/admin/y, which routes matching the raw path would not see.",
    )


class Forwarding(Strict):
    """RFC 7239 / X-Forwarded-* handling, and which peers may set them before us."""

    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Peers (IPs or CIDRs) whose X-Forwarded-*/Forwarded are kept.",
    )
    x_forwarded: bool = True
    forwarded: bool = Field(False, description="Also send an RFC 7239 Forwarded header.")
    via: str | None = Field("gateway", description="Pseudonym in the Via header; null: no Via.")
    request_id_header: HeaderName = "X-Request-Id"
    proxy_only_headers: list[HeaderName] = Field(
        default_factory=list,
        description="Site-specific headers believed only from trusted_proxies (like X-Real-IP): "
        "removed from everyone else's requests, passed as they are from a trusted proxy.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value
