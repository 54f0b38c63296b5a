"""Every forwarding-family header name the gateway knows, each with a sample value.

Mutation testing does not mutate module-level constants, so the tests that use these tables
name each member of ``gateway.proxy.forwarding_headers``' sets (and check that the tables and
the sets agree): a member dropped from the code, or added without a test, fails a test.
"""

from __future__ import annotations

NEVER_FORWARDED_TABLE = [
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
    ("X-Method-Override", "DELETE"),
]
PROXY_ONLY_TABLE = [
    # client address
    ("X-Real-IP", "127.0.0.1"),
    ("X-Client-IP", "127.0.0.1"),
    ("Client-IP", "127.0.0.1"),
    ("True-Client-IP", "127.0.0.1"),
    ("CF-Connecting-IP", "127.0.0.1"),
    ("CF-Connecting-IPv6", "::1"),
    ("Fastly-Client-IP", "127.0.0.1"),
    ("X-Cluster-Client-IP", "127.0.0.1"),
    ("X-ProxyUser-Ip", "127.0.0.1"),
    ("X-AppEngine-User-IP", "127.0.0.1"),
    ("X-Azure-ClientIP", "127.0.0.1"),
    ("X-Azure-SocketIP", "127.0.0.1"),
    ("Fly-Client-IP", "127.0.0.1"),
    ("X-Original-Forwarded-For", "127.0.0.1"),
    ("X-Envoy-External-Address", "127.0.0.1"),
    ("X-Forwarded", "for=127.0.0.1"),
    ("Forwarded-For", "127.0.0.1"),
    ("X-Originating-IP", "127.0.0.1"),
    ("X-Remote-IP", "127.0.0.1"),
    ("X-Remote-Addr", "127.0.0.1"),
    # scheme and TLS
    ("X-Forwarded-Protocol", "https"),
    ("X-Forwarded-Scheme", "https"),
    ("X-Forwarded-Ssl", "on"),
    ("X-Url-Scheme", "https"),
    ("X-Scheme", "https"),
    ("Front-End-Https", "on"),
    ("X-Forwarded-Port", "443"),
    # host
    ("X-Forwarded-Server", "trusted.example"),
    ("X-Original-Host", "admin.internal"),
    ("X-Host", "admin.internal"),
    ("X-HTTP-Host-Override", "admin.internal"),
    # the original request
    ("X-Forwarded-Prefix", "/internal"),
    ("X-Forwarded-Path", "/admin"),
    ("X-Forwarded-Uri", "/admin"),
    ("X-Forwarded-Method", "DELETE"),
    ("X-Original-URI", "/admin"),
    ("X-Original-Method", "DELETE"),
    ("X-Envoy-Original-Path", "/admin"),
    ("X-Envoy-Internal", "true"),
    # client certificates
    ("Client-Cert", ":MIIB:"),
    ("Client-Cert-Chain", ":MIIB:"),
    ("X-Forwarded-Client-Cert", 'Hash=abc;Subject="CN=admin"'),
    ("X-Client-Cert", "MIIB"),
    ("X-SSL-Client-Cert", "MIIB"),
    ("X-ARR-ClientCert", "MIIB"),
]
