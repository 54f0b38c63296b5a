"""A problem (``gateway.problems.render_problem``) as a response on the proxy listener."""

from __future__ import annotations

from aiohttp import web

from gateway.problems import GatewayError, render_problem


def problem_response(
    error: GatewayError, realm: str, request_id: str | None, *, close: bool = False
) -> web.Response:
    """The RFC 9457 response for ``error``; ``close`` ends the connection after it (framing
    the gateway could not trust)."""
    rendered = render_problem(error, realm, request_id)
    response = web.Response(status=rendered.status, body=rendered.body)
    for name, value in rendered.headers:
        response.headers[name] = value
    if close:
        response.force_close()
    return response
