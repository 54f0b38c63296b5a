"""RFC 7519 §7.2, RFC 9068 §4, RFC 8725 §3, RFC 7515 §5.2: local validation of JWT access tokens.

A token is split, decoded and JSON-parsed exactly once; its unverified ``iss`` only selects
which issuer's rules and keys apply (nothing else is trusted before the signature checks).
Signatures are verified by PyJWT's algorithm objects over keys prepared when the key set
loaded; the claims are then checked here, in a few comparisons, so the cold path of one
token costs little more than its signature check.

``parse`` says ``NotMine`` for anything that is not a JWS compact JWT from an issuer we know
(in ``auto`` mode such a token goes to introspection) and ``InvalidToken`` for a JWT from a
known issuer whose header breaks the rules. ``verify`` turns both into ``InvalidToken``.
"""

from __future__ import annotations

import binascii
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jwt.algorithms import Algorithm, get_default_algorithms

from gateway import boundedjson
from gateway.auth.claims import check_required, check_times, read_registered
from gateway.auth.identity import Identity
from gateway.auth.jwks import KeySetProvider
from gateway.auth.settings import HMAC_ALGORITHMS, IssuerSettings
from gateway.problems import InvalidToken, ServiceUnavailable

# RFC 7515 §7.1: three base64url segments without padding; the signature may be empty only so
# that an unsigned token reaches the header check and is refused for what it is.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = (b"", b"===", b"==", b"=")  # by length % 4; "===" makes an impossible length fail
_AT_JWT_TYPES = frozenset({"at+jwt", "application/at+jwt"})


class NotMine(Exception):
    """Not a JWT from a trusted issuer: another verifier (introspection) may own it."""

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParsedJwt:
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes
    issuer_key: str


@dataclass(frozen=True, slots=True)
class _Trust:
    """One issuer's rules, compiled from its config for the request path."""

    key: str
    issuer: str
    algorithms: frozenset[str]
    hmac_key: bytes | None
    audiences: frozenset[str]
    leeway: float
    required_claims: tuple[str, ...]
    require_at_jwt: bool
    scope_claims: tuple[str, ...]
    provider: KeySetProvider | None


# The last character of a segment whose length is 2 or 3 (mod 4) carries unused bits, which
# must be zero (RFC 4648 §3.5): only these characters end a canonical encoding.
_CANONICAL_LAST = {2: frozenset(b"AQgw"), 3: frozenset(b"AEIMQUYcgkosw048")}


def _b64decode(segment: bytes) -> bytes:
    """base64url without padding, canonical only: one token has one spelling, so everything
    keyed on its hash (the negative cache, evictions) sees every copy of it."""
    tail = _CANONICAL_LAST.get(len(segment) & 3)
    if tail is not None and segment and segment[-1] not in tail:
        raise ValueError("non-canonical base64url")
    return binascii.a2b_base64(segment.translate(_TO_STANDARD) + _PADDING[len(segment) & 3])


_MAX_SEGMENT = 96 * 1024  # bytes of a decoded header or claims set (tokens are ≤ 64 KiB)


def _json_object(segment: bytes) -> dict[str, Any]:
    # RFC 7515 §5.2 step 4 / RFC 7519 §7.2 step 4: a header or claims set with duplicate
    # member names is rejected, since two parsers could otherwise disagree about what it
    # says; and nesting is bounded, so a claim 1,000 arrays deep is a refusal, not a 500.
    value = boundedjson.loads(_b64decode(segment), max_bytes=_MAX_SEGMENT, unique_members=True)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _invalid(detail: str, reason: str) -> InvalidToken:
    return InvalidToken(detail, reason=reason)


def _compile(issuer: IssuerSettings, provider: KeySetProvider | None) -> _Trust:
    algorithms = frozenset(issuer.algorithms)
    secret = issuer.hmac_secret
    # RFC 8725 §3.1: HMAC only with a secret the operator gave for exactly this issuer; the
    # config schema already says so, and a verifier built around it must not trust that.
    if secret is None and algorithms & HMAC_ALGORITHMS:
        raise ValueError(f"issuer {issuer.key!r} lists HS* algorithms without an hmac_secret")
    hmac_key = None
    if secret is not None:
        hmac_key = get_default_algorithms()["HS256"].prepare_key(secret)
    if provider is None and algorithms - HMAC_ALGORITHMS:
        raise ValueError(f"issuer {issuer.key!r} accepts public-key algorithms but has no keys")
    return _Trust(
        key=issuer.key,
        issuer=issuer.issuer,
        algorithms=algorithms,
        hmac_key=hmac_key,
        audiences=frozenset(issuer.audiences),
        leeway=issuer.leeway,
        required_claims=tuple(issuer.required_claims),
        require_at_jwt=issuer.require_at_jwt,
        scope_claims=tuple(issuer.scope_claims),
        provider=provider,
    )


