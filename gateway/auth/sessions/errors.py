"""The browser-login failures, as ``GatewayError``s that render themselves (RFC 9457).

A failed login ends on a page that says what happened, never in a redirect: sending the
browser back to the authorization server after it refused (``access_denied``) or after a
callback we could not use would loop forever (the oauth2-proxy and mod_auth_openidc
complaint). The ``detail`` is written for the person at the browser and never echoes what a
callback URL carried, since anyone can craft one.

    GatewayError
    ├── AuthError
    │   ├── LoginRedirect (302)          an unauthenticated navigation: off to the login
    │   └── MissingCredentials
    │       └── SessionRequired (401)    no live session (and not a navigation)
    ├── Forbidden
    │   └── CrossSiteRequest (403)       a state-changing request from another origin
    ├── LoginFailed (400)                the callback cannot complete a login
    │   ├── LoginExpired (400)           no pending login for this browser (expired, cookies off)
    │   ├── StateMismatch (400)          RFC 6749 §10.12: the callback's state is not ours
    │   └── AuthorizationRefused (403 for access_denied, else 400)   RFC 6749 §4.1.2.1
    ├── IdTokenInvalid (502)             OIDC Core §3.1.3.7 says no
    ├── TokenEndpointRefused (502; invalid_grant: 400)   RFC 6749 §5.2
    ├── TokenEndpointUnavailable (503)   no usable answer from the token endpoint
    └── LogoutTokenInvalid (400)         Back-Channel Logout 1.0 §2.6/§2.8
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from gateway.problems import AuthError, Challenge, Forbidden, GatewayError, MissingCredentials

# RFC 6749 §4.1.2.1: error = 1*( %x20-21 / %x23-5B / %x5D-7E ).
_ERROR_CODE: Final = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}")


def error_code(value: str | None) -> str:
    """An authorization server's ``error`` value if it is one RFC 6749 allows, else
    ``invalid_response``: it ends up in logs and a page, so it is never arbitrary text."""
    if value is not None and _ERROR_CODE.fullmatch(value) is not None:
        return value
    return "invalid_response"


class CrossSiteRequest(Forbidden):
    """A request that would change state, carrying the browser's session, started by a page
    of another origin (RFC 6749 §10.12's cross-site request forgery, Fetch Metadata).
    ``SameSite=Lax`` stops other *sites*, not a sibling subdomain, which is the same site."""

    slug = "cross-site-request"
    reason = "session_cross_site"

    def __init__(self) -> None:
        super().__init__("A request that changes something must come from this site's own pages.")


class LoginRedirect(AuthError):
    """RFC 9110 §15.4.3 (302 Found) to the authorization endpoint, with the sealed pre-login
    cookie. An ``AuthError`` so it counts as a denial and is never cached (RFC 6750 §5.3's
    ``no-store``), but without a challenge: a browser follows ``Location``, it has no use
    for ``WWW-Authenticate``."""

    status = 302
    title = "Found"
    slug = "login-required"
    reason = "login_redirect"

    def __init__(self, location: str, set_cookies: Sequence[str]) -> None:
        super().__init__("Sign in at the identity provider to continue.")
        self.location = location
        self.set_cookies = tuple(set_cookies)

    def challenge(self, context: Challenge | str) -> str | None:
        return None

    def response_headers(self) -> list[tuple[str, str]]:
        return [("Location", self.location), *(("Set-Cookie", c) for c in self.set_cookies)]


class SessionRequired(MissingCredentials):
    """RFC 6750 §3.1's 401 for a session route without a live session, when the request is
    no navigation (an API call, a ``fetch()``): it gets the challenge, never a login page
    (oauth2-proxy #2918). ``set_cookies`` delete the cookies of a session that ended."""

    reason = "no_session"

    def __init__(self, set_cookies: Sequence[str] = (), reason: str | None = None) -> None:
        AuthError.__init__(
            self, "This resource requires a signed-in session or a bearer access token."
        )
        self.set_cookies = tuple(set_cookies)
        if reason is not None:
            self.reason = reason

    def response_headers(self) -> list[tuple[str, str]]:
        return [("Set-Cookie", cookie) for cookie in self.set_cookies]


class LoginFailed(GatewayError):
    status = 400
    title = "Sign-in failed"
    slug = "login-failed"
    reason = "login_failed"


class LoginExpired(LoginFailed):
    slug = "login-expired"
    reason = "login_expired"

    def __init__(self) -> None:
        super().__init__(
            "This sign-in is no longer pending in this browser (it took too long, or cookies "
            "are blocked). Open the page you wanted again to sign in."
        )


class StateMismatch(LoginFailed):
    slug = "login-state-mismatch"
    reason = "state_mismatch"

    def __init__(self) -> None:
        super().__init__(
            "The sign-in response does not belong to a sign-in started in this browser."
        )


# RFC 6749 §4.1.2.1 and OIDC Core §3.1.2.6: the codes an authorization response may carry.
# Anyone can send a browser to the callback with any ``error``, so only these are shown and
# counted (an unbounded metrics label, or a page saying what an attacker chose, otherwise).
AUTHORIZATION_ERRORS: Final = frozenset(
    {
        "invalid_request", "unauthorized_client", "access_denied",
        "unsupported_response_type", "invalid_scope", "server_error",
        "temporarily_unavailable", "interaction_required", "login_required",
        "account_selection_required", "consent_required", "invalid_request_uri",
        "invalid_request_object", "request_not_supported", "request_uri_not_supported",
        "registration_not_supported",
    }
)  # fmt: skip


class AuthorizationRefused(LoginFailed):
    """RFC 6749 §4.1.2.1: the authorization server answered the redirect with an error."""

    slug = "authorization-refused"

    def __init__(self, code: str | None) -> None:
        known = error_code(code)
        self.error = known if known in AUTHORIZATION_ERRORS else "invalid_response"
        self.reason = f"as_{self.error}" if self.error.isidentifier() else "as_error"
        if self.error == "access_denied":
            self.status = 403
            detail = "Sign-in was refused or cancelled at the identity provider."
        else:
            detail = f"The identity provider could not sign you in ({self.error})."
        super().__init__(detail)

    def problem(self, request_id: str | None = None) -> dict[str, object]:
        body = super().problem(request_id)
        body["error"] = self.error
        return body


class IdTokenInvalid(GatewayError):
    status = 502
    title = "Sign-in failed"
    slug = "id-token-invalid"
    reason = "id_token_invalid"


class TokenEndpointRefused(GatewayError):
    """RFC 6749 §5.2: an error answer; ``invalid_grant`` (a used or expired code or refresh
    token) is the client's problem, anything else the configuration's or the server's."""

    status = 502
    title = "Sign-in failed"
    slug = "token-endpoint-refused"

    def __init__(self, code: str | None) -> None:
        self.error = error_code(code)
        self.reason = f"token_{self.error}" if self.error.isidentifier() else "token_error"
        if self.error == "invalid_grant":
            self.status = 400
            detail = "The sign-in could not be completed; open the page again to sign in."
        else:
            detail = f"The identity provider refused to issue tokens ({self.error})."
        super().__init__(detail)


class TokenEndpointUnavailable(GatewayError):
    status = 503
    title = "Service Unavailable"
    slug = "token-endpoint-unavailable"
    reason = "token_endpoint_unavailable"


class LogoutTokenInvalid(GatewayError):
    """Back-Channel Logout 1.0 §2.8: "If the logout request was invalid ... the RP MUST
    respond with HTTP 400 Bad Request"; the body may carry an OAuth ``error``."""

    status = 400
    title = "Bad Request"
    slug = "logout-token-invalid"
    reason = "logout_token_invalid"

    def problem(self, request_id: str | None = None) -> dict[str, object]:
        body = super().problem(request_id)
        body["error"] = "invalid_request"
        body["error_description"] = self.detail
        return body
