"""CPU cost of validating one DPoP proof (RFC 9449 §4.3), by algorithm, with timeit.

    .venv/bin/python tests/bench/dpop_proof.py [--number 2000]

Each figure is the best of five runs of ``--number`` validations of one fresh-looking
proof (same proof: the replay store is not part of this), next to the bare signature
check of the same algorithm, so the gap is what the gateway adds around the crypto.
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.auth.dpop import DpopPolicy, validate_proof
from gateway.auth.thumbprints import b64url_decode
from tests.support.dpop import ALGORITHMS, client_key, proof

URI = "https://api.example.com/orders/42"
TOKEN = "t" * 600  # about the size of a JWT access token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=2000)
    number = parser.parse_args().number
    policy = DpopPolicy(algorithms=("ES256", "EdDSA", "PS256", "RS256"))
    print(f"{'alg':6} {'validate_proof':>15} {'signature only':>15}")
    for alg in policy.algorithms:
        key = client_key(alg)
        signed = proof(key, htu=URI, token=TOKEN, iat=time.time() + 3)
        now = time.time()

        def validate(signed: str = signed, jkt: str = key.jkt, now: float = now) -> None:
            validate_proof([signed], method="GET", uri=URI, access_token=TOKEN,
                           bound_jkt=jkt, policy=policy, now=now)  # fmt: skip

        signing_input, _, signature = signed.rpartition(".")
        message = signing_input.encode()
        public = ALGORITHMS[alg].from_jwk(key.jwk)
        raw = b64url_decode(signature)

        def verify(
            message: bytes = message, public: object = public, raw: bytes = raw, alg: str = alg
        ) -> None:
            ALGORITHMS[alg].verify(message, public, raw)

        full = min(timeit.repeat(validate, number=number, repeat=5)) / number * 1e6
        bare = min(timeit.repeat(verify, number=number, repeat=5)) / number * 1e6
        print(f"{alg:6} {full:12.1f} µs {bare:12.1f} µs")


if __name__ == "__main__":
    main()
