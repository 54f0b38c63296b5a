"""RFC 6750 §2: which token a request carries, and which requests are malformed."""

from __future__ import annotations

import pytest

from gateway.auth.bearer import Credential, read_credential, read_token
from gateway.problems import InvalidRequest, InvalidToken

TOKEN = "eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl"


def read(
    authorization: tuple[str, ...] = (),
    query: str | None = None,
    form: list[tuple[str, str]] | None = None,
    *,
    allow_query: bool = False,
    allow_form: bool = False,
    max_size: int = 4096,
) -> str | None:
    return read_token(
        authorization,
        query,
        form,
        allow_query=allow_query,
        allow_form=allow_form,
        max_size=max_size,
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({"authorization": (f"Bearer {TOKEN}",)}, TOKEN, id="bearer-header"),
        pytest.param({"authorization": (f"bearer {TOKEN}",)}, TOKEN, id="lowercase-scheme"),
        pytest.param({"authorization": (f"Bearer \t  {TOKEN}",)}, TOKEN, id="spaces-and-tab"),
        pytest.param({"authorization": (f" Bearer {TOKEN} ",)}, TOKEN, id="surrounding-ows"),
        pytest.param({"authorization": ("Bearer abc+/=",)}, "abc+/=", id="b64-padding"),
        pytest.param({"authorization": ("Bearer a-b._~c",)}, "a-b._~c", id="b64token-punctuation"),
        pytest.param(
            {"authorization": ("Basic dXNlcjpwYXNz",)}, None, id="basic-scheme-is-no-bearer"
        ),
        pytest.param({"authorization": (f"DPoP {TOKEN}",)}, None, id="dpop-scheme-is-no-bearer"),
        pytest.param(
            {"authorization": (f"Bearerx {TOKEN}",)}, None, id="scheme-prefix-is-no-bearer"
        ),
        pytest.param({}, None, id="no-credentials"),
        pytest.param(
            {"query": f"a=1&access_token={TOKEN}", "allow_query": True}, TOKEN, id="query-token"
        ),
        pytest.param(
            {"query": f"access%5Ftoken={TOKEN}", "allow_query": True},
            TOKEN,
            id="query-name-percent-encoded",
        ),
        pytest.param(
            {"query": "access_token=a%2Bb%3D", "allow_query": True},
            "a+b=",
            id="query-value-decoded",
        ),
        pytest.param({"query": f"access_token={TOKEN}"}, None, id="query-token-disabled-ignored"),
        # A bare flag (no '=') next to the token is an ordinary empty parameter, not an error.
        pytest.param(
            {"query": f"debug&access_token={TOKEN}", "allow_query": True},
            TOKEN,
            id="bare-flag-before-query-token",
        ),
        pytest.param(
            {"query": f"access_token={TOKEN}&debug", "allow_query": True},
            TOKEN,
            id="bare-flag-after-query-token",
        ),
        pytest.param({"query": "debug&x=%41", "allow_query": True}, None, id="bare-flag-no-token"),
        pytest.param(
            {"form": [("access_token", TOKEN)], "allow_form": True}, TOKEN, id="form-token"
        ),
        pytest.param({"form": [("access_token", TOKEN)]}, None, id="form-token-disabled-ignored"),
        pytest.param({"allow_form": True}, None, id="form-not-read"),
        pytest.param(
            {"authorization": (f"Bearer {TOKEN}",), "query": "access%5Ftokens=x&a=%41"},
            TOKEN,
            id="header-beside-a-query-without-the-token",
        ),
        pytest.param(
            {
                "authorization": ("Basic dXNlcjpwYXNz",),
                "query": f"access_token={TOKEN}",
                "allow_query": True,
            },
            TOKEN,
            id="basic-header-and-query-token",
        ),
        pytest.param(
            {"authorization": ("Bearer " + "a" * 4096,)}, "a" * 4096, id="token-at-max-size"
        ),
    ],
)
def test_reads_the_token(kwargs: dict, expected: str | None) -> None:
    assert read(**kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param(
            {"authorization": (f"Bearer {TOKEN}", f"Bearer {TOKEN}")},
            InvalidRequest,
            "more than one Authorization header",
            id="two-authorization-headers",
        ),
        pytest.param(
            {"authorization": ("Bearer",)}, InvalidRequest, "no token", id="bearer-without-token"
        ),
        pytest.param(
            {"authorization": ("",)}, InvalidRequest, "malformed", id="empty-authorization"
        ),
        pytest.param(
            {"authorization": ("Bearer a b",)}, InvalidRequest, "malformed", id="token-with-space"
        ),
        pytest.param(
            {"authorization": ('Bearer realm="x"',)},
            InvalidRequest,
            "malformed",
            id="auth-params-not-token",
        ),
        pytest.param(
            {"authorization": ("Bearer abc\r\nX-Evil: 1",)},
            InvalidRequest,
            "malformed",
            id="crlf-in-token",
        ),
        pytest.param(
            {"authorization": ("Bearer jos\u00e9",)},
            InvalidRequest,
            "malformed",
            id="non-ascii-token",
        ),
        pytest.param(
            {
                "authorization": (f"Bearer {TOKEN}",),
                "query": f"access_token={TOKEN}",
                "allow_query": True,
            },
            InvalidRequest,
            "more than one way",
            id="header-and-query-both",
        ),
        pytest.param(
            {
                "authorization": (f"Bearer {TOKEN}",),
                "form": [("access_token", TOKEN)],
                "allow_form": True,
            },
            InvalidRequest,
            "more than one way",
            id="header-and-form-both",
        ),
        pytest.param(
            {"query": "access_token=a&access_token=b", "allow_query": True},
            InvalidRequest,
            "more than one way",
            id="query-token-twice",
        ),
        # Not a source of this route, but forwarded it would reach the upstream unchecked.
        pytest.param(
            {"authorization": (f"Bearer {TOKEN}",), "query": "a=1&access_token=x"},
            InvalidRequest,
            "more than one way",
            id="header-and-disabled-query-both",
        ),
        pytest.param(
            {"authorization": (f"Bearer {TOKEN}",), "query": "access%5Ftoken=x"},
            InvalidRequest,
            "more than one way",
            id="header-and-disabled-encoded-query-both",
        ),
        pytest.param(
            {
                "query": "access_token=a",
                "form": [("access_token", "b")],
                "allow_query": True,
                "allow_form": True,
            },
            InvalidRequest,
            "more than one way",
            id="query-and-form-both",
        ),
        pytest.param(
            {"form": [("access_token", "a"), ("access_token", "b")], "allow_form": True},
            InvalidRequest,
            "more than one way",
            id="form-token-twice",
        ),
        pytest.param(
            {"query": "access_token=", "allow_query": True},
            InvalidRequest,
            "malformed",
            id="query-token-empty",
        ),
        pytest.param(
            {"query": "access_token&debug", "allow_query": True},
            InvalidRequest,
            "malformed",
            id="query-token-as-bare-flag",
        ),
        pytest.param(
            {"query": "access_token=a%0Ab", "allow_query": True},
            InvalidRequest,
            "malformed",
            id="query-token-with-lf",
        ),
        pytest.param(
            {"authorization": ("Bearer " + "a" * 4097,)},
            InvalidToken,
            "too large",
            id="oversized-header-token",
        ),
        pytest.param(
            {"query": "access_token=" + "a" * 4097, "allow_query": True},
            InvalidToken,
            "too large",
            id="oversized-query-token",
        ),
    ],
)
def test_rejects(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as caught:
        read(**kwargs)
    assert type(caught.value) is error


def test_oversized_token_has_its_own_reason() -> None:
    with pytest.raises(InvalidToken) as caught:
        read(("Bearer " + "a" * 300,), max_size=256)
    assert caught.value.reason == "oversized"
    assert caught.value.status == 401


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        # RFC 9110 §5.5: OWS around a field value is SP and HTAB only; other whitespace is
        # part of the value, so it makes the credentials malformed or another scheme's.
        pytest.param(f"\tBearer {TOKEN} \t", TOKEN, id="sp-and-htab-are-trimmed"),
        pytest.param(f"\x0cBearer {TOKEN}", None, id="leading-form-feed-is-no-bearer-scheme"),
        pytest.param(f"\nBearer {TOKEN}", None, id="leading-newline-is-no-bearer-scheme"),
        # Only whitespace is trimmed: letters at either end belong to the scheme or token.
        pytest.param(f"Bearer {TOKEN}X", f"{TOKEN}X", id="trailing-letter-is-the-token's"),
        pytest.param(f"XBearer {TOKEN}", None, id="leading-letter-is-the-scheme's"),
    ],
)
def test_only_sp_and_htab_are_trimmed_from_authorization(
    authorization: str, expected: str | None
) -> None:
    assert read((authorization,)) == expected


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(f"Bearer {TOKEN}\x0b", id="trailing-vertical-tab"),
        pytest.param(f"Bearer {TOKEN}\r\n", id="trailing-crlf"),
    ],
)
def test_other_trailing_whitespace_makes_bearer_credentials_malformed(authorization: str) -> None:
    with pytest.raises(InvalidRequest):
        read((authorization,))


