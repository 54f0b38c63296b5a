"""OAuth enforcement through the running gateway: RFC 6750 answers, policies, identity headers.

Every refusal is checked twice: what the client got (status, exact challenge, problem body)
and that the upstream received nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from yarl import URL

from tests.support.gateway import running_gateway, wait_ready
from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream

REALM = "api"

# RFC 9449 / RFC 8705 examples: well-formed bindings (base64url SHA-256 digests).
JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
X5T = "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg0"


def gateway_config(issuer: TestIssuer, upstream: RecordingUpstream, **issuer_extra: Any) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"url": upstream.url}},
        "issuers": [
            {
                "issuer": issuer.url,
                "keys": {"discovery": True},
                "audiences": ["api://default"],
                "refresh": {"unknown_kid_interval": "30s"},
                **issuer_extra,
            }
        ],
        "defaults": {"realm": REALM},
        "routes": [
            {"match": {"path": "/public/**"}, "upstream": "app", "auth": "anonymous"},
            {"match": {"path": "/whoami"}, "upstream": "app", "auth": "anonymous",
             "identify_anonymous": True},
            {"match": {"path": "/read/**"}, "upstream": "app",
             "require": {"scopes": {"all": ["read"]}}},
            {"match": {"path": "/both/**"}, "upstream": "app",
             "require": {"scopes": {"all": ["read", "write"]}}},
            {"match": {"path": "/any/**"}, "upstream": "app",
             "require": {"scopes": {"any": ["a", "b"]}}},
            {"match": {"path": "/admin/**"}, "upstream": "app",
             "require": {"claims": {"groups": {"contains": "admin"}}}},
            {"match": {"path": "/query/**"}, "upstream": "app", "tokens": {"query": True}},
            {"match": {"path": "/form/**"}, "upstream": "app", "tokens": {"form": True}},
            {"match": {"path": "/noauthz/**"}, "upstream": "app", "forward_authorization": False},
            {"match": {"path": "/custom/**"}, "upstream": "app",
             "identity_headers": {"X-User": "{sub}", "X-Claims": "{@claims}",
                                  "X-Name": "{claims.name}"}},
            {"match": {"path": {"prefix": "/"}}, "upstream": "app"},
        ],
    }  # fmt: skip


@pytest.fixture
async def gateway(tmp_path: Path, issuer: TestIssuer, upstream: RecordingUpstream):
    async with running_gateway(tmp_path, gateway_config(issuer, upstream)) as gw:
        await wait_ready(gw)
        yield gw


def url(gw, path: str) -> URL:
    return URL(f"http://127.0.0.1:{gw.proxy_port}{path}", encoded=True)


async def call(
    gw,
    path: str,
    token: str | None = None,
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    data: Any = None,
):
    """One request; returns (status, headers, body as parsed JSON or text)."""
    all_headers = list(headers or [])
    if token is not None:
        all_headers.append(("Authorization", f"Bearer {token}"))
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url(gw, path), headers=all_headers, data=data) as r:
            text = await r.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            return r.status, r.headers, body


# --- allowed ---------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
async def test_valid_token_reaches_upstream_with_identity_headers(gateway, issuer, upstream, alg):
    token = issuer.mint({"sub": "alice", "client_id": "svc-a"}, alg=alg, scope="read write")
    status, _, body = await call(gateway, "/read/items", token)
    assert status == 200, body
    received = upstream.last
    assert received.header("X-Auth-Subject") == "alice"
    assert received.header("X-Auth-Client-Id") == "svc-a"
    assert received.header("X-Auth-Scopes") == "read write"
    assert received.header("Authorization") == f"Bearer {token}"


async def test_client_id_falls_back_to_azp(gateway, issuer, upstream):
    token = issuer.mint({"client_id": None, "azp": "web-app"}, scope="read")
    status, _, _ = await call(gateway, "/read/x", token)
    assert status == 200
    assert upstream.last.header("X-Auth-Client-Id") == "web-app"


async def test_custom_templates_and_whole_claim_set(gateway, issuer, upstream):
    token = issuer.mint({"sub": "bob", "name": "José\r\nX-Injected: 1"})
    status, _, _ = await call(gateway, "/custom/x", token)
    assert status == 200
    received = upstream.last
    assert received.header("X-User") == "bob"
    assert received.header("X-Name") == "Jos%C3%A9%0D%0AX-Injected: 1"
    assert received.header("X-Injected") is None
    claims = json.loads(base64.urlsafe_b64decode(received.header("X-Claims") + "=="))
    assert claims["sub"] == "bob"


async def test_scope_any_accepts_either(gateway, issuer, upstream):
    assert (await call(gateway, "/any/x", issuer.mint(scope="b")))[0] == 200
    assert (await call(gateway, "/any/x", issuer.mint(scope="a c")))[0] == 200


async def test_scp_array_claim_counts_as_scopes(gateway, issuer, upstream):
    token = issuer.mint({"scope": None, "scp": ["read", "other"]})
    assert (await call(gateway, "/read/x", token))[0] == 200


async def test_claim_rule_contains(gateway, issuer, upstream):
    assert (await call(gateway, "/admin/x", issuer.mint({"groups": ["dev", "admin"]})))[0] == 200
    status, headers, body = await call(gateway, "/admin/x", issuer.mint({"groups": ["dev"]}))
    assert status == 403
    assert body["status"] == 403
    assert headers["WWW-Authenticate"].startswith(
        f'Bearer realm="{REALM}", error="insufficient_scope"'
    )
    assert len(upstream.received) == 1


async def test_authorization_can_be_withheld_from_upstream(gateway, issuer, upstream):
    status, _, _ = await call(gateway, "/noauthz/x", issuer.mint())
    assert status == 200
    assert upstream.last.header("Authorization") is None
    assert upstream.last.header("X-Auth-Subject") == "user-1"


# --- RFC 6750 §3 answers -----------------------------------------------------------------


async def test_no_token_gets_bare_challenge(gateway, upstream):
    status, headers, body = await call(gateway, "/read/x")
    assert status == 401
    assert headers["WWW-Authenticate"] == f'Bearer realm="{REALM}"'
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["Cache-Control"] == "no-store"
    assert body["status"] == 401
    assert upstream.received == []


async def test_other_scheme_is_no_bearer_credentials(gateway, upstream):
    status, headers, _ = await call(gateway, "/read/x", headers=[("Authorization", "Basic dTpw")])
    assert status == 401
    assert headers["WWW-Authenticate"] == f'Bearer realm="{REALM}"'
    assert upstream.received == []


async def test_missing_scope_gets_403_with_required_scope(gateway, issuer, upstream):
    status, headers, body = await call(gateway, "/both/x", issuer.mint(scope="read"))
    assert status == 403
    assert headers["WWW-Authenticate"] == (
        f'Bearer realm="{REALM}", error="insufficient_scope", error_description='
        '"The access token does not grant the scope this route needs.", scope="read write"'
    )
    assert body["title"] == "Forbidden"
    assert upstream.received == []


async def test_lowercase_scheme_is_accepted(gateway, issuer, upstream):
    token = issuer.mint()
    status, _, _ = await call(gateway, "/x", headers=[("Authorization", f"bearer {token}")])
    assert status == 200


async def test_two_authorization_headers_is_invalid_request(gateway, issuer, upstream):
    token = issuer.mint()
    headers = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    status, www, _ = await call(gateway, "/x", headers=headers)
    assert status == 400
    assert www["WWW-Authenticate"].startswith(f'Bearer realm="{REALM}", error="invalid_request"')
    assert upstream.received == []


def _bad_tokens(issuer: TestIssuer) -> list[tuple[str, str, str]]:
    """(id, token, expected reason fragment) for tokens that must get invalid_token."""
    rsa_kid = issuer.default_kid("RS256")
    rsa_public_pem = (
        issuer.signing_keys[rsa_kid]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return [
        ("expired", issuer.mint(exp_in=-600), "expired"),
        ("not-yet-valid", issuer.mint({"nbf": 9999999999}), "not valid yet"),
        ("issued-in-future", issuer.mint({"iat": 9999999999}), "future"),
        ("wrong-audience", issuer.mint(audience="api://other"), "audience"),
        ("alg-none", issuer.mint(alg="none"), ""),
        ("alg-NoNe", issuer.mint(alg="none", headers={"alg": "NoNe"}), ""),
        ("hs256-keyed-with-rsa-public-pem",
         issuer.mint(alg="HS256", key=rsa_public_pem, headers={"kid": rsa_kid}), ""),
        ("embedded-jwk", issuer.mint(headers={"jwk": {"kty": "oct", "k": "AA"}, "kid": "x"}), ""),
        ("unknown-crit", issuer.mint(headers={"crit": ["exp"], "exp": 1}), ""),
        ("bad-signature", issuer.mint()[:-6] + "AAAAAA", "signature"),
        ("jwe-five-parts", "a.b.c.d.e", ""),
        ("garbage", "not-a-jwt-at-all", ""),
        ("dpop-bound-cnf-jkt", issuer.mint({"cnf": {"jkt": JKT}}), "bound to a DPoP key"),
        ("mtls-bound-cnf-x5t", issuer.mint({"cnf": {"x5t#S256": X5T}}), "bound to a client"),
        ("malformed-cnf-jkt", issuer.mint({"cnf": {"jkt": "0ZcOCORZNYy"}}), "cnf.jkt"),
        ("unknown-cnf-method", issuer.mint({"cnf": {"jwk": {"kty": "EC"}}}), "bound to a key"),
    ]  # fmt: skip


async def test_invalid_tokens_get_invalid_token_and_never_reach_upstream(gateway, issuer, upstream):
    for case_id, token, fragment in _bad_tokens(issuer):
        status, headers, body = await call(gateway, "/read/x", token)
        assert status == 401, case_id
        challenge = headers["WWW-Authenticate"]
        assert challenge.startswith(
            f'Bearer realm="{REALM}", error="invalid_token", error_description="'
        ), case_id
        assert fragment in challenge, (case_id, challenge)
        assert token not in challenge and token not in json.dumps(body), case_id
    assert upstream.received == []


async def test_oversized_token_is_refused(gateway, upstream):
    status, _, _ = await call(gateway, "/read/x", "A" * 8000 + "." + "B" * 1000 + ".C")
    assert status in (400, 401, 431)
    assert upstream.received == []


# --- token sources (RFC 6750 §2) ---------------------------------------------------------


async def test_query_token_ignored_when_disabled(gateway, issuer, upstream):
    status, headers, _ = await call(gateway, f"/read/x?access_token={issuer.mint()}")
    assert status == 401
    assert headers["WWW-Authenticate"] == f'Bearer realm="{REALM}"'
    assert upstream.received == []


async def test_query_token_used_when_enabled(gateway, issuer, upstream):
    status, _, _ = await call(gateway, f"/query/x?access_token={issuer.mint()}")
    assert status == 200
    assert upstream.last.header("X-Auth-Subject") == "user-1"


async def test_token_in_header_and_query_is_invalid_request(gateway, issuer, upstream):
    token = issuer.mint()
    status, _, _ = await call(gateway, f"/query/x?access_token={token}", token)
    assert status == 400
    assert upstream.received == []


async def test_form_token_used_when_enabled_and_body_forwarded(gateway, issuer, upstream):
    token = issuer.mint()
    status, _, _ = await call(gateway, "/form/x", method="POST",
                              data={"access_token": token, "other": "1"})  # fmt: skip
    assert status == 200
    assert upstream.last.header("X-Auth-Subject") == "user-1"
    assert upstream.last.body_size > 0


async def test_form_token_ignored_where_disabled(gateway, issuer, upstream):
    status, _, _ = await call(
        gateway, "/read/x", method="POST", data={"access_token": issuer.mint()}
    )
    assert status == 401
    assert upstream.received == []


# --- identity header spoofing ------------------------------------------------------------


async def test_client_cannot_spoof_identity_headers(gateway, issuer, upstream):
    spoofed = [
        ("X-Auth-Subject", "admin"),
        ("x-auth-subject", "admin2"),
        ("X_Auth_Subject", "admin3"),
        ("X-Auth-Role", "root"),
        ("Connection", "X-Auth-Client-Id"),
        ("X-Auth-Client-Id", "evil"),
    ]
    status, _, _ = await call(gateway, "/read/x", issuer.mint({"sub": "alice"}), headers=spoofed)
    assert status == 200
    received = upstream.last
    assert received.headers_named("X-Auth-Subject") == ["alice"]
    assert received.headers_named("X-Auth-Client-Id") == ["client-1"]
    assert received.header("X-Auth-Role") is None
    assert received.header("X_Auth_Subject") is None


async def test_anonymous_route_strips_spoofed_identity(gateway, upstream):
    status, _, _ = await call(gateway, "/public/x", headers=[("X-Auth-Subject", "admin")])
    assert status == 200
    assert upstream.last.header("X-Auth-Subject") is None


async def test_anonymous_route_ignores_bad_token(gateway, upstream):
    status, _, _ = await call(gateway, "/public/x", "garbage.token.here")
    assert status == 200
    assert upstream.last.header("X-Auth-Subject") is None


async def test_anonymous_route_can_identify_a_valid_token(gateway, issuer, upstream):
    status, _, _ = await call(gateway, "/whoami", issuer.mint({"sub": "carol"}))
    assert status == 200
    assert upstream.last.header("X-Auth-Subject") == "carol"
    status, _, _ = await call(gateway, "/whoami", issuer.mint(exp_in=-600))
    assert status == 200
    assert upstream.last.header("X-Auth-Subject") is None


# --- key sets ----------------------------------------------------------------------------


async def test_unknown_kid_burst_causes_one_refetch(gateway, issuer, upstream):
    before = issuer.jwks_fetches
    new_kid = issuer.rotate("RS256")
    token = issuer.mint(kid=new_kid)
    results = await asyncio.gather(*(call(gateway, "/x", token) for _ in range(100)))
    assert {status for status, _, _ in results} == {200}
    assert issuer.jwks_fetches == before + 1


async def test_jwks_down_at_start_means_not_ready_and_503_then_recovers(tmp_path, issuer, upstream):
    issuer.jwks_status = 500
    config = gateway_config(issuer, upstream, refresh={"retry": "100ms"})
    async with running_gateway(tmp_path, config) as gw:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/readyz") as r:
                assert r.status == 503
        status, _, body = await call(gw, "/read/x", issuer.mint())
        assert status == 503
        assert body["status"] == 503
        assert upstream.received == []
        issuer.jwks_status = 200
        await wait_ready(gw)
        status, _, _ = await call(gw, "/read/x", issuer.mint())
        assert status == 200


async def test_hmac_only_with_configured_secret(tmp_path, issuer, upstream):
    config = gateway_config(issuer, upstream, algorithms=["HS256"], hmac_secret=issuer.hmac_secret,
                            keys={"jwks": {"keys": []}})  # fmt: skip
    async with running_gateway(tmp_path, config) as gw:
        assert (await call(gw, "/x", issuer.mint(alg="HS256")))[0] == 200
        assert (await call(gw, "/x", issuer.mint(alg="RS256")))[0] == 401
        wrong = issuer.mint(alg="HS256", key=b"x" * 48)
        assert (await call(gw, "/x", wrong))[0] == 401


async def test_reload_while_jwks_is_down_keeps_the_running_keys(tmp_path, issuer, upstream):
    from gateway.config.loader import load_config

    async with running_gateway(tmp_path, gateway_config(issuer, upstream)) as gw:
        await wait_ready(gw)
        issuer.jwks_status = 500
        await gw.reload(load_config(tmp_path / "gateway.yaml", env={}), wait_for_keys=0.2)
        assert gw.holder.current.ready()[0]
        status, _, _ = await call(gw, "/read/x", issuer.mint())
        assert status == 200
