"""The methods the gateway relays, named member by member (module constants are not mutated)."""

from __future__ import annotations

import pytest

from gateway.methods import ANY_METHOD, NEVER_RELAYED, relayed_methods


def test_what_is_never_relayed_and_what_any_method_means() -> None:
    assert frozenset({"CONNECT", "TRACE"}) == NEVER_RELAYED
    assert ANY_METHOD == ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


@pytest.mark.parametrize(
    ("methods", "listed"),
    [
        pytest.param(None, ANY_METHOD, id="any"),
        pytest.param(frozenset(), (), id="none"),
        pytest.param(frozenset({"POST", "GET", "TRACE", "CONNECT"}), ("GET", "POST"), id="sorted"),
    ],
)
def test_relayed_methods(methods: frozenset[str] | None, listed: tuple[str, ...]) -> None:
    assert relayed_methods(methods) == listed
