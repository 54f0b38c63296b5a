"""The cached form of validation results (``Identity | Rejection``): lossless round trips,
versioned, small interned rejections, and anything else refused with ``ValueError`` only.

Entry freshness stamps moved into the tiered cache; their tests are in
tests/integration/test_tiered_cache.py.
"""

from __future__ import annotations

import gc
import json
import sys
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import boundedjson
from gateway.auth import identity_codec, rejections
from gateway.auth.identity import Identity
from gateway.auth.identity_codec import decode, encode, encode_identity
from gateway.auth.rejections import Rejection
from gateway.problems import InvalidToken

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def identity(**changes: object) -> Identity:
    fields: dict[str, object] = {
        "issuer": "https://as.example/",
        "subject": "alice",
        "client_id": "app",
        "scopes": frozenset({"read", "write"}),
        "audiences": ("api://orders", "api://billing"),
        "expires_at": 1_700_000_300.0,
        "token_kind": "opaque",
        "claims": MappingProxyType(
            {"sub": "alice", "scope": "read write", "groups": ["ops"], "ünï": "cödé"}
        ),
    }
    fields.update(changes)
    return Identity(**fields)  # type: ignore[arg-type]


# --- identities ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "original",
    [
        pytest.param(identity(), id="full"),
        pytest.param(identity(subject=None, client_id=None), id="no-subject-no-client"),
        pytest.param(identity(expires_at=None), id="no-exp"),
        pytest.param(identity(scopes=frozenset(), audiences=()), id="empty-collections"),
        pytest.param(identity(token_kind="jwt", claims=MappingProxyType({})), id="jwt-no-claims"),
        pytest.param(identity(expires_at=1_700_000_300.25), id="fractional-exp"),
    ],
)
def test_round_trip_is_lossless(original: Identity) -> None:
    for decoded in (decode(encode_identity(original)), decode(encode(original))):
        assert decoded == original
        assert isinstance(decoded, Identity)
        assert isinstance(decoded.claims, MappingProxyType)
        assert isinstance(decoded.expires_at, float | None)


def test_encoding_is_compact_json_tagged_with_a_version() -> None:
    data = encode_identity(identity())
    fields = json.loads(data)
    assert fields[0] == identity_codec.VERSION == 2
    assert b": " not in data
    assert b", " not in data
    assert encode(identity()) == data


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
identities = st.builds(
    Identity,
    issuer=st.text(min_size=1, max_size=30),
    subject=st.none() | st.text(max_size=20),
    client_id=st.none() | st.text(max_size=20),
    scopes=st.frozensets(st.text(min_size=1, max_size=10), max_size=5),
    audiences=st.lists(st.text(max_size=15), max_size=3).map(tuple),
    expires_at=st.none() | st.floats(min_value=0, max_value=4e9, allow_nan=False),
    token_kind=st.sampled_from(["jwt", "opaque"]),
    claims=st.dictionaries(st.text(max_size=8), json_values, max_size=6).map(MappingProxyType),
)


@SETTINGS
@given(identities)
def test_every_identity_survives_the_round_trip(original: Identity) -> None:
    assert decode(encode(original)) == original


# --- rejections ----------------------------------------------------------------------------


def test_rejection_round_trip_gives_the_one_interned_instance() -> None:
    refused = Rejection.of("signature", "The token's signature does not verify.")
    decoded = decode(encode(refused))
    assert decoded is refused
    assert Rejection.from_error(InvalidToken(refused.detail, reason="signature")) is refused


def test_a_rejection_is_distinct_from_every_identity() -> None:
    """The old format's one-byte ``INACTIVE`` marker is now a tagged four-field rejection."""
    data = encode(Rejection.of("inactive", "The access token is not active."))
    assert json.loads(data)[:2] == [identity_codec.VERSION, "-"]
    assert isinstance(decode(data), Rejection)
    assert not isinstance(decode(encode(identity(issuer="-"))), Rejection)


def test_a_rejection_is_two_short_strings_and_nothing_else() -> None:
    """Issue 11 defect 2: a cached rejection held the exception, its traceback, and through
    it the request. Now: two strings, bounded, no reference to anything else."""
    refused = Rejection.of("r" * 1000, "d" * 100_000)
    assert (len(refused.reason), len(refused.detail)) == (64, 200)
    held = [part for part in gc.get_referents(refused) if part is not Rejection]
    assert sorted(held) == sorted([refused.reason, refused.detail])
    assert sys.getsizeof(refused) <= 64
    assert len(encode(refused)) < 300


