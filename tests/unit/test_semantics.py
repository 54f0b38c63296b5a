"""Upstream path semantics: the view of a normalised path a route is matched on."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.problems import InvalidPath
from gateway.routing.semantics import STRICT, PathSemantics, path_semantics

CASE = PathSemantics(case_insensitive=True)
SLASH = PathSemantics(trailing_slash_ignored=True)
DOT = PathSemantics(trailing_dot_ignored=True)
SPACE = PathSemantics(trailing_space_ignored=True)
IIS = PathSemantics(case_insensitive=True, trailing_dot_ignored=True, trailing_space_ignored=True)
EXPRESS = PathSemantics(case_insensitive=True, trailing_slash_ignored=True)


@pytest.mark.parametrize(
    ("semantics", "path", "view"),
    [
        pytest.param(STRICT, "/ADMIN/x./y/", "/ADMIN/x./y/", id="strict-is-identity"),
        pytest.param(CASE, "/ADMIN/X", "/admin/x", id="case-ascii"),
        pytest.param(CASE, "/a%3Fb", "/a%3fb", id="case-lowers-hex-too"),
        pytest.param(CASE, "/caf%C3%89", "/caf%c3%a9", id="case-encoded-non-ascii"),
        pytest.param(CASE, "/%CE%A3%CF%82", "/%cf%83%cf%83", id="case-casefolds-final-sigma"),
        pytest.param(CASE, "/x/", "/x/", id="case-keeps-slash"),
        pytest.param(SLASH, "/secret/", "/secret", id="slash-dropped"),
        pytest.param(SLASH, "/", "/", id="slash-root-kept"),
        pytest.param(SLASH, "/a/b", "/a/b", id="slash-none"),
        pytest.param(SLASH, "/Secret/", "/Secret", id="slash-keeps-case"),
        pytest.param(DOT, "/secret.", "/secret", id="dot-last-segment"),
        pytest.param(DOT, "/admin./x", "/admin/x", id="dot-every-segment"),
        pytest.param(DOT, "/a../b...", "/a/b", id="dot-runs"),
        pytest.param(DOT, "/a.b", "/a.b", id="dot-inside-kept"),
        pytest.param(DOT, "/a%20", "/a%20", id="dot-leaves-spaces"),
        pytest.param(DOT, "/a./", "/a/", id="dot-keeps-slash"),
        pytest.param(SPACE, "/admin%20/x%20%20", "/admin/x", id="space-runs"),
        pytest.param(SPACE, "/a.", "/a.", id="space-leaves-dots"),
        pytest.param(SPACE, "/a%20b", "/a%20b", id="space-inside-kept"),
        pytest.param(IIS, "/Admin.%20./X", "/admin/x", id="iis-mixed-run"),
        pytest.param(EXPRESS, "/API/v1/Private/", "/api/v1/private", id="express"),
        pytest.param(
            PathSemantics(trailing_slash_ignored=True, trailing_dot_ignored=True),
            "/a/b./",
            "/a/b",
            id="dot-then-slash",
        ),
    ],
)
def test_view(semantics: PathSemantics, path: str, view: str) -> None:
    assert semantics.view(path) == view
    assert semantics.view(view) == view  # a view is its own view


@pytest.mark.parametrize(
    ("semantics", "path"),
    [
        # Non-ASCII characters some case-insensitive upstreams fold into ASCII letters.
        pytest.param(CASE, "/%C5%BFecret", id="long-s-folds-to-s"),
        pytest.param(CASE, "/adm%C4%B1n", id="dotless-i-uppercases-to-I"),
        pytest.param(CASE, "/adm%C4%B0n", id="dotted-capital-I-lowercases-to-i"),
        pytest.param(CASE, "/%E2%84%AAey", id="kelvin-sign-lowercases-to-k"),
        pytest.param(CASE, "/stra%C3%9Fe", id="sharp-s-uppercases-to-SS"),
        pytest.param(CASE, "/stra%E1%BA%9Ee", id="capital-sharp-s-casefolds-to-ss"),
        pytest.param(CASE, "/%EF%AC%81le", id="fi-ligature-uppercases-to-FI"),
        pytest.param(CASE, "/%FF", id="not-utf8"),
        # Segments an upstream that trims would make empty (or merge with their neighbour).
        pytest.param(DOT, "/a/.../b", id="only-dots"),
        pytest.param(SPACE, "/a/%20", id="only-space"),
        pytest.param(IIS, "/a/.%20.", id="only-dots-and-spaces"),
    ],
)
def test_view_refuses_what_upstreams_read_differently(semantics: PathSemantics, path: str) -> None:
    with pytest.raises(InvalidPath) as caught:
        semantics.view(path)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        pytest.param("/caf%C3%A9", "/CAF%C3%89", id="e-acute"),
        pytest.param("/%CF%83", "/%CE%A3", id="sigma"),
        pytest.param("/%D0%B6", "/%D0%96", id="cyrillic-zhe"),
        pytest.param("/%E2%82%AC", "/%E2%82%AC", id="euro-sign-has-no-case"),
    ],
)
def test_case_folding_joins_non_ascii_cases(lower: str, upper: str) -> None:
    assert CASE.view(lower) == CASE.view(upper) == lower.lower()


def test_strict_semantics() -> None:
    assert STRICT.strict
    assert not CASE.strict
    assert PathSemantics() == STRICT


@pytest.mark.parametrize(
    ("semantics", "segment", "key"),
    [
        pytest.param(STRICT, "Public.", "Public.", id="strict"),
        pytest.param(CASE, "Public", "public", id="case"),
        pytest.param(IIS, "Public.%20", "public", id="iis"),
        pytest.param(SLASH, "public", "public", id="slash-is-not-a-segment-matter"),
    ],
)
def test_segment_key(semantics: PathSemantics, segment: str, key: str) -> None:
    assert semantics.segment_key(segment) == key


@dataclass
class Rules:
    case: str | None = None
    trailing_slash: str | None = None
    trailing_dot: str | None = None
    trailing_space: str | None = None


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        pytest.param((), STRICT, id="nothing-is-strict"),
        pytest.param((Rules(), Rules()), STRICT, id="unset-is-strict"),
        pytest.param((Rules(case="insensitive"),), CASE, id="case"),
        pytest.param((Rules(trailing_slash="ignored"),), SLASH, id="slash"),
        pytest.param((Rules(trailing_dot="ignored"),), DOT, id="dot"),
        pytest.param((Rules(trailing_space="ignored"),), SPACE, id="space"),
        pytest.param(
            (Rules(), Rules(case="insensitive", trailing_slash="ignored")),
            EXPRESS,
            id="inherited-from-defaults",
        ),
        pytest.param(
            (Rules(case="sensitive"), Rules(case="insensitive", trailing_slash="ignored")),
            SLASH,
            id="upstream-overrides-one-key",
        ),
        pytest.param(
            (Rules(trailing_dot="significant"), Rules(trailing_dot="ignored")),
            STRICT,
            id="significant-overrides",
        ),
    ],
)
def test_path_semantics_inherits_key_by_key(
    layers: tuple[Rules, ...], expected: PathSemantics
) -> None:
    assert path_semantics(*layers) == expected
