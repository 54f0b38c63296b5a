"""The token_signing, rate_limiting, identity_token and rate_limits sections in a whole config
file: where they go, their defaults, and the errors an operator sees (file, line, key)."""

from __future__ import annotations

import pytest

from gateway.config.errors import ConfigError
from gateway.config.loader import load_config_text

BASE = """\
upstreams:
  orders: {url: "http://127.0.0.1:9000"}
issuers:
  - {issuer: "https://as.example/", audiences: [api://orders]}
"""

FULL = (
    BASE
    + """\
token_signing:
  issuer: "https://gateway.example/"
  keys:
    - {file: /etc/gateway/id-2026.pem, kid: id-2026, active: true}
    - {file: /etc/gateway/id-2025.pub.pem}
  jwks: {max_age: 5m, on_proxy: true}
rate_limiting:
  redis: true
  sync_interval: 250ms
  expected_replicas: 3
defaults:
  identity_token: {claims: {email: "{email}"}}
  rate_limits:
    headers: true
    limits:
      - {name: per-client, key: [client_id], limit: 100, window: 1s}
      - {name: route, limit: 10000, window: 1m}
    anonymous:
      - {name: per-ip, key: [ip], limit: 20, window: 1s, burst: 40}
routes:
  - match: {path: "/orders/**"}
    upstream: orders
  - match: {path: "/health"}
    upstream: orders
    auth: anonymous
    identity_token: {enabled: false}
    rate_limits: {}
"""
)


def test_a_full_config_validates_with_every_section() -> None:
    config = load_config_text(FULL, "gw.yaml").config
    assert config.token_signing is not None
    assert config.token_signing.keys[0].active
    assert config.token_signing.jwks.max_age == 300
    assert config.rate_limiting.sync_interval == 0.25
    assert config.rate_limiting.expected_replicas == 3
    defaults = config.defaults
    assert defaults.identity_token is not None and defaults.identity_token.lifetime == 60
    assert defaults.rate_limits is not None
    assert [limit.name for limit in defaults.rate_limits.limits] == ["per-client", "route"]
    assert defaults.rate_limits.anonymous[0].burst == 40
    health = config.routes[1]
    assert health.identity_token is not None and not health.identity_token.enabled
    assert health.rate_limits is not None and health.rate_limits.limits == []
    assert config.routes[0].identity_token is None  # inherits the defaults' section


def test_without_the_sections_nothing_changes() -> None:
    config = load_config_text(BASE + "routes:\n  - upstream: orders\n").config
    assert config.token_signing is None
    assert config.rate_limiting.redis is False
    assert config.defaults.identity_token is None and config.defaults.rate_limits is None


@pytest.mark.parametrize(
    ("yaml", "expected"),
    [
        pytest.param(
            "token_signing: {issuer: 'ftp://x', keys: [{file: k.pem}]}\n",
            "gw.yaml:5: token_signing.issuer: expected an https:// URL",
            id="issuer-not-https",
        ),
        pytest.param(
            "token_signing: {issuer: 'https://g/', keys: []}\n",
            "gw.yaml:5: token_signing.keys",
            id="no-keys",
        ),
        pytest.param(
            "defaults: {identity_token: {lifetime: 2h}}\n",
            "gw.yaml:5: defaults.identity_token.lifetime",
            id="lifetime-over-an-hour",
        ),
        pytest.param(
            "defaults: {rate_limits: {limits: [{name: a, limit: 5, window: 1.5s}]}}\n",
            "gw.yaml:5: defaults.rate_limits.limits[0].window: a window is a "
            "whole number of seconds",
            id="fractional-window",
        ),
        pytest.param(
            "rate_limiting: {when_redis_down: open}\n",
            "gw.yaml:5: rate_limiting.when_redis_down",
            id="no-fail-open-by-accident",
        ),
    ],
)
def test_errors_point_at_the_key(yaml: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(BASE + yaml + "routes:\n  - upstream: orders\n", "gw.yaml")
    assert str(caught.value).startswith(expected)
