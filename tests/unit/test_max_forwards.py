"""Max-Forwards at this hop (RFC 9110 §7.6.2) and the Allow of an OPTIONS answered here."""

from __future__ import annotations

import pytest

from gateway.problems import BadRequest
from gateway.proxy.max_forwards import MAX_SUPPORTED, allow_value, next_hop_fields

OTHER = ("Accept", "*/*")


@pytest.mark.parametrize(
    ("received", "forwarded"),
    [
        pytest.param("1", "0", id="last-hop-left"),
        pytest.param("10", "9", id="decremented"),
        pytest.param("007", "6", id="leading-zeros"),
        pytest.param(str(MAX_SUPPORTED), str(MAX_SUPPORTED - 1), id="at-the-maximum"),
        pytest.param(str(MAX_SUPPORTED + 5), str(MAX_SUPPORTED), id="above-the-maximum"),
        pytest.param("9" * 5000, str(MAX_SUPPORTED), id="longer-than-int-parsing-allows"),
    ],
)
def test_options_is_forwarded_with_one_hop_less(received: str, forwarded: str) -> None:
    """ "the lesser of a) the received value decremented by one (1) or b) the recipient's
    maximum supported value", in place, the other fields untouched."""
    fields = [OTHER, ("max-forwards", received), ("X-After", "1")]
    assert next_hop_fields("OPTIONS", fields) == [
        OTHER,
        ("max-forwards", forwarded),
        ("X-After", "1"),
    ]
    assert fields[1] == ("max-forwards", received)  # the client's list is not changed


@pytest.mark.parametrize("received", ["0", "00", "000000000000000000000"])
def test_options_with_no_hops_left_is_answered_here(received: str) -> None:
    assert next_hop_fields("OPTIONS", [OTHER, ("Max-Forwards", received)]) is None


@pytest.mark.parametrize(
    "received",
    [
        pytest.param("", id="empty"),
        pytest.param("-1", id="negative"),
        pytest.param("+1", id="sign"),
        pytest.param("1.0", id="decimal"),
        pytest.param("1, 2", id="list"),
        pytest.param("0x1", id="hex"),
        pytest.param("\u00b2", id="latin-1-superscript-digit"),
        pytest.param("\u0663", id="non-ascii-digit"),
        pytest.param("1 ", id="trailing-space"),
    ],
)
def test_a_value_that_is_not_digits_is_a_400(received: str) -> None:
    with pytest.raises(BadRequest) as caught:
        next_hop_fields("OPTIONS", [("Max-Forwards", received)])
    assert caught.value.status == 400


def test_the_field_twice_is_a_400() -> None:
    with pytest.raises(BadRequest):
        next_hop_fields("OPTIONS", [("Max-Forwards", "5"), ("max-forwards", "0")])


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "options"])
@pytest.mark.parametrize("received", ["0", "3", "junk"])
def test_other_methods_pass_the_field_unchanged(method: str, received: str) -> None:
    """ "A recipient MAY ignore a Max-Forwards header field received with any other request
    methods": the same list, even an invalid value (methods are case-sensitive, §9.1)."""
    fields = [("Max-Forwards", received)]
    assert next_hop_fields(method, fields) is fields


def test_options_without_the_field_is_unchanged() -> None:
    fields = [OTHER]
    assert next_hop_fields("OPTIONS", fields) is fields


@pytest.mark.parametrize(
    ("methods", "allow"),
    [
        pytest.param(frozenset({"PUT", "GET", "HEAD"}), "GET, HEAD, PUT", id="sorted"),
        pytest.param(frozenset({"OPTIONS"}), "OPTIONS", id="one"),
        pytest.param(frozenset({"GET", "TRACE", "CONNECT"}), "GET", id="never-relayed-left-out"),
        pytest.param(None, "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT", id="any-method"),
    ],
)
def test_allow_value(methods: frozenset[str] | None, allow: str) -> None:
    assert allow_value(methods) == allow
