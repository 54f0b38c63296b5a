"""The ``logins`` section and ``auth: session`` routes: schema rules and references."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.auth.sessions.settings import SessionRoute
from gateway.compiler import compile_config
from gateway.config.errors import ConfigError
from gateway.config.loader import load_config_text
from gateway.config.models.sessions import Login, RouteSession, login_reference_problems

SECRET = "s" * 32


def login(**changes: Any) -> Login:
    values: dict[str, Any] = {
        "issuer": "main",
        "client": {"client_id": "web-app", "client_secret": "x"},
        "external_url": "https://app.example.com",
        "secrets": [SECRET],
    }
    return Login.model_validate(values | changes)


def test_defaults_make_a_complete_login() -> None:
    config = login()
    assert config.key == "main" and config.secure
    assert config.scopes == ["openid", "profile", "email"]
    assert config.redirect_uri == "https://app.example.com/oauth2/callback"
    assert config.post_logout_redirect_uri == "https://app.example.com/"
    assert (config.timeouts.idle, config.timeouts.absolute, config.timeouts.login) == (
        3600,
        43200,
        600,
    )
    assert config.store.type == "cookie" and config.cookie.name == "gw_session"


def test_openid_is_always_among_the_scopes() -> None:
    assert login(scopes=["email"]).scopes == ["openid", "email"]


def test_the_origin_is_normalised_and_http_is_not_secure() -> None:
    config = login(external_url="http://localhost:8080/")
    assert config.external_url == "http://localhost:8080" and not config.secure


@pytest.mark.parametrize(
    ("written", "origin"),
    [
        ("https://App.Example.com:443", "https://app.example.com"),
        ("HTTP://app.example.com:80/", "http://app.example.com"),
        ("https://app.example.com:8443", "https://app.example.com:8443"),
        ("https://[::1]:443", "https://[::1]"),
    ],
)
def test_the_origin_is_what_a_browser_sends_as_origin(written: str, origin: str) -> None:
    """RFC 6454 §6.2: the cross-site check compares the browser's Origin to it exactly, so a
    capital or a default port in the config would refuse every same-origin POST."""
    assert login(external_url=written).external_url == origin


def test_a_post_logout_path_is_made_absolute() -> None:
    assert login(post_logout_redirect="/bye").post_logout_redirect_uri == (
        "https://app.example.com/bye"
    )
    assert login(post_logout_redirect="https://www.example.com/").post_logout_redirect_uri == (
        "https://www.example.com/"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"external_url": "https://app.example.com/app"}, "no path"),
        ({"external_url": "ftp://app.example.com"}, r"http\(s\) origin"),
        ({"secrets": ["short"]}, "at least 32"),
        ({"secrets": [SECRET, SECRET]}, "must differ"),
        ({"secrets": []}, "at least 1"),
        ({"scopes": ["a b"]}, "scope token"),
        ({"authorization_parameters": {"state": "x"}}, "set by the gateway"),
        ({"id_token_algorithms": ["HS256"]}, "public keys"),
        ({"logout_path": "/oauth2/callback"}, "must differ"),
        ({"redirect_path": "oauth2/callback"}, "String should match"),
        ({"timeouts": {"idle": "13h"}}, "idle cannot be longer"),
        ({"refresh_lease": "2s"}, "refresh_lease must outlast"),
        ({"cookie": {"name": "gw.session"}}, "String should match"),
        ({"client": {"client_id": "x", "method": "client_secret_post"}}, "needs client_secret"),
        ({"post_logout_redirect": "javascript:alert(1)"}, "absolute URL or a path"),
        ({"unknown": 1}, "Extra inputs"),
        ({"endpoints": {"token": "https://as.example/t#x"}}, "without fragment"),
    ],
)
def test_bad_logins_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        login(**changes)


def test_reference_problems_are_all_reported() -> None:
    logins = [
        login(name="a"),
        login(name="a", redirect_path="/cb", cookie={"name": "a2"}),
        login(name="b", issuer="nowhere", store={"type": "redis"}, cookie={"name": "b"}),
    ]
    routes = [
        (("routes", 0), "session", None),
        (("routes", 1), "session", RouteSession(login="zzz")),
        (("routes", 2), "required", RouteSession()),
        (("routes", 3), "session", RouteSession(login="b")),
    ]
    problems = login_reference_problems(
        logins, {"main": True}, routes, shared_redis=False, max_header_size=8190
    )
    assert problems == [
        (("logins", 1, "name"), "login 'a' is already used by logins[0]"),
        (("logins", 1, "logout_path"), "/oauth2/logout is already a path of logins[0]"),
        (("logins", 2, "issuer"), "unknown issuer 'nowhere' (main)"),
        (("logins", 2, "store"), "the redis store needs store.redis or cache.redis"),
        (("logins", 2, "redirect_path"), "/oauth2/callback is already a path of logins[0]"),
        (("logins", 2, "logout_path"), "/oauth2/logout is already a path of logins[0]"),
        (
            ("routes", 0, "auth"),
            "auth: session needs session.login when there is not exactly one login (3 configured)",
        ),
        (("routes", 1, "session", "login"), "unknown login 'zzz'"),
        (("routes", 2, "session"), "session applies only with auth: session"),
    ]


def test_a_single_login_is_the_default_of_every_session_route() -> None:
    routes = [(("routes", 0), "session", None)]
    assert (
        login_reference_problems(
            [login()], {"main": True}, routes, shared_redis=False, max_header_size=8190
        )
        == []
    )


def test_without_discovery_the_endpoints_must_be_given() -> None:
    endpoints = {"authorization": "https://as.example/a", "token": "https://as.example/t"}
    without = login_reference_problems(
        [login()], {"main": False}, [], shared_redis=False, max_header_size=8190
    )
    assert without == [
        (
            ("logins", 0, "endpoints"),
            "endpoints.authorization and endpoints.token are needed: the issuer's keys do "
            "not use discovery",
        )
    ]
    given = login(endpoints=endpoints)
    assert given.endpoints.token == "https://as.example/t"
    assert (
        login_reference_problems(
            [given], {"main": False}, [], shared_redis=False, max_header_size=8190
        )
        == []
    )


def test_the_session_cookies_must_fit_the_listeners_header_limit() -> None:
    big = login(cookie={"max_chunks": 3})
    assert (
        login_reference_problems(
            [big], {"main": True}, [], shared_redis=False, max_header_size=16384
        )
        == []
    )
    ((loc, message),) = login_reference_problems(
        [big], {"main": True}, [], shared_redis=False, max_header_size=8190
    )
    assert loc == ("logins", 0, "cookie") and "3 cookies of 3800 bytes" in message
    redis = login(cookie={"max_chunks": 3}, store={"type": "redis"})
    assert (
        login_reference_problems(
            [redis], {"main": True}, [], shared_redis=True, max_header_size=8190
        )
        == []
    )


CONFIG = """\
upstreams:
  app: {url: "http://127.0.0.1:9000"}
