"""The CPU cost of a browser session on the request path, in microseconds.

    .venv/bin/python tests/bench/session_cookie.py [--rounds N]

Measures, for a realistic session (a 1 KB JWT access token, a refresh token, a 1 KB ID token
and a few user claims; one cookie, and the same session chunked over three), the steps a
request pays: opening the session from its Cookie header (parse, reassemble, AES-GCM open,
decode, timeouts, revocation check), and sealing it again (a touch or a refresh). Compare
with a bearer JWT's signature check, measured the same way. Pure CPU, no sockets: run it
on an idle core for stable numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.auth.jwks import KeySet
from gateway.auth.sessions.cookies import CookiePolicy
from gateway.auth.sessions.jws import verify_compact
from gateway.auth.sessions.sealing import Sealer
from gateway.auth.sessions.store import CookieSessionStore, Lifetimes, MemoryRevocations
from tests.support.issuer import TestIssuer
from tests.support.sessions import Browser, make_session

OTHER_COOKIES = "_ga=GA1.2.1234567890.1700000000; theme=dark; consent=yes"


def timed(step: Callable[[], Any], rounds: int) -> float:
    """The median of five batches, in microseconds per call."""
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            step()
        samples.append((time.perf_counter() - started) / rounds * 1e6)
    return statistics.median(samples)


async def timed_async(step: Callable[[], Awaitable[Any]], rounds: int) -> float:
    """``timed`` for coroutines, awaited in one running loop (no per-call loop overhead)."""
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            await step()
        samples.append((time.perf_counter() - started) / rounds * 1e6)
    return statistics.median(samples)


def jwt_of(key: Any, now: float, padding: int) -> str:
    claims = {
        "iss": "https://as.example",
        "sub": "alice",
        "aud": "web-app",
        "exp": int(now) + 300,
        "iat": int(now),
        "scope": "openid email",
        "pad": secrets.token_urlsafe(padding),
    }
    return TestIssuer.sign({"alg": "RS256", "kid": "k"}, claims, alg="RS256", key=key)


async def measure(rounds: int) -> list[tuple[str, float]]:
    now = time.time()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": "k"}
    keys = KeySet.from_jwks({"keys": [jwk]})
    bearer = jwt_of(key, now, 600)
    rows = [
        (
            "bearer JWT (1 KB, RS256): signature check only",
            timed(lambda: verify_compact(bearer, keys, frozenset({"RS256"})), rounds // 5),
        )
    ]
    scenarios = [
        ("opaque tokens", "at-" + secrets.token_urlsafe(32), None, {}),
        ("1 KB JWT access and ID tokens", jwt_of(key, now, 600), jwt_of(key, now, 600), {}),
        ("JWTs and 40 groups", jwt_of(key, now, 600), jwt_of(key, now, 600),
         {"groups": [f"group-{i:04d}-" + "g" * 20 for i in range(40)]}),
    ]  # fmt: skip
    for label, access, id_token, extra in scenarios:
        store = CookieSessionStore(
            CookiePolicy("gw", secure=True),
            Sealer([b"k" * 32, b"o" * 32]),
            Lifetimes(idle=3600, absolute=43200),
            MemoryRevocations(),
        )
        session = make_session(now=now, access_token=access, id_token=id_token, claims=extra)
        browser = Browser()
        browser.receive(await store.create(session, None, now))
        header = [OTHER_COOKIES + "; " + browser.cookie_header()[0]]
        loaded = await store.load(header, now)
        assert loaded.session == session, loaded.problem
        size = sum(len(v) for v in browser.jar.values())
        shape = f"{len(browser.jar)} cookie(s), {size} B"
        rows.append(
            (
                f"session, {label} ({shape}): open from the Cookie header",
                await timed_async(lambda h=header, s=store: s.load(h, now), rounds),
            )
        )
        rows.append(
            (
                f"session, {label}: seal again and render Set-Cookie (touch/refresh)",
                await timed_async(lambda s=store, v=session, p=loaded: s.update(v, p, now), rounds),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5000)
    args = parser.parse_args()
    rows = asyncio.run(measure(args.rounds))
    print("| step | µs per request |\n|---|---|")
    for label, micros in rows:
        print(f"| {label} | {micros:.1f} |")


if __name__ == "__main__":
    main()
