"""Per-call cost of the identity-token signer and the rate limiter, in microseconds.

    .venv/bin/python tests/bench/micro_auth.py [--rounds 5]

In-process and single-threaded, so the figures are CPU per call on this machine: a signed-
token cache hit, a signing per algorithm (cache off), and a check of a route with two
limits (per client and per route), with and without RateLimit fields, alone and with a
cluster sync attached (pending counts kept). Each figure is the best of ``--rounds`` runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's packages come first
    sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402

from gateway.auth.identity import Identity  # noqa: E402
from gateway.auth.identity_token import (  # noqa: E402
    IdentityTokenRoute,
    IdentityTokenSigner,
    SigningSettings,
)
from gateway.auth.ratelimit_keys import RouteLimits  # noqa: E402
from gateway.auth.ratelimiter import RateLimiter  # noqa: E402
from gateway.compiler.identity_token import compile_route_token, compile_signing  # noqa: E402
from gateway.compiler.ratelimit import compile_route_limits  # noqa: E402
from gateway.config.models.identity_token import RouteIdentityToken, TokenSigning  # noqa: E402
from gateway.config.models.ratelimit import RouteRateLimits  # noqa: E402

IDENTITY = Identity(
    issuer="https://as.example/", subject="alice", client_id="web-app",
    scopes=frozenset({"orders:read"}), audiences=("api://orders",),
    expires_at=time.time() + 3600, token_kind="jwt", claims={"email": "alice@example.com"},
)  # fmt: skip
CLIENT_IP = "192.0.2.1"
NO_HEADERS: dict[str, str] = {}
KEYS = {
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
    "RS256": lambda: rsa.generate_private_key(65537, 2048),
}


def best_us(call: Callable[[], object], count: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for _ in range(count):
            call()
        best = min(best, (time.perf_counter_ns() - started) / count / 1000)
    return best


def signing_settings(alg: str, directory: Path, entries: int) -> SigningSettings:
    path = directory / f"{alg}.pem"
    path.write_bytes(KEYS[alg]().private_bytes(serialization.Encoding.PEM,
                     serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    section = TokenSigning(issuer="https://gateway.example/", keys=[{"file": path}],
                           cache={"max_entries": entries})  # fmt: skip
    return compile_signing(section)


def identity_tokens(rounds: int) -> list[tuple[str, float]]:
    results = []
    with tempfile.TemporaryDirectory() as directory:
        for alg in KEYS:
            for entries, label in ((10_000, "cache hit"), (0, "signing")):
                settings = signing_settings(alg, Path(directory), entries)
                signer = IdentityTokenSigner.from_settings(settings)
                route = compile_route_token(
                    RouteIdentityToken(claims={"email": "{email}"}), upstream="orders",
                    forward_authorization=False, signing=settings,
                )  # fmt: skip
                assert route is not None

                def call(s: IdentityTokenSigner = signer, r: IdentityTokenRoute = route) -> object:
                    return s.header(IDENTITY, r, method="GET", uri="http://orders/v1/42")

                count = 20_000 if entries else (200 if alg == "RS256" else 2_000)
                results.append((f"identity token, {alg}, {label}", best_us(call, count, rounds)))
    return results


def rate_limits(rounds: int) -> list[tuple[str, float]]:
    results = []
    for headers in (False, True):
        for shared in (False, True):
            section = RouteRateLimits(headers=headers, limits=[
                {"name": "per-client", "key": ["client_id"], "limit": 10**9, "window": 1},
                {"name": "route", "limit": 10**9, "window": 60},
            ])  # fmt: skip
            route = compile_route_limits(section, route="orders")
            assert route is not None
            limiter = RateLimiter(shared=shared)

            def call(lim: RateLimiter = limiter, r: RouteLimits = route) -> object:
                return lim.check(r, IDENTITY, CLIENT_IP, NO_HEADERS)

            label = "two limits" + (", fields" if headers else "") + (", synced" if shared else "")
            results.append((label, best_us(call, 100_000, rounds)))
            limiter.take_batch(10**6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    for label, micros in identity_tokens(rounds) + rate_limits(rounds):
        print(f"{label:40s} {micros:9.2f} µs")


if __name__ == "__main__":
    main()
