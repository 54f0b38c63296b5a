"""A browser session: who logged in (OIDC Core §2 ID token claims), the tokens the gateway
holds for them (RFC 6749 §5.1), and its idle and absolute lifetimes (OWASP ASVS V3.3).

A ``Session`` is a plain frozen value with a compact, versioned encoding, so the cookie store
(sealed into the cookie) and the Redis store (sealed into Redis) hold the same bytes. The
timeout rules and the refresh rule are pure functions of the value and the time.

Session ids (Redis store) are 256 random bits, sent only in the cookie and stored only as
their SHA-256: a Redis dump or a log line never holds an id that would open a session.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Final

from gateway import boundedjson
from gateway.auth.identity import Identity, scopes_from_claim
from gateway.auth.sessions.id_token import IdToken
from gateway.auth.sessions.token_response import MAX_EXPIRES_IN, TokenResponse
from gateway.auth.thumbprints import b64url_decode

FORMAT: Final = "s1"
MAX_ENCODED_BYTES: Final = 64 * 1024
# Protocol claims of the ID token that say nothing about the user and would only make every
# cookie larger (OIDC Core §2, §3.1.3.6).
_PROTOCOL_CLAIMS: Final = frozenset(
    {"nonce", "at_hash", "c_hash", "s_hash", "jti", "iat", "nbf", "exp", "auth_time", "typ"}
)
_TOUCH_CEILING: Final = 60.0


def new_session_id() -> str:
    """256 bits from the OS CSPRNG (OWASP: at least 64 bits of entropy; this is plenty)."""
    return secrets.token_urlsafe(32)


def session_id_hash(session_id: str) -> bytes:
    """What a store keys on and a log line may name (hex, shortened): never the id."""
    return hashlib.sha256(session_id.encode()).digest()


@dataclass(frozen=True, slots=True)
class Session:
    login: str
    issuer: str
    subject: str
    sid: str | None
    claims: Mapping[str, Any]
    access_token: str
    token_type: str
    refresh_token: str | None
    id_token: str | None
    access_expires_at: float | None
    scope: str | None
    created_at: float
    last_seen: float
    handle: str

    def __repr__(self) -> str:  # no token and no handle in logs or tracebacks
        return (
            f"Session(login={self.login!r}, issuer={self.issuer!r}, ref={self.ref},"
            f" access_expires_at={self.access_expires_at!r})"
        )

    @property
    def ref(self) -> str:
        """A short reference for logs: a hash of the handle, so it links log lines of one
        session without being anything an attacker could present."""
        return hashlib.sha256(self.handle.encode()).hexdigest()[:12]

    @classmethod
    def from_login(
        cls,
        *,
        login: str,
        issuer: str,
        id_token: IdToken,
        tokens: TokenResponse,
        now: float,
        keep_id_token: bool,
        raw_id_token: str,
    ) -> Session:
        """A new session after a successful callback: a new handle every time, so nothing
        of a session that existed before the login carries over (session fixation)."""
        return cls(
            login=login,
            issuer=issuer,
            subject=id_token.subject,
            sid=id_token.sid,
            claims=identity_claims(id_token.claims),
            access_token=tokens.access_token,
            token_type=tokens.token_type,
            refresh_token=tokens.refresh_token,
            id_token=raw_id_token if keep_id_token else None,
            access_expires_at=access_expiry(tokens, now),
            scope=tokens.scope,
            created_at=now,
            last_seen=now,
            handle=secrets.token_urlsafe(16),
        )

    def refreshed(
        self, tokens: TokenResponse, id_token: IdToken | None, raw_id_token: str | None, now: float
    ) -> Session:
        """The session with a refresh's tokens (RFC 6749 §6; OIDC Core §12.2)."""
        return replace(
            self,
            claims=identity_claims(id_token.claims) if id_token is not None else self.claims,
            access_token=tokens.access_token,
            token_type=tokens.token_type,
            refresh_token=tokens.refresh_token or self.refresh_token,
            id_token=raw_id_token if raw_id_token and self.id_token else self.id_token,
            access_expires_at=access_expiry(tokens, now),
            scope=tokens.scope if tokens.scope is not None else self.scope,
        )

    def touched(self, now: float) -> Session:
        return replace(self, last_seen=now)


def access_expiry(tokens: TokenResponse, now: float) -> float | None:
    """When the access token stops working, if anything says so.

    RFC 6749 §5.1 makes ``expires_in`` only RECOMMENDED. Without it, a JWT access token's
    own ``exp`` says when (RFC 9068 §2.2 requires one), read without verifying: the token
    endpoint just issued it over TLS, and the time only decides when to refresh and when a
    session that forwards the token ends. Neither: None, and the token is taken to last as
    long as the session (README, "Refresh")."""
    if tokens.expires_in is not None:
        return now + tokens.expires_in
    exp = _jwt_exp(tokens.access_token)
    return None if exp is None else min(exp, now + MAX_EXPIRES_IN)


