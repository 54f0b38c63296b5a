"""RFC 9728 §2, §3 and §5.1: OAuth 2.0 protected resource metadata, compiled once to bytes.

Each resource's document is built from configuration only: ``resource`` is the configured
identifier, exactly (RFC 9728 §3.3: the value "MUST be identical to the URL that the client
used"), never something derived from the client's ``Host`` or forwarded headers, so a
client cannot make the gateway vouch for another origin. The document, its well-known path
(RFC 9728 §3.1) and the URL for the ``resource_metadata`` challenge parameter (§5.1) are
computed at compile time; serving one is a dictionary lookup and a write of fixed bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

WELL_KNOWN: Final = "/.well-known/oauth-protected-resource"
BEARER_METHODS: Final = frozenset({"header", "body", "query"})  # RFC 6750 §2.1-2.3
_LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True, slots=True)
class ResourceMetadata:
    """One protected resource, ready to serve."""

    resource: str
    well_known_path: str
    metadata_url: str  # the RFC 9728 §5.1 resource_metadata challenge parameter's value
    document: bytes
    etag: str


def check_resource_identifier(resource: str) -> str:
    """RFC 9728 §1.2: "a URL that uses the https scheme and has no fragment component"; it
    "SHOULD NOT include a query component" (refused here, so every resource has one
    well-known path). Plain http only for loopback hosts, for local development."""
    parts = urlsplit(resource)
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        raise ValueError("a resource identifier is an https URL (http only on loopback)")
    if not parts.hostname or "@" in parts.netloc:
        raise ValueError("a resource identifier names a host and no userinfo")
    if parts.query or parts.fragment or "?" in resource or "#" in resource:
        raise ValueError("a resource identifier has no query and no fragment")
    if parts.netloc != parts.netloc.lower():
        raise ValueError("write the resource identifier's host in lowercase")
    return resource


def well_known_path(resource: str) -> str:
    """RFC 9728 §3.1: "If the resource identifier value contains a path or query component,
    any terminating slash (/) following the host component MUST be removed before inserting
    /.well-known/ and the well-known URI path suffix between the host component and the path
    and/or query components." ``https://h`` and ``https://h/`` → the bare well-known path;
    ``https://h/resource1`` → ``/.well-known/oauth-protected-resource/resource1``."""
    path = urlsplit(resource).path
    return WELL_KNOWN if path in ("", "/") else WELL_KNOWN + path


def metadata_url(resource: str) -> str:
    """The absolute metadata URL: the resource's origin and its well-known path."""
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}{well_known_path(resource)}"


def _strings(name: str, values: Iterable[str]) -> list[str]:
    listed = list(dict.fromkeys(values))
    if any(not value for value in listed):
        raise ValueError(f"{name} holds an empty string")
    return listed


def compile_metadata(
    resource: str,
    *,
    authorization_servers: Sequence[str],
    scopes_supported: Sequence[str] = (),
    bearer_methods_supported: Sequence[str] = ("header",),
    resource_signing_alg_values_supported: Sequence[str] = (),
    dpop_signing_alg_values_supported: Sequence[str] = (),
    dpop_bound_access_tokens_required: bool = False,
    tls_client_certificate_bound_access_tokens: bool = False,
    resource_name: str | None = None,
    resource_documentation: str | None = None,
) -> ResourceMetadata:
    """The RFC 9728 §2 document for one resource. Empty lists and false flags are left out
    (§3.2: "Parameters with zero values MUST be omitted from the response"), except
    ``bearer_methods_supported``, where §2 gives ``[]`` a meaning: no bearer methods."""
    check_resource_identifier(resource)
    unknown = set(bearer_methods_supported) - BEARER_METHODS
    if unknown:
        raise ValueError(f"unknown bearer methods {sorted(unknown)} (known: body, header, query)")
    # RFC 9728 §2, resource_signing_alg_values_supported: "The value none MUST NOT be used."
    if "none" in resource_signing_alg_values_supported:
        raise ValueError("resource_signing_alg_values_supported must not list none")
    if dpop_bound_access_tokens_required and not dpop_signing_alg_values_supported:
        raise ValueError("DPoP-bound tokens are required but no DPoP algorithm is listed")
    document: dict[str, object] = {"resource": resource}
    lists = {
        "authorization_servers": authorization_servers,
        "scopes_supported": scopes_supported,
        "resource_signing_alg_values_supported": resource_signing_alg_values_supported,
        "dpop_signing_alg_values_supported": dpop_signing_alg_values_supported,
    }
    for name, values in lists.items():
        if values:
            document[name] = _strings(name, values)
    document["bearer_methods_supported"] = _strings("bearer_methods_supported",
                                                    bearer_methods_supported)  # fmt: skip
    if tls_client_certificate_bound_access_tokens:
        document["tls_client_certificate_bound_access_tokens"] = True
    if dpop_bound_access_tokens_required:
        document["dpop_bound_access_tokens_required"] = True
    if resource_name:
        document["resource_name"] = resource_name
    if resource_documentation:
        document["resource_documentation"] = resource_documentation
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return ResourceMetadata(
        resource=resource,
        well_known_path=well_known_path(resource),
        metadata_url=metadata_url(resource),
        document=body,
        etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
    )


def index_by_path(resources: Iterable[ResourceMetadata]) -> dict[str, ResourceMetadata]:
    """The documents by well-known path, for the request path's one lookup. Two resources
    at one path (e.g. the same path on two hosts) are a config error: the gateway answers
    by path alone, so it could not tell them apart."""
    index: dict[str, ResourceMetadata] = {}
    for item in resources:
        other = index.setdefault(item.well_known_path, item)
        if other is not item:
            raise ValueError(f"resources {other.resource!r} and {item.resource!r} share the "
                             f"metadata path {item.well_known_path}")  # fmt: skip
    return index
