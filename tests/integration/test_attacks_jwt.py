"""JOSE attacks through the running gateway (RFC 7515 §4-5, RFC 7518 §3, RFC 7519 §7.2, RFC 8725
§2-3, RFC 9068 §4).

Every case is a token an attacker can build (or an issuer can be tricked into signing) sent to
a route that requires a scope. Each asserts what the client got and that the upstream received
nothing; positive controls prove the same setup lets a correct token through, so a refusal is
never an accident of the fixture. One module-scoped world (two issuers, an attacker's server,
one gateway) keeps ~150 cases fast; the upstream's log is cleared before each case.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, utils
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support.gateway import running_gateway
from tests.support.issuer import TestIssuer, b64url
from tests.support.upstream import RecordingUpstream

pytestmark = pytest.mark.asyncio(loop_scope="module")

AUD = "api://default"
REALM = "gateway"
MAX_TOKEN = 16384
MAX_HEADER = 32768
INVALID_TOKEN = f'Bearer realm="{REALM}", error="invalid_token"'
INVALID_REQUEST = f'Bearer realm="{REALM}", error="invalid_request"'
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# The attacker's own keys: valid signatures, just not by the issuer.
EVIL_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EVIL_EC = ec.generate_private_key(ec.SECP256R1())
EVIL_ED = ed25519.Ed25519PrivateKey.generate()
EVIL_K1 = ec.generate_private_key(ec.SECP256K1())


class AttackerServer:
    """A loopback server an attacker controls; counts every request that reaches it."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _any(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        jwk = RSAAlgorithm.to_jwk(EVIL_RSA.public_key(), as_dict=True)
        return web.json_response({"keys": [jwk | {"kid": "evil", "use": "sig"}]})


