"""The de-facto forwarding headers beyond RFC 7239 and X-Forwarded-For/-Proto/-Host: which
ones only a trusted proxy may send, and which no one may (RFC 9110 §7.6, RFC 9440 §2).

Front proxies, CDNs and load balancers tell the service behind them about the original
request in headers of their own; upstream frameworks read them for IP allow-lists, rate
limits, redirects, "secure" cookies and routing. A client that reaches the gateway directly
could otherwise choose its own address, scheme, host or path. Each name is listed with who
writes or reads it, so that the list can be checked and extended with judgement; site-specific
names come from ``forwarding.proxy_only_headers``.
"""

from __future__ import annotations

# Lowercase names, each with who reads or writes it. Client address: an allow-list or rate
# limit keyed on these is the client's to choose unless a trusted proxy wrote them.
_CLIENT_ADDRESS = frozenset(
    {
        "x-real-ip",  # nginx realip, Tornado xheaders, many frameworks
        "x-client-ip",  # request-ip (Node), Oracle WAAS
        "client-ip",  # Rails ActionDispatch::RemoteIp (HTTP_CLIENT_IP)
        "true-client-ip",  # Akamai, Cloudflare Enterprise
        "cf-connecting-ip",  # Cloudflare
        "cf-connecting-ipv6",  # Cloudflare (pseudo-IPv4 mode)
        "fastly-client-ip",  # Fastly
        "x-cluster-client-ip",  # Rackspace / Riverbed load balancers, request-ip
        "x-proxyuser-ip",  # IP-spoofing probe lists (Param Miner)
        "x-appengine-user-ip",  # Google App Engine
        "x-azure-clientip",  # Azure Front Door
        "x-azure-socketip",  # Azure Front Door
        "fly-client-ip",  # Fly.io
        "x-original-forwarded-for",  # ingress-nginx: the X-Forwarded-For it received
        "x-envoy-external-address",  # Envoy: the trusted client address
        "x-forwarded",  # request-ip (Node): a Forwarded-style for=
        "forwarded-for",  # request-ip (Node)
        "x-originating-ip",  # Microsoft Exchange; IP-spoofing probe lists
        "x-remote-ip",  # IP-spoofing probe lists
        "x-remote-addr",  # IP-spoofing probe lists
    }
)
# Scheme and TLS: redirects, "secure" cookies and HTTPS-only checks.
_CLIENT_SCHEME = frozenset(
    {
        "x-forwarded-protocol",  # gunicorn secure_scheme_headers, Django setups
        "x-forwarded-scheme",  # Rack, ingress-nginx
        "x-forwarded-ssl",  # Rack, gunicorn
        "x-url-scheme",  # PHP proxy-aware scheme detection
        "x-scheme",  # Tornado xheaders, ingress-nginx
        "front-end-https",  # Microsoft ISA / OWA, PHP scheme detection
        "x-forwarded-port",  # Rack, Spring, Werkzeug ProxyFix
    }
)
# Host: absolute URLs, virtual-host routing, password-reset links.
_CLIENT_HOST = frozenset(
    {
        "x-forwarded-server",  # Apache mod_proxy
        "x-original-host",  # Azure App Service, IIS ARR
        "x-host",  # host-header probe lists (Param Miner)
        "x-http-host-override",  # host-header probe lists (Param Miner)
    }
)
# The original request line as a front proxy saw it: routing and redirects on some upstreams.
_ORIGINAL_REQUEST = frozenset(
    {
        "x-forwarded-prefix",  # Spring, Werkzeug ProxyFix, ASP.NET Core path base
        "x-forwarded-path",  # Kong
        "x-forwarded-uri",  # Traefik (forward auth)
        "x-forwarded-method",  # Traefik (forward auth)
        "x-original-uri",  # ingress-nginx, nginx auth_request setups
        "x-original-method",  # ingress-nginx (external auth)
        "x-envoy-original-path",  # Envoy (after a path rewrite)
        "x-envoy-internal",  # Envoy: "this request is internal"
    }
)
# A client certificate a TLS-terminating proxy verified. RFC 9440 §2: such a proxy "MUST"
# sanitize Client-Cert and Client-Cert-Chain from what it receives.
_CLIENT_CERTIFICATE = frozenset(
    {
        "client-cert",  # RFC 9440
        "client-cert-chain",  # RFC 9440
        "x-forwarded-client-cert",  # Envoy
        "x-client-cert",  # common TLS-terminating proxy setups
        "x-ssl-client-cert",  # common nginx ($ssl_client_escaped_cert) setups
        "x-arr-clientcert",  # IIS ARR, Azure App Service
    }
)
PROXY_ONLY: frozenset[str] = (
    _CLIENT_ADDRESS | _CLIENT_SCHEME | _CLIENT_HOST | _ORIGINAL_REQUEST | _CLIENT_CERTIFICATE
)
NEVER_FORWARDED: frozenset[str] = frozenset(
    {
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    }
)