def test_a_dpop_token_is_found_in_the_header() -> None:
    """The source says where to strip the token from before forwarding (RFC 9449 §7.1)."""
    from gateway.auth.bearer import Credential, read_credential

    found = read_credential(
        (f"DPoP {TOKEN}",), None, None,
        allow_query=False, allow_form=False, max_size=4096, allow_dpop=True,
    )  # fmt: skip
    assert found == Credential(TOKEN, "header", "dpop")


@pytest.mark.parametrize(
    ("authorization", "query", "expected"),
    [
        pytest.param((f"Bearer {TOKEN}",), None, ("header", "bearer"), id="bearer-header"),
        pytest.param((), f"access_token={TOKEN}", ("query", "bearer"), id="query-not-dpop"),
        pytest.param((), None, None, id="nothing-is-no-credential"),
    ],
)
def test_the_source_of_each_credential(
    authorization: tuple[str, ...], query: str | None, expected: tuple[str, str] | None
) -> None:
    """The source says where to strip the token from before forwarding; with DPoP allowed, a
    request without a DPoP token is not given one (RFC 6750 §2, RFC 9449 §7.1)."""
    from gateway.auth.bearer import read_credential

    found = read_credential(
        authorization, query, None,
        allow_query=True, allow_form=False, max_size=4096, allow_dpop=True,
    )  # fmt: skip
    if expected is None:
        assert found is None
    else:
        assert found is not None and found.token == TOKEN
        assert (found.source, found.scheme) == expected


@pytest.mark.parametrize(
    ("query", "names_it"),
    [
        pytest.param("a=1&access_token=x", True, id="plain"),
        pytest.param("q=caf%C3%A9&access%5ftoken=x", True, id="encoded-name-lowercase-hex"),
        pytest.param("access_token", True, id="bare-flag"),
        pytest.param("access_token_x=1&x=access_token", False, id="a-longer-name-or-a-value"),
        pytest.param("q=%ZZ&a=%41", False, id="junk-escapes-in-values"),
    ],
)
def test_a_disabled_query_token_counts_beside_a_header_one_only_where_tokens_are_checked(
    query: str, names_it: bool
) -> None:
    """Names only are read (values stay undecoded); an anonymous route, which checks
    nothing, passes both on as sent."""
    header = (f"Bearer {TOKEN}",)
    options = {"allow_query": False, "allow_form": False, "max_size": 4096}
    if names_it:
        with pytest.raises(InvalidRequest, match="more than one way"):
            read_credential(header, query, None, **options)
    else:
        assert read_credential(header, query, None, **options) == Credential(TOKEN, "header")
    quiet = read_credential(header, query, None, unread_query_counts=False, **options)
    assert quiet == Credential(TOKEN, "header")
