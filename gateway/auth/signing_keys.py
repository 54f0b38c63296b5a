"""RFC 7517 §4 keys, RFC 7638 thumbprints, RFC 7518 §3.1: the gateway's own signing keys.

The identity tokens the gateway signs for upstreams (``identity_token``) are only as good as
their keys, so the keys come from files an operator controls, never from a key generated per
process (each replica would then publish a different set and tokens signed by one would fail
at upstreams that fetched another's). A ``KeyRing`` holds several keys so rotation works:
exactly one signs, every one is published in the JWK Set, and a key dropped from the config
by a reload stays published (public part only) until every token it signed has expired.
Every problem with a key file is a ``ValueError`` whose message names the file and says what
is wrong, for the config loader to report at the key's line.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

from gateway import boundedjson

SigningAlgorithm = Literal["ES256", "EdDSA", "RS256"]
MAX_KEY_FILE_BYTES: Final = 64 * 1024
MIN_RSA_BITS: Final = 2048
# RFC 7638 §3.2: the required members of each key type, the only ones hashed.
_THUMBPRINT_MEMBERS: Final = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"),
                              "OKP": ("crv", "kty", "x")}  # fmt: skip


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One configured key: where it is and, optionally, its ``kid`` and algorithm."""

    file: Path
    kid: str | None = None
    alg: SigningAlgorithm | None = None
    active: bool = False


class KeyFileError(ValueError):
    """One key file of a ring is unfit; ``index`` is its place in the configured list."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True, slots=True, eq=False)
class SigningKey:
    """A loaded key. ``private`` is None for a key that is only published (a retired key
    whose private part was removed, or kept from a previous config after a reload)."""

    kid: str
    alg: SigningAlgorithm
    private: Any
    public_jwk: Mapping[str, str]  # as published: kty, key members, kid, alg, use
    thumbprint: str  # RFC 7638 SHA-256, base64url

    @property
    def can_sign(self) -> bool:
        return self.private is not None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(public_jwk: Mapping[str, Any]) -> str:
    """RFC 7638 §3: SHA-256 over the required members, in lexicographic order, as JSON with
    no whitespace; base64url without padding (the form RFC 7638 §3.1's example shows)."""
    members = _THUMBPRINT_MEMBERS[public_jwk["kty"]]
    canonical = json.dumps({name: public_jwk[name] for name in members},
                           separators=(",", ":"), sort_keys=True)  # fmt: skip
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the key file ({exc.strerror or exc})") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes; not a key file")
    if not data.strip():
        raise ValueError(f"{path}: the key file is empty")
    return data


def _from_pem(path: Path, data: bytes) -> Any:
    try:
        return load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(
            f"{path}: the PEM key is encrypted; give the gateway an unencrypted key file "
            "readable only by it"
        ) from None
    except ValueError:
        pass
    try:
        return load_pem_public_key(data)
    except ValueError:
        raise ValueError(f"{path}: not a PEM private or public key") from None


def _from_jwk(path: Path, data: bytes) -> tuple[Any, dict[str, Any]]:
    try:
        jwk = boundedjson.loads(data, max_bytes=MAX_KEY_FILE_BYTES, unique_members=True)
    except ValueError as exc:
        raise ValueError(f"{path}: neither PEM nor a JSON JWK ({exc})") from None
    if not isinstance(jwk, dict):
        raise ValueError(f"{path}: a JWK file holds one JSON object")
    if "keys" in jwk:
        raise ValueError(f"{path}: holds a JWK Set; give one key per file")
    if jwk.get("kty") not in _THUMBPRINT_MEMBERS:
        raise ValueError(f"{path}: unsupported JWK kty {jwk.get('kty')!r} (RSA, EC or OKP)")
    # RFC 7517 §4.2/§4.3: a key meant for something other than signing must not sign.
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"{path}: the JWK's use is {jwk.get('use')!r}, not 'sig'")
    try:
        key = jwt.PyJWK.from_dict(jwk).key
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path}: unreadable JWK ({exc})") from None
    return key, jwk


