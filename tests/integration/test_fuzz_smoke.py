"""Fuzz targets, briefly (RFC 7515 §5.2 / RFC 7519 §7.2 token parsing; config loading).

Each atheris target runs for ``FUZZ_SECONDS`` (default 15) from a small seed corpus, both at
once, so the default test run proves the harnesses work and finds shallow crashes; longer runs
are described in tests/fuzz/README.md. Without atheris the smoke runs are skipped, unless the
``CI`` environment variable is set: CI installs the dev extra, so a missing atheris there is a
failure, not a skip.

Inputs that crashed a target are kept below as regression cases; they call the harnesses'
check functions in-process and need no atheris.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ_DIR = ROOT / "tests" / "fuzz"
FUZZ_SECONDS = int(os.environ.get("FUZZ_SECONDS", "15"))
_DONE = re.compile(r"Done (\d+) runs")


def _harness(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", FUZZ_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _token_seeds() -> dict[str, bytes]:
    hmac_claims = {"iss": "https://hmac.example", "aud": "api://fuzz", "exp": 4_000_000_000,
                   "nbf": 0, "iat": 1, "sub": "s", "scope": "a b"}  # fmt: skip
    keys_claims = hmac_claims | {"iss": "https://keys.example", "aud": ["api://fuzz", "x"]}
    return {
        "hmac": b"S"
        + json.dumps({"alg": "HS256"}).encode()
        + b"\n"
        + json.dumps(hmac_claims).encode(),
        "es256": b"K"
        + json.dumps({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}).encode()
        + b"\n"
        + json.dumps(keys_claims).encode(),
        "raw": b"eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJodHRwczovL2htYWMuZXhhbXBsZSJ9.c2ln",
    }


def _config_seeds() -> dict[str, bytes]:
    files = [ROOT / "config" / "gateway.example.yaml", ROOT / "tests" / "unit" / "configs" /
             "full.yaml", ROOT / "gateway" / "defaults" / "demo.yaml"]  # fmt: skip
    return {path.name: path.read_bytes() for path in files if path.exists()}


# --- smoke runs ------------------------------------------------------------------------------


def _require_atheris() -> None:
    if importlib.util.find_spec("atheris") is not None:
        return
    if os.environ.get("CI"):
        pytest.fail("atheris is not installed but CI is set: install the dev extra")
    pytest.skip("atheris is not installed (pip install atheris) and CI is not set")


@pytest.fixture(scope="module")
def fuzz_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen]]:
    """Both targets start together, so the smoke costs one FUZZ_SECONDS, not two."""
    _require_atheris()
    runs: dict[str, subprocess.Popen] = {}
    for target, seeds in (("fuzz_token_parser", _token_seeds()),
                          ("fuzz_config_loader", _config_seeds())):  # fmt: skip
        work = tmp_path_factory.mktemp(target)
        corpus = work / "corpus"
        corpus.mkdir()
        for name, data in seeds.items():
            (corpus / name).write_bytes(data)
        command = [sys.executable, str(FUZZ_DIR / f"{target}.py"), str(corpus),
                   f"-max_total_time={FUZZ_SECONDS}", "-seed=1", "-timeout=10",
                   "-rss_limit_mb=2048", f"-artifact_prefix={work}/"]  # fmt: skip
        runs[target] = subprocess.Popen(
            command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    yield runs
    for process in runs.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("target", ["fuzz_token_parser", "fuzz_config_loader"])
def test_fuzz_target_runs_without_crashing(
    fuzz_runs: dict[str, subprocess.Popen], target: str
) -> None:
    process = fuzz_runs[target]
    output, _ = process.communicate(timeout=FUZZ_SECONDS + 90)
    tail = "\n".join(output.splitlines()[-40:])
    assert process.returncode == 0, f"{target} found a crash:\n{tail}"
    done = _DONE.search(output)
    assert done is not None and int(done.group(1)) > 100, f"{target} barely ran:\n{tail}"


# --- regression inputs (no atheris needed) ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(_token_seeds()))
def test_token_seeds_pass_the_harness(name: str) -> None:
    _harness("fuzz_token_parser").check_token(_token_seeds()[name])


@pytest.mark.parametrize("name", sorted(_config_seeds()))
def test_config_seeds_pass_the_harness(name: str) -> None:
    _harness("fuzz_config_loader").check_config(_config_seeds()[name])


def test_token_regression_exp_beyond_float_range() -> None:
    """Found by the property tests: OverflowError from float(exp) (fixed in jwt._number)."""
    claims = b'{"iss":"https://hmac.example","aud":"api://fuzz","exp":1' + b"0" * 400 + b"}"
    _harness("fuzz_token_parser").check_token(b'S{"alg":"HS256"}\n' + claims)


MINIMAL = "defaults: {auth: anonymous}\nupstreams: {a: {url: 'http://127.0.0.1:9'}}\n"
ROUTE = "routes: [{upstream: a}]\n"

CONFIG_CRASHERS = [
    pytest.param(MINIMAL + ROUTE + "limits: {max_headers: 1" + "0" * 5000 + "}\n",
                 id="int-over-4300-digits-valueerror"),
    pytest.param(MINIMAL + ROUTE + "limits: {keepalive_timeout: 1" + "0" * 400 + "}\n",
                 id="duration-int-beyond-float-overflowerror"),
]  # fmt: skip


@pytest.mark.parametrize("text", CONFIG_CRASHERS)
def test_config_regression_numbers_out_of_range(text: str) -> None:
    _harness("fuzz_config_loader").check_config(text.encode())


# Configs `gateway check` calls valid but `gateway run` (and a SIGHUP reload) refuses with a
# bare ValueError/FileNotFoundError, without file, line or key path.
CHECK_PASSES_RUN_FAILS = [
    pytest.param(MINIMAL + ROUTE + "forwarding: {via: 'a b'}\n", id="via-not-a-token"),
    pytest.param(MINIMAL + ROUTE + "forwarding: {request_id_header: Host}\n",
                 id="request-id-header-reserved"),
    pytest.param(MINIMAL + ROUTE + "issuers: [{issuer: 'https://i', audiences: [a], "
                 "keys: {jwks: {keys: 1}}}]\n", id="inline-jwks-not-a-key-set"),
    pytest.param(MINIMAL + ROUTE + "issuers: [{issuer: 'https://i', audiences: [a], "
                 "keys: {file: /nonexistent/jwks.json}}]\n", id="jwks-file-missing"),
]  # fmt: skip


@pytest.mark.parametrize("text", CHECK_PASSES_RUN_FAILS)
def test_check_refuses_what_run_refuses(text: str) -> None:
    from gateway.config.errors import ConfigError

    harness = _harness("fuzz_config_loader")
    with pytest.raises(ConfigError):
        harness.describe_routes(harness.load_config_text(text, env={}))
