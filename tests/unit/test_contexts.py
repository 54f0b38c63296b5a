"""Validation contexts (gateway/auth/contexts.py): every rule that decides a token's answer
must separate cache entries, and the tag must be stable across replicas and releases
(a rolling deploy shares one Redis, RFC 7662 §4)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.contexts import Method, context_for
from gateway.auth.settings import (
    ClientCredentials,
    IntrospectionSettings,
    IssuerSettings,
    KeySourceSettings,
)


def _issuer(**changes: Any) -> IssuerSettings:
    base = IssuerSettings(
        key="idp",
        issuer="https://idp.test",
        audiences=("api",),
        introspection=IntrospectionSettings(client=ClientCredentials(client_id="gw")),
    )
    return replace(base, **changes)


def _keys(**changes: Any) -> KeySourceSettings:
    return replace(KeySourceSettings(), **changes)


# Pairs of configurations that must not share cache entries under local JWT validation.
def _local_pairs() -> list[tuple[IssuerSettings, IssuerSettings]]:
    return [
        (
            _issuer(keys=_keys(jwks_uri="https://idp.test/a")),
            _issuer(keys=_keys(jwks_uri="https://idp.test/b")),
        ),
        (_issuer(keys=_keys(file=Path("/k/a.json"))), _issuer(keys=_keys(file=Path("/k/b.json")))),
        (
            _issuer(keys=_keys(jwks={"keys": [{"kid": "a"}]})),
            _issuer(keys=_keys(jwks={"keys": []})),
        ),
        (_issuer(keys=_keys(discovery=True)), _issuer(keys=_keys(discovery=False))),
        (_issuer(hmac_secret="s1"), _issuer(hmac_secret="s2")),
        (_issuer(hmac_secret="s1"), _issuer(hmac_secret=None)),
        (_issuer(algorithms=("RS256",)), _issuer(algorithms=("ES256",))),
        (_issuer(required_claims=("exp",)), _issuer(required_claims=("exp", "jti"))),
        (_issuer(require_at_jwt=True), _issuer(require_at_jwt=False)),
    ]


@pytest.mark.parametrize("method", ["jwt", "jwt+introspection"])
def test_local_rules_separate_contexts(method: Method) -> None:
    for a, b in _local_pairs():
        assert context_for(a, method).tag != context_for(b, method).tag, (a, b)


def test_introspection_only_ignores_local_rules() -> None:
    for a, b in _local_pairs():
        assert context_for(a, "introspection").tag == context_for(b, "introspection").tag


def test_inline_jwks_key_order_does_not_split_contexts() -> None:
    a = _issuer(keys=_keys(jwks={"keys": [{"kid": "a", "kty": "oct"}], "x": 1}))
    b = _issuer(keys=_keys(jwks={"x": 1, "keys": [{"kty": "oct", "kid": "a"}]}))
    assert context_for(a, "jwt").tag == context_for(b, "jwt").tag


@pytest.mark.parametrize("method", ["jwt", "introspection", "jwt+introspection"])
def test_context_keeps_method(method: Method) -> None:
    ctx = context_for(_issuer(), method)
    assert ctx.method == method
    assert ctx.introspects is (method != "jwt")


# Golden tags: a replica of another release computes the same tag for the same config, so a
# rolling deploy keeps sharing entries; any change to the canonical rules must be deliberate.
@pytest.mark.parametrize(
    ("method", "keys", "secret", "tag"),
    [
        ("jwt", KeySourceSettings(discovery=True), None, "1d39fd7eaae814858abe9968"),
        ("jwt", KeySourceSettings(), None, "0817f5adcaa50e1faf13631f"),
        (
            "jwt+introspection",
            KeySourceSettings(jwks_uri="https://idp.test/j"),
            "s",
            "7a60d121d1c07775ab3bebf2",
        ),
        ("introspection", KeySourceSettings(), None, "0334e5a8c1323c9679047f6f"),
    ],
)
def test_golden_tags(method: Method, keys: KeySourceSettings, secret: str | None, tag: str) -> None:
    assert context_for(_issuer(keys=keys, hmac_secret=secret), method).tag_hex == tag
