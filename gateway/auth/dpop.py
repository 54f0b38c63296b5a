"""RFC 9449 §4.2, §4.3, §7 and §11.1: validation of one DPoP proof at the resource server.

``validate_proof`` is pure over what the caller already holds: the ``DPoP`` header values,
the method, the URI the client used (built from the configured external origin, never
from forwarded headers), the access token, the token's ``cnf.jkt``, the route's policy, the
time and the server nonces. It does no I/O: it returns what the replay store must record
(``replay_key`` for ``replay_ttl`` seconds), and the caller records it (see ``replay``).
Every refusal is an ``InvalidDpopProof`` (or ``UseDpopNonce``, ``InvalidDpopToken``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import InvalidKeyError

from gateway import boundedjson
from gateway.auth.dpop_errors import InvalidDpopProof, InvalidDpopToken, UseDpopNonce
from gateway.auth.htu import NotAnHttpUri, normalise_htu
from gateway.auth.thumbprints import b64url, b64url_decode, jwk_thumbprint
from gateway.problems import InvalidRequest, InvalidToken

# RFC 9449 §4.2: alg is "an identifier for a JWS asymmetric digital signature algorithm";
# the key type (and curve) each one is used with (RFC 7518 §3, RFC 8037 §3.1).
KEY_TYPES: Final[Mapping[str, tuple[str, frozenset[str] | None]]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "ES256K": ("EC", frozenset({"secp256k1"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
DEFAULT_ALGORITHMS: Final = ("ES256", "PS256", "RS256", "EdDSA")
# RFC 7517 §4 / RFC 7518 §6.2.2, §6.3.2, RFC 8037 §2: members that only a private key has.
PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_DPOP_TYPES: Final = frozenset({"dpop+jwt", "application/dpop+jwt"})
# RFC 9449 §4.1: the field value is token68; a compact JWS uses the base64url subset of it.
# An empty signature is let through so that "alg": "none" is refused for what it is.
_COMPACT: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MIN_RSA_BITS: Final = 2048
_JSON_DEPTH: Final = 4


@dataclass(frozen=True, slots=True)
class DpopPolicy:
    """A route's compiled DPoP rules."""

    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    max_age: float = 60.0  # seconds after iat that a proof is accepted (RFC 9449 §11.1)
    leeway: float = 5.0  # seconds iat may lie in the future (clock skew, RFC 9449 §11.1)
    max_proof_bytes: int = 8192
    max_jti_length: int = 256

    def __post_init__(self) -> None:
        unknown = set(self.algorithms) - KEY_TYPES.keys()
        if unknown or not self.algorithms:
            raise ValueError(f"DPoP algorithms must be asymmetric JWS algorithms: {unknown}")


@dataclass(frozen=True, slots=True)
class VerifiedProof:
    """A valid proof: the key it proves (``jkt``) and what the replay store must record."""

    jkt: str
    jti: str
    replay_key: bytes  # SHA-256 over (jkt, jti): the store never sees the client's values
    replay_ttl: float  # seconds until no replica could accept the proof any more


_ALGORITHMS: Final[Mapping[str, Algorithm]] = get_default_algorithms()


def access_token_hash(token: str) -> str:
    """RFC 9449 §4.2 ``ath``: "the result of a base64url encoding ... the SHA-256 [SHS] hash of
    the ASCII encoding of the associated access token's value"."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def replay_key(jkt: str, jti: str) -> bytes:
    """RFC 9449 §11.1: a server tracking jti values should "store only a hash thereof"; keyed
    with the proof key's thumbprint too, so two clients' identifiers never collide."""
    return hashlib.sha256(f"{jkt}\n{jti}".encode()).digest()


# RFC 9449 §7.1 Figure 12: credentials = "DPoP" 1*SP token68 (tabs tolerated, as for Bearer).
_DPOP_CREDENTIALS: Final = re.compile(r"[ \t]*DPoP[ \t]+([A-Za-z0-9\-._~+/]+=*)[ \t]*", re.I)
_DPOP_SCHEME: Final = re.compile(r"[ \t]*DPoP(?:[ \t]|$)", re.I)


def read_dpop_token(authorization: Sequence[str], *, max_size: int) -> str | None:
    """The access token of ``Authorization: DPoP <token>``, or None for another scheme.

    The scheme name is case-insensitive (RFC 9110 §11.1). Two Authorization fields are
    ambiguous (RFC 9110 §11.6.2) and ``bearer.read_token`` already refuses them.
    """
    if len(authorization) != 1 or _DPOP_SCHEME.match(authorization[0]) is None:
        return None
    match = _DPOP_CREDENTIALS.fullmatch(authorization[0])
    if match is None:
        raise InvalidRequest("malformed DPoP Authorization header")
    token = match.group(1)
    if len(token) > max_size:
        raise InvalidToken("the access token is too large", reason="oversized")
    return token


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class _Check:
    """Raises the precise refusal; holds the route's algs for the challenge."""

    def __init__(self, policy: DpopPolicy) -> None:
        self.policy = policy

    def fail(self, detail: str, reason: str) -> InvalidDpopProof:
        return InvalidDpopProof(detail, reason=reason, algs=self.policy.algorithms)

    def json_object(self, segment: str, what: str) -> dict[str, Any]:
        try:
            value = boundedjson.loads(
                b64url_decode(segment),
                max_bytes=self.policy.max_proof_bytes,
                max_depth=_JSON_DEPTH,
                unique_members=True,
            )
        except ValueError:
            raise self.fail(f"The DPoP proof's {what} is not base64url JSON without "
                            "duplicate members.", "dpop_malformed") from None  # fmt: skip
        if not isinstance(value, dict):
            raise self.fail(f"The DPoP proof's {what} is not a JSON object.", "dpop_malformed")
        return value

    def string(self, claims: dict[str, Any], name: str) -> str:
        value = claims.get(name)
        if type(value) is not str or not value:
            raise self.fail(f"The DPoP proof lacks a {name} string claim.", "dpop_claims")
        return value


