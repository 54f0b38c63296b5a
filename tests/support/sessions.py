"""Sessions and session stores for tests: a session value as a login makes it, and the cookie
round trip a browser performs (Set-Cookie in, Cookie out)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from gateway.auth.sessions.id_token import IdToken
from gateway.auth.sessions.session import Session
from gateway.auth.sessions.token_response import TokenResponse

ISSUER = "https://as.example"
SECRET = b"k" * 32


def make_session(
    *,
    subject: str = "alice",
    sid: str | None = "op-1",
    now: float | None = None,
    refresh_token: str | None = None,
    expires_in: int = 300,
    access_token: str | None = None,
    id_token: str | None = None,
    claims: dict[str, Any] | None = None,
) -> Session:
    now = time.time() if now is None else now
    id_claims = {"sub": subject, "email": f"{subject}@example.com"} | (claims or {})
    checked = IdToken(
        subject=subject,
        sid=sid,
        expires_at=now + 300,
        issued_at=now,
        claims=MappingProxyType(id_claims),
    )
    tokens = TokenResponse(
        access_token=access_token or "at-" + secrets.token_urlsafe(16),
        token_type="Bearer",
        expires_in=expires_in,
        refresh_token=refresh_token or "rt-" + secrets.token_urlsafe(16),
        id_token=id_token or "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",
        scope="openid email",
    )
    return Session.from_login(
        login="web",
        issuer=ISSUER,
        id_token=checked,
        tokens=tokens,
        now=now,
        keep_id_token=True,
        raw_id_token=tokens.id_token or "",
    )


class Browser:
    """A cookie jar as RFC 6265 §5.3 keeps one for our cookies: Set-Cookie stores or (Max-Age
    of 0) deletes, and ``cookie_header`` is what the next request carries."""

    def __init__(self) -> None:
        self.jar: dict[str, str] = {}

    def receive(self, set_cookies: Sequence[str]) -> None:
        for header in set_cookies:
            pair, *attributes = header.split("; ")
            name, _, value = pair.partition("=")
            if "Max-Age=0" in attributes:
                self.jar.pop(name, None)
            else:
                self.jar[name] = value

    def cookie_header(self) -> list[str]:
        return (
            ["; ".join(f"{name}={value}" for name, value in self.jar.items())] if self.jar else []
        )
