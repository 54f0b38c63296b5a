"""Request heads from bytes (gateway/listener/parser.py): RFC 9112 §2-3, §5-7; RFC 9110 §5.

The parser is fed bytes as a socket would deliver them, in one piece or split, and what it
produced is checked: the requests, byte for byte, or the exact refusal.
"""

from __future__ import annotations

import pytest

from gateway.listener.limits import ListenerLimits
from gateway.listener.parser import ParseFailure, RequestParser
from gateway.listener.request import Request
from gateway.problems import (
    BadFraming,
    BadRequest,
    HeadersTooLarge,
    UriTooLong,
    VersionNotSupported,
)

LIMITS = ListenerLimits(max_request_line=256, max_header_size=300, max_headers=8)
POST = b"POST / HTTP/1.1\r\nHost: x\r\n"


class Owner:
    """Stands where the connection does: receives requests and counts buffered body bytes."""

    remote = "127.0.0.1"
    loop = None
    write_paused = False

    def __init__(self, *, queue_limit: int = 100) -> None:
        self.requests: list[Request] = []
        self.buffered = 0
        self.queue_limit = queue_limit

    def request_parsed(self, request: Request) -> None:
        self.requests.append(request)

    def queue_full(self) -> bool:
        return len(self.requests) >= self.queue_limit

    def body_buffered(self, size: int) -> None:
        self.buffered += size

    def body_released(self, size: int) -> None:
        self.buffered -= size


def parse(*pieces: bytes, limits: ListenerLimits = LIMITS, owner: Owner | None = None):
    owner = owner or Owner()
    parser = RequestParser(owner, limits, owner)  # type: ignore[arg-type]
    tail = None
    for piece in pieces:
        tail = parser.feed(piece)
    return owner.requests, parser, tail


def refusal(*pieces: bytes, limits: ListenerLimits = LIMITS) -> ParseFailure:
    with pytest.raises(ParseFailure) as caught:
        parse(*pieces, limits=limits)
    return caught.value


def body_of(request: Request) -> bytes:
    return b"".join(request.body._chunks)


# --- what is accepted, byte for byte -------------------------------------------------------


def test_a_simple_request() -> None:
    [request], parser, _ = parse(b"GET /a?b=%20 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
    assert (request.method, request.target, request.version) == ("GET", b"/a?b=%20", "1.1")
    assert request.headers == [(b"Host", b"x"), (b"Accept", b"*/*")]
    assert request.host == b"x"
    assert request.keep_alive
    assert request.body.framing == "none" and request.body.complete
    assert not parser.in_head


def test_field_values_are_kept_byte_for_byte_without_surrounding_whitespace() -> None:
    data = (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Latin: caf\xe9 \xff\t \r\nX-Empty:\r\nX-Tab: a\tb\r\n\r\n"
    )
    [request], _, _ = parse(data)
    assert request.headers[1:] == [
        (b"X-Latin", b"caf\xe9 \xff"),
        (b"X-Empty", b""),
        (b"X-Tab", b"a\tb"),
    ]


def test_a_head_split_anywhere_gives_the_same_request() -> None:
    data = b"POST /upload HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\n\r\nhello"
    for cut in range(1, len(data)):
        [request], _, _ = parse(data[:cut], data[cut:])
        assert request.target == b"/upload"
        assert request.headers == [(b"Host", b"example"), (b"Content-Length", b"5")]
        assert body_of(request) == b"hello" and request.body.complete


def test_chunked_trailers_are_dropped_and_the_body_kept() -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Auth-Subject: admin\r\nHost: evil\r\n\r\n"
    )
    [request], _, _ = parse(data)
    assert body_of(request) == b"hello"
    assert request.body.complete
    assert [name for name, _ in request.headers] == [b"Host", b"Transfer-Encoding"]
    assert request.host == b"x"


def test_a_content_length_trailer_breaks_the_body() -> None:
    data = POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 9\r\n\r\n"
    with pytest.raises(ParseFailure) as caught:
        parse(data)
    assert caught.value.in_body


def test_pipelined_requests_come_out_in_order() -> None:
    one = b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
    two = b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    three = b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n"
    requests, _, _ = parse(one + two + three)
    assert [r.target for r in requests] == [b"/1", b"/2", b"/3"]
    assert body_of(requests[1]) == b"abc"


def test_http10_keep_alive_and_close() -> None:
    [closing], _, _ = parse(b"GET / HTTP/1.0\r\n\r\n")
    [kept], _, _ = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    [asked], _, _ = parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (closing.keep_alive, kept.keep_alive, asked.keep_alive) == (False, True, False)
    assert closing.host is None


@pytest.mark.parametrize(
    ("head", "expects"),
    [
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
            True,
            id="with-body",
        ),
        pytest.param(
            POST + b"Expect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n",
            True,
            id="case-insensitive-chunked",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n", False, id="no-body"
        ),
        pytest.param(
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
            False,
            id="http10-ignored",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: other\r\nContent-Length: 4\r\n\r\n",
            False,
            id="other-expectation",
        ),
    ],
)
def test_expects_continue(head: bytes, expects: bool) -> None:
    [request], _, _ = parse(head)
    assert request.expects_continue is expects


