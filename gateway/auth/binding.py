"""RFC 7800 §3.1 ``cnf``, RFC 9449 §6, §7.1, §7.2 and RFC 8705 §3: which proofs a token needs.

A token is sender-constrained when its ``cnf`` claim (in the JWT, or as a top-level member of
the introspection answer, RFC 9449 §6.2 / RFC 8705 §3.2) names a key: ``jkt`` (a DPoP key)
or ``x5t#S256`` (a client certificate). ``token_binding`` reads that, strictly;
``required_proofs`` decides, from the scheme the client used and the route's modes, which
proofs must be checked, or refuses the request outright. Both are pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from gateway.auth.dpop_errors import DpopBoundAsBearer, InvalidDpopToken
from gateway.problems import InvalidToken, MissingCredentials

Mode = Literal["off", "optional", "required"]
Scheme = Literal["bearer", "dpop"]

# A base64url SHA-256 digest: 32 bytes are 43 characters, the last of them from this set.
_SHA256_B64URL: Final = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
_CHECKED_METHODS: Final = frozenset({"jkt", "x5t#S256"})


@dataclass(frozen=True, slots=True)
class Binding:
    jkt: str | None = None  # RFC 9449 §6.1
    x5t_s256: str | None = None  # RFC 8705 §3.1


@dataclass(frozen=True, slots=True)
class ProofsNeeded:
    dpop: bool
    certificate: bool


UNBOUND: Final = Binding()


def _malformed(detail: str) -> InvalidToken:
    return InvalidToken(detail, reason="bad_confirmation")


def _digest(cnf: Mapping[str, Any], name: str) -> str | None:
    value = cnf.get(name)
    if value is None:
        return None
    if type(value) is not str or _SHA256_B64URL.fullmatch(value) is None:
        raise _malformed(f"The access token's cnf.{name} is not a base64url SHA-256 digest.")
    return value


def token_binding(claims: Mapping[str, Any]) -> Binding:
    """The key the token is bound to, from its claims (or introspection answer)."""
    cnf = claims.get("cnf")
    token_type = claims.get("token_type")
    dpop_typed = isinstance(token_type, str) and token_type.lower() == "dpop"
    if cnf is None and not dpop_typed:
        return UNBOUND
    if not isinstance(cnf, Mapping):
        raise _malformed("The access token's cnf claim is not a JSON object.")
    # RFC 7800 §3.1: cnf may name a key by other members (jwk, jwe, jku, kid, x5t); a proof
    # of possession of such a key is not something this gateway checks, so the token is
    # refused rather than accepted as a bearer token anyone holding it could use.
    unchecked = set(cnf) - _CHECKED_METHODS
    if unchecked or not cnf:
        raise InvalidToken("The access token is bound to a key in a way this gateway cannot "
                           "check.", reason="sender_constrained")  # fmt: skip
    binding = Binding(jkt=_digest(cnf, "jkt"), x5t_s256=_digest(cnf, "x5t#S256"))
    # RFC 9449 §6.2: "If the token_type member is included in the introspection response,
    # it MUST contain the value DPoP" for a DPoP-bound token; DPoP without a jkt is no
    # binding anything could be checked against.
    if dpop_typed and binding.jkt is None:
        raise _malformed("The access token is typed DPoP but names no cnf.jkt.")
    return binding


def required_proofs(
    scheme: Scheme,
    binding: Binding,
    *,
    dpop: Mode,
    mtls: Mode,
    dpop_algs: Sequence[str],
) -> ProofsNeeded:
    """Which proofs the request must pass, or the refusal it gets.

    ``dpop`` / ``mtls``: ``off`` refuses tokens bound that way (the gateway will not check
    the binding, RFC 9449 §7.2 / RFC 8705 §3); ``optional`` checks bound tokens and lets
    plain bearer tokens through; ``required`` accepts only tokens bound that way.
    """
    if scheme == "dpop":
        if dpop == "off":
            # Not a scheme this route speaks: as if no credentials were sent (RFC 6750 §3.1).
            raise MissingCredentials()
        # RFC 9449 §7.1: the DPoP scheme carries "a DPoP-bound access token"; one bound to
        # no key has nothing for "the public key of the DPoP proof" to match.
        if binding.jkt is None:
            raise InvalidDpopToken("The access token is not bound to a DPoP key.",
                                   reason="dpop_unbound", algs=dpop_algs)  # fmt: skip
    elif binding.jkt is not None:
        # RFC 9449 §7.2: "such a protected resource MUST reject a DPoP-bound access token
        # received as a bearer token per [RFC6750]".
        if dpop == "off":
            raise InvalidToken("The access token is bound to a DPoP key, which this route "
                               "does not accept.", reason="sender_constrained")  # fmt: skip
        raise DpopBoundAsBearer(algs=dpop_algs)
    elif dpop == "required":
        raise InvalidDpopToken("This resource accepts only DPoP-bound access tokens.",
                               reason="dpop_required", algs=dpop_algs)  # fmt: skip
    if binding.x5t_s256 is not None:
        # RFC 8705 §3: "The protected resource MUST obtain, from its TLS implementation
        # layer, the client certificate used for mutual TLS and MUST verify that the
        # certificate matches the certificate associated with the access token"; a route
        # that does not obtain certificates refuses such tokens.
        if mtls == "off":
            raise InvalidToken("The access token is bound to a client certificate, which this "
                               "route does not check.", reason="sender_constrained")  # fmt: skip
    elif mtls == "required":
        raise InvalidToken("This resource accepts only certificate-bound access tokens.",
                           reason="mtls_required")  # fmt: skip
    return ProofsNeeded(dpop=scheme == "dpop", certificate=binding.x5t_s256 is not None)