@dataclass
class World:
    gateway: Any
    main: TestIssuer  # RS256/PS256/ES256, no HMAC; EdDSA, ES384 and ES512 keys published
    typed: TestIssuer  # RS256 + HS256 with a configured secret; RFC 9068 typ required
    upstream: RecordingUpstream
    attacker: AttackerServer
    rsa_kid: str
    es256_kid: str
    es384_kid: str
    es512_kid: str
    ed_kid: str

    def claims(self, issuer: TestIssuer | None = None, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {"iss": (issuer or self.main).url, "sub": "user-1", "aud": AUD,
                "exp": now + 300, "iat": now, "scope": "read"}  # fmt: skip
        base.update(changes)
        return {name: value for name, value in base.items() if value is not None}

    def rs256(self, header: dict[str, Any] | None = None, **claims: Any) -> str:
        """A token the main issuer really signed with RS256, with header/claim changes."""
        head = {"alg": "RS256", "typ": "JWT", "kid": self.rsa_kid} | (header or {})
        return sign(head, self.claims(**claims), "RS256", self.main_key(self.rsa_kid))

    def main_key(self, kid: str) -> Any:
        return self.main.signing_keys[kid].private


def sign(
    header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, alg: str, key: Any
) -> str:
    return TestIssuer.sign(header, payload, alg=alg, key=key)


def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """HMAC computed here, not by PyJWT, which refuses PEM-looking secrets on purpose."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def public_key_encodings(public: Any) -> dict[str, bytes]:
    """Every way a verifier could be tricked into using a public key as an HMAC secret."""
    spki_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki_der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    out = {
        "spki-pem": spki_pem,
        "spki-pem-no-newline": spki_pem.rstrip(b"\n"),
        "spki-der": spki_der,
    }
    if isinstance(public, rsa.RSAPublicKey):
        out["pkcs1-pem"] = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        )
        out["pkcs1-der"] = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1
        )
        numbers = public.public_numbers()
        out["modulus-bytes"] = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        out["jwk-json"] = RSAAlgorithm.to_jwk(public).encode()
    else:
        out["raw-ec-point"] = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        out["jwk-json"] = ECAlgorithm.to_jwk(public).encode()
    return out


def self_signed_cert(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def gateway_config(w_main: TestIssuer, typed: TestIssuer, upstream: RecordingUpstream) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "limits": {"max_token_size": MAX_TOKEN, "max_header_size": MAX_HEADER},
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": [
            {"name": "main", "issuer": w_main.url, "keys": {"discovery": True},
             "audiences": [AUD], "algorithms": ["RS256", "PS256", "ES256"]},
            {"name": "typed", "issuer": typed.url, "keys": {"jwks_uri": typed.jwks_url},
             "audiences": [AUD], "algorithms": ["RS256", "HS256"],
             "hmac_secret": typed.hmac_secret, "require_at_jwt": True},
        ],
        "routes": [
            # The test upstream's own 8 KB field limit must not answer for the gateway.
            {"match": {"path": "/api/**"}, "upstream": "app", "forward_authorization": False,
             "require": {"scopes": {"all": ["read"]}}},
        ],
    }  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    main, typed = TestIssuer(audience=AUD), TestIssuer(audience=AUD)
    upstream, attacker = RecordingUpstream(name="app"), AttackerServer()
    for server in (main, typed, upstream, attacker):
        await server.start()
    kids = {alg: main.default_kid(alg) for alg in ("RS256", "ES256", "EdDSA")}
    es384, es512 = main.rotate("ES384"), main.rotate("ES512")
    config = gateway_config(main, typed, upstream)
    try:
        async with running_gateway(tmp_path_factory.mktemp("jwt"), config) as gw:
            for _ in range(100):
                if gw.holder.current.ready()[0]:
                    break
                await asyncio.sleep(0.05)
            yield World(gw, main, typed, upstream, attacker, kids["RS256"], kids["ES256"],
                        es384, es512, kids["EdDSA"])  # fmt: skip
    finally:
        for server in (main, typed, upstream, attacker):
            await server.close()


@pytest.fixture(autouse=True)
def fresh_log(world: World) -> None:
    world.upstream.received.clear()


async def send(world: World, authorization: str | None) -> tuple[int, str, dict[str, Any]]:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{world.gateway.proxy_port}/api/resource"
        async with session.get(url, headers=headers) as response:
            body = await response.read()
            challenge = response.headers.get("WWW-Authenticate", "")
            try:
                problem = json.loads(body)
            except ValueError:
                problem = {}
            return response.status, challenge, problem


async def assert_refused(world: World, token: str, status: int = 401) -> None:
    got, challenge, problem = await send(world, f"Bearer {token}")
    assert got == status, (got, problem)
    prefix = INVALID_TOKEN if status == 401 else INVALID_REQUEST
    assert challenge.startswith(prefix), challenge
    assert problem.get("status") == status
    assert world.upstream.received == [], "a refused token reached the upstream"


Build = Callable[[World], str]


# --- controls: the setup lets correct tokens through ----------------------------------------


def _typed(w: World, alg: str = "RS256", **header: Any) -> str:
    claims = w.claims(w.typed)
    head = {"alg": alg, "typ": "at+jwt"} | header
    if alg == "HS256":
        return sign(head, claims, "HS256", w.typed.hmac_secret.encode())
    kid = w.typed.default_kid("RS256")
    return sign(head | {"kid": kid}, claims, alg, w.typed.signing_keys[kid].private)


CONTROLS = [
    pytest.param(lambda w: w.rs256(), id="rs256"),
    pytest.param(lambda w: sign({"alg": "PS256", "kid": w.rsa_kid}, w.claims(), "PS256",
                                w.main_key(w.rsa_kid)), id="ps256"),
    pytest.param(lambda w: sign({"alg": "ES256", "kid": w.es256_kid}, w.claims(), "ES256",
                                w.main_key(w.es256_kid)), id="es256"),
    pytest.param(lambda w: _typed(w), id="typed-rs256-at+jwt"),
    pytest.param(lambda w: _typed(w, "HS256"), id="typed-hs256-configured-secret"),
    pytest.param(lambda w: _typed(w, typ="application/at+jwt"), id="typed-application-at+jwt"),
    pytest.param(lambda w: _typed(w, typ="AT+JWT"), id="typed-uppercase-media-type"),
    pytest.param(lambda w: w.rs256(exp=time.time() + 300.5), id="float-exp"),
    # leeway (30 s here) for clock skew, end to end: a re-check after the verifier once
    # ignored it for exp.
    pytest.param(lambda w: w.rs256(exp=time.time() - 10), id="exp-within-leeway"),
    pytest.param(lambda w: w.rs256(nbf=time.time() + 10), id="nbf-within-leeway"),
    pytest.param(lambda w: w.rs256(aud=["api://other", AUD]), id="aud-array-with-ours"),
    pytest.param(lambda w: sized_token(w, MAX_TOKEN), id="token-exactly-max-token-size"),
]  # fmt: skip


@pytest.mark.parametrize("build", CONTROLS)
async def test_control_tokens_are_accepted(world: World, build: Build) -> None:
    token = build(world)
    status, _, problem = await send(world, f"Bearer {token}")
    assert status == 200, problem
    assert [r.raw_path for r in world.upstream.received] == ["/api/resource"]
    assert world.upstream.last.header("X-Auth-Subject") == "user-1"


# --- algorithms (RFC 8725 §3.1) -------------------------------------------------------------


def _valid_sig(alg: str, kid_attr: str | None) -> Build:
    """A token whose signature really verifies with a key the issuer publishes, under an
    algorithm the issuer is not configured to accept."""

    def build(w: World) -> str:
        kid = getattr(w, kid_attr) if kid_attr else w.rsa_kid
        return sign({"alg": alg, "kid": kid}, w.claims(), alg, w.main_key(kid))

    return build


def _none(spelling: str, signature: bytes = b"") -> Build:
    def build(w: World) -> str:
        head = b64url(json.dumps({"alg": spelling, "kid": w.rsa_kid}).encode())
        body = b64url(json.dumps(w.claims()).encode())
        return f"{head}.{body}.{b64url(signature)}"

    return build


UNLISTED_ALGS = [
    pytest.param(_valid_sig("RS384", None), id="rs384-real-key"),
    pytest.param(_valid_sig("RS512", None), id="rs512-real-key"),
    pytest.param(_valid_sig("PS384", None), id="ps384-real-key"),
    pytest.param(_valid_sig("PS512", None), id="ps512-real-key"),
    pytest.param(_valid_sig("ES384", "es384_kid"), id="es384-real-published-key"),
    pytest.param(_valid_sig("ES512", "es512_kid"), id="es512-real-published-key"),
    pytest.param(_valid_sig("EdDSA", "ed_kid"), id="eddsa-not-listed-real-key"),
    pytest.param(lambda w: sign({"alg": "ES256K", "kid": w.es256_kid}, w.claims(), "ES256K",
                                EVIL_K1), id="es256k"),
    pytest.param(lambda w: sign({"alg": "HS256", "kid": w.rsa_kid}, w.claims(), "HS256",
                                w.typed.hmac_secret.encode()), id="hs256-other-issuers-secret"),
    pytest.param(lambda w: sign({"alg": "HS384"}, w.claims(), "HS384", b"k" * 48), id="hs384"),
    pytest.param(lambda w: sign({"alg": "HS512"}, w.claims(), "HS512", b"k" * 64), id="hs512"),
    pytest.param(_none("none"), id="none"),
    pytest.param(_none("None"), id="None"),
    pytest.param(_none("NONE"), id="NONE"),
    pytest.param(_none("nOnE"), id="nOnE"),
    pytest.param(_none("none", b"\x00" * 32), id="none-with-signature"),
    pytest.param(_none("rs256"), id="lowercase-rs256"),
    pytest.param(_none("RS256 "), id="alg-trailing-space"),
    pytest.param(_none("RS256\x00"), id="alg-trailing-nul"),
    pytest.param(lambda w: w.rs256({"alg": ["RS256"]}), id="alg-as-array"),
    pytest.param(lambda w: sign({"kid": w.rsa_kid}, w.claims(), "RS256", w.main_key(w.rsa_kid)),
                 id="alg-missing"),
    pytest.param(lambda w: sign({"alg": "HS256"}, w.claims(w.typed), "HS256",
                                w.typed.hmac_secret.encode()), id="typed-hs256-without-at+jwt"),
]  # fmt: skip


@pytest.mark.parametrize("build", UNLISTED_ALGS)
async def test_algorithms_not_configured_are_refused(world: World, build: Build) -> None:
    await assert_refused(world, build(world))


# --- HMAC keyed with a public key (RFC 8725 §2.1, §3.1) ------------------------------------


def _confusion_cases() -> list[Any]:
    cases = []
    for target in ("main", "typed"):
        for family in ("rsa", "ec"):
            names = ("spki-pem", "spki-pem-no-newline", "spki-der", "jwk-json")
            names += ("pkcs1-pem", "pkcs1-der", "modulus-bytes") if family == "rsa" else (
                "raw-ec-point",)  # fmt: skip
            for name in names:
                cases.append(pytest.param(target, family, name, id=f"{target}-{family}-{name}"))
    return cases


@pytest.mark.parametrize(("target", "family", "encoding"), _confusion_cases())
async def test_hmac_keyed_with_public_key_is_refused(
    world: World, target: str, family: str, encoding: str
) -> None:
    """``typed`` accepts HS256 with its secret: a public key must still never be the secret."""
    issuer = world.main if target == "main" else world.typed
    alg = "RS256" if family == "rsa" else "ES256"
    kid = issuer.default_kid(alg) if target == "typed" or family == "rsa" else world.es256_kid
    public = issuer.signing_keys[kid].private.public_key()
    header = {"alg": "HS256", "typ": "at+jwt", "kid": kid}
    token = hs256(header, world.claims(issuer), public_key_encodings(public)[encoding])
    await assert_refused(world, token)


# --- signature forms (RFC 7518 §3.3-3.5) ---------------------------------------------------


def _es256_raw(signature: Callable[[World], bytes]) -> Build:
    def build(w: World) -> str:
        head = b64url(json.dumps({"alg": "ES256", "kid": w.es256_kid}).encode())
        body = b64url(json.dumps(w.claims()).encode())
        return f"{head}.{body}.{b64url(signature(w))}"

    return build


def _der_signature(w: World) -> bytes:
    """A genuine ES256 signature by the issuer's key, DER-encoded instead of raw r||s."""
    head = b64url(json.dumps({"alg": "ES256", "kid": w.es256_kid}).encode())
    body = b64url(json.dumps(w.claims()).encode())
    return w.main_key(w.es256_kid).sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))


