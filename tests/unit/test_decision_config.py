"""The ``decision`` section: off unless present, refusals with file, line and key path."""

from __future__ import annotations

import pytest

from gateway.compiler import compile_config
from gateway.config.errors import ConfigError
from gateway.config.loader import load_config_text

BASE = """\
upstreams: {app: {url: "http://127.0.0.1:9000"}}
routes: [{match: {path: /}, upstream: app, auth: anonymous}]
"""


def compiled(extra: str):  # type: ignore[no-untyped-def]
    return compile_config(load_config_text(BASE + extra, "gw.yaml", {}))


def error(extra: str) -> str:
    with pytest.raises(ConfigError) as info:
        compiled(extra)
    return str(info.value)


def test_off_by_default() -> None:
    assert compiled("").decision is None


def test_defaults_refuse_everyone_and_cache_nothing() -> None:
    settings = compiled("decision: {}\n").decision
    assert settings is not None
    assert settings.trusted.empty
    assert settings.max_age == 0
    assert settings.envoy_path_prefix == "/envoy"


def test_a_full_section() -> None:
    settings = compiled(
        "decision:\n"
        "  listen: {host: 0.0.0.0, port: 9902}\n"
        "  grpc: {port: 9903}\n"
        "  trusted_proxies: [10.0.0.0/8, '::1']\n"
        "  envoy_path_prefix: /ext-authz/check\n"
        "  cache: {max_age: 1m}\n"
    ).decision
    assert settings is not None
    assert settings.trusted.is_trusted("10.1.2.3") and settings.trusted.is_trusted("::1")
    assert not settings.trusted.is_trusted("192.0.2.1")
    assert settings.max_age == 60.0
    assert settings.envoy_path_prefix == "/ext-authz/check"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("decision: {trusted_proxies: [nope]}\n", "'nope' is not an IP address or CIDR"),
        ("decision: {trusted_proxies: [10.0.0.1/8]}\n", "decision.trusted_proxies"),
        ("decision: {envoy_path_prefix: envoy}\n", "a path such as /envoy"),
        ("decision: {envoy_path_prefix: /envoy/}\n", "a path such as /envoy"),
        ("decision: {envoy_path_prefix: /nginx}\n", "another host proxy's endpoint"),
        ("decision: {listen: {port: 70000}}\n", "decision.listen.port"),
        ("decision: {cache: {max_age: -1}}\n", "decision.cache.max_age"),
        ("decision: {trusted: []}\n", "unknown key 'trusted'"),
    ],
)
def test_refusals(extra: str, expected: str) -> None:
    message = error(extra)
    assert expected in message
    assert message.startswith("gw.yaml:3:")


def test_grpc_without_its_packages_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.decision.settings as settings

    monkeypatch.setattr(settings, "_grpc_installed", lambda: False)
    assert "pip install 'oauth-gateway[envoy]'" in error("decision: {grpc: {}}\n")