def test_each_raise_gets_a_fresh_exception_without_history() -> None:
    refused = Rejection.of("expired", "The token has expired.")
    first, second = refused.error(), refused.error()
    assert first is not second
    assert (first.reason, first.detail) == ("expired", "The token has expired.")
    assert first.__traceback__ is None and first.__context__ is None


def test_interning_is_bounded_against_a_flood_of_distinct_details(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rejections, "_interned", {})  # the flood must not outlive the test
    flood = [Rejection.of("junk", f"detail {n}") for n in range(5000)]
    assert flood[0] == Rejection.of("junk", "detail 0")
    interned = sum(Rejection.of("junk", f"detail {n}") is flood[n] for n in range(5000))
    assert interned <= 512


# --- junk ----------------------------------------------------------------------------------


def valid_fields() -> list[object]:
    return json.loads(encode_identity(identity()))


def replaced(index: int, value: object) -> bytes:
    fields = valid_fields()
    fields[index] = value
    return json.dumps(fields).encode()


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b'{"issuer": "x"}', id="object-not-array"),
        pytest.param(b"[]", id="empty-array"),
        pytest.param(json.dumps(valid_fields()[:-1]).encode(), id="too-short"),
        pytest.param(json.dumps([*valid_fields(), 1]).encode(), id="too-long"),
        pytest.param(replaced(0, 1), id="old-version"),
        pytest.param(replaced(0, 3), id="future-version"),
        pytest.param(replaced(0, "2"), id="version-string"),
        pytest.param(replaced(1, None), id="issuer-null"),
        pytest.param(replaced(2, 42), id="subject-number"),
        pytest.param(replaced(3, ["app"]), id="client-list"),
        pytest.param(replaced(4, "read"), id="scopes-string"),
        pytest.param(replaced(4, [1]), id="scope-number"),
        pytest.param(replaced(5, [1]), id="audience-number"),
        pytest.param(replaced(6, "soon"), id="exp-string"),
        pytest.param(replaced(6, True), id="exp-bool"),
        pytest.param(b'[2,"i",null,null,[],[],NaN,"opaque",{}]', id="exp-nan"),
        pytest.param(b'[2,"i",null,null,[],[],Infinity,"opaque",{}]', id="exp-infinity"),
        pytest.param(b'[2,"i",null,null,[],[],1e999,"opaque",{}]', id="exp-overflow"),
        pytest.param(replaced(7, "saml"), id="unknown-kind"),
        pytest.param(replaced(8, []), id="claims-array"),
        pytest.param(b'[2,"-","expired"]', id="rejection-too-short"),
        pytest.param(b'[2,"-",1,"detail"]', id="rejection-reason-number"),
        pytest.param(b'[2,"-","expired",null]', id="rejection-detail-null"),
        pytest.param(b"1700000000123 " + replaced(0, 1), id="old-entry-format"),
        pytest.param(nested(1000), id="nested-1000"),
        pytest.param(b'[2,"i",null,null,[],[],null,"opaque",' + nested(40) + b"]", id="deep"),
        pytest.param(b'["' + b"x" * (identity_codec.MAX_BYTES + 1) + b'"]', id="oversize"),
    ],
)
def test_junk_is_refused_with_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


@SETTINGS
@given(st.binary(max_size=300) | json_values.map(lambda value: json.dumps(value).encode()))
def test_anything_decodes_to_a_value_or_raises_value_error_only(data: bytes) -> None:
    try:
        value = decode(data)
    except ValueError:
        return
    assert isinstance(value, Identity | Rejection)


# --- defects found while porting (each was a strict xfail until fixed) ---------------------


def test_a_claim_with_a_lone_surrogate_can_be_cached() -> None:
    answer = boundedjson.loads(b'{"sub":"alice","name":"\\ud800"}', max_bytes=1024)
    original = identity(claims=MappingProxyType(answer))
    assert decode(encode(original)) == original


def deep_answer(depth: int) -> dict[str, Any]:
    value: Any = "x"
    for _ in range(depth - 1):
        value = [value]
    return {"sub": "alice", "deep": value}


def test_every_answer_the_introspection_parser_accepts_reads_back() -> None:
    """Found while porting: claims sit one level deeper in the cached array than in the
    answer, so an answer at the parser's depth limit could not be read back from L2."""
    body = json.dumps(deep_answer(boundedjson.DEFAULT_MAX_DEPTH)).encode()
    answer = boundedjson.loads(body, max_bytes=256 * 1024)  # what introspection accepts
    original = identity(claims=MappingProxyType(answer))
    assert decode(encode(original)) == original
