"""``gateway check``'s audit: which route is weaker, and which near spellings it receives."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml
from hypothesis import given, reject
from hypothesis import strategies as st

from gateway.config.loader import load_config_text
from gateway.config.models import GatewayConfig
from gateway.problems import InvalidPath
from gateway.route_audit import Shadow, Strength, find_shadows, shadow_warnings
from gateway.routing.paths import Target, normalise_target
from gateway.routing.variants import near_spellings, sample_paths


def strength(
    required: bool = True,
    issuers: tuple[str, ...] = ("a",),
    all: tuple[str, ...] = (),
    any: tuple[str, ...] = (),
    claims: tuple[tuple[str, str], ...] = (),
) -> Strength:
    return Strength(required, frozenset(issuers), frozenset(all), frozenset(any), frozenset(claims))


GROUPS = (("groups", '{"contains": "ops"}'),)


@pytest.mark.parametrize(
    ("a", "b", "weaker"),
    [
        pytest.param(strength(False), strength(), True, id="anonymous-vs-required"),
        pytest.param(strength(False), strength(False), False, id="anonymous-vs-anonymous"),
        pytest.param(strength(), strength(False), False, id="required-vs-anonymous"),
        pytest.param(strength(), strength(), False, id="equal"),
        pytest.param(strength(all=("r",)), strength(all=("r", "w")), True, id="fewer-scopes"),
        pytest.param(strength(all=("r", "w")), strength(all=("r",)), False, id="more-scopes"),
        pytest.param(strength(all=("x",)), strength(all=("y",)), False, id="other-scopes"),
        pytest.param(strength(), strength(any=("r", "w")), True, id="no-any-vs-any"),
        pytest.param(strength(any=("r", "w")), strength(any=("r",)), True, id="wider-any"),
        pytest.param(strength(any=("r",)), strength(any=("r", "w")), False, id="narrower-any"),
        pytest.param(strength(any=("r",)), strength(), False, id="any-vs-none"),
        pytest.param(strength(), strength(claims=GROUPS), True, id="fewer-claims"),
        pytest.param(strength(claims=GROUPS), strength(), False, id="more-claims"),
        pytest.param(
            strength(claims=(("groups", '{"contains": "dev"}'),)),
            strength(claims=GROUPS),
            False,
            id="other-claim-rule",
        ),
        pytest.param(strength(issuers=("a", "b")), strength(), True, id="more-issuers"),
        pytest.param(strength(), strength(issuers=("a", "b")), False, id="fewer-issuers"),
        pytest.param(
            strength(issuers=("a", "b"), all=("r", "w")),
            strength(all=("r",)),
            False,
            id="more-issuers-but-more-scopes",
        ),
    ],
)
def test_weaker_than(a: Strength, b: Strength, weaker: bool) -> None:
    assert a.weaker_than(b) is weaker


def load(routes: list[dict[str, Any]], **upstream: Any) -> GatewayConfig:
    config = {
        "upstreams": {
            "app": {"url": "http://127.0.0.1:9000", **upstream},
            "same": {"url": "http://127.0.0.1:9000"},
            "other": {"url": "http://127.0.0.1:9100"},
        },
        "issuers": [{"issuer": "https://a.example/", "audiences": ["api"],
                     "keys": {"jwks": {"keys": []}}}],
        "routes": routes,
    }  # fmt: skip
    return load_config_text(yaml.safe_dump(config, sort_keys=False), "gw.yaml", {}).config


ADMIN = {"match": {"path": "/admin/**"}, "upstream": "app"}
CATCH_ALL = {"match": {"path": {"prefix": "/"}}, "upstream": "app", "auth": "anonymous"}


def differences(routes: list[dict[str, Any]], **upstream: Any) -> set[tuple[int, int, str]]:
    return {(s.weaker, s.stronger, s.difference) for s in find_shadows(load(routes, **upstream))}


def test_the_issue_13_config_is_found() -> None:
    shadows = find_shadows(load([ADMIN, CATCH_ALL]))
    assert [(s.weaker, s.stronger, s.difference) for s in shadows] == [
        (1, 0, "case"),
        (1, 0, "trailing_dot"),
        (1, 0, "trailing_space"),
    ]
    assert shadows[0] == Shadow(1, 0, "/admin/x", "/ADMIN/X", "case")


@pytest.mark.parametrize(
    ("paths", "left"),
    [
        pytest.param({"case": "insensitive"}, {"trailing_dot", "trailing_space"}, id="case-set"),
        pytest.param(
            {"case": "insensitive", "trailing_dot": "ignored", "trailing_space": "ignored"},
            set(),
            id="all-set",
        ),
    ],
)
def test_paths_settings_silence_what_they_cover(paths: dict[str, str], left: set[str]) -> None:
    assert {d for _, _, d in differences([ADMIN, CATCH_ALL], paths=paths)} == left


@pytest.mark.parametrize(
    ("stronger", "found"),
    [
        pytest.param({"match": {"path": "/secret"}}, {"case", "trailing_slash"}, id="exact"),
        pytest.param({"match": {"path": {"prefix": "/secret"}}}, {"case"}, id="prefix"),
        pytest.param(
            {"match": {"path": {"regex": r"/users/\d+"}}}, {"case", "trailing_slash"}, id="regex"
        ),
        pytest.param(
            {"match": {"path": "/secret", "host": "*.example.com"}},
            {"case", "trailing_slash"},
            id="wildcard-host",
        ),
        pytest.param({"match": {"path": "/secret", "methods": ["DELETE"]}}, set(), id="method"),
    ],
)
def test_pattern_kinds_hosts_and_methods(stronger: dict[str, Any], found: set[str]) -> None:
    catch_all = {**CATCH_ALL, "match": {"path": {"prefix": "/"}, "methods": ["GET"]}}
    routes = [{**stronger, "upstream": "app"}, catch_all]
    assert {d for _, _, d in differences(routes)} - {"trailing_dot", "trailing_space"} == found


@pytest.mark.parametrize(
    ("weaker", "found"),
    [
        pytest.param({**CATCH_ALL, "upstream": "other"}, False, id="another-service"),
        pytest.param({**CATCH_ALL, "upstream": "same"}, True, id="same-url-other-name"),
        pytest.param({**CATCH_ALL, "auth": "required"}, False, id="equally-strong"),
        pytest.param(
            {**CATCH_ALL, "auth": "required", "require": {"scopes": {"all": ["x"]}}},
            False,
            id="differently-strong",
        ),
    ],
)
def test_only_weaker_routes_to_the_same_service(weaker: dict[str, Any], found: bool) -> None:
    assert bool(differences([ADMIN, weaker])) is found


def test_less_demanding_required_route() -> None:
    strong = {**ADMIN, "require": {"scopes": {"all": ["admin", "read"]}}}
    weak = {**CATCH_ALL, "auth": "required", "require": {"scopes": {"all": ["read"]}}}
    assert differences([strong, weak]) == {(1, 0, d) for d in ("case", "trailing_dot",
                                                             "trailing_space")}  # fmt: skip


def test_an_earlier_weaker_route_shadowing_everything_is_not_a_spelling_issue() -> None:
    """The catch-all first gets /admin/x itself: the audit probes only live routes."""
    assert differences([CATCH_ALL, ADMIN]) == set()


def test_warnings_name_file_line_key_path_and_the_fix() -> None:
    text = textwrap.dedent(
        """\
        upstreams:
          app: {url: "http://127.0.0.1:9000"}
        issuers:
          - {issuer: "https://a.example/", audiences: [api], keys: {jwks: {keys: []}}}
        routes:
          - match: {path: /admin/**}
            upstream: app
          - match: {path: {prefix: /}}
            upstream: app
            auth: anonymous
        """
    )
    [warning] = shadow_warnings(load_config_text(text, "gw.yaml", {}))
    assert (warning.key_path, warning.line) == ("routes[1]", 8)
    assert warning.message.startswith(
        "warning: this anonymous route receives spellings of the paths of routes[0] (line 6)"
    )
    assert "('/ADMIN/X' for '/admin/x')" in warning.message
    assert "set upstreams.app.paths: {case: insensitive, trailing_dot: ignored, " in (
        warning.message
    )


# --- the probes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "pattern", "prefix", "samples"),
    [
        pytest.param("exact", "/a/b", "/a/b", ("/a/b",), id="exact"),
        pytest.param("prefix", "/a", "/a", ("/a", "/a/x"), id="prefix"),
        pytest.param("prefix", "/", "/", ("/", "/x"), id="root-prefix"),
        # Only the trailing "/" goes before "/x": not the other characters of "XX/XX".
        pytest.param("prefix", "/BOX", "/BOX", ("/BOX", "/BOX/x"), id="prefix-ending-in-X"),
        pytest.param("prefix", "/X/", "/X/", ("/X/", "/X/x"), id="prefix-X-and-slash"),
        pytest.param("glob", "/a/**", "/a", ("/a/x", "/a"), id="globstar"),
        pytest.param("glob", "/a/*.json", "/a/", ("/a/x.json",), id="star"),
        pytest.param("glob", "/**", "", ("/x", "/"), id="root-globstar"),
        pytest.param(
            "regex", r"/u/\d+", "/u/", ("/u/", "/u/x", "/u/0", "/u/1"), id="regex-no-empty-segment"
        ),
        pytest.param("exact", "/a?b", "/a?b", (), id="a-query-is-no-path"),
    ],
)
def test_sample_paths(kind: str, pattern: str, prefix: str, samples: tuple[str, ...]) -> None:
    assert sample_paths(kind, pattern, prefix) == tuple(s for s in samples if s != "/u//x")


def test_near_spellings() -> None:
    assert list(near_spellings("/Api/v1")) == [
        ("case", "/API/V1"),
        ("case", "/api/v1"),
        ("trailing_slash", "/Api/v1/"),
        ("trailing_dot", "/Api./v1"),
        ("trailing_space", "/Api%20/v1"),
        ("trailing_dot", "/Api/v1."),
        ("trailing_space", "/Api/v1%20"),
    ]
    assert list(near_spellings("/")) == []  # "/" has no case, segment, or slash to drop
    assert ("trailing_slash", "/a") in list(near_spellings("/a/"))
    # Lowering the hex digits too renormalises to the path itself: only one case spelling.
    assert [s for d, s in near_spellings("/caf%C3%A9") if d == "case"] == ["/CAF%C3%A9"]


# Paths as sample_paths gives them: normal, with cased letters, escapes, dots, ";params".
_SEGMENT = st.sampled_from(["a", "B", "x.", ".", "..", "", "%20", "%c3%a9", "%41", "a;p", "~"])
raw_paths = st.builds(
    lambda parts, slash: "/" + "/".join(parts) + slash,
    st.lists(_SEGMENT, max_size=4),
    st.sampled_from(["", "/"]),
)


@given(raw_paths)
def test_near_spellings_are_distinct_normal_paths_other_than_the_path(raw: str) -> None:
    """near_spellings keeps no set: this is the property that lets it go without one."""
    try:
        path = normalise_target(raw).path
    except InvalidPath:
        reject()
    spellings = [spelling for _, spelling in near_spellings(path)]
    assert len(spellings) == len(set(spellings))
    assert path not in spellings
    assert all(normalise_target(spelling) == Target(spelling, None) for spelling in spellings)