issuers:
  - {name: main, issuer: "https://as.example/", audiences: [api]}
logins:
  - issuer: main
    client: {client_id: web-app, client_secret: x}
    external_url: https://app.example.com
    secrets: ["%s"]
routes:
  - match: {path: /app/**}
    upstream: app
    auth: %s
""" % (SECRET, "%s")  # noqa: UP031 - the config text is the readable part


def test_a_login_section_loads_with_line_marked_reference_errors() -> None:
    loaded = load_config_text(CONFIG % "required", "gw.yaml", {})
    assert loaded.config.logins[0].key == "main"
    with pytest.raises(ConfigError) as caught:
        load_config_text(CONFIG.replace("issuer: main", "issuer: nope") % "required", "gw.yaml", {})
    assert "gw.yaml:6: logins[0].issuer: unknown issuer 'nope' (main)" in str(caught.value)


def test_a_session_route_compiles_to_its_login_and_requires_an_identity() -> None:
    compiled = compile_config(load_config_text(textwrap.dedent(CONFIG % "session"), "gw.yaml", {}))
    auth = compiled.routes[0].auth
    assert auth.required and auth.session == SessionRoute(login="main")
    (settings,) = compiled.logins
    assert settings.redirect_uri == "https://app.example.com/oauth2/callback"
    assert settings.cookie.secure and settings.store.kind == "cookie"
    assert settings.id_token.issuer == "https://as.example/" and settings.secrets == (
        SECRET.encode(),
    )
    assert settings.paths == {"/oauth2/callback", "/oauth2/logout"}
    assert "secrets" not in repr(settings) and SECRET not in repr(settings)


def test_route_session_settings_compile_as_written() -> None:
    text = textwrap.dedent(CONFIG % "session").replace(
        "    auth: session", "    auth: session\n    session: {bearer: never, redirect: false}"
    )
    auth = compile_config(load_config_text(text, "gw.yaml", {})).routes[0].auth
    assert auth.session == SessionRoute(login="main", bearer_when_present=False, redirect=False)
    required = compile_config(load_config_text(CONFIG % "required", "gw.yaml", {}))
    assert required.routes[0].auth.session is None


def test_two_logins_need_their_own_cookies() -> None:
    first = login(name="a")
    second = login(name="b", redirect_path="/b/cb", logout_path="/b/out")
    problems = login_reference_problems(
        [first, second], {"main": True}, [], shared_redis=False, max_header_size=8190
    )
    assert problems == [
        (("logins", 1, "cookie", "name"), "the cookie gw_session is already a cookie of logins[0]"),
        (
            ("logins", 1, "cookie", "name"),
            "the cookie gw_session_login is already a cookie of logins[0]",
        ),
    ]
    renamed = login(name="b", redirect_path="/b/cb", logout_path="/b/out", cookie={"name": "b"})
    assert (
        login_reference_problems(
            [first, renamed], {"main": True}, [], shared_redis=False, max_header_size=8190
        )
        == []
    )


def test_the_readme_web_app_config_is_a_valid_config() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Web apps (browser login)", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    text = "upstreams:\n  dashboard: {url: 'http://127.0.0.1:9000'}\n" + block
    env = {"DASHBOARD_CLIENT_SECRET": "x", "SESSION_SECRET": SECRET,
           "GATEWAY_CACHE_KEY": "dGVzdC1vbmx5LWNhY2hlLWtleS0zMi1ieXRlcy1vayE="}  # fmt: skip
    compiled = compile_config(load_config_text(text, "README.md", env))
    assert [route.auth.session for route in compiled.routes] == [
        None,
        SessionRoute(login="web", redirect=False),
        SessionRoute(login="web"),
    ]
    assert compiled.logins[0].store.kind == "redis" and compiled.logins[0].store.redis
