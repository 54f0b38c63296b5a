"""RE2 behind route regexes: linear time, refused constructs, and the engine's literal prefix."""

from __future__ import annotations

import time

import pytest
import re2

from gateway.routing import regex
from gateway.routing.regex import LinearRegex

# One pattern per message in regex._UNSUPPORTED: what Python's re accepts and RE2 refuses.
UNSUPPORTED = {
    "invalid perl operator": r"/a(?=b)",
    "invalid escape sequence": r"/(a)\1",
    "bad repetition operator": r"/a++",
}


def test_every_unsupported_construct_is_tested() -> None:
    assert set(regex._UNSUPPORTED) == set(UNSUPPORTED)


@pytest.mark.parametrize(("reason", "pattern"), sorted(UNSUPPORTED.items()))
def test_unsupported_constructs_are_refused_with_a_hint(reason: str, pattern: str) -> None:
    with pytest.raises(ValueError) as caught:
        LinearRegex(pattern)
    message = str(caught.value)
    assert message.startswith(reason)
    assert message.endswith("(RE2 syntax: no backreferences, lookaround or possessive quantifiers)")


def test_plain_syntax_errors_get_no_hint() -> None:
    with pytest.raises(ValueError) as caught:
        LinearRegex("/a(")
    assert str(caught.value) == "missing ): /a("


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        pytest.param((b"missing ): /caf\xc3\xa9(",), "missing ): /caf\u00e9(", id="engine-bytes"),
        pytest.param((b"missing ): /\xc3(",), "missing ): /\ufffd(", id="invalid-utf-8"),
        pytest.param(("failed to compute match range",), "failed to compute match range", id="str"),
        pytest.param((), "", id="nothing"),
    ],
)
def test_the_reason_is_whatever_the_error_carries_and_never_an_error_itself(
    args: tuple[bytes | str, ...], reason: str
) -> None:
    """A refused pattern must end as a ValueError (a config error), whatever shape of
    ``re2.error`` the engine or its wrapper raised: not as a decoding or index error."""
    assert regex._reason(re2.error(*args)) == reason


def test_a_refused_pattern_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    """RE2 logs every pattern it refuses to stderr unless told not to: the config loader
    reports the error itself, once, with its file and line."""
    with pytest.raises(ValueError):
        LinearRegex("/a(")
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("length", [30, 1_000, 100_000])
def test_catastrophic_backtracking_patterns_run_in_linear_time(length: int) -> None:
    """Issue 13: "/(a+)+b" took 1.9 s for 26 characters with Python's re."""
    compiled = LinearRegex("/(a+)+b")
    started = time.perf_counter()
    assert not compiled.fullmatch("/" + "a" * length)
    assert time.perf_counter() - started < 0.05
    assert compiled.fullmatch("/" + "a" * length + "b")


def test_groups_capture_nothing_so_a_match_needs_no_submatch_search() -> None:
    """Routes use no groups: compiled without captures (RE2 reports no groups), RE2
    decides a match with its DFA alone instead of also running its NFA for submatches
    (some 20 times slower on a long path). Checked on the compiled pattern, not by
    timing it on a shared machine."""
    assert LinearRegex("/(a+)+b")._compiled.groups == 0
    assert re2.compile("/(a+)+b").groups == 1  # what the option changes


def test_case_insensitive() -> None:
    assert LinearRegex("/Admin", case_insensitive=True).fullmatch("/aDMIN")
    assert not LinearRegex("/Admin").fullmatch("/admin")


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        pytest.param("/" + "a" * 100, "/" + "a" * 100, id="whole-literal"),
        pytest.param("/" + "a" * 300, "/" + "a" * 254, id="cut-short-of-the-range-length"),
        pytest.param(r"\C*", "", id="no-range-for-any-bytes"),
        pytest.param(r"/a\C*", "/", id="any-byte-after-a-literal-errs-short"),
        pytest.param("/caf\u00e9", "/caf", id="stops-before-non-ascii"),
        pytest.param("/caf[\u00e9\u00ea]", "/caf", id="stops-before-a-cut-character"),
        pytest.param("/\u0080", "/", id="stops-before-the-first-non-ascii-character"),
        pytest.param("(?i)/a", "/", id="both-cases-share-nothing-after-slash"),
        pytest.param(r"/a$^", "/a", id="matches-nothing-a-vacuous-bound"),
    ],
)
def test_literal_prefix(pattern: str, prefix: str) -> None:
    assert LinearRegex(pattern).literal_prefix() == prefix
    assert len(prefix) < regex._RANGE_LENGTH
