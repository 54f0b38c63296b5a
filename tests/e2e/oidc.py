"""A real authorization server for end-to-end tests: oidc-provider (RFC 6749, 7009, 7662, 8414,
8707, 9068) in a Node subprocess, driven exactly as a client and an operator would drive it.

``provider.mjs`` is the server; this module starts it on a free loopback port, makes its
signing keys (so a test can rotate them), reads its request counters, and speaks the token
endpoint's grants (client credentials, authorization code through the provider's development
login and consent pages, refresh token), RFC 7009 revocation and RFC 7662 introspection.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import selectors
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qs, quote_plus, urlencode, urljoin, urlsplit

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "provider.mjs"
NPM_CI_TIMEOUT = 300.0
START_TIMEOUT = 20.0

# The resources provider.mjs knows (RFC 8707 resource indicators) and what it issues for them.
JWT_RESOURCE = "https://api.example/jwt"  # RS256 JWT access tokens (RFC 9068)
ES256_RESOURCE = "https://api.example/jwt-es256"  # ES256 JWT access tokens
OPAQUE_RESOURCE = "https://api.example/opaque"  # opaque, for introspection
SHORT_JWT_RESOURCE = "https://api.example/short"  # RS256 JWT, 1 s lifetime
SHORT_OPAQUE_RESOURCE = "https://api.example/short-opaque"  # opaque, 1 s lifetime
GATEWAY_AUDIENCES = (JWT_RESOURCE, ES256_RESOURCE, OPAQUE_RESOURCE, SHORT_JWT_RESOURCE,
             SHORT_OPAQUE_RESOURCE)  # fmt: skip
OTHER_JWT_RESOURCE = "https://other.example/jwt"  # not one of the gateway's audiences
OTHER_OPAQUE_RESOURCE = "https://other.example/opaque"  # likewise, opaque
REDIRECT_URI = "https://client.example/callback"  # the "app" client's; never followed
CLIENTS = ("service", "service-limited", "gateway", "app", "mtls-service")


class ProviderUnavailable(RuntimeError):
    """Node.js or the provider's packages are missing, or the provider did not start."""


def ensure_node_modules() -> None:
    """Install the pinned packages (package-lock.json) once, as CI's fresh clone needs."""
    if (HERE / "node_modules" / "oidc-provider").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise ProviderUnavailable("npm is not installed (it comes with Node.js 20+)")
    try:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=HERE,
            check=True,
            capture_output=True,
            timeout=NPM_CI_TIMEOUT,
        )
    except subprocess.CalledProcessError as exc:
        output = (exc.stdout + exc.stderr).decode(errors="replace")[-2000:]
        raise ProviderUnavailable(f"npm ci failed in {HERE}:\n{output}") from None
    except subprocess.TimeoutExpired:
        raise ProviderUnavailable(f"npm ci took longer than {NPM_CI_TIMEOUT:.0f}s") from None


# --- signing keys ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """A private JWK for the provider; the gateway sees only its public half via jwks_uri."""

    kid: str
    alg: str
    jwk: Mapping[str, Any]


def new_key(alg: str, kid: str | None = None) -> SigningKey:
    kid = kid or f"{alg.lower()}-{secrets.token_hex(4)}"
    if alg == "RS256":
        jwk = RSAAlgorithm.to_jwk(
            rsa.generate_private_key(public_exponent=65537, key_size=2048), as_dict=True
        )
    elif alg == "ES256":
        jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
    else:
        raise ValueError(f"no key maker for {alg}")
    # PyJWT marks private JWKs key_ops ["sign"]; oidc-provider would publish that member in
    # its public JWK Set, where it tells verifiers the key is not for verification (RFC 7517
    # §4.3), so a strict gateway skips it. Real deployments publish no key_ops.
    jwk.pop("key_ops", None)
    return SigningKey(kid=kid, alg=alg, jwk={**jwk, "kid": kid, "alg": alg, "use": "sig"})


def jwk_set(keys: list[SigningKey]) -> dict[str, Any]:
    return {"keys": [dict(key.jwk) for key in keys]}


