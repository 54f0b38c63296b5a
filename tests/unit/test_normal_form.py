"""A forwarded path the decision service may judge (gateway/routing/paths.py
``escapes_normalised``, gateway/decision/verdict.py): normal up to equivalent escapes."""

from __future__ import annotations

import pytest

from gateway.routing.paths import escapes_normalised, normalise_target


@pytest.mark.parametrize(
    ("sent", "normal"),
    [
        pytest.param("/a/%7Eb/%61", True, id="unreserved-escapes-are-equivalent"),
        pytest.param("/a/%c3%a9", True, id="lowercase-hex-is-equivalent"),
        pytest.param("/a/b/", True, id="trailing-slash-kept"),
        pytest.param("/admin/%2e%2e/public", False, id="encoded-dot-segment"),
        pytest.param("/admin/../public", False, id="dot-dot"),
        pytest.param("/public/./x", False, id="dot"),
        pytest.param("//admin", False, id="empty-segment"),
        pytest.param("/a/.", False, id="trailing-dot"),
    ],
)
def test_a_path_is_normal_when_only_its_escapes_differ(sent: str, normal: bool) -> None:
    assert (escapes_normalised(sent) == normalise_target(sent).path) is normal
    assert escapes_normalised("/x/%2f%3b") == "/x/%2F%3B"  # reserved: encoded, hex upper
