"""Response heads as bytes (gateway/listener/head.py): RFC 9112 §4, §7.1; RFC 9457."""

from __future__ import annotations

import json
import re
from email.utils import parsedate_to_datetime

import pytest

from gateway.listener.errors import HeaderTimeout
from gateway.listener.head import (
    chunk,
    header_block,
    http_date,
    problem_parts,
    refusal_bytes,
    status_line,
)
from gateway.problems import InsufficientScope, MethodNotAllowed, MissingCredentials, UriTooLong


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        pytest.param(200, None, b"HTTP/1.1 200 OK\r\n", id="standard-phrase"),
        pytest.param(404, None, b"HTTP/1.1 404 Not Found\r\n", id="not-found"),
        pytest.param(200, b"Fine", b"HTTP/1.1 200 Fine\r\n", id="upstream-reason-kept"),
        pytest.param(200, b"Caf\xe9", b"HTTP/1.1 200 Caf\xe9\r\n", id="obs-text-reason-kept"),
        pytest.param(200, b"x\r\nSet-Cookie: a", b"HTTP/1.1 200 OK\r\n", id="crlf-reason-replaced"),
        pytest.param(200, b"", b"HTTP/1.1 200 OK\r\n", id="empty-reason-replaced"),
        pytest.param(599, None, b"HTTP/1.1 599 Unknown\r\n", id="unregistered-code"),
    ],
)
def test_status_line(status: int, reason: bytes | None, expected: bytes) -> None:
    assert status_line(status, reason) == expected


@pytest.mark.parametrize("status", [0, 99, 1000])
def test_status_line_refuses_non_status(status: int) -> None:
    with pytest.raises(ValueError):
        status_line(status)


def test_http_date_is_an_imf_fixdate() -> None:
    value = http_date().decode()
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", value)
    assert parsedate_to_datetime(value).tzinfo is not None


def test_chunk_framing() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"


def test_header_block_keeps_bytes_and_order() -> None:
    headers = [(b"X-B", b"2"), (b"x-a", b"\xff\x01"), (b"X-B", b"1")]
    assert header_block(headers) == b"X-B: 2\r\nx-a: \xff\x01\r\nX-B: 1\r\n"


def test_problem_parts_of_an_auth_error_carry_challenge_and_no_store() -> None:
    status, headers, body = problem_parts(
        InsufficientScope(["orders:read"]), realm="api", request_id="r1", server=b"gw"
    )
    fields = dict(headers)
    assert status == 403
    assert fields[b"Content-Type"] == b"application/problem+json"
    assert fields[b"WWW-Authenticate"] == (
        b'Bearer realm="api", error="insufficient_scope", error_description="The access token'
        b' does not grant the scope this route needs.", scope="orders:read"'
    )
    assert fields[b"Cache-Control"] == b"no-store"
    assert fields[b"Server"] == b"gw"
    assert json.loads(body)["request_id"] == "r1"


def test_problem_parts_without_credentials_has_a_bare_challenge() -> None:
    _, headers, _ = problem_parts(MissingCredentials())
    assert dict(headers)[b"WWW-Authenticate"] == b'Bearer realm="gateway"'


def test_problem_parts_of_a_405_name_the_allowed_methods() -> None:
    status, headers, _ = problem_parts(MethodNotAllowed(["POST", "GET"]))
    assert status == 405
    assert dict(headers)[b"Allow"] == b"GET, POST"


@pytest.mark.parametrize("error", [UriTooLong("too long"), HeaderTimeout("slow")])
def test_refusal_bytes_are_a_whole_closing_response(error: UriTooLong | HeaderTimeout) -> None:
    data = refusal_bytes(error, b"oauth-gateway")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 %d %s" % (error.status, error.title.encode())
    assert b"Connection: close" in lines
    assert b"Content-Length: %d" % len(body) in lines
    assert b"Server: oauth-gateway" in lines
    problem = json.loads(body)
    assert problem["status"] == error.status
    assert problem["type"] == f"urn:oauth-gateway:problem:{error.slug}"
