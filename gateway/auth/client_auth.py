"""OAuth client authentication at an authorization server's endpoints: RFC 6749 §2.3.1
(``client_secret_basic``, ``client_secret_post``) and RFC 7523 §2.2 (``private_key_jwt``).

Used wherever the gateway calls the authorization server as a client: introspection
(RFC 7662 §2.1: "To prevent token scanning attacks, the endpoint MUST also require some form
of authorization to access this endpoint"), and the token and revocation endpoints.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote_plus

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.auth.settings import ClientCredentials

JWT_BEARER_ASSERTION: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME: Final = 60


class ClientAuthenticator:
    """Client credentials for one endpoint (introspection, token, revocation), prepared once."""

    def __init__(
        self, client: ClientCredentials, endpoint: str, clock: Callable[[], float]
    ) -> None:
        self._client_id = client.client_id
        self._endpoint = endpoint
        self._clock = clock
        self._headers: dict[str, str] = {"Accept": "application/json"}
        self._form: dict[str, str] = {}
        self._key: Any = None
        self._alg = client.private_key_alg
        self._jwt_headers = {"kid": client.key_id} if client.key_id else None
        secret = client.client_secret or ""
        if client.method == "client_secret_basic":
            self._headers["Authorization"] = basic_credentials(client.client_id, secret)
        elif client.method == "client_secret_post":
            self._form = {"client_id": client.client_id, "client_secret": secret}
        else:
            if client.private_key_file is None:
                raise ValueError("private_key_jwt needs private_key_file")
            self._key = load_pem_private_key(client.private_key_file.read_bytes(), password=None)
            self._form = {
                "client_id": client.client_id,
                "client_assertion_type": JWT_BEARER_ASSERTION,
            }
            try:  # a key that cannot sign with the configured alg is a config error, now
                self._assertion()
            except (jwt.PyJWTError, TypeError, ValueError) as exc:
                raise ValueError(f"private_key_file cannot sign {self._alg}: {exc}") from None

    def apply(self, form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """Headers and form for one request: a private_key_jwt assertion is fresh each time,
        since the server may refuse a ``jti`` it has seen (RFC 7523 §3 item 7)."""
        fields = {**form, **self._form}
        if self._key is not None:
            fields["client_assertion"] = self._assertion()
        return self._headers, fields

    def _assertion(self) -> str:
        """RFC 7523 §3: iss and sub MUST be the client_id (for client authentication, §2.2),
        aud MUST identify the authorization server (here: the endpoint), exp MUST be there."""
        now = int(self._clock())
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self._endpoint,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        return jwt.encode(claims, self._key, algorithm=self._alg, headers=self._jwt_headers)


def check_client_auth(client: ClientCredentials) -> None:
    """Fail at load, not at the first request: the key file must load and sign (ValueError,
    OSError)."""
    ClientAuthenticator(client, "https://config-check.invalid/introspect", time.time)


def basic_credentials(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: "The client identifier is encoded using the
    application/x-www-form-urlencoded encoding algorithm per Appendix B, and the encoded
    value is used as the username; the client password is encoded using the same algorithm
    and used as the password." Skipping that breaks secrets holding ':' or '%'."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")
