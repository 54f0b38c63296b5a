"""The bounded JSON parser every outside document goes through (RFC 8259 §9)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import boundedjson


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("[]", 1),
        ('{"a": [1, {"b": 2}]}', 3),
        ('["[[[[", "]]]]"]', 1),  # brackets inside strings do not count
        ('["\\"[[[["]', 1),  # an escaped quote does not end the string
        ('["\\\\", [[]]]', 3),  # an escaped backslash does not escape the quote after it
        ('"just a string"', 0),
    ],
    ids=["empty", "nested", "in-string", "escaped-quote", "escaped-backslash", "scalar"],
)
def test_depth_is_counted_outside_strings(text: str, depth: int) -> None:
    boundedjson.loads(text, max_bytes=1000, max_depth=depth)
    if depth:
        with pytest.raises(ValueError, match="deeper"):
            boundedjson.loads(text, max_bytes=1000, max_depth=depth - 1)


def test_a_thousand_levels_is_a_value_error_not_a_recursion_error() -> None:
    with pytest.raises(ValueError):
        boundedjson.loads("[" * 1000 + "]" * 1000, max_bytes=10_000)
    with pytest.raises(ValueError):
        boundedjson.loads("[" * 100_000, max_bytes=1_000_000, max_depth=10**6)


def test_size_bound_is_exact() -> None:
    text = '"' + "x" * 8 + '"'
    assert boundedjson.loads(text, max_bytes=10) == "x" * 8
    with pytest.raises(ValueError, match="larger"):
        boundedjson.loads(text, max_bytes=9)


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", "-Infinity", "\xff", "{", "[1,]"])
def test_not_json_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        boundedjson.loads(text.encode("latin-1"), max_bytes=100)


def test_duplicate_members_only_when_asked() -> None:
    assert boundedjson.loads('{"a":1,"a":2}', max_bytes=100) == {"a": 2}
    with pytest.raises(ValueError, match="duplicate"):
        boundedjson.loads('{"a":1,"a":2}', max_bytes=100, unique_members=True)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@given(json_values)
def test_depth_agrees_with_the_structure(value: object) -> None:
    text = json.dumps(value)
    depth = _depth(value)
    assert boundedjson.loads(text, max_bytes=10**6, max_depth=depth) == value
    if depth:
        with pytest.raises(ValueError):
            boundedjson.loads(text, max_bytes=10**6, max_depth=depth - 1)


def test_few_openers_skip_the_scan_and_many_are_still_checked() -> None:
    """The fast path (no more openers than max_depth) cannot hide a deep document."""
    boundedjson.check_depth(b"[[[1]]]", 3)
    boundedjson.check_depth(b'["[[[[[[[[", [1]]', 2)  # many openers, all but two in a string
    with pytest.raises(ValueError):
        boundedjson.check_depth(b"[[[[1]]]]", 3)
