"""The request target as routes read it: absolute form reduced (RFC 9112 §3.2.2), parameters."""

from __future__ import annotations

import pytest

from gateway.problems import BadRequest, InvalidPath
from gateway.routing.request_target import match_path, origin_form


@pytest.mark.parametrize(
    ("raw", "host", "expected"),
    [
        pytest.param("/a?b=1", "api.example", "/a?b=1", id="origin-form-untouched"),
        pytest.param("/", None, "/", id="origin-form-root-without-host"),
        pytest.param("http://api.example/a", "api.example", "/a", id="http"),
        pytest.param("https://api.example/a", "api.example", "/a", id="https"),
        pytest.param("HTTPS://API.example/a", "api.EXAMPLE", "/a", id="scheme-and-host-case"),
        pytest.param("hTtP://api.example/a", "api.example", "/a", id="mixed-case-http"),
        pytest.param("http://api.example", "api.example", "/", id="no-path-is-root"),
        pytest.param("http://api.example:8443/a", "api.example:8443", "/a", id="port"),
        pytest.param("http://api.example/a?x=1", "api.example", "/a?x=1", id="query-kept"),
        pytest.param("http://api.example/a?", "api.example", "/a?", id="empty-query-kept"),
        pytest.param("http://api.example?x", "api.example", "/?x", id="query-without-path"),
        pytest.param("https://api.example/a?", "api.example", "/a?", id="https-empty-query"),
        pytest.param("http://api.example/a", "API.example", "/a", id="host-compared-lowercase"),
    ],
)
def test_origin_form(raw: str, host: str | None, expected: str) -> None:
    assert origin_form(raw, host) == expected


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        pytest.param("*", "api.example", id="asterisk-form"),
        pytest.param("api.example:443", "api.example", id="authority-form"),
        pytest.param("ftp://api.example/a", "api.example", id="other-scheme"),
        pytest.param("http:/api.example/a", "api.example", id="one-slash"),
        pytest.param("httpx://api.example/a", "api.example", id="scheme-prefix-trick"),
        pytest.param("http://other.example/a", "api.example", id="authority-not-host"),
        pytest.param("http://api.example/a", None, id="no-host"),
        pytest.param("http:///a", "", id="empty-authority"),
        pytest.param("http:///a", "xxxx", id="empty-authority-whatever-the-host"),
        pytest.param("http://xxxx/a", None, id="no-host-whatever-the-authority"),
        pytest.param("http://user@api.example/a", "user@api.example", id="userinfo"),
        pytest.param("http://:pw@api.example/a", ":pw@api.example", id="password-only"),
        pytest.param("http://[::1/a", "[::1", id="unparseable-ipv6"),
        pytest.param("http://api.example:8443/a", "api.example", id="port-differs"),
        # RFC 9112 §3.2.2: absolute-form is an absolute-URI, which has no fragment; an
        # origin-form "/a#x" is refused too, so neither form may hide a part of the target.
        pytest.param("http://api.example/a#x?y", "api.example", id="fragment"),
        pytest.param("http://api.example/a#/../admin", "api.example", id="fragment-dots"),
        pytest.param("http://api.example#/admin", "api.example", id="fragment-no-path"),
    ],
)
def test_origin_form_refuses(raw: str, host: str | None) -> None:
    with pytest.raises(BadRequest):
        origin_form(raw, host)


def test_an_absolute_target_that_is_not_a_uri_is_a_bad_request_not_a_crash() -> None:
    with pytest.raises(BadRequest) as caught:
        origin_form("http://[::1/a", "[::1")
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("path", "parameters", "expected"),
    [
        pytest.param("/a/b", False, "/a/b", id="no-parameters-refused-mode"),
        pytest.param("/a/b", True, "/a/b", id="no-parameters-allowed-mode"),
        pytest.param("/admin;x/y", True, "/admin/y", id="servlet-view"),
        pytest.param("/a;x=1/b;y", True, "/a/b", id="every-segment"),
    ],
)
def test_match_path(path: str, parameters: bool, expected: str) -> None:
    assert match_path(path, path_parameters=parameters) == expected


def test_parameters_are_refused_unless_allowed() -> None:
    with pytest.raises(InvalidPath) as caught:
        match_path("/admin;x/y", path_parameters=False)
    assert caught.value.status == 400
