"""Optional OpenTelemetry spans: one server span per request, parented by W3C traceparent.

Off unless ``tracing.enabled`` is set and the ``opentelemetry-api`` package is installed; the
request path then pays one attribute check. The gateway configures no exporter: the process's
OpenTelemetry SDK setup (e.g. ``opentelemetry-instrument`` and its environment variables)
decides where spans go. ``traceparent`` itself is always forwarded untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("gateway.tracing")


class Tracing:
    """Starts and ends request spans; constructed only when tracing is enabled."""

    def __init__(self, tracer: Any, extract: Any, kind: Any, status: Any, error: Any) -> None:
        self._tracer = tracer
        self._extract = extract
        self._kind = kind
        self._status = status
        self._error = error

    def start(self, method: str, headers: Sequence[tuple[str, str]]) -> Any:
        carrier = {name.lower(): value for name, value in headers}
        context = self._extract(carrier)
        return self._tracer.start_span(
            f"{method} gateway", context=context, kind=self._kind.SERVER,
            attributes={"http.request.method": method},
        )  # fmt: skip

    def end(self, span: Any, route: str, status: int, decision: str, reason: str) -> None:
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("gateway.decision", decision)
        span.set_attribute("gateway.reason", reason)
        if status >= 500:
            span.set_status(self._status(self._error))
        span.end()


def make_tracing(enabled: bool) -> Tracing | None:
    if not enabled:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind, Status, StatusCode
    except ImportError:
        log.warning("tracing.enabled is set but opentelemetry-api is not installed: no spans")
        return None
    return Tracing(trace.get_tracer("oauth-gateway"), extract, SpanKind, Status, StatusCode.ERROR)