def _high_s(w: World) -> bytes:
    """The same signature with s replaced by n - s: valid maths, non-canonical form."""
    r, s = utils.decode_dss_signature(_der_signature(w))
    return r.to_bytes(32, "big") + (P256_ORDER - s).to_bytes(32, "big")


SIGNATURE_FORMS = [
    pytest.param(lambda w: sign({"alg": "RS256", "kid": w.rsa_kid}, w.claims(), "PS256",
                                w.main_key(w.rsa_kid)), id="pss-signature-declared-rs256"),
    pytest.param(lambda w: sign({"alg": "PS256", "kid": w.rsa_kid}, w.claims(), "RS256",
                                w.main_key(w.rsa_kid)), id="pkcs1-signature-declared-ps256"),
    pytest.param(_es256_raw(lambda w: b"\x00" * 64), id="ecdsa-r0-s0-psychic-signature"),
    pytest.param(_es256_raw(lambda w: P256_ORDER.to_bytes(32, "big") * 2), id="ecdsa-r-s-eq-n"),
    pytest.param(_es256_raw(lambda w: (1).to_bytes(32, "big") * 2), id="ecdsa-r1-s1"),
    pytest.param(_es256_raw(lambda w: b"\xff" * 64), id="ecdsa-all-ff"),
    pytest.param(_es256_raw(lambda w: b""), id="ecdsa-empty"),
    pytest.param(_es256_raw(lambda w: b"\x00" * 63), id="ecdsa-63-bytes"),
    pytest.param(_es256_raw(_der_signature), id="ecdsa-der-encoded-real-signature"),
    pytest.param(lambda w: w.rs256()[: w.rs256().rindex(".") + 1], id="rs256-empty-signature"),
    pytest.param(lambda w: sign({"alg": "RS256", "kid": w.rsa_kid}, w.claims(), "RS256",
                                EVIL_RSA), id="attacker-rsa-key-real-kid"),
    pytest.param(lambda w: sign({"alg": "ES256", "kid": w.es256_kid}, w.claims(), "ES256",
                                EVIL_EC), id="attacker-ec-key-real-kid"),
    pytest.param(lambda w: sign({"alg": "ES256", "kid": w.rsa_kid}, w.claims(), "ES256",
                                w.main_key(w.es256_kid)), id="ec-signature-rsa-kid"),
    pytest.param(lambda w: sign({"alg": "RS256", "kid": w.es256_kid}, w.claims(), "RS256",
                                w.main_key(w.rsa_kid)), id="rsa-signature-ec-kid"),
    pytest.param(lambda w: sign({"alg": "RS256", "kid": w.rsa_kid}, w.claims(), "RS256",
                                w.typed.signing_keys[w.typed.default_kid("RS256")].private),
                 id="other-trusted-issuers-key-same-kid-name"),
    pytest.param(lambda w: sign({"alg": "RS256", "kid": w.typed.default_kid("RS256")},
                                w.claims(w.main), "RS256",
                                w.typed.signing_keys[w.typed.default_kid("RS256")].private),
                 id="main-iss-signed-by-typed-issuer"),
]  # fmt: skip


