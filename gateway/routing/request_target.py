"""The request target as the route table and the upstream read it (RFC 9112 §3.2, RFC 3986 §3.3).

Two pure steps before normalisation and matching: an absolute-form target is reduced to its
origin form (its authority never chooses a route), and, where path parameters are allowed,
the path is matched the way a servlet container reads it (``/admin;x/y`` as ``/admin/y``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.problems import BadRequest, InvalidPath
from gateway.routing.paths import without_path_parameters


def origin_form(raw: str, host: str | None) -> str:
    """The origin-form target; an absolute-form one is reduced to it (RFC 9112 §3.2.2).

    The authority of an absolute-form target never chooses a route or an upstream: it must
    agree with Host, or the request is refused, so the gateway is not an open proxy.
    """
    if raw.startswith("/"):
        return raw
    lowered = raw[:8].lower()
    if not (lowered.startswith("http://") or lowered.startswith("https://")):
        raise BadRequest("The request target must be a path.")
    if "#" in raw:  # RFC 9112 §3.2.2: an absolute-URI, which has no fragment
        raise BadRequest("The request target must not carry a fragment.")
    try:
        parts = urlsplit(raw)
        authority = (parts.netloc or "").lower()
    except ValueError:
        raise BadRequest("The request target is not a valid URI.") from None
    if not authority or parts.username or parts.password or authority != (host or "").lower():
        raise BadRequest("An absolute-form target must name the same authority as Host.")
    path = parts.path or "/"
    # "?" in raw, not parts.query, tells "/a?" from "/a"; "http://" and "https://" hold none.
    return f"{path}?{parts.query}" if "?" in raw else path


def match_path(path: str, *, path_parameters: bool) -> str:
    """The normalised path as routes match it: parameters refused, or matched without."""
    if ";" not in path:
        return path
    if not path_parameters:
        raise InvalidPath("Path parameters (';') are not accepted here.")
    # Servlet-style upstreams read /admin;x/y as /admin/y: choose the route by that.
    return without_path_parameters(path)