def dpop_proof(key: ec.EllipticCurvePrivateKey, method: str, url: str) -> str:
    """RFC 9449 §4.2: a proof JWT for one request, carrying the public key it proves."""
    claims = {"jti": secrets.token_urlsafe(12), "htm": method, "htu": url, "iat": int(time.time())}
    public = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return jwt.encode(claims, key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": public})


# --- the provider process -------------------------------------------------------------------


@dataclass
class OidcProvider:
    """One provider.mjs process; ``issuer`` is exactly the URL the gateway must be given."""

    keys: list[SigningKey]
    client_secrets: dict[str, str] = field(
        default_factory=lambda: {c: secrets.token_urlsafe(24) for c in CLIENTS}
    )
    # (certificate, key) PEM files: the provider also listens with TLS, for RFC 8705 clients.
    tls: tuple[Path, Path] | None = None
    issuer: str = ""
    tls_port: int | None = None
    _process: subprocess.Popen[bytes] | None = None
    _log: Any = None
    _dir: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise ProviderUnavailable("node is not installed (Node.js 20+ is needed)")
        self._dir = tempfile.TemporaryDirectory(prefix="oidc-provider-")
        keys_file = Path(self._dir.name) / "jwks.json"
        keys_file.write_text(json.dumps(jwk_set(self.keys)))
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        env = {
            **os.environ,
            "E2E_KEYS_FILE": str(keys_file),
            "E2E_SECRETS": json.dumps(self.client_secrets),
            "E2E_PORT": "0",
        }
        if self.tls is not None:
            env.update(E2E_TLS_CERT=str(self.tls[0]), E2E_TLS_KEY=str(self.tls[1]))
        self._process = subprocess.Popen(
            [node, str(SCRIPT)],
            cwd=HERE,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,  # its own process group, killed as one at the end
        )
        ready = self._read_ready_line()
        self.issuer = ready["issuer"]
        self.tls_port = ready.get("tls_port")
        self._wait_for_discovery()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self._log is not None:
            self._log.close()
        if self._dir is not None:
            self._dir.cleanup()

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-3000:]

    def _read_ready_line(self) -> dict[str, Any]:
        """provider.mjs listens on port 0 and prints its address: no port race."""
        assert self._process is not None and self._process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self._fail("did not print its address in time")
                chunk = os.read(self._process.stdout.fileno(), 4096)
                if not chunk:
                    self._fail("exited before it was ready")
                line += chunk
        return json.loads(line)

    def _wait_for_discovery(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        url = self.issuer + "/.well-known/openid-configuration"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if json.load(response).get("issuer") == self.issuer:
                        return
            except OSError:
                time.sleep(0.05)
        self._fail("did not answer discovery in time")

    def _fail(self, what: str) -> NoReturn:
        output = self._output() if self._log is not None else ""
        self.stop()
        raise ProviderUnavailable(f"oidc-provider {what}:\n{output}")

    # --- test-only routes (provider.mjs /__e2e/) -----------------------------------------------

    def _test_route(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.issuer + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    def requests(self) -> dict[str, int]:
        """How many times each ``METHOD /path`` reached the provider since the last reset."""
        counts: dict[str, int] = self._test_route("GET", "/__e2e/stats")["requests"]
        return counts

    def count(self, what: str) -> int:
        return self.requests().get(what, 0)

    def reset_counters(self) -> None:
        self._test_route("POST", "/__e2e/reset", {})

    def add_resources(self, resources: Mapping[str, Mapping[str, Any]]) -> None:
        """More RFC 8707 resource servers: ``{indicator: {format, alg, ttl, scope}}``."""
        self._test_route("PUT", "/__e2e/resources", dict(resources))

    @property
    def tls_issuer_origin(self) -> str:
        """The TLS listener's origin (same provider, same endpoints' paths)."""
        assert self.tls_port is not None, "the provider was started without TLS"
        return f"https://127.0.0.1:{self.tls_port}"

    def register_client(self, metadata: Mapping[str, Any]) -> None:
        """Register (or replace) a client, as RFC 7591 dynamic registration would; its
        ``client_secret`` is kept for ``basic``."""
        self._test_route("POST", "/__e2e/clients", dict(metadata))
        if "client_secret" in metadata:
            self.client_secrets[metadata["client_id"]] = metadata["client_secret"]

    def publish_keys(self, keys: list[SigningKey]) -> None:
        """Replace the signing keys; for each alg the first key listed signs new tokens."""
        self._test_route("PUT", "/__e2e/keys", jwk_set(keys))
        self.keys = list(keys)

    # --- what a client does ------------------------------------------------------------------

    def basic(self, client_id: str) -> dict[str, str]:
        """RFC 6749 §2.3.1: id and secret form-urlencoded, then HTTP Basic."""
        pair = f"{quote_plus(client_id)}:{quote_plus(self.client_secrets[client_id])}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}

    async def token_request(
        self,
        client_id: str,
        form: dict[str, str],
        headers: Mapping[str, str] | None = None,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> tuple[int, Any]:
        """POST /token with client_secret_basic (RFC 6749 §2.3.1); with ``tls`` (a context
        holding the client certificate) over the provider's TLS listener (RFC 8705 §3)."""
        headers = {**self.basic(client_id), **(headers or {})}
        origin = self.issuer if tls is None else self.tls_issuer_origin
        async with (
            aiohttp.ClientSession() as session,
            session.post(origin + "/token", data=form, headers=headers, ssl=tls or True) as r,
        ):
            return r.status, await r.json(content_type=None)

    async def client_credentials(
        self,
        resource: str,
        scope: str,
        client_id: str = "service",
        dpop_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> str:
        """RFC 6749 §4.4 with an RFC 8707 resource indicator; the access token. With
        ``dpop_key`` the token is bound to that key (RFC 9449 §5)."""
        form = {"grant_type": "client_credentials", "resource": resource, "scope": scope}
        extra = {"DPoP": dpop_proof(dpop_key, "POST", self.issuer + "/token")} if dpop_key else {}
        status, body = await self.token_request(client_id, form, extra)
        assert status == 200, body
        assert body["token_type"] == ("DPoP" if dpop_key else "Bearer"), body
        token: str = body["access_token"]
        return token

    async def revoke(self, token: str, client_id: str = "service") -> int:
        """RFC 7009 §2.1; the status (200 even for unknown tokens, §2.2)."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.issuer + "/token/revocation",
                data={"token": token, "token_type_hint": "access_token"},
                headers=self.basic(client_id),
            ) as r,
        ):
            return r.status

    async def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 §2.1, as the gateway's client; only for tests' own checks."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.issuer + "/token/introspection",
                data={"token": token},
                headers=self.basic("gateway"),
            ) as r,
        ):
            answer: dict[str, Any] = await r.json(content_type=None)
            return answer

    async def authorization_code(self, account: str, resource: str, scope: str) -> dict[str, Any]:
        """RFC 6749 §4.1 through the provider's development login and consent pages, as a
        browser would click through them; returns the token response (with a refresh token
        when ``offline_access`` is asked for)."""
        query = {
            "client_id": "app",
            "response_type": "code",
            "redirect_uri": REDIRECT_URI,
            "scope": scope,
            "resource": resource,
            "state": secrets.token_urlsafe(8),
            # OIDC Core §11: offline_access is granted only with prompt=consent.
            "prompt": "consent",
        }
        redirect = await click_through(self.issuer + "/auth?" + urlencode(query), account,
                                       REDIRECT_URI)  # fmt: skip
        assert "code" in redirect, redirect
        assert redirect["state"] == query["state"], redirect
        code = redirect["code"]
        status, body = await self.token_request(
            "app",
            {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
             "resource": resource},
        )  # fmt: skip
        assert status == 200, body
        return dict(body)

    async def refresh(self, refresh_token: str, resource: str) -> dict[str, Any]:
        """RFC 6749 §6 with an RFC 8707 resource indicator."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
                "resource": resource}  # fmt: skip
        status, body = await self.token_request("app", form)
        assert status == 200, body
        return dict(body)


async def click_through(url: str, account: str, redirect_uri: str) -> dict[str, str]:
    """Follow an authorization request through oidc-provider's development login and consent
    pages as a browser would (log in as ``account``, accept), up to the redirect to
    ``redirect_uri``, which is not followed; returns that redirect's query parameters
    (``code``, ``state``, RFC 9207 ``iss``; or ``error``)."""
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP-address host
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        for _ in range(12):
            async with browser.get(url, allow_redirects=False) as r:
                location = r.headers.get("Location")
                page = await r.text()
            if location and location.startswith(redirect_uri):
                return {
                    name: values[0] for name, values in parse_qs(urlsplit(location).query).items()
                }
            if location:
                url = urljoin(url, location)
                continue
            form = _Form.parse(page)
            fields = dict(form.fields)
            if fields.get("prompt") == "login":
                fields.update(login=account, password="anything")
            async with browser.post(
                urljoin(url, form.action), data=fields, allow_redirects=False
            ) as r:
                assert r.status in (302, 303), await r.text()
                url = urljoin(url, r.headers["Location"])
    raise AssertionError("the authorization flow never reached the redirect URI")


class _Form(HTMLParser):
    """The first form of an interaction page: its action and hidden/preset inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: list[tuple[str, str]] = []
        self._inside = False
        self._done = False

    @classmethod
    def parse(cls, page: str) -> _Form:
        form = cls()
        form.feed(page)
        assert form.action is not None, f"no form on the interaction page:\n{page[:500]}"
        return form

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and not self._done and self.action is None:
            self.action = values.get("action", "")
            self._inside = True
        elif tag == "input" and self._inside and values.get("name"):
            self.fields.append((values["name"], values.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self._inside:
            self._inside = False
            self._done = True
