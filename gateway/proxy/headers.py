"""Proxy header rules: RFC 9110 §7.6.1 (Connection), §7.6.3 (Via), RFC 7239 (Forwarded).

Two directions, both pure functions over ``(name, value)`` lists:

* ``upstream_request_headers`` turns what a client sent into what the upstream receives.
  It is the gateway's header trust boundary: a client must not be able to smuggle in an
  identity header (in any case, spelled with ``_`` for ``-``, or duplicated), choose its own
  forwarded address, or hide one of our headers by naming it in ``Connection``.
* ``downstream_response_headers`` strips the upstream connection's own headers from a
  response and keeps everything else, duplicates and order included.

Besides ``X-Forwarded-For/Proto/Host`` and ``Forwarded``, the other headers by which a front
proxy tells an upstream about the original request are believed only from a trusted proxy
(``PROXY_ONLY``, plus the operator's ``proxy_only_headers``): from anyone else they are
removed, since upstream frameworks use them for IP allow-lists, redirects and routing; from a
trusted proxy they pass as they are (it sets or strips them). The URL and method overrides
that some frameworks route on (``X-Original-URL`` and ``X-Rewrite-URL`` in IIS and Symfony,
``X-HTTP-Method-Override`` and its siblings) are dropped from everyone (``NEVER_FORWARDED``):
the gateway chose the route and its policy from the real path and method, and front proxies
rarely strip these, so a client behind a trusted proxy could still send them. Any other
routing header an upstream honours must be added there. A header with peers of its own
(``guarded_headers``: a front proxy's client-certificate header, RFC 9440 §2) passes only
from those peers, whatever ``trusted`` says of them.

Everything that depends only on configuration is compiled when ``ForwardingPolicy`` and
``Removal`` are built. Per request the work is one pass over the header list with dict and
set lookups, plus a filter pass only when ``Connection`` names an end-to-end header.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from gateway.problems import BadRequest
from gateway.proxy.forwarding_headers import NEVER_FORWARDED, PROXY_ONLY
from gateway.proxy.trust import TrustedProxies

Header = tuple[str, str]

HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

# The caller frames the upstream body itself and answers Expect: 100-continue on its own leg.
_FRAMING = frozenset({"content-length", "transfer-encoding", "expect"})

_XFF = "x-forwarded-for"
_XFP = "x-forwarded-proto"
_XFH = "x-forwarded-host"

# Names this module always decides itself; a request id header among them would be lost.
_RESERVED = HOP_BY_HOP | _FRAMING | {"host", "authorization", "via", "forwarded", _XFF, _XFP, _XFH}

# RFC 9110 §5.6.2 tchar: a value made only of these needs no quoting.
_TCHARS = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
_REQUEST_ID_CHARS = "._:-" + string.digits + string.ascii_letters
_REQUEST_ID_MAX = 128

# What the per-request loop does with a header, by lowercase name. Absent: an ordinary
# end-to-end header, subject only to the identity-header removal rules.
_DROP = 0
_CONNECTION = 1
_HOST = 2
_AUTHORIZATION = 3
_COLLECT = 4  # forwarding chains (X-Forwarded-*, Forwarded, Via) extended at the end
_GUARDED = 5  # kept only from a peer on the header's own list (guarded_headers)


def _canonical(name: str) -> str:
    """One spelling for a header name: CGI/WSGI upstreams see ``X_User_Id`` as ``X-User-Id``."""
    return name.lower().replace("_", "-")


def _is_token(text: str) -> bool:
    return bool(text) and not text.strip(_TCHARS)


@dataclass(frozen=True, slots=True)
class ForwardingPolicy:
    """Which forwarding headers the gateway writes, and whose it believes."""

    trusted: TrustedProxies
    x_forwarded: bool = True
    forwarded: bool = False
    via: str | None = "gateway"
    request_id_header: str = "X-Request-Id"
    # Site-specific names believed only from trusted proxies, like PROXY_ONLY.
    proxy_only_headers: frozenset[str] = frozenset()
    # Names believed only from peers of their own (a front proxy's client-certificate
    # header: client_certificates.trusted_proxies), whether or not ``trusted`` has the peer.
    guarded_headers: tuple[tuple[str, TrustedProxies], ...] = ()
    _guards: dict[str, TrustedProxies] = field(init=False, repr=False, compare=False)
    _trusted_actions: dict[str, int] = field(init=False, repr=False, compare=False)
    _untrusted_actions: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.via is not None:
            # RFC 9110 §7.6.3: received-by = pseudonym [ ":" port ], pseudonym = token.
            pseudonym, colon, port = self.via.partition(":")
            if not _is_token(pseudonym) or (colon and not (port.isascii() and port.isdigit())):
                raise ValueError(f"Via pseudonym must be token[:port], got {self.via!r}")
        if not _is_token(self.request_id_header):
            raise ValueError(f"invalid request id header name {self.request_id_header!r}")
        if self.request_id_header.lower() in _RESERVED:
            raise ValueError(f"{self.request_id_header!r} is managed by the proxy itself")
        names = frozenset(name.lower() for name in self.proxy_only_headers)
        guards = {name.lower(): peers for name, peers in self.guarded_headers}
        for name in sorted(names | guards.keys()):
            if not _is_token(name):
                raise ValueError(f"proxy-only header {name!r} is not a header name")
            if name in _RESERVED or name == self.request_id_header.lower():
                raise ValueError(f"proxy-only header {name!r} is managed by the proxy itself")
        object.__setattr__(self, "proxy_only_headers", names)
        object.__setattr__(self, "_guards", guards)
        object.__setattr__(self, "_trusted_actions", self._actions(trusted=True))
        object.__setattr__(self, "_untrusted_actions", self._actions(trusted=False))

    def _actions(self, *, trusted: bool) -> dict[str, int]:
        actions = dict.fromkeys(HOP_BY_HOP | _FRAMING, _DROP)
        actions["connection"] = _CONNECTION
        actions["host"] = _HOST
        actions["authorization"] = _AUTHORIZATION
        # Replaced by the vetted id; request_id_of already decided whether the client's survives.
        actions[self.request_id_header.lower()] = _DROP
        if self.via is not None:
            actions["via"] = _COLLECT
        chains = {_XFF: self.x_forwarded, _XFP: self.x_forwarded, _XFH: self.x_forwarded}
        chains["forwarded"] = self.forwarded
        for name, emitted in chains.items():
            if not trusted:
                actions[name] = _DROP
            elif emitted:
                actions[name] = _COLLECT
            # A trusted proxy's header we do not extend passes through untouched.
        if not trusted:
            actions.update(dict.fromkeys(PROXY_ONLY | self.proxy_only_headers, _DROP))
        # Their own list decides, for peers trusted with X-Forwarded-For and the rest alike.
        actions.update(dict.fromkeys(self._guards, _GUARDED))
        actions.update(dict.fromkeys(NEVER_FORWARDED, _DROP))
        return actions


@dataclass(frozen=True, slots=True)
class Removal:
    """Client headers dropped because the gateway alone may set them (identity headers).

    Names and prefixes are stored canonically (lowercase, ``_`` as ``-``) so that a
    configured ``x_user_id`` still catches a client's ``X-User-Id``.
    """

    names: frozenset[str]
    prefixes: tuple[str, ...]

    def __post_init__(self) -> None:
        if any(not prefix for prefix in self.prefixes):
            raise ValueError("an empty removal prefix would drop every client header")
        object.__setattr__(self, "names", frozenset(_canonical(n) for n in self.names))
        object.__setattr__(self, "prefixes", tuple(_canonical(p) for p in self.prefixes))

    def removes(self, name: str) -> bool:
        """Whether a client header called ``name`` never reaches an upstream as sent: any
        name with ``_`` (CGI/WSGI fold it into ``-``), and every identity name and prefix
        in any case. ``upstream_request_headers`` applies this same rule inline, per header
        on the hot path; the forward-auth service asks here for the names a host proxy must
        remove (a unit test holds the two to one answer)."""
        lname = name.lower()
        return "_" in lname or lname in self.names or lname.startswith(self.prefixes)


def connection_tokens(values: Iterable[str]) -> frozenset[str]:
    """Lowercase connection options from ``Connection`` values (RFC 9110 §7.6.1: 1#token)."""
    return frozenset(
        option
        for value in values
        for option in (part.strip(" \t").lower() for part in value.split(","))
        if option
    )


def request_id_of(headers: Sequence[Header], header: str, generate: Callable[[], str]) -> str:
    """The client's request id if it is safe to log and echo, else a fresh one.

    Only the first occurrence counts: a bad first value is replaced rather than letting a
    later duplicate win, so the result does not depend on which copy a log reader saw.
    """
    wanted = header.lower()
    for name, value in headers:
        if name.lower() == wanted:
            if 0 < len(value) <= _REQUEST_ID_MAX and not value.strip(_REQUEST_ID_CHARS):
                return value
            break
    return generate()


def _refuse(name: str) -> NoReturn:
    # RFC 9110 §5.5: "a recipient of CR, LF, or NUL within a field value MUST either reject
    # the message or replace each of those characters with SP before further processing or
    # forwarding of that message." The parser should have rejected it already; we reject too.
    raise BadRequest(f"CR, LF or NUL in the value of header {name!r}.")


def _joined(values: list[str] | None) -> str:
    """One list value from repeated fields (RFC 9110 §5.3), without empty members."""
    if not values:
        return ""
    return ", ".join(member for member in (value.strip() for value in values) if member)


def _forwarded_value(text: str) -> str:
    """RFC 7239 §4: value = token / quoted-string."""
    if _is_token(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _forwarded_element(peer: str | None, scheme: str, host: str | None) -> str:
    # RFC 7239 §6: an IPv6 node is "[" IPv6address "]"; ':' and '[' are not tchar, so the
    # node is quoted. §6.3: "unknown" when the peer (e.g. a Unix socket) is not known.
    if peer is None:
        node = "unknown"
    elif ":" in peer:
        node = _forwarded_value(f"[{peer}]")
    else:
        node = _forwarded_value(peer)
    element = f"for={node};proto={_forwarded_value(scheme)}"
    if host:
        element += f";host={_forwarded_value(host)}"
    return element


def _received_protocol(http_version: tuple[int, int]) -> str:
    # RFC 9110 §7.6.3: the protocol name is omitted for HTTP; HTTP/2 and later are one number.
    major, minor = http_version
    return f"{major}.{minor}" if major < 2 else str(major)


def _extended(prior: str, own: str) -> str:
    return f"{prior}, {own}" if prior else own


def upstream_request_headers(
    client_headers: Sequence[Header],
    *,
    peer: str | None,
    scheme: str,
    http_version: tuple[int, int],
    request_id: str,
    policy: ForwardingPolicy,
    removal: Removal,
    add: Sequence[Header],
    host: str,
    keep_authorization: bool,
) -> list[Header]:
    """The header list for the upstream request, ``Host`` first, without body framing.

    Order: ``Host``, the surviving client headers in their order, ``add``, then the
    forwarding headers and the request id. Raises ``BadRequest`` (400) for CR, LF or NUL in a
    client or ``add`` value and for a repeated ``Host``.
    """
    trusted = policy.trusted.is_trusted(peer)
    actions = policy._trusted_actions if trusted else policy._untrusted_actions
    set_by_us = removal.names
    prefixes = removal.prefixes
    added = {name.lower() for name, _ in add}

    kept: list[Header] = []
    chains: dict[str, list[str]] = {}
    options: list[str] = []
    client_host: str | None = None
    for item in client_headers:
        name, value = item
        if "\r" in value or "\n" in value or "\0" in value:
            _refuse(name)
        lname = name.lower()
        action = actions.get(lname)
        if action is None or (action == _GUARDED and policy._guards[lname].is_trusted(peer)):
            # Any '_' is refused outright (nginx's underscores_in_headers off): CGI/WSGI
            # upstreams fold it into '-', so X_User_Id would arrive as X-User-Id.
            if not (
                "_" in lname or lname in set_by_us or lname in added or lname.startswith(prefixes)
            ):
                kept.append(item)
        elif action == _COLLECT:
            chains.setdefault(lname, []).append(value)
        elif action == _CONNECTION:
            # A hop-by-hop option names no end-to-end field: the usual lone "keep-alive" stays
            # on the single-pass path. "close" does: RFC 9110 §16.3.2.2 reserves the field
            # name "Close", and §7.6.1 removes every field a connection option names.
            if value.lower() not in HOP_BY_HOP:
                options.append(value)
        elif action == _HOST:
            if client_host is not None:
                # RFC 9112 §3.2: a server MUST respond with 400 to a request with "more
                # than one Host header field line".
                raise BadRequest("The request has more than one Host header.")
            client_host = value
        elif action == _AUTHORIZATION and keep_authorization and lname not in added:
            kept.append(item)

    if options:
        named = connection_tokens(options) - HOP_BY_HOP
        if named:
            # RFC 9110 §7.6.1: "Intermediaries MUST parse a received Connection header field
            # before a message is forwarded and, for each connection-option in this field,
            # remove any header or trailer field(s) from the message with the same name as
            # the connection-option". Our own headers are appended below, so naming one
            # (say an identity header) cannot strip it.
            kept = [item for item in kept if item[0].lower() not in named]
            for option in named:
                chains.pop(option, None)

    for name, value in add:
        if "\r" in value or "\n" in value or "\0" in value:
            _refuse(name)
    out: list[Header] = [("Host", host), *kept, *add]

    if policy.x_forwarded:
        if peer is not None:
            out.append(("X-Forwarded-For", _extended(_joined(chains.get(_XFF)), peer)))
        out.append(("X-Forwarded-Proto", _joined(chains.get(_XFP)) or scheme))
        forwarded_host = _joined(chains.get(_XFH)) or client_host
        if forwarded_host:
            out.append(("X-Forwarded-Host", forwarded_host))
    if policy.forwarded:
        element = _forwarded_element(peer, scheme, client_host)
        # RFC 7239 §4: a proxy "can either append it to the last existing "Forwarded"
        # header field after a comma separator or add a new field at the end".
        out.append(("Forwarded", _extended(_joined(chains.get("forwarded")), element)))
    if policy.via is not None:
        # RFC 9110 §7.6.3: "An HTTP-to-HTTP gateway MUST send an appropriate Via header
        # field in each inbound request message".
        own = f"{_received_protocol(http_version)} {policy.via}"
        out.append(("Via", _extended(_joined(chains.get("via")), own)))
    out.append((policy.request_id_header, request_id))
    return out


def downstream_response_headers(upstream_headers: Sequence[Header]) -> list[Header]:
    """The upstream response's end-to-end headers, in order, duplicates kept.

    RFC 9110 §7.6.3 lets a gateway omit Via on responses ("MAY send"), so none is added.
    """
    kept: list[Header] = []
    options: list[str] = []
    transfer_coded = False
    for item in upstream_headers:
        lname = item[0].lower()
        if lname not in HOP_BY_HOP:
            kept.append(item)
        elif lname == "connection":
            if item[1].lower() not in HOP_BY_HOP:
                options.append(item[1])
        elif lname == "transfer-encoding":
            transfer_coded = True

    drop = connection_tokens(options) - HOP_BY_HOP if options else frozenset()
    if transfer_coded:
        # RFC 9112 §6.3: an intermediary forwarding a message with both "MUST first remove
        # the received Content-Length field"; the caller reframes the body.
        drop |= {"content-length"}
    if drop:
        kept = [item for item in kept if item[0].lower() not in drop]
    return kept