@pytest.mark.parametrize("build", SIGNATURE_FORMS)
async def test_wrong_signature_forms_are_refused(world: World, build: Build) -> None:
    await assert_refused(world, build(world))


async def test_high_s_ecdsa_signature_documented(world: World) -> None:
    """Documented risk, not a bypass: ECDSA is malleable, so (r, n-s) also verifies. The token
    string differs from the one the issuer minted, so a deny-list keyed on the token's hash
    (rather than its jti) misses the twin. Current behaviour: accepted."""
    status, _, _ = await send(world, f"Bearer {_es256_raw(_high_s)(world)}")
    assert status == 200
    assert len(world.upstream.received) == 1


# --- kid (RFC 7515 §4.1.4) -----------------------------------------------------------------


def _kid(kid: Any, key: str = "real") -> Build:
    def build(w: World) -> str:
        private = w.main_key(w.rsa_kid) if key == "real" else EVIL_RSA
        return sign({"alg": "RS256", "kid": kid}, w.claims(), "RS256", private)

    return build


KIDS = [
    pytest.param(_kid("../../etc/passwd"), id="path-traversal"),
    pytest.param(_kid("/dev/null"), id="absolute-path"),
    pytest.param(_kid("' OR 1=1--"), id="sql-injection"),
    pytest.param(_kid("rsa-1\r\nX-Injected: 1"), id="crlf"),
    pytest.param(_kid("rsa-1\x00"), id="nul-suffix"),
    pytest.param(_kid("k" * 10_000), id="10kb"),
    pytest.param(_kid(1), id="number"),
    pytest.param(_kid({"kid": "rsa-1"}), id="object"),
    pytest.param(_kid(["rsa-1"]), id="array"),
    pytest.param(_kid(True), id="bool"),
    pytest.param(_kid(None, key="evil"), id="null-attacker-key"),
    pytest.param(lambda w: sign({"alg": "RS256"}, w.claims(), "RS256", EVIL_RSA),
                 id="absent-attacker-key"),
    pytest.param(_kid("evil", key="evil"), id="attacker-kid-attacker-key"),
]  # fmt: skip


