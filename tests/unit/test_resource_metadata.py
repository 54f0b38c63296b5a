"""RFC 9728 protected resource metadata: the document, its well-known path, the challenge URL."""

from __future__ import annotations

import json

import pytest

from gateway.auth.resource_metadata import (
    WELL_KNOWN,
    check_resource_identifier,
    compile_metadata,
    index_by_path,
    metadata_url,
    well_known_path,
)


@pytest.mark.parametrize(
    ("resource", "path"),
    [  # RFC 9728 §3.1's two examples, and the trailing-slash rule
        ("https://resource.example.com", WELL_KNOWN),
        ("https://resource.example.com/resource1", WELL_KNOWN + "/resource1"),
        ("https://resource.example.com/", WELL_KNOWN),
        ("https://resource.example.com/a/b/", WELL_KNOWN + "/a/b/"),
        ("https://resource.example.com:8443/mcp", WELL_KNOWN + "/mcp"),
    ],
)
def test_well_known_path(resource: str, path: str) -> None:
    assert well_known_path(resource) == path


def test_metadata_url_keeps_the_origin_exactly() -> None:
    assert (
        metadata_url("https://resource.example.com:8443/mcp")
        == "https://resource.example.com:8443/.well-known/oauth-protected-resource/mcp"
    )


def test_rfc9728_example_document() -> None:
    # RFC 9728 §3.2's example response.
    compiled = compile_metadata(
        "https://resource.example.com",
        authorization_servers=["https://as1.example.com", "https://as2.example.net"],
        bearer_methods_supported=["header", "body"],
        scopes_supported=["profile", "email", "phone"],
        resource_documentation="https://resource.example.com/resource_documentation.html",
    )
    assert json.loads(compiled.document) == {
        "resource": "https://resource.example.com",
        "authorization_servers": ["https://as1.example.com", "https://as2.example.net"],
        "bearer_methods_supported": ["header", "body"],
        "scopes_supported": ["profile", "email", "phone"],
        "resource_documentation": "https://resource.example.com/resource_documentation.html",
    }
    assert compiled.metadata_url == "https://resource.example.com" + WELL_KNOWN
    assert compiled.etag.startswith('"') and len(compiled.etag) == 34


def test_sender_constraint_members_appear_only_when_enabled() -> None:
    plain = json.loads(
        compile_metadata("https://r.example/mcp", authorization_servers=["https://as"]).document
    )
    assert set(plain) == {"resource", "authorization_servers", "bearer_methods_supported"}
    bound = json.loads(
        compile_metadata(
            "https://r.example/mcp",
            authorization_servers=["https://as"],
            dpop_signing_alg_values_supported=["ES256", "EdDSA"],
            dpop_bound_access_tokens_required=True,
            tls_client_certificate_bound_access_tokens=True,
            resource_signing_alg_values_supported=["ES256"],
            resource_name="Orders MCP",
        ).document
    )
    assert bound["dpop_signing_alg_values_supported"] == ["ES256", "EdDSA"]
    assert bound["dpop_bound_access_tokens_required"] is True
    assert bound["tls_client_certificate_bound_access_tokens"] is True
    assert bound["resource_signing_alg_values_supported"] == ["ES256"]
    assert bound["resource_name"] == "Orders MCP"


def test_zero_valued_parameters_are_omitted_but_empty_bearer_methods_mean_none() -> None:
    compiled = compile_metadata(
        "https://r.example",
        authorization_servers=[],
        scopes_supported=[],
        bearer_methods_supported=[],
    )
    assert json.loads(compiled.document) == {
        "resource": "https://r.example",
        "bearer_methods_supported": [],
    }


def test_the_document_is_stable_bytes() -> None:
    one = compile_metadata("https://r.example", authorization_servers=["https://as", "https://as"])
    two = compile_metadata("https://r.example", authorization_servers=["https://as"])
    assert one.document == two.document and one.etag == two.etag


@pytest.mark.parametrize(
    "resource",
    [
        "http://r.example",
        "https://r.example/#x",
        "https://r.example/?q=1",
        "ftp://r.example",
        "https://user@r.example/",
        "https://R.example/",
        "https:///path",
        "/relative",
    ],
    ids=["http", "fragment", "query", "ftp", "userinfo", "uppercase-host", "no-host", "relative"],
)
def test_resource_identifier_rules(resource: str) -> None:
    with pytest.raises(ValueError):
        check_resource_identifier(resource)


def test_plain_http_only_on_loopback() -> None:
    assert check_resource_identifier("http://127.0.0.1:8080/mcp")
    assert check_resource_identifier("http://localhost/mcp")


@pytest.mark.parametrize(
    "options",
    [
        {"bearer_methods_supported": ["cookie"]},
        {"resource_signing_alg_values_supported": ["none"]},
        {"dpop_bound_access_tokens_required": True},
        {"scopes_supported": [""]},
    ],
    ids=["unknown-bearer-method", "alg-none", "dpop-required-without-algs", "empty-scope"],
)
def test_invalid_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        compile_metadata("https://r.example", authorization_servers=["https://as"], **options)  # type: ignore[arg-type]


def test_index_by_path_refuses_two_resources_on_one_path() -> None:
    a = compile_metadata("https://a.example/mcp", authorization_servers=["https://as"])
    b = compile_metadata("https://b.example/mcp", authorization_servers=["https://as"])
    c = compile_metadata("https://a.example/other", authorization_servers=["https://as"])
    assert index_by_path([a, c]) == {a.well_known_path: a, c.well_known_path: c}
    with pytest.raises(ValueError, match="share the metadata path"):
        index_by_path([a, b])
