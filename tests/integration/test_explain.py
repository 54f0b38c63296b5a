"""``gateway explain`` as an operator runs it: a real subprocess against a real issuer."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support.issuer import TestIssuer
from tests.support.upstream import RecordingUpstream

ROOT = Path(__file__).resolve().parents[2]


def config(issuer: TestIssuer, keys: dict[str, Any]) -> dict[str, Any]:
    return {
        "upstreams": {"app": {"url": "http://127.0.0.1:9"}},
        "issuers": [{"issuer": issuer.url, "keys": keys, "audiences": [issuer.audience]}],
        "routes": [
            {"name": "public", "match": {"path": {"prefix": "/public"}}, "upstream": "app",
             "auth": "anonymous"},
            {"name": "admin", "match": {"path": {"prefix": "/admin"}}, "upstream": "app",
             "require": {"scopes": {"all": ["admin"]}, "claims": {"dept": {"equals": "ops"}}}},
            {"name": "reports", "match": {"path": "/reports", "methods": ["GET"]},
             "upstream": "app", "require": {"scopes": {"any": ["read", "audit"]}}},
        ],
    }  # fmt: skip


async def explain(path: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "explain", "-c", str(path), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


async def test_an_allow_shows_route_steps_and_headers(tmp_path: Path, issuer: TestIssuer):
    path = write(tmp_path, config(issuer, {"jwks_uri": issuer.jwks_url}))
    token = issuer.mint(scope="read", claims={"sub": "reader"})
    code, out = await explain(path, "GET", "http://api.example/./reports?x=1", "--token", token)
    assert code == 0, out
    assert "path:     /reports (normalised)" in out
    assert "route:    2 reports: GET * exact:/reports" in out
    assert f"issuer={issuer.url}" in out and f"kid={issuer.default_kid('RS256')}" in out
    assert "signature and claims   ok" in out
    assert "any=audit read" in out and "present=read" in out
    assert "decision: allow (ok)" in out
    assert "  X-Auth-Subject: reader" in out
    assert token not in out and token[:30] not in out  # never the token itself
    assert issuer.jwks_fetches >= 1  # fetched live


async def test_a_deny_names_the_failing_step(tmp_path: Path, issuer: TestIssuer):
    path = write(tmp_path, config(issuer, {"jwks_uri": issuer.jwks_url}))
    token_file = tmp_path / "token"
    token_file.write_text(issuer.mint(scope="admin", claims={"dept": "sales"}) + "\n")
    code, out = await explain(path, "DELETE", "/admin/users", "-H", "Host: api.example",
                              "--token-file", str(token_file))  # fmt: skip
    assert code == 1, out
    assert "claim                  fail      claim=dept rule=equals 'ops'" in out
    assert "decision: deny 403 claims_rejected" in out
    assert 'challenge: Bearer realm="gateway", error="insufficient_scope"' in out


async def test_no_route_and_wrong_method_show_the_nearest(tmp_path: Path, issuer: TestIssuer):
    path = write(tmp_path, config(issuer, {"jwks_uri": issuer.jwks_url}))
    code, out = await explain(path, "POST", "/reports")
    assert code == 1
    assert "deny 405 method_not_allowed" in out
    assert "2 reports: GET" in out and "allowed methods for this path: GET, HEAD" in out
    code, out = await explain(path, "GET", "/adminx/y")
    assert code == 1
    assert "deny 404 no_route" in out and "nearest candidates" in out
    code, out = await explain(path, "GET", "/public/%2e%2e%2fadmin")
    assert code == 1 and "deny 400 invalid_path" in out


async def test_offline_uses_only_keys_in_the_config(tmp_path: Path, issuer: TestIssuer):
    token = issuer.mint(scope="read")
    inline = write(tmp_path, config(issuer, {"jwks": issuer.jwks()}))
    fetches = issuer.jwks_fetches
    code, out = await explain(inline, "GET", "/reports", "--token", token, "--offline")
    assert code == 0, out
    assert "(offline: nothing fetched)" in out
    live = write(tmp_path, config(issuer, {"jwks_uri": issuer.jwks_url}))
    code, out = await explain(live, "GET", "/reports", "--token", token, "--offline")
    assert code == 1, out
    assert "deny 503 keys_unavailable" in out
    assert issuer.jwks_fetches == fetches  # nothing was fetched


async def test_a_config_error_exits_2(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"upstreams": {}, "routes": []}))
    code, out = await explain(bad, "GET", "/")
    assert code == 2 and "bad.yaml" in out
    code, out = await explain(bad, "GET", "/", "-H", "no colon")
    assert code == 2 and "expected 'Name: value'" in out


async def test_explain_and_the_proxy_agree(tmp_path: Path, issuer: TestIssuer):
    """The explanation is the decision: the same request through a running gateway."""
    from tests.support.forward_auth import raw_request
    from tests.support.gateway import running_gateway, wait_ready

    upstream = RecordingUpstream()
    await upstream.start()
    try:
        data = config(issuer, {"jwks_uri": issuer.jwks_url})
        data["upstreams"]["app"]["url"] = upstream.url
        data["listen"] = {"host": "127.0.0.1", "port": 0}
        data["admin"] = {"host": "127.0.0.1", "port": 0}
        path = write(tmp_path, data)
        tokens = [issuer.mint(scope="admin", claims={"dept": "ops"}), issuer.mint(scope="read")]
        async with running_gateway(tmp_path, data) as gw:
            await wait_ready(gw)
            for token in tokens:
                got = await raw_request(gw.proxy_port, "GET", "/admin/x",
                                        [("Authorization", f"Bearer {token}")])  # fmt: skip
                code, out = await explain(path, "GET", "/admin/x", "--token", token)
                assert (code == 0) == (got.status == 200), out
                assert (f"deny {got.status}" in out) == (got.status != 200), out
    finally:
        await upstream.close()