def _public_key(check: _Check, header: dict[str, Any], alg: str) -> tuple[Any, str]:
    """The proof key from the ``jwk`` header, and its RFC 7638 thumbprint."""
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise check.fail("The DPoP proof header carries no jwk object.", "dpop_key")
    # RFC 9449 §4.2: jwk "MUST NOT contain a private key" (§4.3 item 7).
    if not PRIVATE_MEMBERS.isdisjoint(jwk):
        raise check.fail("The DPoP proof's jwk contains private key material.", "dpop_key")
    kty, curves = KEY_TYPES[alg]
    crv = jwk.get("crv")
    if jwk.get("kty") != kty or (curves is not None and not (type(crv) is str and crv in curves)):
        raise check.fail(f"The DPoP proof's jwk is not a key for {alg}.", "dpop_key")
    # RFC 7517 §4.2, §4.4: a key that names another use or algorithm is not for this one.
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg:
        raise check.fail("The DPoP proof's jwk is meant for another use or algorithm.",
                         "dpop_key")  # fmt: skip
    try:
        jkt = jwk_thumbprint(jwk)
        key = _ALGORITHMS[alg].from_jwk(jwk)
    except (ValueError, TypeError, InvalidKeyError):
        raise check.fail("The DPoP proof's jwk is not a valid public key.", "dpop_key") from None
    if isinstance(key, RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise check.fail("The DPoP proof's RSA key is shorter than 2048 bits.", "dpop_key")
    return key, jkt


def _check_header(check: _Check, header: dict[str, Any]) -> str:
    typ = header.get("typ")
    # RFC 9449 §4.3 item 4 / §11.5: servers "MUST verify that the typ field is dpop+jwt";
    # RFC 7515 §4.1.9: media types ignore case, and "application/" may be left out.
    if type(typ) is not str or typ.lower() not in _DPOP_TYPES:
        raise check.fail('The DPoP proof is not typed "dpop+jwt".', "dpop_type")
    alg = header.get("alg")
    if type(alg) is not str:
        raise check.fail("The DPoP proof header names no algorithm.", "dpop_algorithm")
    # RFC 9449 §4.2: alg "MUST NOT be none or an identifier for a symmetric algorithm";
    # §11.6: "the algorithm none MUST NOT be allowed"; §4.3 item 5: "acceptable per local
    # policy".
    if alg not in check.policy.algorithms:
        raise check.fail(f"The DPoP proof's algorithm {alg[:16]!r} is not accepted here.",
                         "dpop_algorithm")  # fmt: skip
    # RFC 7515 §4.1.11: an extension that "is not understood and supported by the recipient"
    # makes the JWS invalid; we support none.
    if "crit" in header:
        raise check.fail("The DPoP proof lists critical extensions.", "dpop_malformed")
    return alg


def _check_iat(check: _Check, claims: dict[str, Any], now: float) -> float:
    iat = claims.get("iat")
    # RFC 7519 §4.1.6: a NumericDate, i.e. a JSON number (never a string or a boolean).
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        raise check.fail("The DPoP proof lacks a numeric iat claim.", "dpop_claims")
    # "1e400" parses as infinity; a huge integer stays exact (and is compared exactly).
    if isinstance(iat, float) and not math.isfinite(iat):
        raise check.fail("The DPoP proof's iat is out of range.", "dpop_iat")
    # RFC 9449 §11.1: servers "MUST only accept DPoP proofs for a limited time after their
    # creation"; a slightly future iat MAY be accepted for clock offsets.
    if iat > now + check.policy.leeway:
        raise check.fail("The DPoP proof was issued in the future.", "dpop_iat")
    if iat < now - check.policy.max_age:
        raise check.fail("The DPoP proof is too old.", "dpop_iat")
    return float(iat)


def validate_proof(
    dpop_headers: Sequence[str],
    *,
    method: str,
    uri: str,
    access_token: str | None,
    bound_jkt: str | None,
    policy: DpopPolicy,
    now: float,
    nonces: Sequence[str] = (),
) -> VerifiedProof:
    """Check a DPoP proof against RFC 9449 §4.3, items 1-12 (in the order cheapest first,
    which §4.3 allows: "These checks may be performed in any order").

    ``uri`` is the target URI the client used (its query is ignored). ``access_token`` is
    the token presented with the proof (None at no resource, e.g. a token endpoint);
    ``bound_jkt`` its ``cnf.jkt`` (None: not checked here, see ``binding``). ``nonces``
    are the server nonces currently accepted, the first being the one to hand out; empty
    when server nonces are off.
    """
    check = _Check(policy)
    # RFC 9449 §7.1: the resource server "MUST check that a DPoP proof was also received";
    # §4.3 item 1: "There is not more than one DPoP HTTP request header field."
    if not dpop_headers:
        raise check.fail("The request carries no DPoP proof.", "dpop_missing")
    if len(dpop_headers) > 1:
        raise check.fail("The request carries more than one DPoP header.", "dpop_multiple")
    proof = dpop_headers[0].strip(" \t")
    if len(proof) > policy.max_proof_bytes:
        raise check.fail("The DPoP proof is too large.", "dpop_oversized")
    # §4.3 item 2: "a single and well-formed JWT".
    if _COMPACT.fullmatch(proof) is None:
        raise check.fail("The DPoP proof is not a compact JWS.", "dpop_malformed")
    first, last = proof.index("."), proof.rindex(".")
    header = check.json_object(proof[:first], "header")
    alg = _check_header(check, header)
    claims = check.json_object(proof[first + 1 : last], "claims")
    # §4.3 item 3: "All required claims per Section 4.2 are contained in the JWT", with
    # their JSON types (RFC 9449 §4.2, RFC 7519 §4.1.6 for iat).
    jti = check.string(claims, "jti")
    if len(jti) > policy.max_jti_length:
        raise check.fail("The DPoP proof's jti is too long.", "dpop_claims")
    # §4.3 item 8: "The htm claim matches the HTTP method of the current request."
    if check.string(claims, "htm") != method:
        raise check.fail("The DPoP proof was made for another HTTP method.", "dpop_htm")
    # §4.3 item 9: htu "matches the HTTP URI value ... ignoring any query and fragment".
    htu = check.string(claims, "htu")
    try:
        # Equal text normalises alike: the common case costs one comparison.
        htu_matches = htu == uri or normalise_htu(htu) == normalise_htu(uri)
    except NotAnHttpUri:
        raise check.fail("The DPoP proof's htu is not an http(s) URI.", "dpop_htu") from None
    if not htu_matches:
        raise check.fail("The DPoP proof was made for another URI.", "dpop_htu")
    iat = _check_iat(check, claims, now)  # §4.3 item 11
    # §4.3 item 10 / §11.3: "A server MUST NOT accept any DPoP proofs without the nonce
    # claim when a DPoP nonce has been provided to the client."
    if nonces:
        nonce = claims.get("nonce")
        if type(nonce) is not str or not any(_equal(nonce, known) for known in nonces):
            raise UseDpopNonce("The resource server requires a fresh nonce in the DPoP proof.",
                               nonce=nonces[0], algs=policy.algorithms)  # fmt: skip
    # §4.3 item 12: "the value of the ath claim equals the hash of that access token".
    if access_token is not None:
        ath = check.string(claims, "ath")
        if not access_token.isascii():
            raise check.fail("The access token is not ASCII.", "dpop_ath")
        if not _equal(ath, access_token_hash(access_token)):
            raise check.fail("The DPoP proof was made for another access token.", "dpop_ath")
    # §4.3 items 6 and 7: the signature verifies with the (public) jwk.
    key, jkt = _public_key(check, header, alg)
    try:
        signature = b64url_decode(proof[last + 1 :])
    except ValueError:
        raise check.fail("The DPoP proof's signature is not base64url.", "dpop_malformed") from None
    if not _ALGORITHMS[alg].verify(proof[:last].encode("ascii"), key, signature):
        raise check.fail("The DPoP proof's signature is not valid.", "dpop_signature")
    # §4.3 item 12 / §6: "confirm that the public key to which the access token is bound
    # matches the public key from the DPoP proof"; RFC 9449 Figure 16 names the error.
    if bound_jkt is not None and not _equal(jkt, bound_jkt):
        raise InvalidDpopToken("Invalid DPoP key binding", reason="dpop_binding",
                               algs=policy.algorithms)  # fmt: skip
    # §11.1: the store keeps a proof for "the time window in which the respective DPoP proof
    # JWT would be accepted" - by any replica sharing it, whose clock may be behind this
    # one's by as much as the leeway tolerates for a client's.
    ttl = iat + policy.max_age + policy.leeway - now
    return VerifiedProof(jkt=jkt, jti=jti, replay_key=replay_key(jkt, jti), replay_ttl=ttl)
