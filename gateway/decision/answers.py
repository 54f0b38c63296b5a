"""A verdict in the shape each HTTP host proxy understands (RFC 6750 §3, RFC 9457, RFC 9111).

* allow: ``200`` with the identity headers (nginx ``auth_request_set``, Traefik
  ``authResponseHeaders``, Caddy ``copy_headers``, Envoy ``allowed_upstream_headers``) and
  ``Cache-Control``: ``private, max-age=N`` where decision caching is on, else ``no-store``.
  nginx also gets ``X-Accel-Expires`` (the same N, or 0), which its ``proxy_cache``
  honours over ``private``. Envoy also gets ``x-envoy-auth-headers-to-remove``: the
  client's identity headers and their aliases, which it then removes upstream.
* deny, Traefik, Caddy, Envoy: the very problem response the proxy gives (status, RFC 6750
  challenge, RFC 9457 body), which they relay to the client.
* deny, nginx: nginx "denies with the corresponding error code" only for 401 and 403 and
  turns any other status into a 500. 401 and 403 keep their challenge; 503 (an issuer that
  cannot be reached: fail closed) stays 503, which nginx shows as 500 unless the location
  maps it (README "Forward auth"); every other refusal (400, 404, 405) becomes 403, with
  the proxy's status in ``X-Gateway-Status``. The reason is in ``X-Gateway-Reason``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth.decide import Allow
from gateway.decision.forwarded import HostProxy
from gateway.decision.verdict import Verdict
from gateway.problems import SERVER_NAME, render_problem

Header = tuple[str, str]
ENVOY_REMOVE = "x-envoy-auth-headers-to-remove"
# nginx auth_request: "If the subrequest returns a 401 or 403 response code, the access is
# denied with the corresponding error code. Any other response code returned by the
# subrequest is considered an error."
_NGINX_DENIALS = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    headers: tuple[Header, ...]
    body: bytes


def cache_control(max_age: int) -> str:
    """RFC 9111 §5.2.2.7 ``private``: only the host proxy in front of one upstream may keep
    it, and only under a key that includes the credentials (README "Decision caching")."""
    return f"private, max-age={max_age}" if max_age > 0 else "no-store"


def http_answer(kind: HostProxy, verdict: Verdict, realm: str, request_id: str) -> HttpAnswer:
    decision = verdict.decision
    if isinstance(decision, Allow):
        headers = list(decision.headers)
        if kind == "nginx":
            # nginx will not store a "private" answer unless told to: X-Accel-Expires takes
            # precedence over Cache-Control for proxy_cache (0: never store), but only when
            # it comes first (nginx reads the fields in order).
            headers.append(("X-Accel-Expires", str(verdict.max_age)))
        headers.append(("Cache-Control", cache_control(verdict.max_age)))
        if kind == "envoy-http" and verdict.remove_headers:
            headers.append((ENVOY_REMOVE, ",".join(verdict.remove_headers)))
        headers.append(("Server", SERVER_NAME))
        return HttpAnswer(200, tuple(headers), b"")
    error = decision.error
    rendered = render_problem(error, verdict.challenge(realm), request_id)
    headers = list(rendered.headers)
    if not any(name == "Cache-Control" for name, _ in headers):
        headers.append(("Cache-Control", "no-store"))  # a refusal is never reused either
    status = rendered.status
    if kind == "nginx":
        headers.append(("X-Gateway-Reason", error.reason))
        if status not in _NGINX_DENIALS and status != 503:
            headers.append(("X-Gateway-Status", str(status)))
            status = 403
    return HttpAnswer(status, tuple(headers), rendered.body)