# --- switching protocols ------------------------------------------------------------------


def test_a_websocket_upgrade_stops_parsing_and_returns_what_followed() -> None:
    head = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    [request], parser, tail = parse(head + b"\x81\x05hello")
    assert request.upgrade == b"websocket"
    assert tail == b"\x81\x05hello"
    assert parser.upgrade_request is request


def test_a_post_asking_to_upgrade_is_an_ordinary_request_with_its_body() -> None:
    head = (
        b"POST /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 5\r\n\r\n"
    )
    after = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    requests, _, tail = parse(head + b"hel", b"lo" + after)
    assert tail is None
    assert [r.target for r in requests] == [b"/ws", b"/next"]
    assert requests[0].upgrade is None
    assert body_of(requests[0]) == b"hello" and requests[0].body.complete


def test_http10_upgrade_is_ignored() -> None:
    head = b"GET / HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    [request], _, _ = parse(head)
    assert request.upgrade is None


def test_connect_is_parsed_and_never_kept_alive() -> None:
    [request], _, tail = parse(b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\nTLS")
    assert (request.method, request.keep_alive, request.upgrade) == ("CONNECT", False, None)
    assert tail == b"TLS"


# --- refusals -------------------------------------------------------------------------------

REFUSED = [
    pytest.param(
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        BadFraming,
        id="http10-with-te",
    ),
    pytest.param(
        POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n", BadFraming, id="te-gzip-chunked"
    ),
    pytest.param(
        POST + b"Transfer-Encoding: chunked\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        BadFraming,
        id="chunked-upgrade",
    ),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", BadRequest, id="two-hosts"),
    pytest.param(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", BadRequest, id="http11-without-host"),
    pytest.param(
        POST + b"Content-Type: a\r\ncontent-type: b\r\n\r\n", BadRequest, id="two-content-types"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key1: 1\r\n\r\n",
        BadRequest,
        id="hixie-websocket",
    ),
    pytest.param(b"GET /\r\n\r\n", VersionNotSupported, id="http09"),
    pytest.param(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", VersionNotSupported, id="http20"),
    pytest.param(b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", VersionNotSupported, id="http12"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", VersionNotSupported, id="h2-preface"),
    pytest.param(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", BadRequest, id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", BadRequest, id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\nHost: x\n\n", BadRequest, id="bare-lf"),
    pytest.param(b"get / HTTP/1.1\r\nHost: x\r\n\r\n", BadRequest, id="lowercase-method"),
    pytest.param(
        POST + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        BadRequest,
        id="cl-and-te",
    ),
]


@pytest.mark.parametrize(("data", "error"), REFUSED)
def test_refused_heads(data: bytes, error: type) -> None:
    failure = refusal(data)
    assert type(failure.error) is error, failure.error
    assert not failure.in_body


def test_a_target_over_the_limit_is_414_before_the_line_ends() -> None:
    failure = refusal(b"GET /" + b"a" * 200, b"a" * 100)
    assert isinstance(failure.error, UriTooLong)


def test_a_target_at_the_limit_is_accepted() -> None:
    target = b"/" + b"a" * 255
    [request], _, _ = parse(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert request.target == target


def test_a_field_over_the_limit_is_431() -> None:
    failure = refusal(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 296 + b"\r\n\r\n")
    assert isinstance(failure.error, HeadersTooLarge)
    [request], _, _ = parse(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 295 + b"\r\n\r\n")
    assert len(request.headers[1][1]) == 295


def test_more_fields_than_the_limit_is_431() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(8))
    failure = refusal(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert isinstance(failure.error, HeadersTooLarge)


def test_an_unfinished_field_line_is_refused_before_it_ends() -> None:
    """The parser would buffer the line until its CRLF: it must never get that far."""
    start = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
    pieces = [start] + [b"v" * 100] * 6
    failure = refusal(*pieces)
    assert isinstance(failure.error, HeadersTooLarge)


def test_trailer_fields_are_bounded_like_header_fields() -> None:
    head = POST + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
    trailers = b"".join(b"T-%d: v\r\n" % i for i in range(9))
    with pytest.raises(ParseFailure) as caught:
        parse(head + trailers + b"\r\n")
    assert caught.value.in_body


def test_an_endless_trailer_line_is_refused_in_the_body() -> None:
    head = POST + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: "
    with pytest.raises(ParseFailure) as caught:
        parse(head, *[b"t" * 200] * 4)
    assert caught.value.in_body


def test_a_broken_chunk_fails_the_body_not_the_head() -> None:
    with pytest.raises(ParseFailure) as caught:
        parse(POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello!!\r\n")
    assert caught.value.in_body


def test_bytes_after_a_closing_request_stop_quietly() -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"
    with pytest.raises(ParseFailure) as caught:
        parse(data)
    assert caught.value.error is None


def test_a_full_pipeline_stops_quietly() -> None:
    owner = Owner(queue_limit=2)
    one = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with pytest.raises(ParseFailure) as caught:
        parse(one * 5, owner=owner)
    assert caught.value.error is None
    assert len(owner.requests) == 2
