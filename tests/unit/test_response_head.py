"""Which upstream response heads are relayed: interim ones (RFC 9110 §15.2) and final ones
the gateway cannot relay faithfully (RFC 9110 §15, RFC 9112 §6.1)."""

from __future__ import annotations

import pytest

from gateway.proxy.response_head import interim_refusal, relays_interim, unrelayable


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
    ],
)
def test_unrelayable(status: int, codings: list[str], refused: bool) -> None:
    assert (unrelayable(status, codings) is not None) is refused
