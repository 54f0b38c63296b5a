"""Which upstream response heads are relayed: interim ones (RFC 9110 §15.2) and final ones
the gateway cannot relay faithfully (RFC 9110 §15, RFC 9112 §6.1)."""

from __future__ import annotations

import pytest

from gateway.proxy.response_head import (
    MAX_HEAD_BYTES,
    HeadBudget,
    framing,
    interim_refusal,
    relays_interim,
    unrelayable,
)


@pytest.mark.parametrize(
    ("status", "relayed"),
    [
        pytest.param(100, False, id="100-the-gateway-answers-expect-itself"),
        pytest.param(101, False, id="101-only-when-asked-for"),
        pytest.param(102, True, id="102"),
        pytest.param(103, True, id="103-early-hints"),
        pytest.param(199, True, id="not-yet-defined"),
    ],
)
def test_relays_interim(status: int, relayed: bool) -> None:
    assert relays_interim(status) is relayed


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        pytest.param([("Link", "</s.css>; rel=preload")], False, id="hints"),
        pytest.param([], False, id="no-fields"),
        pytest.param([("content-length", "0")], True, id="content-length"),
        pytest.param([("Transfer-Encoding", "chunked")], True, id="transfer-encoding"),
    ],
)
def test_interim_refusal(headers: list[tuple[str, str]], refused: bool) -> None:
    assert (interim_refusal(headers) is not None) is refused


@pytest.mark.parametrize(
    ("status", "codings", "refused"),
    [
        pytest.param(200, [], False, id="plain"),
        pytest.param(200, ["chunked"], False, id="chunked"),
        pytest.param(200, ["gzip", "chunked"], True, id="other-coding"),
        pytest.param(600, [], True, id="status-too-high"),
        pytest.param(99, [], True, id="status-too-low"),
        pytest.param(100, [], False, id="lowest-status"),
        pytest.param(599, [], False, id="highest-status"),
    ],
)
def test_unrelayable(status: int, codings: list[str], refused: bool) -> None:
    assert (unrelayable(status, codings) is not None) is refused


def test_the_head_budget_holds_parsed_bytes_to_the_bound() -> None:
    budget = HeadBudget()
    assert budget.fits_parsed(MAX_HEAD_BYTES - 1)
    assert budget.fits_parsed(1)  # exactly at the bound
    assert not budget.fits_parsed(1)


def test_the_head_budget_counts_reads_without_content_apart_from_parsed_bytes() -> None:
    budget = HeadBudget()
    assert budget.fits_parsed(MAX_HEAD_BYTES)
    assert budget.fits_read(MAX_HEAD_BYTES, content=False)
    assert not budget.fits_read(1, content=False)
    assert not budget.fits_parsed(1)


def test_a_read_with_content_starts_the_count_of_reads_without_it_again() -> None:
    """Chunk framing alone in many reads of a long stream never adds up to a refusal."""
    budget = HeadBudget()
    for _ in range(3):
        assert budget.fits_read(MAX_HEAD_BYTES - 10, content=False)
        assert budget.fits_read(10, content=False)
        assert budget.fits_read(1, content=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], (False, [])),
        ([("Content-Length", "2")], (True, [])),
        ([("transfer-encoding", "")], (False, [""])),
        ([("Transfer-Encoding", "Gzip ,\tChunked")], (True, ["gzip", "chunked"])),
        ([("Transfer-Encoding", "gzip"), ("TRANSFER-ENCODING", "chunked")],
         (True, ["gzip", "chunked"])),
        ([("Content-Type", "chunked")], (False, [])),
        ([("Transfer-Encoding", "chunked\x0b")], (True, ["chunked\x0b"])),  # only OWS is trimmed
        ([("Transfer-Encoding", "Xchunked")], (True, ["xchunked"])),
    ],
)  # fmt: skip
def test_framing_reads_content_length_and_every_transfer_coding(
    headers: list[tuple[str, str]], expected: tuple[bool, list[str]]
) -> None:
    assert framing(headers) == expected