@pytest.mark.parametrize("build", KIDS)
async def test_hostile_kids_are_refused_without_refetch_storm(world: World, build: Build) -> None:
    before = world.main.jwks_fetches
    token = build(world)
    assert len(token) <= MAX_TOKEN, "the kid must reach key lookup, not the size limit"
    await assert_refused(world, token)
    assert world.main.jwks_fetches - before <= 1, "an unknown kid must not refetch every time"


# --- keys the token brings along (RFC 8725 §3.10) ------------------------------------------


def _embedded(member: str) -> Build:
    def build(w: World) -> str:
        evil_jwk = RSAAlgorithm.to_jwk(EVIL_RSA.public_key(), as_dict=True)
        values: dict[str, Any] = {
            "jku": w.attacker.url + "/jwks.json",
            "x5u": w.attacker.url + "/cert.pem",
            "jwk": evil_jwk | {"kid": "evil"},
            "x5c": [base64.b64encode(self_signed_cert(EVIL_RSA)).decode()],
        }
        head = {"alg": "RS256", "kid": "evil", member: values[member]}
        return sign(head, w.claims(), "RS256", EVIL_RSA)

    return build


def _embedded_real_kid(member: str) -> Build:
    def build(w: World) -> str:
        token = _embedded(member)(w)
        head = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
        return sign(head | {"kid": w.rsa_kid}, w.claims(), "RS256", EVIL_RSA)

    return build


EMBEDDED = [
    pytest.param(_embedded("jku"), id="jku-attacker-server"),
    pytest.param(_embedded("x5u"), id="x5u-attacker-server"),
    pytest.param(_embedded("jwk"), id="embedded-jwk"),
    pytest.param(_embedded("x5c"), id="x5c-self-signed"),
    pytest.param(_embedded_real_kid("jku"), id="jku-with-real-kid"),
    pytest.param(_embedded_real_kid("jwk"), id="embedded-jwk-with-real-kid"),
]


@pytest.mark.parametrize("build", EMBEDDED)
async def test_keys_named_by_the_token_are_never_used_or_fetched(
    world: World, build: Build
) -> None:
    await assert_refused(world, build(world))
    assert world.attacker.requests == [], "the gateway fetched a URL named by the token"


# --- header and claims structure (RFC 7515 §4.1.11, §5.2; RFC 7519 §7.2) --------------------


def _raw(header: bytes, payload: Callable[[World], bytes]) -> Build:
    """Hand-written JSON, signed for real by the main issuer's RSA key."""

    def build(w: World) -> str:
        head = header.replace(b"KID", w.rsa_kid.encode())
        return sign(head, payload(w), "RS256", w.main_key(w.rsa_kid))

    return build


def _claims_json(w: World, tail: str) -> bytes:
    """The main claims as JSON with raw text spliced in before the closing brace."""
    return json.dumps(w.claims()).encode()[:-1] + tail.encode() + b"}"


