"""Properties of the pure request-path functions (RFC 3986 §2.4, §5.2.4, §6.2.2; RFC 9110 §5.5;
RFC 6750 §2; RFC 7515 §5.2; RFC 7519 §7.2), checked with hypothesis.

* Path normalisation is idempotent, and the route chosen for a request equals the route an
  upstream's own path would choose after normalising again: the decision and the served
  resource cannot drift apart.
* No accepted path means something else once an upstream decodes it.
* Rendered identity headers are printable ASCII without CR, LF or NUL, and decode back to the
  claim.
* Bearer parsing and JWT validation fail only with the gateway's own errors.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import time
import unicodedata
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.auth.bearer import read_token
from gateway.auth.headers import MAX_VALUE_BYTES, HeaderTemplate, IdentityHeaders
from gateway.auth.identity import Identity
from gateway.auth.jwt import JwtVerifier, NotMine
from gateway.problems import GatewayError, InvalidPath, InvalidToken, NotFound, ServiceUnavailable
from gateway.routing.paths import normalise_target
from gateway.routing.table import RouteEntry, RouteTable
from tests.support.settings import Issuer

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- path normalisation and routing --------------------------------------------------------

TRICKY_SEGMENTS = [
    "", ".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "%2f", "%2F", "%5c", "\\", ";", ";x=1", "..;",
    "admin", "ADMIN", "admin.", "admin%20", "%61dmin", "%41", "%7e", "~", "%25", "%252e",
    "%25252e", "%c0%ae", "%e0%80%ae", "%EF%BC%8E", "%EF%BC%8F", "%E2%84%AA", "%00", "%0a",
    "%", "%g1", "a%20b", "%C3%A9", "\u00e9", "#", "?", "users", "42", "files", "raw", "api",
    "%ED%A0%80", "%ff", "health", "x*", "{}", "%3b", "%3B", "@", ":", "!$&'()*+,=",
]  # fmt: skip

segments = st.one_of(
    st.sampled_from(TRICKY_SEGMENTS),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=6),
)
DOUBLE_ENCODED = re.compile(r"%25[0-9A-Fa-f]{2}")
raw_targets = st.builds(
    lambda parts, query: "/" + "/".join(parts) + ("" if query is None else "?" + query),
    st.lists(segments, max_size=8),
    st.one_of(st.none(), st.text(max_size=8)),
)

TABLE: RouteTable[str] = RouteTable(
    [
        RouteEntry(None, "exact", "/health", frozenset({"GET"}), "health"),
        RouteEntry(None, "glob", "/admin/**", None, "admin"),
        RouteEntry(None, "glob", "/files/*/raw", None, "raw-file"),
        RouteEntry(None, "regex", r"/users/\d+", None, "user"),
        RouteEntry(None, "prefix", "/api", None, "api"),
        RouteEntry(None, "glob", "/**/x*", None, "deep-x"),
    ]
)


def route_of(path: str) -> str:
    try:
        return TABLE.match("example.com", path, "GET")
    except NotFound:
        return "<none>"


@SETTINGS
@given(raw_targets)
@example("/a/%2e%2e/b")
@example("/%2e%2E/%2E")
@example("/a/./b/../../c/")
def test_normalisation_is_idempotent_and_routes_agree(raw: str) -> None:
    try:
        target = normalise_target(raw)
    except InvalidPath:
        return
    again = normalise_target(target.path)
    assert again.path == target.path
    upstream_path = target.path if target.query is None else f"{target.path}?{target.query}"
    assert normalise_target(upstream_path).query == target.query
    assert route_of(normalise_target(upstream_path).path) == route_of(target.path)


@SETTINGS
@given(raw_targets)
@example("/a/%2e%2e%2fadmin")
@example("/%EF%BC%8E%EF%BC%8E/admin")
def test_accepted_paths_mean_the_same_once_decoded(raw: str) -> None:
    """What an upstream decodes once has the same segments: no hidden "/", "\\", dot-segment,
    control character, or character that NFKC turns into path syntax."""
    try:
        path = normalise_target(raw).path
    except InvalidPath:
        return
    decoded = unquote(path, errors="strict")
    assert decoded.count("/") == path.count("/")
    assert not {".", ".."} & set(decoded.split("/"))
    assert "\\" not in decoded
    assert all(ord(c) >= 0x20 and c != "\x7f" for c in decoded)
    folded = unicodedata.normalize("NFKC", decoded)
    for char in "./\\%":
        assert folded.count(char) == decoded.count(char), char
    assert DOUBLE_ENCODED.search(path) is None, "a double encoding survived"


@SETTINGS
@given(st.text(max_size=40))
def test_normalisation_fails_only_with_invalid_path(raw: str) -> None:
    try:
        target = normalise_target(raw)
    except InvalidPath:
        return
    assert target.path.startswith("/")


# --- identity header templates -------------------------------------------------------------

any_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(categories=["Cc", "Zl", "Zp", "Zs", "Cs"]), max_size=8),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def identity_with(claims: dict[str, Any]) -> Identity:
    return Identity(
        issuer="https://issuer.example/",
        subject=claims.get("sub") if isinstance(claims.get("sub"), str) else None,
        client_id=None,
        scopes=frozenset(),
        audiences=(),
        expires_at=None,
        token_kind="jwt",
        claims=claims,
    )


def assert_header_safe(value: str) -> None:
    assert all(0x20 <= ord(c) <= 0x7E for c in value), value
    assert len(value) <= MAX_VALUE_BYTES


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@SETTINGS
@given(any_text)
@example("a\r\nX-Injected: 1")
@example("%0d%0a")
@example("\ud800")
def test_rendered_string_claims_are_safe_and_round_trip(value: str) -> None:
    rendered = HeaderTemplate.compile("{claims.v}").render(identity_with({"v": value}))
    if not value or len(value.encode("utf-8", "replace")) * 3 > MAX_VALUE_BYTES:
        return  # omitted, or may be omitted for size
    assert rendered is not None
    assert_header_safe(rendered)
    if _encodable(value):
        assert unquote(rendered, errors="strict") == value


@SETTINGS
@given(json_values, st.sampled_from(["{claims.v}", "id={claims.v};x", "{claims.none|claims.v}"]))
def test_rendered_claims_of_any_json_shape_are_safe(value: Any, template: str) -> None:
    rendered = HeaderTemplate.compile(template).render(identity_with({"v": value}))
    if rendered is not None:
        assert_header_safe(rendered)


@SETTINGS
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_whole_claim_set_is_base64url_json_that_round_trips(claims: dict[str, Any]) -> None:
    headers = IdentityHeaders.compile({"X-Claims": "{@claims}", "X-Sub": "{sub|claims.x}"})
    for name, value in headers.render(identity_with(claims)):
        assert_header_safe(value)
        if name == "X-Claims" and _encodable(json.dumps(claims, ensure_ascii=False)):
            decoded = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
            assert decoded == json.loads(json.dumps(claims))


@SETTINGS
@given(st.text(max_size=30))
def test_template_compilation_fails_only_with_value_error(template: str) -> None:
    try:
        compiled = HeaderTemplate.compile(template)
    except ValueError:
        return
    rendered = compiled.render(identity_with({"sub": "s"}))
    if rendered is not None:
        assert_header_safe(rendered)


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=10))
def test_rendered_values_have_no_outer_whitespace(value: str) -> None:
    rendered = HeaderTemplate.compile("{claims.v}").render(identity_with({"v": " " + value}))
    assert rendered is not None
    assert rendered == rendered.strip(" \t")


# --- bearer token parsing (RFC 6750 §2) ----------------------------------------------------

credentials = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda scheme, gap, token: scheme + gap + token,
        st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Bearer\t", "", "Bearer,"]),
        st.sampled_from([" ", "  ", "\t", "", " \t "]),
        st.text(alphabet='AZaz09-._~+/=. \t\r\n,"\x00\u00e9', max_size=20),
    ),
)


@SETTINGS
@given(
    st.lists(credentials, max_size=2),
    st.one_of(st.none(), st.text(max_size=30), st.just("access_token=abc&access_token=d")),
    st.one_of(st.none(), st.lists(st.tuples(st.sampled_from(["access_token", "x"]),
                                            st.text(max_size=10)), max_size=3)),
    st.booleans(),
    st.booleans(),
    st.integers(min_value=1, max_value=40),
)  # fmt: skip
def test_bearer_parsing_fails_only_with_gateway_errors(
    authorization: list[str],
    query: str | None,
    form: list[tuple[str, str]] | None,
    allow_query: bool,
    allow_form: bool,
    max_size: int,
) -> None:
    try:
        token = read_token(authorization, query, form, allow_query=allow_query,
                           allow_form=allow_form, max_size=max_size)  # fmt: skip
    except GatewayError:
        return
    if token is not None:
        assert 0 < len(token) <= max_size
        assert all(0x20 <= ord(c) <= 0x7E for c in token), token


# --- JWT parsing and validation (RFC 7515 §5.2, RFC 7519 §7.2) -----------------------------

ISS = "https://hmac.example"
SECRET = b"s" * 40
VERIFIER = JwtVerifier(
    [Issuer(issuer=ISS, audiences=["api://x"], algorithms=["HS256"], hmac_secret=SECRET.decode()),
     Issuer(issuer=ISS + "/typed", audiences=["api://x"], algorithms=["HS256"],
            hmac_secret=SECRET.decode(), require_at_jwt=True)],
    {},
)  # fmt: skip


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(header: bytes, payload: bytes) -> str:
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    mac = hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def verify(token: str) -> Identity:
    return asyncio.run(VERIFIER.verify(token))


numbers = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=False),
    st.text(max_size=4),
    st.booleans(),
    st.none(),
)
claim_sets = st.fixed_dictionaries(
    {"iss": st.sampled_from([ISS, ISS + "/typed", ISS + "/", ""])},
    optional={
        "exp": st.one_of(numbers, st.just(int(time.time()) + 600)),
        "nbf": numbers,
        "iat": numbers,
        "aud": st.one_of(st.just("api://x"), st.lists(st.sampled_from(["api://x", "y"])),
                         json_values),
        "sub": json_values,
        "client_id": json_values,
        "azp": json_values,
        "scope": json_values,
        "scp": json_values,
    },
)  # fmt: skip
headers = st.fixed_dictionaries(
    {"alg": st.sampled_from(["HS256", "none", "RS256", "hs256", ""])},
    optional={"typ": st.sampled_from(["at+jwt", "JWT", ""]), "kid": json_values,
              "crit": st.lists(st.text(max_size=3), max_size=2)},
)  # fmt: skip


@SETTINGS
@given(st.text(max_size=60))
def test_token_parsing_fails_only_with_not_mine_or_invalid_token(token: str) -> None:
    with contextlib.suppress(NotMine, InvalidToken):
        VERIFIER.parse(token)


@SETTINGS
@given(headers, claim_sets)
def test_signed_tokens_fail_only_with_gateway_errors(
    header: dict[str, Any], claims: dict[str, Any]
) -> None:
    token = hs256(json.dumps(header).encode(), json.dumps(claims).encode())
    try:
        identity = verify(token)
    except (InvalidToken, ServiceUnavailable):
        return
    assert identity.issuer == claims["iss"]
    assert "api://x" in identity.audiences


@pytest.mark.parametrize(
    "exp",
    [pytest.param(10**309, id="10e309"), pytest.param(-(10**400), id="minus-10e400")],
)
def test_exp_beyond_float_range_fails_with_invalid_token(exp: int) -> None:
    payload = json.dumps({"iss": ISS, "aud": "api://x", "exp": exp}).encode()
    with pytest.raises(InvalidToken):
        verify(hs256(b'{"alg":"HS256"}', payload))
