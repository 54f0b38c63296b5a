"""The gateway's HTTP/1.1 listener: asyncio protocols on uvloop + httptools (RFC 9110, 9112).

The HTTP core of the proxy port. It knows nothing about OAuth, routes or upstreams: it
turns bytes into ``Request`` objects, hands each to one application callback, and writes
what the application answers. Refusals it makes itself (malformed or ambiguous framing,
limits, timeouts) are RFC 9457 problem bodies rendered from ``gateway.problems`` errors.

Interface
---------
``HttpListener(handler, limits, *, server_header, cancel_on_disconnect, on_refusal)``
    ``await start(host, port, reuse_port=, backlog=)``; ``port``;
    ``open_connections``; ``await close(drain_timeout) -> bool`` (graceful stop: no new
    connections, idle ones closed at once, busy ones after their current response, the rest
    reset at the deadline).

``handler(request) -> Coroutine | None``
    Called once per request, strictly in the order requests arrived on the connection; the
    next pipelined request is not started before this one's response is finished. If it
    returns a coroutine, the listener runs it as a task, cancels that task when the client
    goes away before the response is finished (``cancel_on_disconnect``), answers 500 if the
    task ends without having answered (a ``GatewayError`` it raised is rendered as its own
    problem instead), and resets the connection if it ends with a response started but not
    finished. Returning None means the handler answered already, or took responsibility to
    answer later from a callback (no task is created: the fast path). An exception raised
    synchronously is treated like one from the task.

``Request`` (slots; everything as the client sent it)
    ``method`` (str), ``target`` (bytes, exactly as sent), ``version`` ("1.1" or "1.0"),
    ``headers`` (list of ``(name, value)`` bytes in order, values as received except the
    surrounding whitespace RFC 9110 §5.5 excludes; obs-text kept byte for byte), ``host``
    (the one Host value, or None), ``remote`` (peer IP), ``keep_alive`` (what the client
    asked), ``body`` (``RequestBody``), ``expects_continue``, ``upgrade`` (the Upgrade value
    of a GET that may switch protocols, else None), ``body_timeout`` (how long a body read
    whole may take once asked for); ``header(name)``, ``header_values(name)``.
    Presence: ``disconnected`` (bool) and ``wait_disconnected()`` (a future: True when the
    client left before the response was finished, False once it was finished).
    Answering, exactly once:
    - ``send_continue()``: writes ``100 Continue`` if the client waits for it and nothing
      was sent; never automatic, so the gateway sends it only after its decision.
    - ``send_interim(status, headers, reason=)``: an interim 102..199 (a relayed 103 Early
      Hints), before the final response; never to an HTTP/1.0 client (RFC 9110 §15.2).
    - ``respond(status, headers, body, reason=, length=, close=)``: a complete response in one
      write, queued with the connection's other output until the end of the loop
      iteration. ``headers`` are ``(bytes, bytes)`` pairs without framing fields
      (Content-Length, Transfer-Encoding, Connection: the listener writes them; nothing
      else is added, so Date and Server are the application's). HEAD, 204 and 304 never
      carry a body; ``length`` is the Content-Length a HEAD or 304 announces. ``reason``
      replaces the standard phrase when it is a valid reason-phrase.
    - ``start_response(status, headers, length=, chunked=, reason=, body=, close=)`` ->
      ``ResponseStream``: the head (and first bytes) now; then ``await stream.write(data)``
      (waits while the client's socket buffer is full) and ``stream.end()``. With ``length``
      it is Content-Length framed (a short end resets the connection); else chunked for
      HTTP/1.1, close-delimited for HTTP/1.0.
    - ``abort(reset=True)``: end the connection of a response that failed after it started:
      a reset (RST), or with ``reset=False`` a close after what was written when the body's
      framing (Content-Length, chunks) shows it unfinished (a close-delimited one is reset).
    - ``switch_protocols(protocol, headers)``: writes the ``101`` with ``headers`` and hands
      the raw transport to ``protocol`` (``connection_made(transport)``, then
      ``data_received`` of any bytes already received after the head); the listener then
      forgets the connection (its drain does not wait for it). Only when
      ``request.upgrade`` is set; a GET with Upgrade answered otherwise keeps HTTP going.
    ``response_started`` says whether a problem answer is still possible; ``problem_parts``
    renders a ``GatewayError`` as ``(status, headers, body)`` for ``respond``.

``RequestBody``
    ``length`` (Content-Length or None), ``chunked``, ``framing`` ("none", "length",
    "chunked"), ``await read()`` (what arrived, waiting for more; ``b""`` at the end),
    ``await read_all(limit)`` (413 ``ContentTooLarge`` beyond it; ``check_length(limit)``
    refuses a declared length from the head alone, before any 100 Continue), ``complete``,
    ``received``, ``consumed``, ``started`` (the application called ``read``: a response
    then keeps the connection alive if the body is complete when it ends). ``read`` raises
    ``MalformedBody`` (400, closes) for broken framing and ``ConnectionResetError`` if the
    client left. Unread bytes above ``body_high_water`` pause reading from the socket; a
    body not complete when the response is finished is discarded and the connection closed
    after a lingering read.

Behaviour worth knowing: every limit is in ``ListenerLimits`` (from ``limits`` in the
config); a request head must be complete within ``header_timeout`` (bounded by
``keepalive_timeout``), counted from the accept for a connection's first request and from
its first byte after that, else 408 and close (quietly, with no 408, when nothing of a
request arrived); trailer fields of chunked requests are dropped (see ``parser``); a
refused request answers with ``Connection: close`` and nothing pipelined behind it is read;
more than ``max_pipeline`` requests pipelined ahead are answered in order and the
connection then closes (the client retries the rest, RFC 9112 §9.3.2). HTTP/1.1 over TCP,
or over TLS when ``start(ssl=…)`` is given one (``tls``: the server context, renewals, the
client certificate, seen as ``request.secure`` and ``request.peer_certificate``; plain HTTP
sent to a TLS port is answered 400, see ``tls_door``); no HTTP/2.

Modules: ``server`` (the listening socket, drain), ``context`` (what connections share,
batched writes), ``connection`` (protocol callbacks, dispatch in order), ``lifecycle``
(timeouts, flow control, lingering, closing), ``parser`` (llhttp and the checks on top),
``request`` (the request and its response), ``exchange`` (what a request needs from its
connection), ``tls``, ``tls_door`` (the TLS port's accept loop), ``body``, ``output``,
``head`` (bytes of responses and problems), ``limits``, ``errors``.
"""

from gateway.listener.body import RequestBody
from gateway.listener.context import Handler
from gateway.listener.errors import HeaderTimeout, MalformedBody
from gateway.listener.head import http_date, problem_parts
from gateway.listener.limits import ListenerLimits
from gateway.listener.request import Request, ResponseStream
from gateway.listener.server import HttpListener

__all__ = [
    "Handler",
    "HeaderTimeout",
    "HttpListener",
    "ListenerLimits",
    "MalformedBody",
    "Request",
    "RequestBody",
    "ResponseStream",
    "http_date",
    "problem_parts",
]
