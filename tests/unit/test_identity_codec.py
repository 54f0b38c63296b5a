"""The cached identity format: lossless round trips, versioned, junk refused with ValueError."""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest

from gateway.auth.identity import Identity
from gateway.cache.codec import (
    INACTIVE,
    decode_entry,
    decode_identity,
    encode_entry,
    encode_identity,
)


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
    decoded = decode_identity(encode_identity(original))
    assert decoded == original
    assert isinstance(decoded.claims, MappingProxyType)
    assert isinstance(decoded.expires_at, float | None)


def test_encoding_is_compact_json_tagged_with_a_version() -> None:
    data = encode_identity(identity())
    fields = json.loads(data)
    assert fields[0] == 1
    assert b": " not in data
    assert b", " not in data


def test_inactive_marker_is_distinct_from_every_identity() -> None:
    assert len(INACTIVE) <= 2
    assert not encode_identity(identity()).startswith(INACTIVE)
    with pytest.raises(ValueError):
        decode_identity(INACTIVE)


def valid_fields() -> list[object]:
    return json.loads(encode_identity(identity()))


def replaced(index: int, value: object) -> bytes:
    fields = valid_fields()
    fields[index] = value
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b'{"issuer": "x"}', id="object-not-array"),
        pytest.param(json.dumps(valid_fields()[:-1]).encode(), id="too-short"),
        pytest.param(replaced(0, 2), id="future-version"),
        pytest.param(replaced(1, None), id="issuer-null"),
        pytest.param(replaced(2, 42), id="subject-number"),
        pytest.param(replaced(4, "read"), id="scopes-string"),
        pytest.param(replaced(5, [1]), id="audience-number"),
        pytest.param(replaced(6, "soon"), id="exp-string"),
        pytest.param(replaced(6, True), id="exp-bool"),
        pytest.param(b'[1,"i",null,null,[],[],NaN,"opaque",{}]', id="exp-nan"),
        pytest.param(replaced(7, "saml"), id="unknown-kind"),
        pytest.param(replaced(8, []), id="claims-array"),
    ],
)
def test_junk_is_refused_with_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_identity(data)


@pytest.mark.parametrize(
    "value",
    [pytest.param(identity(), id="positive"), pytest.param(None, id="inactive")],
)
def test_entry_round_trip_keeps_freshness_to_the_millisecond(value: Identity | None) -> None:
    decoded, fresh_until = decode_entry(encode_entry(value, 1_700_000_123.4567))
    assert decoded == value
    assert fresh_until == pytest.approx(1_700_000_123.457, abs=1e-6)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"-", id="no-stamp"),
        pytest.param(b"abc -", id="stamp-not-digits"),
        pytest.param(b"123 [junk", id="payload-junk"),
    ],
)
def test_junk_entries_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_entry(data)