STRUCTURE = [
    pytest.param(lambda w: w.rs256({"crit": ["exp"], "exp": 1}), id="crit-unknown"),
    pytest.param(lambda w: w.rs256({"crit": []}), id="crit-empty-list"),
    pytest.param(lambda w: w.rs256({"crit": "b64", "b64": False}), id="crit-b64-string"),
    pytest.param(lambda w: w.rs256({"crit": ["b64"], "b64": False}), id="crit-b64-unencoded"),
    pytest.param(_raw(b'{"alg":"none","alg":"RS256","kid":"KID"}', lambda w: json.dumps(
        w.claims()).encode()), id="duplicate-alg-in-header"),
    pytest.param(_raw(b'{"alg":"RS256","kid":"KID","kid":"evil"}', lambda w: json.dumps(
        w.claims()).encode()), id="duplicate-kid-in-header"),
    pytest.param(_raw(b'{"alg":"RS256","kid":"KID"}', lambda w: _claims_json(
        w, ', "sub": "admin"')), id="duplicate-sub-in-payload"),
    pytest.param(_raw(b'{"alg":"RS256","kid":"KID"}', lambda w: json.dumps(
        w.claims(exp=1)).encode()[:-1] + f', "exp": {int(time.time()) + 600}}}'.encode()),
        id="duplicate-exp-expired-then-future"),
    pytest.param(_raw(b'{"alg":"RS256","kid":"KID"}', lambda w: _claims_json(
        w, ', "scope": "admin read"')), id="duplicate-scope"),
    pytest.param(_raw(b'{"alg":"RS256","kid":"KID"}', lambda w: _claims_json(
        w, ', "x": {"a": 1, "a": 2}')), id="duplicate-nested-member"),
    pytest.param(_raw(b'{"alg":"RS256","kid":"KID"}', lambda w: b"\xef\xbb\xbf" + json.dumps(
        w.claims()).encode()), id="utf8-bom-payload"),
    pytest.param(_raw(b'{"alg":"RS256","kid":"KID"}', lambda w: json.dumps(
        w.claims()).encode("utf-16")), id="utf16-payload"),
    pytest.param(_raw(b'{"alg":"RS256","kid":"KID"}', lambda w: b"[" + json.dumps(
        w.claims()).encode() + b"]"), id="payload-array"),
    pytest.param(_raw(b'{"alg":"RS256","kid":"KID"}', lambda w: _claims_json(
        w, ', "x": NaN')), id="payload-nan"),
    pytest.param(_raw(b'["RS256"]', lambda w: json.dumps(w.claims()).encode()),
                 id="header-array"),
]  # fmt: skip


@pytest.mark.parametrize("build", STRUCTURE)
async def test_ambiguous_or_critical_structures_are_refused(world: World, build: Build) -> None:
    await assert_refused(world, build(world))


# --- serialisations and encodings (RFC 7515 §2, §3, §7) ------------------------------------


def _flip_signature_padding_bits(token: str) -> str:
    """Same signature bytes, different text: RS256 signatures leave 4 unused bits at the end."""
    head, body, sig = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    return f"{head}.{body}.{sig[:-1]}{alphabet[last ^ 0b0001]}"


def _json_serialisation(w: World, flattened: bool) -> str:
    head, body, sig = w.rs256().split(".")
    if flattened:
        return json.dumps({"payload": body, "protected": head, "signature": sig})
    return json.dumps({"payload": body, "signatures": [{"protected": head, "signature": sig}]})


