"""Request bodies with a shared buffer budget (gateway/listener/body.py, RFC 9112 §6)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.listener.body import EMPTY_BODY, NO_BODY, RequestBody
from gateway.listener.errors import MalformedBody
from gateway.problems import ContentTooLarge


class Budget:
    """The connection's side of a body: counts what is buffered, as the connection does."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.buffered = 0
        self.peak = 0

    def body_buffered(self, size: int) -> None:
        self.buffered += size
        self.peak = max(self.peak, self.buffered)

    def body_released(self, size: int) -> None:
        self.buffered -= size
        assert self.buffered >= 0


async def test_read_returns_everything_buffered_then_the_end() -> None:
    budget = Budget()
    body = RequestBody(budget, 10, False)
    body.feed(b"hello")
    body.feed(b"world")
    assert budget.buffered == 10
    assert await body.read() == b"helloworld"
    assert budget.buffered == 0
    assert not body.complete
    body.finish()
    assert await body.read() == b""
    assert (body.received, body.consumed, body.exhausted) == (10, 10, True)


async def test_read_waits_for_the_next_piece() -> None:
    body = RequestBody(Budget(), None, True)
    reader = asyncio.ensure_future(body.read())
    await asyncio.sleep(0)
    assert not reader.done()
    body.feed(b"late")
    assert await reader == b"late"


async def test_a_failed_body_raises_and_releases_its_budget() -> None:
    budget = Budget()
    body = RequestBody(budget, None, True)
    body.feed(b"partial")
    body.fail(MalformedBody("bad chunk"))
    assert budget.buffered == 0
    with pytest.raises(MalformedBody):
        await body.read()
    body.feed(b"more")  # ignored after a failure
    assert budget.buffered == 0


async def test_a_waiting_reader_sees_the_failure() -> None:
    body = RequestBody(Budget(), 5, False)
    reader = asyncio.ensure_future(body.read())
    await asyncio.sleep(0)
    body.fail(ConnectionResetError("gone"))
    with pytest.raises(ConnectionResetError):
        await reader


async def test_discard_gives_the_budget_back() -> None:
    budget = Budget()
    body = RequestBody(budget, 8, False)
    body.feed(b"unread!!")
    body.discard()
    assert budget.buffered == 0


async def test_read_all_within_the_limit() -> None:
    body = RequestBody(Budget(), None, True)
    body.feed(b"a=1&")
    body.feed(b"b=2")
    body.finish()
    assert await body.read_all(7) == b"a=1&b=2"


async def test_read_all_refuses_a_declared_length_over_the_limit_before_reading() -> None:
    budget = Budget()
    body = RequestBody(budget, 100, False)
    with pytest.raises(ContentTooLarge):
        await body.read_all(99)
    assert body.consumed == 0


async def test_read_all_refuses_a_chunked_body_once_it_passes_the_limit() -> None:
    body = RequestBody(Budget(), None, True)
    body.feed(b"x" * 6)
    body.feed(b"y" * 6)
    with pytest.raises(ContentTooLarge):
        await body.read_all(10)


@pytest.mark.parametrize(
    ("body", "framing"),
    [(NO_BODY, "none"), (EMPTY_BODY, "length")],
    ids=["no-framing", "content-length-0"],
)
async def test_shared_empty_bodies_are_complete(body: RequestBody, framing: str) -> None:
    assert body.framing == framing
    assert body.complete
    assert await body.read() == b""
    body.discard()
    body.fail(ConnectionResetError())
    assert await body.read() == b""


def test_check_length_decides_from_the_head_alone() -> None:
    """What lets a caller refuse before asking for the body with 100 Continue."""
    with pytest.raises(ContentTooLarge):
        RequestBody(None, 100, False).check_length(99)
    RequestBody(None, 99, False).check_length(99)
    RequestBody(None, None, True).check_length(0)  # chunked: only reading tells
