#!/usr/bin/env bash
# The project's one test command (README "Run the tests"; .ci/run calls it too).
# On a fresh machine it makes .venv, installs the gateway with its test extras, makes sure
# redis-server and redis-cli exist (the tests start their own servers on free loopback
# ports), then runs the linters, the type checker and the test suite. Extra arguments go to
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'

# Real Redis servers: the tests start their own (a single one unless REDIS_URL is set, and
# always a Sentinel set and a three-master Cluster, which need redis-cli from redis-tools;
# Sentinel is `redis-server --sentinel`, so no redis-sentinel package is needed).
in_ci=false
case "${CI:-}" in ""|0|false|no) ;; *) in_ci=true ;; esac
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: installing ${missing[*]} (the tests need a real Redis)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  elif [ -z "${REDIS_URL:-}" ] || $in_ci; then
    echo "tests/run.sh: ${missing[*]} missing: apt-get install ${missing[*]}" >&2
    exit 1
  else
    echo "tests/run.sh: ${missing[*]} missing: the Sentinel and Cluster tests will be skipped" >&2
  fi
fi

# tests/e2e runs a real authorization server (oidc-provider) on Node; its conftest skips
# the suite where Node is missing, except under CI, where it fails.
if command -v npm >/dev/null 2>&1 && [ ! -d tests/e2e/node_modules/oidc-provider ]; then
  (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The type checker: strict on gateway/ (pyproject.toml [tool.mypy]); an error fails the run.
.venv/bin/mypy
exec .venv/bin/pytest "$@"
