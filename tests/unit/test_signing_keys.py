"""The gateway's own signing keys: PEM and JWK files, kids, the ring, the JWK Set, rotation,
and every way a key file can be unfit (each a clear ValueError, never a generated key)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm

from gateway.auth.signing_keys import KeyRing, KeySpec, load_key, thumbprint
from gateway.compiler.identity_token import compile_signing
from gateway.config.errors import SettingError
from gateway.config.models.identity_token import TokenSigning

RFC7638_KEY = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tS"
    "oc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR"
    "0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI"
    "4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}


def private_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_rfc7638_example_thumbprint() -> None:
    # RFC 7638 §3.1: the example key's thumbprint.
    assert thumbprint(RFC7638_KEY) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(
    ("make", "alg", "kty"),
    [
        pytest.param(ec_key, "ES256", "EC", id="p256-pem"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, "EdDSA", "OKP", id="ed25519-pem"),
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), "RS256", "RSA",
                     id="rsa2048-pem"),
    ],
)  # fmt: skip
def test_pem_private_keys_load_with_their_algorithm_and_thumbprint_kid(
    tmp_path: Path, make: Any, alg: str, kty: str
) -> None:
    key = load_key(KeySpec(write(tmp_path, "k.pem", private_pem(make()))))
    assert key.alg == alg
    assert key.can_sign
    assert key.kid == key.thumbprint == thumbprint(key.public_jwk)
    assert key.public_jwk["kty"] == kty
    assert key.public_jwk["alg"] == alg and key.public_jwk["use"] == "sig"
    assert not PRIVATE_MEMBERS & set(key.public_jwk)


def test_a_private_jwk_file_loads_with_its_kid(tmp_path: Path) -> None:
    private = ec_key()
    jwk = json.loads(ECAlgorithm.to_jwk(private)) | {"kid": "gw-2026", "alg": "ES256"}
    key = load_key(KeySpec(write(tmp_path, "k.json", json.dumps(jwk))))
    assert (key.kid, key.alg, key.can_sign) == ("gw-2026", "ES256", True)
    assert key.public_jwk["x"] == jwk["x"]
    assert "d" not in key.public_jwk


def test_a_configured_kid_names_a_pem_key(tmp_path: Path) -> None:
    key = load_key(KeySpec(write(tmp_path, "k.pem", private_pem(ec_key())), kid="primary"))
    assert key.kid == "primary"
    assert key.thumbprint != "primary"


def test_a_public_key_loads_publish_only(tmp_path: Path) -> None:
    key = load_key(KeySpec(write(tmp_path, "old.pub.pem", public_pem(ec_key()))))
    assert not key.can_sign
    assert key.alg == "ES256"


def encrypted_pem() -> bytes:
    return ec_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("content", "spec", "message"),
    [
        pytest.param(None, {}, "cannot read the key file", id="missing"),
        pytest.param(b"", {}, "is empty", id="empty"),
        pytest.param(b"hello", {}, "neither PEM nor a JSON JWK", id="garbage"),
        pytest.param(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", {},
                     "not a PEM private or public key", id="broken-pem"),
        pytest.param(encrypted_pem(), {}, "encrypted", id="encrypted-pem"),
        pytest.param(lambda: private_pem(rsa.generate_private_key(65537, 1024)), {},  # noqa: S505
                     "RSA key of 1024 bits", id="rsa-1024"),
        pytest.param(lambda: private_pem(ec.generate_private_key(ec.SECP384R1())), {},
                     "ES256 needs P-256", id="p384"),
        pytest.param(lambda: private_pem(ec_key()), {"alg": "RS256"},
                     "cannot sign RS256; it is a ES256 key", id="alg-mismatch"),
        pytest.param(b'{"keys": []}', {}, "holds a JWK Set", id="jwk-set"),
        pytest.param(b'{"kty": "oct", "k": "c2VjcmV0"}', {}, "unsupported JWK kty",
                     id="symmetric-jwk"),
        pytest.param(lambda: json.dumps(json.loads(ECAlgorithm.to_jwk(ec_key())) | {"use": "enc"}),
                     {}, "not 'sig'", id="encryption-jwk"),
        pytest.param(lambda: json.dumps(json.loads(ECAlgorithm.to_jwk(ec_key())) | {"kid": "a"}),
                     {"kid": "b"}, "differs from the config", id="kid-conflict"),
        pytest.param(b'{"kty": "EC", "kty": "RSA"}', {}, "duplicate member", id="duplicate"),
        pytest.param(b"x" * (65 * 1024), {}, "larger than", id="huge"),
    ],
)  # fmt: skip
def test_unfit_key_files_are_clear_errors(
    tmp_path: Path, content: Any, spec: dict[str, Any], message: str
) -> None:
    path = tmp_path / "key"
    if content is not None:
        data = content() if callable(content) else content
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    with pytest.raises(ValueError, match=message) as caught:
        load_key(KeySpec(path, **spec))
    assert str(path) in str(caught.value)


def test_the_first_key_signs_unless_another_is_active_and_all_are_published(
    tmp_path: Path,
) -> None:
    first = KeySpec(write(tmp_path, "a.pem", private_pem(ec_key())), kid="a")
    second = KeySpec(write(tmp_path, "b.pem", private_pem(ed25519.Ed25519PrivateKey.generate())),
                     kid="b")  # fmt: skip
    assert KeyRing.load([first, second]).active.kid == "a"
    ring = KeyRing.load([first, KeySpec(second.file, kid="b", active=True)])
    assert ring.active.kid == "b"
    document = ring.jwks(now=0)
    keys = json.loads(document.body)["keys"]
    assert sorted(k["kid"] for k in keys) == ["a", "b"]
    assert all(not PRIVATE_MEMBERS & set(k) for k in keys)
    assert document.cache_control == "public, max-age=300"
    assert document.content_type == "application/jwk-set+json"
    assert ring.jwks(now=1) is document  # serialised once


def test_ring_errors(tmp_path: Path) -> None:
    signer = write(tmp_path, "a.pem", private_pem(ec_key()))
    public = write(tmp_path, "p.pem", public_pem(ec_key()))
    with pytest.raises(ValueError, match="used by two keys"):
        KeyRing.load([KeySpec(signer, kid="x"), KeySpec(public, kid="x")])
    with pytest.raises(ValueError, match="more than one key is marked active"):
        KeyRing.load([KeySpec(signer, active=True), KeySpec(public, active=True)])
    with pytest.raises(ValueError, match=r"the key marked active .* holds no private part"):
        KeyRing.load([KeySpec(signer), KeySpec(public, active=True)])
    with pytest.raises(ValueError, match=r"the first key .* holds no private part"):
        KeyRing.load([KeySpec(public), KeySpec(signer)])
    with pytest.raises(ValueError, match="no signing keys"):
        KeyRing.load([])
    # A public key alongside a signer is fine: published, never signing.
    ring = KeyRing.load([KeySpec(signer), KeySpec(public)])
    assert len(json.loads(ring.jwks(0).body)["keys"]) == 2


def test_a_key_dropped_by_a_reload_stays_published_until_its_tokens_expire(
    tmp_path: Path,
) -> None:
    old = KeyRing.load([KeySpec(write(tmp_path, "old.pem", private_pem(ec_key())), kid="old")])
    new = KeyRing.load([KeySpec(write(tmp_path, "new.pem", private_pem(ec_key())), kid="new")])
    ring = new.succeeding(old, now=1000.0, max_lifetime=120.0)
    assert ring.active.kid == "new"
    assert [k.kid for k in ring.published(1000.0)] == ["new", "old"]
    assert not ring.retiring["old"][0].can_sign  # the private part is gone
    during = ring.jwks(1000.0)
    assert sorted(k["kid"] for k in json.loads(during.body)["keys"]) == ["new", "old"]
    # Caches must not outlive the retiring key's presence by more than its remaining time.
    assert during.cache_control == "public, max-age=120"
    after = ring.jwks(1120.0)
    assert [k["kid"] for k in json.loads(after.body)["keys"]] == ["new"]
    assert after.cache_control == "public, max-age=300"
    # A further reload keeps the old key only while it is still retiring.
    again = new.succeeding(ring, now=1050.0, max_lifetime=10.0)
    assert sorted(again.retiring) == ["old"]
    assert again.retiring["old"][1] == 1120.0
    assert new.succeeding(ring, now=1200.0, max_lifetime=10.0).retiring == {}
    assert new.succeeding(None, now=0, max_lifetime=1) is new


def test_compile_signing_points_at_the_failing_key(tmp_path: Path) -> None:
    good = write(tmp_path, "good.pem", private_pem(ec_key()))
    section = TokenSigning(
        issuer="https://gateway.example/",
        keys=[{"file": str(good)}, {"file": str(tmp_path / "missing.pem")}],
    )
    with pytest.raises(SettingError, match="cannot read") as caught:
        compile_signing(section)
    assert caught.value.loc == ("keys", 1)
    twice = TokenSigning(
        issuer="https://gateway.example/",
        keys=[{"file": str(good), "active": True}, {"file": str(good), "kid": "b", "active": True}],
    )
    with pytest.raises(SettingError, match="more than one key is marked active") as caught:
        compile_signing(twice)
    assert caught.value.loc == ("keys", 1)
    same_kid = TokenSigning(
        issuer="https://gateway.example/", keys=[{"file": str(good)}, {"file": str(good)}]
    )
    with pytest.raises(SettingError, match="used by two keys") as caught:
        compile_signing(same_kid)
    assert caught.value.loc == ("keys",)
    settings = compile_signing(TokenSigning(issuer="https://gw.example/", keys=[{"file": good}]))
    assert settings.issuer == "https://gw.example/"
    assert settings.ring.active.can_sign
