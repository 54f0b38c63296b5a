"""The listener's own refusals, in the gateway's one exception tree (RFC 9110 §15.5).

problems.py holds the errors the whole gateway raises; these four only the HTTP core does,
so they live beside it and render through the same ``GatewayError`` machinery.
"""

from __future__ import annotations

from gateway.problems import BadFraming, GatewayError


class UriTooLong(GatewayError):
    """RFC 9112 §3: "A server that receives a request-target longer than any URI it wishes
    to parse MUST respond with a 414 (URI Too Long) status code"."""

    status = 414
    title = "URI Too Long"
    slug = "uri-too-long"
    reason = "uri_too_long"


class RequestTimeout(GatewayError):
    """RFC 9110 §15.5.9: the client did not send a complete request head in time."""

    status = 408
    title = "Request Timeout"
    slug = "request-timeout"
    reason = "header_timeout"


class ContentTooLarge(GatewayError):
    """RFC 9110 §15.5.14: a body the application asked to read whole is over its limit."""

    status = 413
    title = "Content Too Large"
    slug = "content-too-large"
    reason = "content_too_large"


class MalformedBody(BadFraming):
    """The request body broke its own framing (a bad chunk, too many trailer fields); the
    connection cannot continue, and an upstream must never see a well-formed end of it."""

    slug = "malformed-body"
    reason = "malformed_body"
