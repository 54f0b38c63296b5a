"""RFC 9449 §9 server nonces: HMAC time windows any replica with the secret can check."""

from __future__ import annotations

import re

from gateway.auth.dpop_nonce import current_nonces

SECRET = b"s" * 32


def test_a_window_has_one_nonce_and_the_previous_one_is_still_accepted() -> None:
    current, previous = current_nonces(SECRET, 1000.0, 300.0)
    assert current_nonces(SECRET, 1199.9, 300.0) == (current, previous)
    later_current, later_previous = current_nonces(SECRET, 1200.0, 300.0)
    assert later_previous == current and later_current != current


def test_nonces_depend_on_the_secret_and_use_nonce_syntax() -> None:
    mine, _ = current_nonces(SECRET, 1000.0, 300.0)
    theirs, _ = current_nonces(b"t" * 32, 1000.0, 300.0)
    assert mine != theirs
    # RFC 9449 §8.1: nonce = 1*NQCHAR
    assert re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", mine) and len(mine) == 24


def test_negative_and_zero_windows_work() -> None:
    assert current_nonces(SECRET, 0.0, 300.0)[1] == current_nonces(SECRET, -1.0, 300.0)[0]