def _jwe(w: World) -> str:
    head = b64url(json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": w.rsa_kid}).encode())
    return ".".join([head, b64url(b"k" * 256), b64url(b"i" * 12), b64url(b"c" * 64),
                     b64url(b"t" * 16)])  # fmt: skip


def _swap_alphabet(token: str) -> str:
    return token.replace("-", "+").replace("_", "/")


ENCODINGS = [
    pytest.param(lambda w: _json_serialisation(w, False), 400, id="json-general-serialisation"),
    pytest.param(lambda w: _json_serialisation(w, True), 400, id="json-flattened-serialisation"),
    pytest.param(lambda w: b64url(_json_serialisation(w, True).encode()), 401,
                 id="json-serialisation-base64url-wrapped"),
    pytest.param(_jwe, 401, id="jwe-five-parts"),
    pytest.param(lambda w: w.rs256() + "==", 401, id="padding-on-signature"),
    pytest.param(lambda w: w.rs256().replace(".", "==.", 1), 400, id="padding-inside-token"),
    pytest.param(lambda w: _swap_alphabet(w.rs256() + "+/"), 401, id="plus-slash-alphabet"),
    pytest.param(lambda w: w.rs256() + ".", 401, id="trailing-dot"),
    pytest.param(lambda w: "." + w.rs256(), 401, id="leading-dot"),
    pytest.param(lambda w: w.rs256().replace(".", "..", 1), 401, id="empty-segment"),
    pytest.param(lambda w: w.rs256()[:-1] + "*", 400, id="char-outside-b64token"),
    pytest.param(lambda w: "x" * (MAX_TOKEN + 1), 401, id="just-over-max-token-size"),
    pytest.param(lambda w: sized_token(w, MAX_TOKEN + 1), 401, id="valid-token-over-max-by-one"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "status"), ENCODINGS)
async def test_other_serialisations_and_encodings_are_refused(
    world: World, build: Build, status: int
) -> None:
    await assert_refused(world, build(world), status)


async def test_oversized_token_beyond_header_limit_gets_431(world: World) -> None:
    status, _, _ = await send(world, f"Bearer {'a' * (MAX_HEADER + 1)}")
    assert status == 431
    assert world.upstream.received == []


async def test_non_canonical_signature_encoding_is_refused(world: World) -> None:
    token = _flip_signature_padding_bits(world.rs256())
    await assert_refused(world, token)


def sized_token(w: World, size: int) -> str:
    """A genuine RS256 token of exactly ``size`` characters, padded with a junk claim."""
    base = len(w.rs256({"f": ""}, pad=""))
    for pad in range(max(0, (size - base) * 3 // 4 - 4), size):
        for filler in ("", "x", "xx", "xxx"):
            token = w.rs256({"f": filler}, pad="p" * pad)
            if len(token) == size:
                return token
            if len(token) > size + 8:
                break
    raise AssertionError(f"cannot build a token of {size} characters")


# --- time claims (RFC 7519 §2 NumericDate, §4.1.4-4.1.6) -----------------------------------

NOW = int(time.time())
TIMES = [
    pytest.param({"exp": str(NOW + 300)}, id="exp-string"),
    pytest.param({"exp": True}, id="exp-bool"),
    pytest.param({"exp": [NOW + 300]}, id="exp-array"),
    pytest.param({"exp": {"$gt": 0}}, id="exp-object"),
    pytest.param({"exp": -1}, id="exp-negative"),
    pytest.param({"exp": 0}, id="exp-zero"),
    pytest.param({"exp": None}, id="exp-missing-but-required"),
    pytest.param({"nbf": str(NOW)}, id="nbf-string"),
    pytest.param({"nbf": NOW + 3600.5}, id="nbf-float-future"),
    pytest.param({"nbf": 1e308}, id="nbf-1e308"),
    pytest.param({"nbf": False}, id="nbf-bool"),
    pytest.param({"iat": str(NOW)}, id="iat-string"),
    pytest.param({"iat": True}, id="iat-bool"),
    pytest.param({"iat": NOW + 3600, "exp": NOW + 7200}, id="iat-future-exp-far"),
    pytest.param({"iat": 1e308, "exp": 1e308}, id="iat-and-exp-1e308"),
    pytest.param({"exp": NOW - 31}, id="exp-just-beyond-leeway"),
]


@pytest.mark.parametrize("changes", TIMES)
async def test_bad_time_claims_are_refused(world: World, changes: dict[str, Any]) -> None:
    await assert_refused(world, world.rs256(**changes))


def _raw_exp(text: str) -> Build:
    """exp written as raw JSON number text (no Python float could say it)."""

    def payload(w: World) -> bytes:
        return json.dumps(w.claims(exp="EXP")).replace('"EXP"', text).encode()

    return _raw(b'{"alg":"RS256","kid":"KID"}', payload)


RAW_TIMES = [
    pytest.param(_raw_exp("1e400"), id="exp-1e400-infinite"),
    pytest.param(_raw_exp("-1e400"), id="exp-minus-1e400"),
    pytest.param(_raw_exp("Infinity"), id="exp-Infinity-literal"),
    pytest.param(_raw_exp("NaN"), id="exp-NaN-literal"),
    pytest.param(_raw_exp("-0"), id="exp-negative-zero"),
    pytest.param(_raw_exp("1" + "0" * 400), id="exp-integer-beyond-float-range"),
    pytest.param(_raw_exp("-1" + "0" * 400), id="exp-negative-integer-beyond-float-range"),
]


@pytest.mark.parametrize("build", RAW_TIMES)
async def test_non_finite_exp_is_refused(world: World, build: Build) -> None:
    await assert_refused(world, build(world))


def _null_claim(name: str) -> Build:
    """The main claims with ``name`` written as JSON null (``w.claims`` drops a None)."""

    def payload(w: World) -> bytes:
        return json.dumps(w.claims() | {name: None}).encode()

    return _raw(b'{"alg":"RS256","kid":"KID"}', payload)


# RFC 7519 §4.1 gives no registered claim a null value: null is a wrong type, not an absence.
# "exp": null used to satisfy required_claims [exp] and never expire.
NULL_CLAIMS = [
    pytest.param(_null_claim(name), id=f"{name}-null")
    for name in ("exp", "nbf", "iat", "sub", "jti", "client_id", "azp", "aud", "scope", "scp")
]


@pytest.mark.parametrize("build", NULL_CLAIMS)
async def test_null_registered_claims_are_refused(world: World, build: Build) -> None:
    await assert_refused(world, build(world))


async def test_exp_1e308_is_accepted_documented(world: World) -> None:
    """Documented risk: a finite but absurd exp (year ~1e300) is a token that never expires.
    RFC 7519 sets no maximum lifetime, and the cache still bounds reuse by max_ttl; an operator
    wanting a cap has none today. Current behaviour: accepted."""
    status, _, _ = await send(world, f"Bearer {world.rs256(exp=1e308)}")
    assert status == 200
    assert len(world.upstream.received) == 1


# --- audience and issuer (RFC 7519 §4.1.1, §4.1.3) -----------------------------------------

AUDIENCES = [
    pytest.param({"aud": None}, id="aud-missing"),
    pytest.param({"aud": ["api://other"]}, id="aud-array-without-ours"),
    pytest.param({"aud": []}, id="aud-empty-array"),
    pytest.param({"aud": ""}, id="aud-empty-string"),
    pytest.param({"aud": AUD + "/"}, id="aud-trailing-slash"),
    pytest.param({"aud": AUD.upper()}, id="aud-different-case"),
    pytest.param({"aud": [AUD, 1]}, id="aud-array-with-number"),
    pytest.param({"aud": {"aud": AUD}}, id="aud-object"),
    pytest.param({"aud": [[AUD]]}, id="aud-nested-array"),
    pytest.param({"aud": f" {AUD}"}, id="aud-leading-space"),
]


@pytest.mark.parametrize("changes", AUDIENCES)
async def test_audience_not_ours_is_refused(world: World, changes: dict[str, Any]) -> None:
    await assert_refused(world, world.rs256(**changes))


def _iss(change: Callable[[str], Any]) -> Build:
    return lambda w: w.rs256(iss=change(w.main.url))


ISSUERS = [
    pytest.param(_iss(lambda url: url + "/"), id="iss-trailing-slash"),
    pytest.param(_iss(lambda url: url.upper()), id="iss-uppercase"),
    pytest.param(_iss(lambda url: url.replace("127.0.0.1", "localhost")), id="iss-localhost"),
    pytest.param(_iss(lambda url: url + "#"), id="iss-fragment"),
    pytest.param(_iss(lambda url: [url]), id="iss-array"),
    pytest.param(_iss(lambda url: None), id="iss-missing"),
    pytest.param(_iss(lambda url: url + "\x00"), id="iss-nul"),
]


@pytest.mark.parametrize("build", ISSUERS)
async def test_issuer_variants_are_refused(world: World, build: Build) -> None:
    await assert_refused(world, build(world))


# --- RFC 9068 typ ----------------------------------------------------------------------------

TYPES = [
    pytest.param("JWT", id="typ-JWT"),
    pytest.param(None, id="typ-missing"),
    pytest.param("at+jwt ", id="typ-trailing-space"),
    pytest.param("at+jwt\x00", id="typ-nul"),
    pytest.param("application/at+jwt; charset=utf-8", id="typ-with-parameter"),
    pytest.param("at-jwt", id="typ-lookalike"),
    pytest.param(["at+jwt"], id="typ-array"),
    pytest.param("application/jwt", id="typ-application-jwt"),
]


@pytest.mark.parametrize("typ", TYPES)
@pytest.mark.parametrize("alg", ["RS256", "HS256"])
async def test_typ_must_be_at_jwt_where_required(world: World, typ: Any, alg: str) -> None:
    claims = world.claims(world.typed)
    head: dict[str, Any] = {"alg": alg} if typ is None else {"alg": alg, "typ": typ}
    if alg == "HS256":
        token = sign(head, claims, "HS256", world.typed.hmac_secret.encode())
    else:
        kid = world.typed.default_kid("RS256")
        token = sign(head | {"kid": kid}, claims, "RS256", world.typed.signing_keys[kid].private)
    await assert_refused(world, token)