def _algorithm_for(path: Path, key: Any, wanted: str | None) -> SigningAlgorithm:
    """RFC 7518 §3.1: which of our algorithms this key can honestly sign, checked against
    the configured one."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        # RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used with these
        # algorithms."
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"{path}: an RSA key of {key.key_size} bits; RS256 needs 2048+")
        natural: SigningAlgorithm = "RS256"
    elif isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        # RFC 7518 §3.4: ES256 is ECDSA over P-256 and nothing else.
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"{path}: an EC key on {key.curve.name}; ES256 needs P-256")
        natural = "ES256"
    elif isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        natural = "EdDSA"  # RFC 8037 §3.1, Ed25519 (the curve every verifier implements)
    else:
        raise ValueError(f"{path}: unsupported key type; use RSA (RS256), P-256 (ES256) "
                         "or Ed25519 (EdDSA)")  # fmt: skip
    if wanted is not None and wanted != natural:
        raise ValueError(f"{path}: this key cannot sign {wanted}; it is a {natural} key")
    return natural


def _public_jwk(key: Any, alg: SigningAlgorithm) -> dict[str, str]:
    public = key.public_key() if hasattr(key, "public_key") else key
    exported: dict[str, str]
    if alg == "RS256":
        exported = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif alg == "ES256":
        exported = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        exported = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {name: exported[name] for name in _THUMBPRINT_MEMBERS[exported["kty"]]}


def load_key(spec: KeySpec) -> SigningKey:
    """Load one key file (PEM or a JSON JWK); a public key alone loads as publish-only."""
    data = _read(spec.file)
    jwk: dict[str, Any] = {}
    if data.lstrip().startswith(b"-----BEGIN"):
        key = _from_pem(spec.file, data)
    else:
        key, jwk = _from_jwk(spec.file, data)
    file_alg = jwk.get("alg")
    if file_alg is not None and spec.alg is not None and file_alg != spec.alg:
        raise ValueError(f"{spec.file}: the JWK says alg {file_alg!r}, the config {spec.alg!r}")
    alg = _algorithm_for(spec.file, key, spec.alg or file_alg)
    file_kid = jwk.get("kid")
    if file_kid is not None and not isinstance(file_kid, str):
        raise ValueError(f"{spec.file}: the JWK's kid is not a string")
    if file_kid is not None and spec.kid is not None and file_kid != spec.kid:
        raise ValueError(f"{spec.file}: the JWK's kid {file_kid!r} differs from the config's")
    members = _public_jwk(key, alg)
    print_ = thumbprint(members)
    kid = spec.kid or file_kid or print_
    private = key if _is_private(key) else None
    published = {**members, "kid": kid, "alg": alg, "use": "sig"}
    return SigningKey(kid=kid, alg=alg, private=private, public_jwk=published, thumbprint=print_)


def _is_private(key: Any) -> bool:
    return isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    )


@dataclass(frozen=True, slots=True)
class JwksDocument:
    """The RFC 7517 §5 JWK Set as served: bytes made once, and its caching header."""

    body: bytes
    cache_control: str
    content_type: str = "application/jwk-set+json"  # RFC 7517 §8.5.1


class KeyRing:
    """The configured keys: one signs (``active``), all are published.

    ``retiring`` holds keys of a previous ring that this config no longer lists, each with
    the time (``time.time()`` seconds) after which no token it signed can still be valid;
    they are published until then and never sign.
    """

    __slots__ = ("_document", "_document_until", "_max_age", "active", "keys", "retiring")

    def __init__(
        self,
        keys: Sequence[SigningKey],
        *,
        jwks_max_age: int = 300,
        retiring: Mapping[str, tuple[SigningKey, float]] | None = None,
    ) -> None:
        signers = [key for key in keys if key.can_sign]
        if not signers:
            raise ValueError("no key can sign: give at least one private key")
        self.keys = tuple(keys)
        self.active: SigningKey = signers[0]
        self.retiring = dict(retiring or {})
        self._max_age = jwks_max_age
        self._document: JwksDocument | None = None
        self._document_until = 0.0

    @classmethod
    def load(cls, specs: Sequence[KeySpec], *, jwks_max_age: int = 300) -> KeyRing:
        """Load every key; the one marked ``active`` signs, else the first key does.

        A missing, unreadable or unfit key file is a ``KeyFileError`` naming its index and
        file; a ``kid`` used twice, two active keys or a signer without its private part a
        ``ValueError``. Never a silently generated key.
        """
        if not specs:
            raise ValueError("no signing keys configured")
        keys: list[SigningKey] = []
        for index, spec in enumerate(specs):
            try:
                keys.append(load_key(spec))
            except ValueError as exc:
                raise KeyFileError(index, str(exc)) from None
        marked = [index for index, spec in enumerate(specs) if spec.active]
        if len(marked) > 1:
            raise KeyFileError(marked[1], "more than one key is marked active; one signs")
        kids: set[str] = set()
        for key in keys:
            if key.kid in kids:
                raise ValueError(f"kid {key.kid!r} is used by two keys")
            kids.add(key.kid)
        signer = keys.pop(marked[0] if marked else 0)
        if not signer.can_sign:
            which = (
                "the key marked active"
                if marked
                else ("the first key (it signs unless another is marked active)")
            )
            raise ValueError(f"{which} (kid {signer.kid!r}) holds no private part")
        return cls([signer, *keys], jwks_max_age=jwks_max_age)

    def succeeding(self, previous: KeyRing | None, *, now: float, max_lifetime: float) -> KeyRing:
        """This ring, keeping the previous ring's keys it no longer lists published (public
        part only) until ``now + max_lifetime``: tokens they signed may still be in flight."""
        if previous is None:
            return self
        kids = {key.kid for key in self.keys}
        retiring = {
            kid: entry for kid, entry in previous.retiring.items()
            if kid not in kids and entry[1] > now
        }  # fmt: skip
        for key in previous.keys:
            if key.kid not in kids:
                public_only = SigningKey(key.kid, key.alg, None, key.public_jwk, key.thumbprint)
                retiring[key.kid] = (public_only, now + max_lifetime)
        return KeyRing(self.keys, jwks_max_age=self._max_age, retiring=retiring)

    def published(self, now: float) -> tuple[SigningKey, ...]:
        still = tuple(key for key, until in self.retiring.values() if until > now)
        return self.keys + still

    def jwks(self, now: float) -> JwksDocument:
        """The JWK Set, serialised once and again only when a retiring key drops out."""
        document = self._document
        if document is None or now >= self._document_until:
            keys = [dict(key.public_jwk) for key in self.published(now)]
            body = json.dumps({"keys": keys}, separators=(",", ":"), sort_keys=True).encode()
            ends = [until for _, until in self.retiring.values() if until > now]
            self._document_until = min(ends, default=float("inf"))
            # A verifier that cached the set must see a retiring key's removal no later
            # than the key stops being valid; otherwise it would keep trusting it.
            max_age = self._max_age
            if ends:
                max_age = max(0, min(max_age, int(self._document_until - now)))
            document = JwksDocument(body, f"public, max-age={max_age}")
            self._document = document
        return document