def _check_header(header: dict[str, Any], trust: _Trust) -> None:
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise _invalid("The token header names no signing algorithm.", "malformed")
    # RFC 8725 §3.1: libraries "MUST enable the caller to specify a supported set of algorithms
    # and MUST NOT use any other algorithms"; "none" is never in that set.
    if alg.lower() == "none":
        raise _invalid("Unsigned tokens are not accepted.", "bad_algorithm")
    if alg not in trust.algorithms:
        raise _invalid("The token's signing algorithm is not accepted for its issuer.",
                       "bad_algorithm")  # fmt: skip
    # RFC 7515 §4.1.11: if any listed extension "is not understood and supported by the
    # recipient, then the JWS is invalid"; we support none.
    if "crit" in header:
        raise _invalid("The token header lists critical extensions this gateway does not "
                       "support.", "malformed")  # fmt: skip
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _invalid("The token header's key id is not a string.", "malformed")
    # RFC 9068 §4: the resource server "MUST verify that the "typ" header value is "at+jwt" or
    # "application/at+jwt" and reject tokens carrying any other value".
    if trust.require_at_jwt:
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _AT_JWT_TYPES:
            raise _invalid('The token is not typed as an access token ("at+jwt").', "bad_type")


class JwtVerifier:
    """Validates JWT access tokens of the configured issuers against their key sets."""

    def __init__(
        self,
        issuers: Sequence[IssuerSettings],
        providers: Mapping[str, KeySetProvider],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        by_iss: dict[str, _Trust] = {}
        for issuer in issuers:
            if issuer.issuer in by_iss:
                raise ValueError(f"two issuers share the issuer identifier {issuer.issuer!r}")
            by_iss[issuer.issuer] = _compile(issuer, providers.get(issuer.key))
        self._by_iss = by_iss
        self._by_key = {trust.key: trust for trust in by_iss.values()}
        self._algorithms: Mapping[str, Algorithm] = get_default_algorithms()
        self._clock = clock

    def parse(self, token: str) -> ParsedJwt:
        if _COMPACT.fullmatch(token) is None:
            raise NotMine("The token is not a signed JWT (JWS compact serialization).",
                          reason="malformed")  # fmt: skip
        raw = token.encode("ascii")
        first = raw.index(b".")
        last = raw.rindex(b".")
        try:
            header = _json_object(raw[:first])
            payload = _json_object(raw[first + 1 : last])
            signature = _b64decode(raw[last + 1 :])
        except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are too
            raise NotMine("The token's header or claims are not valid base64url JSON objects.",
                          reason="malformed") from None  # fmt: skip
        iss = payload.get("iss")
        trust = self._by_iss.get(iss) if type(iss) is str else None
        if trust is None:
            raise NotMine("The token's issuer is not trusted here.", reason="bad_issuer")
        _check_header(header, trust)
        return ParsedJwt(header, payload, raw[:last], signature, trust.key)

    async def verify(self, token: str) -> Identity:
        try:
            parsed = self.parse(token)
        except NotMine as exc:
            raise _invalid(exc.detail, exc.reason) from None
        return await self.verify_parsed(parsed)

    async def verify_parsed(self, parsed: ParsedJwt) -> Identity:
        """The rest of ``verify``, for callers (``auto`` mode) that already hold ``parse``'s
        result and must not parse the token twice."""
        trust = self._by_key[parsed.issuer_key]
        alg: str = parsed.header["alg"]
        if alg in HMAC_ALGORITHMS:
            key: Any = trust.hmac_key
        else:
            key = await self._public_key(trust, parsed.header.get("kid"), alg)
        if not self._algorithms[alg].verify(parsed.signing_input, key, parsed.signature):
            raise _invalid("The token's signature is not valid.", "bad_signature")
        return self._identity(trust, parsed.payload)

    @staticmethod
    async def _public_key(trust: _Trust, kid: str | None, alg: str) -> Any:
        provider = trust.provider
        assert provider is not None  # _compile: every public-key issuer has a provider
        found = provider.find(kid, alg)
        if found is None:
            # A new kid usually means the issuer rotated keys; the provider rate-limits this.
            await provider.refetch_for_unknown_kid()
            found = provider.find(kid, alg)
        if found is not None:
            return found.key
        if not provider.ready:
            raise ServiceUnavailable("The token issuer's signing keys are not available yet.",
                                     reason="keys_unavailable")  # fmt: skip
        raise _invalid("The token is signed with a key this gateway does not know.",
                       "unknown_key")  # fmt: skip

    def _identity(self, trust: _Trust, payload: dict[str, Any]) -> Identity:
        registered = read_registered(payload, trust.scope_claims)
        check_required(payload, trust.required_claims)
        check_times(registered, self._clock(), trust.leeway)
        # RFC 7519 §4.1.3: "If the principal processing the claim does not identify itself with
        # a value in the "aud" claim when this claim is present, then the JWT MUST be
        # rejected"; RFC 9068 §4 makes the audience check mandatory for access tokens.
        if trust.audiences.isdisjoint(registered.audiences):
            raise _invalid("The token is not meant for this audience.", "bad_audience")
        return Identity(
            issuer=trust.issuer,
            subject=registered.subject,
            client_id=registered.client_id,
            scopes=registered.scopes,
            audiences=registered.audiences,
            expires_at=registered.expires_at,
            token_kind="jwt",  # noqa: S106 - a kind, not a password
            claims=MappingProxyType(payload),
        )
