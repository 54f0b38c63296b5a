"""The listener's own refusals, in the gateway's one exception tree (RFC 9110 §15.5).

problems.py holds the errors the whole gateway raises (the listener's 413 and 414 among
them); these three only the HTTP core does, so they live beside it and render through the
same ``GatewayError`` machinery.
"""

from __future__ import annotations

from gateway.problems import BadFraming, BadRequest, RequestTimeout


class HeaderTimeout(RequestTimeout):
    """RFC 9110 §15.5.9: the client did not send a complete request head in time (its own
    reason, apart from a body that stops arriving: a slow-header attack shows as this)."""

    reason = "header_timeout"


class MalformedBody(BadFraming):
    """The request body broke its own framing (a bad chunk, too many trailer fields); the
    connection cannot continue, and an upstream must never see a well-formed end of it."""

    slug = "malformed-body"
    reason = "malformed_body"


class PlainHttpOnTlsPort(BadRequest):
    """A connection to the TLS port whose first byte is not a TLS record: plain HTTP sent
    where HTTPS was expected (nginx answers 400 the same way; see ``tls_door``)."""

    slug = "plain-http-on-tls-port"
    reason = "plain_http_on_tls_port"
