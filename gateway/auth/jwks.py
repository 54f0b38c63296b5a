"""RFC 7517 §4-5 JWK Sets, RFC 7518 §3 key/algorithm pairing, RFC 8725 §3.1: issuer key sets.

A ``KeySet`` turns a JWK Set into prepared ``cryptography`` public keys once, when it loads,
each bound to the only algorithms its key type and curve can honestly serve, so the request
path does a dictionary lookup and a signature check and nothing else. A ``KeySetProvider``
keeps one issuer's set fresh: periodic refresh timed by Cache-Control, a rate-limited
single-flight refetch when a token names a key we do not have, and the last good set kept
whenever a fetch fails. Symmetric (``oct``) keys from a JWK Set are never used: HMAC keys
come only from an issuer's configured ``hmac_secret``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import ssl as ssl_module
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.exceptions import PyJWTError

from gateway.auth.breaker import Breaker
from gateway.auth.discovery import DiscoveryError, FetchError, check_url_allowed, fetch_json
from gateway.auth.discovery import fetch_metadata as discover
from gateway.auth.settings import IssuerSettings, KeyRefreshSettings

log = logging.getLogger(__name__)

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
# RFC 7518 §3.4 and RFC 8037 §3.1: an EC or OKP key serves exactly one curve's algorithm.
_CURVE_ALGORITHMS: Mapping[tuple[str, str], str] = {
    ("EC", "P-256"): "ES256",
    ("EC", "P-384"): "ES384",
    ("EC", "P-521"): "ES512",
    ("OKP", "Ed25519"): "EdDSA",
    ("OKP", "Ed448"): "EdDSA",
}
# Only public members reach PyJWK, so a JWK Set that leaks private parts still yields
# verification-only keys.
_PUBLIC_MEMBERS = {"RSA": ("kty", "n", "e"), "EC": ("kty", "crv", "x", "y"),
                   "OKP": ("kty", "crv", "x")}  # fmt: skip
MIN_RSA_BITS = 2048
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


@dataclass(frozen=True)
class VerificationKey:
    kid: str | None
    family: str
    algorithms: frozenset[str]
    key: Any


def _usable(jwk: Any) -> VerificationKey | str:
    """The prepared key, or why it cannot verify JWS signatures for us."""
    if not isinstance(jwk, dict):
        return "not a JSON object"
    kty, crv, kid, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("kid"), jwk.get("alg")
    if not isinstance(kty, str) or any(
        v is not None and not isinstance(v, str) for v in (crv, kid, alg)
    ):
        return "kty is missing, or kty, crv, kid or alg is not a string"
    # RFC 7517 §4.2/§4.3: "use" and "key_ops" restrict what a key is for.
    if jwk.get("use", "sig") != "sig":
        return "use is not sig"
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return "key_ops lacks verify"
    if kty == "RSA":
        algorithms = RSA_ALGORITHMS
    elif isinstance(crv, str) and (curve_alg := _CURVE_ALGORITHMS.get((kty, crv))) is not None:
        algorithms = frozenset({curve_alg})
    else:
        return f"unsupported key type {kty!r}"
    # RFC 7517 §4.4: when "alg" is present, the key is intended for that algorithm only.
    if alg is not None:
        if alg not in algorithms:
            return f"alg {alg!r} does not fit kty {kty!r}"
        algorithms = frozenset({alg})
    public = {name: jwk[name] for name in _PUBLIC_MEMBERS[kty] if name in jwk}
    try:
        # Every algorithm of a family reads a JWK into the same key object.
        key = jwt.PyJWK(public, algorithm=min(algorithms)).key
    except (PyJWTError, ValueError, TypeError) as exc:
        return f"unreadable key ({exc})"
    # RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used with these algorithms."
    if isinstance(key, RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return f"RSA key of {key.key_size} bits"
    return VerificationKey(kid=kid, family=kty, algorithms=algorithms, key=key)


class KeySet:
    """An immutable, indexed set of verification keys."""

    __slots__ = ("_by_kid", "_sole", "keys")

    def __init__(self, keys: Sequence[VerificationKey]) -> None:
        self.keys = tuple(keys)
        by_kid: dict[tuple[str, str], VerificationKey] = {}
        by_alg: dict[str, list[VerificationKey]] = {}
        for key in self.keys:
            for alg in key.algorithms:
                if key.kid is not None:
                    by_kid.setdefault((key.kid, alg), key)
                by_alg.setdefault(alg, []).append(key)
        self._by_kid = by_kid
        # Without a kid a token may use a key only when nothing else could be meant.
        self._sole = {alg: found[0] for alg, found in by_alg.items() if len(found) == 1}

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any]) -> KeySet:
        if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
            raise ValueError('not a JWK Set: expected an object with a "keys" array')
        keys: list[VerificationKey] = []
        skipped: list[str] = []
        for index, jwk in enumerate(jwks["keys"]):
            result = _usable(jwk)
            if isinstance(result, VerificationKey):
                keys.append(result)
            else:
                kid = jwk.get("kid") if isinstance(jwk, dict) else None
                skipped.append(f"#{index} kid={kid!r}: {result}")
        if skipped:
            log.info("JWK Set: %d key(s) skipped: %s", len(skipped), "; ".join(skipped))
        return cls(keys)

    def find(self, kid: str | None, alg: str) -> VerificationKey | None:
        if kid is None:
            return self._sole.get(alg)
        return self._by_kid.get((kid, alg))


def refresh_delay(cache_control: str | None, refresh: KeyRefreshSettings) -> float:
    """Seconds until the next refresh: the server's max-age, held within the configured bounds
    so a server can neither make us poll hot nor keep a rotated-out key alive for days."""
    match = _MAX_AGE.search(cache_control) if cache_control else None
    if match is None:
        return refresh.default
    return min(max(float(match.group(1)), refresh.min), refresh.max)


def _ssl_for(issuer: IssuerSettings, given: ssl_module.SSLContext | bool | None) -> Any:
    if given is not None or issuer.http.ca_file is None:
        return given
    return ssl_module.create_default_context(cafile=str(issuer.http.ca_file))


class KeySetProvider:
    """One issuer's keys: loaded at start, refreshed in the background, refetched on demand."""

    def __init__(
        self,
        issuer: IssuerSettings,
        session: aiohttp.ClientSession,
        *,
        ssl: ssl_module.SSLContext | bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuer = issuer
        self._session = session
        self._ssl = _ssl_for(issuer, ssl)
        self._clock = clock
        self._static = issuer.keys.file is not None or issuer.keys.jwks is not None
        self._jwks_uri: str | None = issuer.keys.jwks_uri
        self._keys: KeySet | None = None
        self._metadata: dict[str, Any] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._refetch_task: asyncio.Task[bool] | None = None
        self._last_refetch = -math.inf
        self.fetch_count = 0
        self.breaker = Breaker(issuer.http.breaker)

    @property
    def ready(self) -> bool:
        return self._keys is not None

    @property
    def metadata(self) -> dict[str, Any] | None:
        return self._metadata

    def find(self, kid: str | None, alg: str) -> VerificationKey | None:
        keys = self._keys
        return None if keys is None else keys.find(kid, alg)

    def inherit(self, previous: KeySetProvider) -> None:
        """On reload: start from the running config's keys for the same issuer if this
        provider could not fetch its own, so a key server that is down at reload time does
        not take verification down with it. Its own refresh keeps trying meanwhile."""
        if self._keys is None and previous._keys is not None and previous._issuer == self._issuer:
            self._keys = previous._keys
            self._metadata = self._metadata or previous._metadata
            self._jwks_uri = self._jwks_uri or previous._jwks_uri

    async def start(self) -> None:
        """Static keys must load (a bad file is a config error); fetched keys may come later."""
        if self._static:
            self._keys = KeySet.from_jwks(await self._static_document())
            return
        delay = await self._attempt()
        self._refresh_task = asyncio.create_task(
            self._refresh_loop(delay), name=f"jwks-refresh:{self._issuer.key}"
        )

    async def close(self) -> None:
        tasks = [t for t in (self._refresh_task, self._refetch_task) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._refresh_task = self._refetch_task = None

    async def refetch_for_unknown_kid(self) -> bool:
        """Unknown kids are attacker-controlled, so the issuer sees at most one fetch per
        interval however many tokens name them; callers in a burst share that one fetch."""
        if self._static:
            return False
        task = self._refetch_task
        if task is None:
            now = self._clock()
            if now - self._last_refetch < self._issuer.refresh.unknown_kid_interval:
                return False
            if not self.breaker.allow():  # the key server keeps failing: do not wait on it
                return False
            self._last_refetch = now
            task = self._refetch_task = asyncio.create_task(
                self._refetch(), name=f"jwks-refetch:{self._issuer.key}"
            )
            task.add_done_callback(self._refetch_done)
        # Shielded: one departing client must not cancel the fetch the others wait on.
        return await asyncio.shield(task)

    def _refetch_done(self, task: asyncio.Task[bool]) -> None:
        if self._refetch_task is task:
            self._refetch_task = None

    async def _refetch(self) -> bool:
        return await self._attempt() is not None

    async def _refresh_loop(self, delay: float | None) -> None:
        while True:
            await asyncio.sleep(self._issuer.refresh.retry if delay is None else delay)
            delay = await self._attempt()

    async def _attempt(self) -> float | None:
        """One fetch: the delay until the next refresh, or None when it failed. Failures are
        logged, never raised, so the background work outlives any issuer outage."""
        try:
            delay = await self._fetch()
        except (FetchError, DiscoveryError, ValueError) as exc:
            state = "keeping the last good key set" if self.ready else "no key set loaded yet"
            log.warning("issuer %s: key set fetch failed (%s); %s", self._issuer.key, exc, state)
        except Exception:
            log.exception("issuer %s: unexpected error while fetching keys", self._issuer.key)
        else:
            self.breaker.succeeded()
            return delay
        self.breaker.failed()
        return None

    async def _fetch(self) -> float:
        """Fetch and install a key set; returns the delay until the next refresh."""
        http = self._issuer.http
        if self._jwks_uri is None:
            self._metadata = await discover(
                self._session, self._issuer.issuer, timeout=http.timeout, ssl=self._ssl,
                allow_http=http.insecure_http,
            )  # fmt: skip
            uri = self._metadata.get("jwks_uri")
            if not isinstance(uri, str):
                raise DiscoveryError("the issuer's metadata has no jwks_uri")
            check_url_allowed(uri, http.insecure_http)
            self._jwks_uri = uri
        self.fetch_count += 1
        document, cache_control = await fetch_json(
            self._session, self._jwks_uri, timeout=http.timeout, ssl=self._ssl,
            allow_http=http.insecure_http,
        )  # fmt: skip
        keys = KeySet.from_jwks(document)
        self._keys = keys
        log.info("issuer %s: loaded %d key(s)", self._issuer.key, len(keys.keys))
        return refresh_delay(cache_control, self._issuer.refresh)

    async def _static_document(self) -> Mapping[str, Any]:
        if self._issuer.keys.jwks is not None:
            return self._issuer.keys.jwks
        path = self._issuer.keys.file
        assert path is not None
        document = json.loads(await asyncio.to_thread(path.read_bytes))
        if not isinstance(document, dict):
            raise ValueError(f"{path}: a JWK Set is a JSON object")
        return document
