"""``request_head``: the request line keeps the client's target bytes, header values their
bytes (RFC 9110 §5.5), and the body framing is the one the caller chose."""

from __future__ import annotations

import pytest

from gateway.proxy.forward import NO_BODY, Body, request_head


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        pytest.param("caf\xe9", b"caf\xe9", id="latin-1-text-is-one-byte-each"),
        pytest.param("".join(map(chr, range(0x80, 0x100))), bytes(range(0x80, 0x100)),
                     id="all-obs-text"),
        pytest.param("caf\xc3\xa9", b"caf\xc3\xa9", id="utf-8-bytes-read-as-latin-1"),
        pytest.param("plain", b"plain", id="ascii"),
    ],
)  # fmt: skip
def test_header_values_go_out_as_the_bytes_that_came_in(value: str, wire: bytes) -> None:
    head = request_head("GET", "/", [("Host", "h"), ("X-V", value)], NO_BODY)
    assert head == b"GET / HTTP/1.1\r\nHost: h\r\nX-V: " + wire + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("target", "wire"),
    [
        pytest.param("/caf\udce9?q=\udcff", b"/caf\xe9?q=\xff", id="surrogate-escaped-bytes"),
        pytest.param("/caf\u00e9", b"/caf\xc3\xa9", id="utf-8-decoded-target"),
    ],
)
def test_the_target_keeps_the_bytes_aiohttp_decoded(target: str, wire: bytes) -> None:
    assert request_head("GET", target, [], NO_BODY) == b"GET " + wire + b" HTTP/1.1\r\n\r\n"


def test_a_header_text_no_byte_can_hold_is_refused_not_mangled() -> None:
    # Only config text could hold one (the upstream host is checked to be ASCII at load).
    with pytest.raises(UnicodeEncodeError):
        request_head("GET", "/", [("Host", "\u4e2d.example")], NO_BODY)


@pytest.mark.parametrize(
    ("body", "framing"),
    [
        pytest.param(NO_BODY, b"", id="no-body"),
        pytest.param(Body(reader=None, length=None, buffered=b"abc"), b"Content-Length: 3\r\n",
                     id="buffered"),
        pytest.param(Body(reader=None, length=5), b"Content-Length: 5\r\n", id="length"),
        pytest.param(Body(reader=object(), length=None), b"Transfer-Encoding: chunked\r\n",  # type: ignore[arg-type]
                     id="chunked"),
    ],
)  # fmt: skip
def test_framing(body: Body, framing: bytes) -> None:
    assert request_head("POST", "/", [("X", "\xff")], body) == (
        b"POST / HTTP/1.1\r\nX: \xff\r\n" + framing + b"\r\n"
    )