def _jwt_exp(token: str) -> float | None:
    """A compact JWS's numeric ``exp``; None for an opaque token or one without it."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = boundedjson.loads(b64url_decode(parts[1]), max_bytes=len(token))
    except ValueError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)


def identity_claims(claims: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType({k: v for k, v in claims.items() if k not in _PROTOCOL_CLAIMS})


# --- lifetimes ---------------------------------------------------------------------------


def ended(session: Session, now: float, *, idle: float, absolute: float) -> str | None:
    """Why the session is over ("absolute", "idle"), or None while it lives. The absolute
    limit holds whatever the activity; the idle one resets on every touch."""
    if now >= session.created_at + absolute:
        return "absolute"
    if now >= session.last_seen + idle:
        return "idle"
    return None


def ends_at(session: Session, *, idle: float, absolute: float) -> float:
    return min(session.created_at + absolute, session.last_seen + idle)


def touch_due(session: Session, now: float, *, idle: float) -> bool:
    """Whether to record activity now. Rewriting a sealed cookie or a Redis value on every
    request costs a seal and a write; a tenth of the idle timeout (at most a minute) of
    imprecision in the idle limit is harmless."""
    return now - session.last_seen >= min(_TOUCH_CEILING, idle / 10)


def refresh_due(session: Session, now: float, *, margin: float) -> bool:
    """Refresh shortly before the access token expires, if there is a refresh token."""
    return (
        session.refresh_token is not None
        and session.access_expires_at is not None
        and now >= session.access_expires_at - margin
    )


def access_expired(session: Session, now: float) -> bool:
    return session.access_expires_at is not None and now >= session.access_expires_at


def session_identity(session: Session, client_id: str) -> Identity:
    """The one identity shape (design principle 6): the ID token's user claims, the granted
    scope, and this client as the party the session was issued to."""
    claims = dict(session.claims)
    if session.scope is not None:
        claims["scope"] = session.scope
    azp = claims.get("azp")
    return Identity(
        issuer=session.issuer,
        subject=session.subject,
        client_id=azp if isinstance(azp, str) else client_id,
        scopes=scopes_from_claim(session.scope or ""),
        audiences=(client_id,),
        expires_at=session.access_expires_at,
        token_kind="session",  # noqa: S106 - a kind, not a secret
        claims=MappingProxyType(claims),
    )


# --- encoding ----------------------------------------------------------------------------


def encode_session(session: Session) -> bytes:
    """A JSON array: no member names repeated in every cookie."""
    fields = [
        FORMAT,
        session.login,
        session.issuer,
        session.subject,
        session.sid,
        dict(session.claims),
        session.access_token,
        session.token_type,
        session.refresh_token,
        session.id_token,
        session.access_expires_at,
        session.scope,
        session.created_at,
        session.last_seen,
        session.handle,
    ]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def decode_session(data: bytes) -> Session:
    """``ValueError`` for anything ``encode_session`` of this version did not write."""
    fields = boundedjson.loads(data, max_bytes=MAX_ENCODED_BYTES)
    if not isinstance(fields, list) or len(fields) != 15 or fields[0] != FORMAT:
        raise ValueError("not a session of this version")
    (
        _,
        login,
        issuer,
        subject,
        sid,
        claims,
        access_token,
        token_type,
        refresh_token,
        id_token,
        access_expires_at,
        scope,
        created_at,
        last_seen,
        handle,
    ) = fields
    if not (
        all(isinstance(v, str) for v in (login, issuer, subject, access_token, token_type, handle))
        and all(v is None or isinstance(v, str) for v in (sid, refresh_token, id_token, scope))
        and isinstance(claims, dict)
        and (access_expires_at is None or _number(access_expires_at))
        and _number(created_at)
        and _number(last_seen)
    ):
        raise ValueError("a session field has the wrong type")
    return Session(
        login=login,
        issuer=issuer,
        subject=subject,
        sid=sid,
        claims=MappingProxyType(claims),
        access_token=access_token,
        token_type=token_type,
        refresh_token=refresh_token,
        id_token=id_token,
        access_expires_at=None if access_expires_at is None else float(access_expires_at),
        scope=scope,
        created_at=float(created_at),
        last_seen=float(last_seen),
        handle=handle,
    )


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)
