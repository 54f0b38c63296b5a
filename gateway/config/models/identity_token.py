"""Identity tokens the gateway signs for upstreams (RFC 7519, RFC 7515; keys per RFC 7517).

``token_signing`` (top level) says who the gateway is as an issuer and which keys it signs
with; ``identity_token`` (in ``defaults`` or a route, the route's section replacing the
defaults' as a whole) says what a route's upstream receives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from gateway.config.models.base import Strict
from gateway.config.types import Duration, HeaderName

MAX_LIFETIME = 3600.0


class SigningKeyFile(Strict):
    """One key file: PEM (PKCS#8, traditional or SPKI) or a JSON JWK."""

    file: Path
    kid: str | None = Field(
        None, min_length=1, max_length=256, description="Default: the RFC 7638 thumbprint."
    )
    alg: Literal["ES256", "EdDSA", "RS256"] | None = Field(
        None, description="Default: the key's own (RSA: RS256, P-256: ES256, Ed25519: EdDSA)."
    )
    active: bool = Field(False, description="Signs; default: the first key. Others: published.")


class JwksServing(Strict):
    max_age: Duration = Field(300.0, le=86400, description="Cache-Control max-age of the set.")
    on_proxy: bool = Field(
        False, description="Also answer /.well-known/jwks.json on the proxy listener."
    )


class SignedTokenCache(Strict):
    max_entries: int = Field(10000, ge=0, description="0: sign every request.")
    refresh_before: Duration = Field(
        10.0, description="A cached token is replaced this long before it expires."
    )


class TokenSigning(Strict):
    issuer: str = Field(description="The iss of every identity token: the gateway's URL.")
    keys: list[SigningKeyFile] = Field(min_length=1)
    jwks: JwksServing = JwksServing()
    cache: SignedTokenCache = SignedTokenCache()

    @field_validator("issuer")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("expected an https:// URL naming the gateway")
        if parts.query or parts.fragment:
            # RFC 8414 §2: an issuer identifier has no query or fragment components.
            raise ValueError("an issuer URL has no query or fragment")
        return value


class RouteIdentityToken(Strict):
    enabled: bool = True
    header: HeaderName | None = Field(
        None,
        description="Default: Authorization (as Bearer) when the client's token is not "
        "forwarded, else X-Identity-Token.",
    )
    audience: str | None = Field(None, min_length=1, description="Default: the upstream's name.")
    lifetime: Duration = Field(60.0, ge=1, le=MAX_LIFETIME, description="At most; never past "
                               "the client's token.")  # fmt: skip
    claims: dict[str, str] = Field(
        default_factory=dict, description="Extra claims: templates as in identity_headers."
    )
    bind_request: bool = Field(
        True, description="Add htm and htu (method, upstream URL) so a token fits one request."
    )
