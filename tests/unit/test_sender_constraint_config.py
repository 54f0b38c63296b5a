"""The proposed config shape for DPoP, client certificates and protected resources."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config.models.sender_constraint import (
    ClientCertificates,
    Dpop,
    DpopNonce,
    ProtectedResource,
)


def test_defaults_are_off_and_strict() -> None:
    dpop = Dpop()
    assert dpop.mode == "off" and dpop.algorithms == ["ES256", "PS256", "RS256", "EdDSA"]
    assert dpop.max_age == 60.0 and dpop.replay.on_redis_error == "fail_closed"
    assert ClientCertificates().source == "tls"


def test_durations_and_nested_sections_parse() -> None:
    dpop = Dpop.model_validate({
        "mode": "required", "external_url": "https://api.example.com/prefix",
        "max_age": "2m", "leeway": "2s", "nonce": {"secret": "x" * 32, "lifetime": "5m"},
        "replay": {"redis": True, "on_redis_error": "fail_open"},
    })  # fmt: skip
    assert dpop.max_age == 120.0 and dpop.nonce is not None and dpop.nonce.lifetime == 300.0


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (Dpop, {"mode": "required"}, "external_url"),
        (Dpop, {"algorithms": ["HS256"]}, "algorithms"),
        (Dpop, {"algorithms": ["none"]}, "algorithms"),
        (Dpop, {"algorithms": []}, "algorithms"),
        (Dpop, {"max_age": "1h"}, "max_age"),
        (Dpop, {"external_url": "https://h.example/?q"}, "query"),
        (Dpop, {"external_url": "/relative"}, "absolute"),
        (Dpop, {"mode": "sometimes"}, "mode"),
        (Dpop, {"unknown": 1}, "unknown"),
        (DpopNonce, {"secret": "short"}, "32 bytes"),
        (Dpop, {"replay": {"max_entries": 10, "max_entries_per_key": 11}}, "per_key"),
        (Dpop, {"replay": {"max_entries_per_key": 0}}, "max_entries_per_key"),
        (ClientCertificates, {"trusted_proxies": ["10.0.0.1/8"]}, "CIDR"),
        (ClientCertificates, {"header_format": "pem"}, "header_format"),
        (ProtectedResource, {"resource": "http://api.example.com"}, "https"),
        (ProtectedResource, {"resource": "https://api.example.com/#x"}, "fragment"),
        (ProtectedResource, {"resource": "https://a.example",
                             "resource_signing_alg_values_supported": ["none"]}, "none"),
        (ProtectedResource, {"resource": "https://a.example",
                             "bearer_methods_supported": ["cookie"]}, "bearer_methods"),
    ],
    ids=["dpop-without-origin", "hs256", "none", "no-algs", "max-age-too-long",
         "origin-with-query", "origin-relative", "bad-mode", "unknown-key", "short-secret",
         "share-over-store", "share-zero",
         "cidr-host-bits", "bad-header-format", "resource-http", "resource-fragment",
         "signing-none", "bearer-cookie"],
)  # fmt: skip
def test_invalid_config_is_refused(model: Any, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        model.model_validate(data)


def test_loopback_resource_may_use_http() -> None:
    assert ProtectedResource(resource="http://127.0.0.1:8080/mcp").resource.endswith("/mcp")


@pytest.mark.parametrize("model", [Dpop, ClientCertificates])
def test_an_unquoted_yaml_off_is_the_off_mode(model: Any) -> None:
    """YAML 1.1 (PyYAML) reads ``mode: off`` as false; the README and the example config
    write it unquoted, so false means "off" (and true, which names no mode, stays an
    error)."""
    import yaml

    assert model.model_validate(yaml.safe_load("mode: off")).mode == "off"
    with pytest.raises(ValidationError, match="mode"):
        model.model_validate(yaml.safe_load("mode: on"))


def test_the_replay_store_is_set_once_for_every_route() -> None:
    """RFC 9449 §11.1: a jti is unique per key whichever route it is sent to, so a route's
    own replay settings would be silently merged; they are an error instead."""
    from gateway.compiler import compile_config
    from gateway.config.errors import ConfigError
    from gateway.config.loader import load_config_text

    text = """\
upstreams: {app: {url: "http://127.0.0.1:9"}}
issuers: [{issuer: "https://as.example/", audiences: [api]}]
defaults:
  dpop: {replay: {max_entries: 5000}}
routes:
  - match: {path: /a}
    upstream: app
    dpop: {mode: required, external_url: "https://api.example"}
  - match: {path: /b}
    upstream: app
    dpop: {mode: required, external_url: "https://api.example", replay: {max_entries: 10}}
"""
    with pytest.raises(ConfigError) as info:
        compile_config(load_config_text(text, "gw.yaml", {}))
    assert str(info.value).startswith("gw.yaml:11: routes[1].dpop.replay: the replay store")
    shared = compile_config(load_config_text(text.replace(", replay: {max_entries: 10}", ""),
                                             "gw.yaml", {}))  # fmt: skip
    assert shared.dpop_replay is not None and shared.dpop_replay.max_entries == 5000
