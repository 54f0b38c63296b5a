"""Identity header templates: placeholders, fallbacks, and values that cannot inject headers."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.headers import (
    _MEMBER_SAFE,
    _SAFE,
    MAX_VALUE_BYTES,
    HeaderTemplate,
    IdentityHeaders,
    _escape,
    _joined,
)
from gateway.auth.identity import Identity


def identity(
    subject: str | None = "alice", client_id: str | None = None, **claims: Any
) -> Identity:
    return Identity(
        issuer="https://issuer.example/",
        subject=subject,
        client_id=client_id,
        scopes=frozenset({"write", "read"}),
        audiences=("api",),
        expires_at=None,
        token_kind="jwt",
        claims=claims,
    )


def render(template: str, who: Identity) -> str | None:
    return HeaderTemplate.compile(template).render(who)


@pytest.mark.parametrize(
    ("template", "who", "expected"),
    [
        pytest.param("{sub}", identity(), "alice", id="sub-from-identity"),
        pytest.param("{scope}", identity(), "read write", id="scope-sorted-string"),
        pytest.param("{iss}", identity(), "https://issuer.example/", id="issuer"),
        pytest.param("{token_kind}", identity(), "jwt", id="token-kind"),
        pytest.param("{client_id|azp}", identity(azp="web"), "web", id="fallback-to-azp"),
        pytest.param(
            "{client_id|azp}", identity(client_id="app", azp="web"), "app", id="first-source-wins"
        ),
        pytest.param(
            "{claims.tenant|sub}", identity(tenant=""), "alice", id="empty-string-falls-back"
        ),
        pytest.param("user={sub};", identity(), "user=alice;", id="literal-around-placeholder"),
        pytest.param("{{{sub}}}", identity(), "{alice}", id="doubled-braces-are-literal"),
        pytest.param("static", identity(), "static", id="literal-only"),
        pytest.param("{ sub | azp }", identity(), "alice", id="spaces-around-sources"),
        pytest.param("{groups}", identity(groups=["a", "b"]), "a,b", id="list-joined-with-comma"),
        pytest.param(
            "{scp}", identity(scp=["read", "write"]), "read write", id="scp-list-joined-with-space"
        ),
        pytest.param("{claims.verified}", identity(verified=False), "false", id="bool-lowercase"),
        pytest.param("{exp}", identity(exp=1700000000), "1700000000", id="int"),
        pytest.param("{claims.ratio}", identity(ratio=0.5), "0.5", id="float"),
        pytest.param(
            "{claims.org}",
            identity(org={"b": 1, "a": "x"}),
            '{"a":"x","b":1}',
            id="object-compact-json",
        ),
        pytest.param(
            "{claims.ex.com:role}",
            identity(**{"ex.com:role": "x"}),
            "x",
            id="dotted-claim-name-not-a-path",
        ),
        pytest.param("{sub}", identity(subject=None), None, id="missing-source-omits-header"),
        pytest.param(
            "id={sub}", identity(subject=None), None, id="missing-source-omits-literal-too"
        ),
        pytest.param("{groups}", identity(groups=[]), None, id="empty-list-is-nothing"),
        pytest.param("{claims.x}", identity(x=None), None, id="null-claim-is-nothing"),
        pytest.param(
            "{sub}",
            identity(subject="a\r\nX-Admin: true"),
            "a%0D%0AX-Admin: true",
            id="crlf-in-claim",
        ),
        pytest.param(
            "{sub}", identity(subject="a\x00b\x7fc\td"), "a%00b%7Fc%09d", id="nul-del-tab"
        ),
        pytest.param("{name}", identity(name="Jos\u00e9"), "Jos%C3%A9", id="non-ascii-utf8"),
        pytest.param("{sub}", identity(subject="100%"), "100%25", id="percent-is-encoded"),
        pytest.param("{sub}", identity(subject="\ud800"), "?", id="lone-surrogate-replaced"),
        pytest.param("{groups}", identity(groups=["a\nb"]), "a%0Ab", id="crlf-in-list-item"),
    ],
)
def test_render(template: str, who: Identity, expected: str | None) -> None:
    assert render(template, who) == expected


def test_all_claims_is_unpadded_base64url_of_sorted_compact_json() -> None:
    claims = {"sub": "alice", "name": "Jos\u00e9", "roles": ["a"]}
    value = render("{@claims}", identity(**claims))
    assert value is not None and "=" not in value
    decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    assert (
        decoded
        == json.dumps(claims, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    )


@pytest.mark.parametrize(
    ("size", "present"),
    [
        pytest.param(MAX_VALUE_BYTES, True, id="at-cap-kept"),
        pytest.param(MAX_VALUE_BYTES + 1, False, id="over-cap-omitted"),
    ],
)
def test_value_size_cap(size: int, present: bool) -> None:
    assert (render("{sub}", identity(subject="a" * size)) is not None) is present


def test_cap_counts_encoded_bytes() -> None:
    # 3000 x "é" is 6000 UTF-8 bytes, 18000 once percent-encoded.
    assert render("{sub}", identity(subject="\u00e9" * 3000)) is None


def test_encoded_value_is_printable_ascii_and_round_trips() -> None:
    nasty = "x\r\n\x00\x1f\x7f%é\U0001f600 ok"
    value = render("{sub}", identity(subject=nasty))
    assert value is not None
    assert all(0x20 <= ord(c) < 0x7F for c in value)
    assert unquote(value) == nasty


@pytest.mark.parametrize(
    ("template", "message"),
    [
        pytest.param(
            "{subject}",
            "unknown placeholder '{subject}' (known: sub, client_id",
            id="unknown-placeholder",
        ),
        pytest.param("{sub|nope}", "unknown placeholder '{nope}'", id="unknown-fallback"),
        pytest.param("{claims.}", "claim name", id="claims-without-name"),
        pytest.param("{claims.a b}", "claim name", id="claims-name-with-space"),
        pytest.param("{}", "empty source", id="empty-placeholder"),
        pytest.param("{sub|}", "empty source", id="empty-fallback"),
        pytest.param("{sub", "unclosed '{' at position 0", id="unclosed-brace"),
        pytest.param("a}b", "unmatched '}' at position 1", id="lone-closing-brace"),
        pytest.param("{a{sub}}", "'{' inside a placeholder at position 2", id="nested-brace"),
        pytest.param("caf\u00e9 {sub}", "printable ASCII", id="non-ascii-literal"),
        pytest.param("a\r\n{sub}", "printable ASCII", id="crlf-literal"),
        pytest.param("", "empty", id="empty-template"),
    ],
)
def test_compile_errors(template: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        HeaderTemplate.compile(template)
    assert message in str(caught.value)


def test_identity_headers_render_only_headers_with_values() -> None:
    headers = IdentityHeaders.compile(
        {
            "X-Auth-Subject": "{sub}",
            "X-Auth-Client-Id": "{client_id|azp}",
            "X-Auth-Scopes": "{scope}",
        }
    )
    assert headers.names == frozenset({"x-auth-subject", "x-auth-client-id", "x-auth-scopes"})
    assert headers.render(identity()) == [
        ("X-Auth-Subject", "alice"),
        ("X-Auth-Scopes", "read write"),
    ]


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        pytest.param(
            {"X-Bad": "{nope}"},
            "X-Bad: unknown placeholder '{nope}'",
            id="template-error-names-header",
        ),
        pytest.param(
            {"X-A": "{sub}", "x-a": "{sub}"}, "x-a: set twice", id="duplicate-name-any-case"
        ),
        pytest.param(
            {"X-A\r\nEvil": "{sub}"}, "not an RFC 9110 field name", id="crlf-in-header-name"
        ),
        pytest.param({"X A": "{sub}"}, "not an RFC 9110 field name", id="space-in-header-name"),
    ],
)
def test_identity_headers_compile_errors(mapping: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        IdentityHeaders.compile(mapping)
    assert message in str(caught.value)


def scoped(*scopes: str) -> Identity:
    return Identity(
        issuer="https://issuer.example/",
        subject="alice",
        client_id=None,
        scopes=frozenset(scopes),
        audiences=(),
        expires_at=None,
        token_kind="opaque",
    )


@pytest.mark.parametrize(
    ("template", "who", "expected"),
    [
        # The defect: ["users,admins"] arrived as "users,admins", two groups to the upstream.
        pytest.param("{groups}", identity(groups=["users,admins"]), "users%2Cadmins",
                     id="comma-in-member-encoded"),
        pytest.param("{groups}", identity(groups=["users,admins", "ops"]), "users%2Cadmins,ops",
                     id="comma-in-member-next-to-another"),
        pytest.param("{roles}", identity(roles=["a%2Cb"]), "a%252Cb", id="percent-in-member"),
        pytest.param("{groups}", identity(groups=[" a", "b ", "c"]), "%20a,b%20,c",
                     id="outer-spaces-of-members"),
        pytest.param("{groups}", identity(groups=["a b"]), "a b", id="inner-space-in-comma-list"),
        pytest.param("{scp}", identity(scp=["a b", "c"]), "a%20b c", id="space-in-scp-member"),
        pytest.param("{scp}", identity(scp=["a,b"]), "a,b", id="comma-kept-in-space-list"),
        pytest.param("{scope}", scoped("a b", "c"), "a%20b c", id="scope-member-with-space"),
        pytest.param("{scope}", scoped(), None, id="no-scopes-omits-header"),
        pytest.param("{aud}", identity(aud=["api://a,b", "api://c"]), "api://a%2Cb,api://c",
                     id="audience-array"),
        pytest.param("{groups}", identity(groups=[{"a": 1, "b": 2}]), '{"a":1%2C"b":2}',
                     id="object-member-commas-encoded"),
        pytest.param("{groups}", identity(groups=["a", ""]), "a,", id="empty-member-kept"),
        pytest.param("{groups}", identity(groups=[1, True]), "1,true", id="scalar-members"),
        # A scalar is not a list: its commas stay, so an existing header reads as before.
        pytest.param("{sub}", identity(subject="a,b"), "a,b", id="scalar-comma-unchanged"),
        pytest.param("{groups}", identity(groups="users,admins"), "users,admins",
                     id="string-claim-unchanged"),
        # Two placeholders with a literal between them; either missing omits the header.
        pytest.param("{sub}:{iss}", identity(), "alice:https://issuer.example/",
                     id="two-placeholders"),
        pytest.param("{sub}:{iss}", identity(subject=None), None, id="two-placeholders-missing"),
        pytest.param("{sub}:{groups}", identity(groups=["x,y"]), "alice:x%2Cy",
                     id="two-placeholders-array"),
    ],
)  # fmt: skip
def test_render_arrays(template: str, who: Identity, expected: str | None) -> None:
    assert render(template, who) == expected


def test_member_safe_sets_leave_out_exactly_the_separator() -> None:
    assert set(_MEMBER_SAFE) == {",", " "}
    assert "%" not in _SAFE and len(_SAFE) == 0x7F - 0x20 - 1
    for separator, safe in _MEMBER_SAFE.items():
        assert set(_SAFE) - set(safe) == {separator}


# Separators, '%' and spaces often, anything else too.
MEMBER_TEXT = st.text(st.one_of(st.sampled_from(", %a"), st.characters()), max_size=8)


@given(st.lists(MEMBER_TEXT, min_size=1, max_size=5))
def test_comma_list_members_round_trip(members: list[str]) -> None:
    value = render("{groups}", identity(groups=members))
    if members == [""]:
        assert value is None  # nothing to render, as for an empty list
        return
    assert value is not None and all(0x20 <= ord(c) < 0x7F for c in value)
    decoded = [unquote(piece, errors="strict") for piece in value.split(",")]
    # Lone surrogates cannot be encoded and become "?", as for any claim.
    assert decoded == [m.encode("utf-8", "replace").decode() for m in members]


@given(st.lists(MEMBER_TEXT.filter(lambda s: s and s.split() == [s]), max_size=5))
def test_space_list_members_round_trip(members: list[str]) -> None:
    value = render("{scp}", identity(scp=members))
    if not members:
        assert value is None
        return
    assert value is not None
    decoded = [unquote(piece) for piece in value.split(" ")]
    assert decoded == [m.encode("utf-8", "replace").decode() for m in members]


@given(st.lists(MEMBER_TEXT, max_size=5), st.sampled_from([",", " "]))
def test_the_fast_path_for_plain_members_encodes_like_the_slow_one(
    members: list[str], separator: str
) -> None:
    assert _joined(members, separator) == separator.join(_escape(m, separator) for m in members)


JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
X5T = "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg0"


@pytest.mark.parametrize(
    ("template", "cnf", "expected"),
    [
        ("{cnf_jkt}", {"jkt": JKT}, JKT),
        ("{cnf_x5t}", {"x5t#S256": X5T}, X5T),
        ("{cnf_jkt}", {"x5t#S256": X5T}, None),
        ("{cnf_jkt|cnf_x5t}", {"x5t#S256": X5T}, X5T),
        ("{cnf_jkt}", "not-an-object", None),
        ("{cnf_jkt}", {"jkt": 5}, None),
        ("{cnf_x5t}", None, None),
    ],
    ids=["jkt", "x5t", "absent", "fallback", "cnf-string", "jkt-number", "no-cnf"],
)
def test_binding_placeholders(template: str, cnf: Any, expected: str | None) -> None:
    claims = {} if cnf is None else {"cnf": cnf}
    assert render(template, identity(**claims)) == expected


@pytest.mark.parametrize(
    ("members", "separator", "expected"),
    [
        (["a,b,c"], ",", "a%2Cb%2Cc"),  # separators inside one member
        ([" a"], ",", "%20a"),  # leading space, stripped by parsers
        (["ab "], ",", "ab%20"),  # trailing space
        (["a "], ",", "a%20"),
        (["a", " b"], ",", "a,%20b"),  # ", " inside the joined value
        (["a ", "b"], ",", "a%20,b"),  # " ," inside the joined value
        (["a", "b"], " ", "a b"),
    ],
)
def test_joined_encodes_members_a_parser_would_misread(
    members: list[str], separator: str, expected: str
) -> None:
    assert _joined(members, separator) == expected


def test_outer_spaces_around_an_x_keep_the_x() -> None:
    assert _escape(" X") == "%20X"
    assert _escape("X ") == "X%20"


def test_template_keeps_its_source_text() -> None:
    template = HeaderTemplate.compile("u={sub}")
    assert template.template == "u={sub}"
    assert repr(template) == "HeaderTemplate('u={sub}')"


def test_render_text_keeps_a_value_of_exactly_the_cap() -> None:
    who = identity(subject="a" * MAX_VALUE_BYTES)
    assert HeaderTemplate.compile("{sub}").render_text(who) == "a" * MAX_VALUE_BYTES
    assert HeaderTemplate.compile("{sub}x").render_text(who) is None
