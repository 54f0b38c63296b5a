"""Sender-constrained tokens (DPoP, RFC 9449; mutual-TLS bound, RFC 8705) and protected
resource metadata (RFC 9728): the config shape, validated at load (``defaults.dpop``,
``routes[].dpop``, ``client_certificates``, ``resources``; compiled by ``compiler/sender``)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from gateway.config.models.base import Strict
from gateway.config.types import Duration, HeaderName


def _yaml_off(value: object) -> object:
    """YAML 1.1, which PyYAML speaks, reads an unquoted ``off`` as false: ``mode: off`` is
    how the README writes it, so false is the off mode (true names no mode: still refused)."""
    return "off" if value is False else value


SenderMode = Annotated[Literal["off", "optional", "required"], BeforeValidator(_yaml_off)]
# RFC 9449 §4.2: asymmetric JWS algorithms only; never none or HS*.
DpopAlgorithm = Literal[
    "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"
]  # fmt: skip
DEFAULT_DPOP_ALGORITHMS: tuple[DpopAlgorithm, ...] = ("ES256", "PS256", "RS256", "EdDSA")


def _absolute_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an absolute http(s) URL")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{what} has no query, fragment or userinfo")
    return value


class DpopNonce(Strict):
    """RFC 9449 §9 server nonces, made stateless: an HMAC of the time window, so every
    replica with the same secret accepts the others' nonces."""

    secret: SecretStr = Field(description="At least 32 bytes; shared by all replicas.")
    lifetime: Duration = Field(300.0, gt=0, le=3600)

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().encode()) < 32:
            raise ValueError("the nonce secret must be at least 32 bytes")
        return value


class DpopReplay(Strict):
    """RFC 9449 §11.1 jti replay store: in-process, plus Redis (``cache.redis``) if asked."""

    max_entries: int = Field(100_000, ge=1, description="Full (all live) → 503, never evict.")
    max_entries_per_key: int | None = Field(
        None, ge=1, description="One proof key's share; past it that key gets 429 "
        "(default: a tenth of max_entries, so filling the store takes ten tokens' keys).",
    )  # fmt: skip
    redis: bool = Field(False, description="Share seen proofs with other replicas via Redis.")
    on_redis_error: Literal["fail_closed", "fail_open"] = Field(
        "fail_closed", description="fail_closed: 503; fail_open: this replica's memory only."
    )
    key_prefix: str = "gw:dpop:"

    @model_validator(mode="after")
    def _share_fits(self) -> DpopReplay:
        share = self.max_entries_per_key
        if share is not None and share > self.max_entries:
            raise ValueError("max_entries_per_key cannot be more than max_entries")
        return self


class Dpop(Strict):
    """DPoP for a route (``defaults.dpop`` / ``routes[].dpop``)."""

    mode: SenderMode = Field(
        "off", description="off: refuse DPoP-bound tokens; optional: check them, accept "
        "bearer tokens; required: only DPoP-bound tokens with valid proofs."
    )  # fmt: skip
    external_url: str | None = Field(
        None, description="The URL clients use to reach the gateway (scheme, host, port, "
        "optional path prefix). htu is checked against it plus the request path; never "
        "against Host or forwarded headers. Required unless mode is off."
    )  # fmt: skip
    algorithms: list[DpopAlgorithm] = Field(
        default_factory=lambda: list(DEFAULT_DPOP_ALGORITHMS), min_length=1
    )
    max_age: Duration = Field(60.0, gt=0, le=600, description="Accept a proof this long after iat.")
    leeway: Duration = Field(5.0, le=60, description="Accept an iat this far in the future.")
    max_proof_size: int = Field(8192, ge=512, le=65536, description="bytes of the DPoP header")
    nonce: DpopNonce | None = None
    replay: DpopReplay = DpopReplay()
    forward_proof: bool = Field(False, description="Send the DPoP header to the upstream.")

    @field_validator("external_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _absolute_url(value, "external_url")

    @model_validator(mode="after")
    def _origin_when_on(self) -> Dpop:
        if self.mode != "off" and self.external_url is None:
            raise ValueError("DPoP needs external_url: the URL clients use (htu is checked "
                             "against it, never against the Host header)")  # fmt: skip
        return self


class ClientCertificates(Strict):
    """RFC 8705 certificate-bound tokens for a route (``defaults.client_certificates``)."""

    mode: SenderMode = Field(
        "off", description="off: refuse certificate-bound tokens; optional: check them; "
        "required: only certificate-bound tokens."
    )  # fmt: skip
    source: Literal["tls", "header"] = Field(
        "tls", description="tls: the listener's handshake; header: a front proxy's header."
    )
    header: HeaderName = "X-Forwarded-Client-Cert"
    header_format: Literal["xfcc", "escaped_pem"] = Field(
        "xfcc", description="xfcc: Envoy X-Forwarded-Client-Cert (last element); "
        "escaped_pem: nginx $ssl_client_escaped_cert."
    )  # fmt: skip
    trusted_proxies: list[str] | None = Field(
        None, description="Peers whose header is believed; default: forwarding.trusted_proxies."
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            try:
                ipaddress.ip_network(item, strict=True)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value


class ProtectedResource(Strict):
    """One RFC 9728 resource: a group of routes (or the whole gateway) with one identifier."""

    resource: str = Field(description="The resource identifier, exactly as clients use it.")
    routes: list[str] | None = Field(None, description="Route names; null: every route.")
    authorization_servers: list[str] | None = Field(
        None, description="Issuer identifiers; default: the issuers the routes accept."
    )
    scopes_supported: list[str] | None = None
    bearer_methods_supported: list[Literal["header", "body", "query"]] | None = Field(
        None, description="Default: from the routes' token sources."
    )
    resource_signing_alg_values_supported: list[str] = Field(default_factory=list)
    resource_name: str | None = None
    resource_documentation: str | None = None
    cache_max_age: Duration = Field(3600.0, le=86400)

    @field_validator("resource")
    @classmethod
    def _identifier(cls, value: str) -> str:
        # RFC 9728 §1.2: https and no fragment; a query is refused (one well-known path).
        parts = urlsplit(_absolute_url(value, "resource"))
        loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
        if parts.scheme != "https" and not loopback:
            raise ValueError("resource must be an https URL (http only on loopback)")
        return value

    @field_validator("resource_signing_alg_values_supported")
    @classmethod
    def _no_none(cls, value: list[str]) -> list[str]:
        # RFC 9728 §2: "The value none MUST NOT be used."
        if "none" in value:
            raise ValueError("none is not a signing algorithm")
        return value
