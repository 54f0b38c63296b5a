"""RFC 6750 §2 (§2.1 header, §2.2 form body, §2.3 query): finding the bearer token in a request.

The function is pure over values the edge already holds, so the same rules serve the proxy and
the forward-auth decision service. The caller decides whether a form body may be read at
all (RFC 6750 §2.2's conditions: urlencoded, single-part, not GET) and passes its fields or None.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NoReturn
from urllib.parse import parse_qsl, unquote_plus

from gateway.auth.dpop import read_dpop_token
from gateway.problems import InvalidRequest, InvalidToken

ACCESS_TOKEN_PARAM = "access_token"  # noqa: S105 - a parameter name, not a secret

_BEARER = "bearer"
# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token. Tabs and extra spaces are tolerated.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# RFC 6749 Appendix A.12: access-token = 1*VSCHAR, the only syntax the body and query forms have.
_VSCHARS = re.compile(r"[\x20-\x7e]+")
_CREDENTIALS = re.compile(r"([^ \t]+)(?:[ \t]+(.*))?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Credential:
    """The token a request carries and where it was (so a gateway that must not forward
    it can remove it from exactly there)."""

    token: str
    source: Literal["header", "query", "form"]
    scheme: Literal["bearer", "dpop"] = "bearer"  # RFC 6750 Bearer, or RFC 9449 §7.1 DPoP


def read_credential(
    authorization: Sequence[str],
    query: str | None,
    form_fields: Sequence[tuple[str, str]] | None,
    *,
    allow_query: bool,
    allow_form: bool,
    max_size: int,
    allow_dpop: bool = False,
    unread_query_counts: bool = True,
) -> Credential | None:
    """The one bearer token the request carries, or None when no enabled source holds one.
    With ``allow_dpop``, ``Authorization: DPoP <token>`` carries one too (RFC 9449 §7.1).

    A source the route has not enabled never authenticates. An ``access_token`` in the
    query still counts towards "sent in more than one way" beside a header token (RFC 6750
    §2: a client "MUST NOT use more than one method"): forwarded as an ordinary query
    parameter, it would reach an upstream that may read it as the token, one the gateway
    never checked. Not where nothing is checked (``unread_query_counts`` false: an
    anonymous route passes both on as sent). A disabled form body is not read at all, so
    it cannot count.
    """
    if len(authorization) > 1:
        # RFC 9110 §11.6.2: Authorization holds one set of credentials; two fields are ambiguous.
        raise InvalidRequest("more than one Authorization header")
    header = _header_token(authorization[0]) if authorization else None
    found = Credential(header, "header") if header is not None else None
    if found is None and allow_dpop:
        dpop = read_dpop_token(authorization, max_size=max_size)
        found = Credential(dpop, "header", "dpop") if dpop is not None else None
    # A query can only name access_token literally or through percent-encoding.
    if query and (ACCESS_TOKEN_PARAM in query or "%" in query):
        if allow_query:
            for name, value in parse_qsl(query, keep_blank_values=True):
                if name == ACCESS_TOKEN_PARAM:
                    found = _only(found, Credential(_param_token("query", value), "query"))
        elif found is not None and unread_query_counts and _names_the_token(query):
            _sent_twice()
    if allow_form and form_fields:
        for name, value in form_fields:
            if name == ACCESS_TOKEN_PARAM:
                found = _only(found, Credential(_param_token("form body", value), "form"))
    if found is not None and len(found.token) > max_size:
        raise InvalidToken("the access token is too large", reason="oversized")
    return found


def read_token(
    authorization: Sequence[str],
    query: str | None,
    form_fields: Sequence[tuple[str, str]] | None,
    *,
    allow_query: bool,
    allow_form: bool,
    max_size: int,
) -> str | None:
    """``read_credential``'s token alone."""
    found = read_credential(
        authorization, query, form_fields,
        allow_query=allow_query, allow_form=allow_form, max_size=max_size,
    )  # fmt: skip
    return None if found is None else found.token


def _header_token(value: str) -> str | None:
    """The token of ``Bearer`` credentials; None for any other scheme, which is not ours."""
    match = _CREDENTIALS.fullmatch(value.strip(" \t"))
    if match is None:
        raise InvalidRequest("malformed Authorization header")
    scheme, token = match.groups()
    if not (scheme.isascii() and scheme.lower() == _BEARER):
        return None
    if token is None:
        raise InvalidRequest("the Bearer credentials carry no token")
    if _B64TOKEN.fullmatch(token) is None:
        raise InvalidRequest("malformed Authorization header")
    return token


def _param_token(where: str, value: str) -> str:
    """``value`` when it is RFC 6749 A.12 syntax; ``where`` (first, so mutation testing's
    message_calls reads it as wording) only words the error."""
    if _VSCHARS.fullmatch(value) is None:
        raise InvalidRequest(f"malformed access_token in the {where}")
    return value


def _only(found: Credential | None, token: Credential) -> Credential:
    if found is not None:
        # RFC 6750 §2: "Clients MUST NOT use more than one method to transmit the token in
        # each request." A resource server that picked one would hide a confused client.
        _sent_twice()
    return token


def _names_the_token(query: str) -> bool:
    """Whether a query has an ``access_token`` parameter, as ``parse_qsl`` would name it,
    reading names only: the values of a query no token is taken from stay undecoded (a
    header-token request's query is often long and encoded; decoding it all costs ~15 µs)."""
    for part in query.split("&"):
        name = part.partition("=")[0]
        if name == ACCESS_TOKEN_PARAM or ("%" in name and unquote_plus(name) == ACCESS_TOKEN_PARAM):
            return True
    return False


def _sent_twice() -> NoReturn:
    raise InvalidRequest("the token was sent in more than one way")
