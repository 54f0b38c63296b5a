"""Real host proxies for the forward-auth tests: nginx (``auth_request``), Traefik
(``ForwardAuth``) and Caddy (``forward_auth``), each in front of an upstream and asking the
gateway's decision service. Their configs are the README's "Forward auth" recipes, with
the ``Cookie`` copy a deployment with browser logins adds.

Each proxy runs as a child process in its own process group on a free loopback port, with
everything it writes under the test's temp dir. A missing binary skips its tests, except
under CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.support.processes import Children, free_port

IDENTITY_HEADERS = ("X-Auth-Subject", "X-Auth-Client-Id", "X-Auth-Scopes")


class ProxyUnavailable(Exception):
    """The binary is not installed here."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@dataclass
class HostProxy:
    kind: str  # nginx | traefik | caddy
    port: int
    log: Path
    proc: object

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise ProxyUnavailable(f"{name} is not installed (tests/run.sh installs it)")
    return found


def nginx_conf(directory: Path, port: int, upstream: int, decision: int) -> Path:
    """The README recipe, plus a cached variant under /cached/ (proxy_cache on the check)."""
    temp = "\n".join(
        f"  {kind}_temp_path {directory}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    sets = "\n".join(
        f"    auth_request_set $gw_{i} $upstream_http_{name.lower().replace('-', '_')};\n"
        f"    proxy_set_header {name} $gw_{i};"
        for i, name in enumerate((*IDENTITY_HEADERS, "Cookie"))
    )
    check = """
    internal;
    proxy_pass http://gateway_decision/nginx;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_pass_request_body off;
    proxy_set_header Content-Length "";
    proxy_set_header X-Original-URI $request_uri;
    proxy_set_header X-Original-Method $request_method;
    proxy_set_header X-Forwarded-Host $host;"""
    conf = directory / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
{temp}
  proxy_cache_path {directory}/cache levels=1:2 keys_zone=gateway_decisions:1m max_size=10m;
  upstream gateway_decision {{ server 127.0.0.1:{decision}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /_gateway_check;
{sets}
      auth_request_set $gw_dpop_nonce $upstream_http_dpop_nonce;
      add_header DPoP-Nonce $gw_dpop_nonce always;
      error_page 500 =503 /_gateway_unavailable;
      proxy_pass http://127.0.0.1:{upstream};
    }}
    location /cached/ {{
      auth_request /_gateway_check_cached;
{sets}
      proxy_pass http://127.0.0.1:{upstream};
    }}
    location = /_gateway_check {{{check}
    }}
    location = /_gateway_check_cached {{{check}
      proxy_cache gateway_decisions;
      proxy_cache_key "$request_method $host $request_uri $http_authorization $http_cookie";
    }}
    location = /_gateway_unavailable {{
      internal;
      return 503 '{{"title":"Service Unavailable","status":503}}';
    }}
  }}
}}
""")
    return conf


def traefik_conf(directory: Path, port: int, upstream: int, decision: int) -> Path:
    dynamic = directory / "dynamic.yaml"
    names = ", ".join((*IDENTITY_HEADERS, "Cookie"))
    dynamic.write_text(f"""
http:
  routers:
    all:
      rule: "PathPrefix(`/`)"
      entryPoints: [web]
      middlewares: [gateway]
      service: app
  middlewares:
    gateway:
      forwardAuth:
        address: "http://127.0.0.1:{decision}/traefik"
        authResponseHeaders: [{names}]
        authResponseHeadersRegex: "(?i)^x[-_]auth[-_]"
  services:
    app:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:{upstream}"
""")
    static = directory / "traefik.yaml"
    static.write_text(f"""
entryPoints:
  web:
    address: "127.0.0.1:{port}"
providers:
  file:
    filename: "{dynamic}"
log:
  level: ERROR
global:
  checkNewVersion: false
  sendAnonymousUsage: false
""")
    return static


def caddy_conf(directory: Path, port: int, upstream: int, decision: int) -> Path:
    """``forward_auth`` spelled out (README): copy each identity header only when the check
    answered it. Caddy before 2.10 sets the literal placeholder text when it is absent."""
    copies = "\n".join(
        f"        @has{i} not vars_regexp {{rp.header.{name}}} ^$\n"
        f"        request_header @has{i} {name} {{rp.header.{name}}}"
        for i, name in enumerate((*IDENTITY_HEADERS, "Cookie"))
    )
    conf = directory / "Caddyfile"
    conf.write_text(f"""
{{
  admin off
  auto_https off
}}
http://:{port} {{
  bind 127.0.0.1
  route {{
    # Clients never send identity headers (any case, '_' for '-'); then ask the gateway.
    request_header -X-Auth-*
    request_header -X_Auth_*
    reverse_proxy 127.0.0.1:{decision} {{
      method GET
      rewrite /caddy
      header_up X-Forwarded-Method {{method}}
      header_up X-Forwarded-Uri {{uri}}
      @allowed status 2xx
      handle_response @allowed {{
        @nocookie vars_regexp {{rp.header.Cookie}} ^$
        request_header @nocookie -Cookie
{copies}
      }}
    }}
    reverse_proxy 127.0.0.1:{upstream}
  }}
}}
""")
    return conf


def start(
    kind: str, children: Children, directory: Path, upstream: int, decision: int
) -> HostProxy:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "proxy.log"
    if kind == "nginx":
        conf = nginx_conf(directory, port, upstream, decision)
        argv = [_binary("nginx"), "-c", str(conf), "-p", str(directory),
                "-e", str(directory / "error.log")]  # fmt: skip
        log = directory / "error.log"
    elif kind == "traefik":
        conf = traefik_conf(directory, port, upstream, decision)
        argv = [_binary("traefik"), f"--configFile={conf}"]
    elif kind == "caddy":
        conf = caddy_conf(directory, port, upstream, decision)
        argv = [_binary("caddy"), "run", "--config", str(conf), "--adapter", "caddyfile"]
    else:
        raise ValueError(kind)
    home = directory / "home"  # Caddy's storage and Traefik's plugins stay in the temp dir
    home.mkdir(exist_ok=True)
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home), "XDG_CONFIG_HOME": str(home)}
    proc = children.start(argv, stdout=directory / "proxy.log", stderr=directory / "proxy.log",
                          cwd=directory, env=env)  # fmt: skip
    return HostProxy(kind, port, log if kind == "nginx" else directory / "proxy.log", proc)


async def wait_serving(proxy: HostProxy, timeout: float = 20.0) -> None:
    """Until the proxy routes a request (Traefik loads its file provider after listening):
    anything but a connection error or the proxy's own 404 for an unrouted path."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(proxy.url + "/public/ready") as response:
                    if response.status != 404:
                        return
            except aiohttp.ClientError:
                pass
            exited = proxy.proc.poll() is not None  # type: ignore[attr-defined]
            if exited or asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{proxy.kind} did not start:\n{proxy.log_tail()}")
            await asyncio.sleep(0.1)
