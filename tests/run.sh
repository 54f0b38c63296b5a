#!/usr/bin/env bash
# The project's one test command (README "Run the tests"; .ci/run calls it too).
# On a fresh machine it makes .venv, installs the gateway with its test extras, makes sure
# the third-party servers the tests start (Redis, its Sentinel and Cluster modes, nginx,
# Caddy) exist, then runs the linters, the type checker and the test suite. Extra arguments
# go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'

# Real third-party servers the tests start themselves on free loopback ports: redis-server
# (a single one unless REDIS_URL is set, and always a Sentinel set and a three-master
# Cluster, which need redis-cli from redis-tools; Sentinel is `redis-server --sentinel`),
# the host proxies of the forward-auth tests (nginx with auth_request, Caddy; Traefik
# comes from PyPI with the dev extras), and the browser of the login tests (Debian's
# headless Chromium, driven by Playwright from the dev extras; never `playwright install`).
# Missing ones are installed when root (one apt-get update); under CI their tests fail
# rather than skip.
in_ci=false
case "${CI:-}" in ""|0|false|no) ;; *) in_ci=true ;; esac
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v caddy >/dev/null 2>&1 || missing+=(caddy)
[ -x /usr/bin/chromium ] || missing+=(chromium chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: installing ${missing[*]} (the tests need the real servers)" >&2
    # Packages must not start their system services here (nginx would take port 80).
    guard=/usr/sbin/policy-rc.d
    own_guard=no
    if [ ! -e "$guard" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$guard" && chmod +x "$guard" && own_guard=yes
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    if [ "$own_guard" = yes ]; then rm -f "$guard"; fi
  elif $in_ci || { [ -z "${REDIS_URL:-}" ] && [[ " ${missing[*]} " == *" redis-server "* ]]; }; then
    echo "tests/run.sh: ${missing[*]} missing: apt-get install ${missing[*]}" >&2
    exit 1
  else
    echo "tests/run.sh: ${missing[*]} missing: their tests skip (and fail under CI)" >&2
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
