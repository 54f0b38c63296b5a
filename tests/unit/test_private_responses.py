"""Responses no shared cache may keep (gateway/proxy/private_responses.py): RFC 6750 §2.3
for query tokens, RFC 9111 §5.2.2.7 / §7.3 for responses carrying the gateway's cookie."""

from __future__ import annotations

import pytest

from gateway.proxy.private_responses import kept_private, must_stay_private, private_after


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param([("X-A", "1")], [("X-A", "1"), ("Cache-Control", "private")], id="none"),
        pytest.param(
            [("Cache-Control", "public, max-age=86400"), ("X-A", "1")],
            [("Cache-Control", "private, max-age=86400"), ("X-A", "1")],
            id="public-goes-max-age-stays",
        ),
        pytest.param(
            [("X-A", "1"), ("cache-control", "s-maxage=60"), ("Cache-Control", "max-age=5,,")],
            [("X-A", "1"), ("Cache-Control", "private, max-age=5")],
            id="two-fields-merged-where-the-first-was",
        ),
        pytest.param(
            [("Cache-Control", 'private="Set-Cookie, X-B", must-revalidate')],
            [("Cache-Control", "private, must-revalidate")],
            id="qualified-private-becomes-unqualified",
        ),
        pytest.param(
            [("Cache-Control", 'no-cache="a,b", Private')],
            [("Cache-Control", 'private, no-cache="a,b"')],
            id="quoted-commas-and-case",
        ),
        pytest.param(
            [("Cache-Control", 'ext="x\\",public"')],
            [("Cache-Control", 'private, ext="x\\",public"')],
            id="escaped-quote-inside-a-value",
        ),
    ],
)
def test_a_response_is_made_private(fields: list, expected: list) -> None:
    assert kept_private(fields) == expected


def test_no_store_says_more_and_is_left_as_sent() -> None:
    fields = [("Cache-Control", "public, NO-STORE"), ("Expires", "0")]
    assert kept_private(fields) == fields


def test_which_responses_must_stay_private() -> None:
    assert must_stay_private("query", [])
    assert must_stay_private("header", [("set-cookie", "__Host-gw=1")])
    assert not must_stay_private("header", [("RateLimit", "x")])
    assert not must_stay_private(None, [])


def test_the_cookie_guard_runs_first() -> None:
    def guard(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [f for f in fields if f[0] != "Set-Cookie"]

    combined = private_after(guard)
    assert combined([("Set-Cookie", "a=1"), ("Cache-Control", "public")]) == [
        ("Cache-Control", "private")
    ]
    assert private_after(None) is kept_private
