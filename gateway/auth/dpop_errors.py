"""RFC 9449 §7.1, §7.2, §9 and §12.2: DPoP refusals and their ``WWW-Authenticate`` challenges.

``gateway.problems.AuthError`` renders one ``Bearer`` challenge from a realm. A DPoP route
needs more: the ``DPoP`` scheme with an ``algs`` parameter, sometimes a ``Bearer`` and a
``DPoP`` challenge in one field (RFC 9449 §7.2, RFC 9110 §11.6.1), a ``DPoP-Nonce`` header,
and the RFC 9728 §5.1 ``resource_metadata`` parameter. Each class here overrides
``challenge(realm)`` and ``extra_headers()``, so the one renderer needs no change to send them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from gateway.problems import Challenge, InvalidToken, as_challenge, error_description, quoted


def render_challenge(scheme: str, params: Sequence[tuple[str, str]]) -> str:
    """One RFC 9110 §11.6.1 challenge: ``scheme name="value", …`` (the scheme alone if none)."""
    if not params:
        return scheme
    return scheme + " " + ", ".join(f"{name}={quoted(value)}" for name, value in params)


def dpop_challenge(
    realm: str,
    algs: Sequence[str],
    *,
    error: str | None = None,
    description: str | None = None,
    resource_metadata: str | None = None,
) -> str:
    """RFC 9449 §7.1: "The scheme name is DPoP"; "An algs parameter SHOULD be included"; its
    value "is a space-delimited list of JWS alg (Algorithm) header values"."""
    params = [("realm", realm)]
    if error is not None:
        params.append(("error", error))
        if description is not None:
            params.append(("error_description", error_description(description)))
    params.append(("algs", " ".join(algs)))
    if resource_metadata is not None:
        params.append(("resource_metadata", resource_metadata))
    return render_challenge("DPoP", params)


class _DpopChallenged(InvalidToken):
    """An ``invalid_token``-family error answered with a ``DPoP`` challenge."""

    def __init__(
        self,
        detail: str,
        *,
        reason: str,
        algs: Sequence[str],
        resource_metadata: str | None = None,
    ) -> None:
        super().__init__(detail, reason=reason)
        self.algs = tuple(algs)
        self.resource_metadata = resource_metadata

    def challenge(self, context: Challenge | str) -> str:
        ctx = as_challenge(context)
        return dpop_challenge(
            ctx.realm,
            ctx.dpop_algs or self.algs,
            error=self.error_code,
            description=self.detail,
            resource_metadata=ctx.resource_metadata or self.resource_metadata,
        )


class InvalidDpopProof(_DpopChallenged):
    """RFC 9449 §7.1: "invalid_dpop_proof is used to indicate that the DPoP proof itself was
    deemed invalid based on the criteria of Section 4.3" (registered in §12.2)."""

    slug = "invalid-dpop-proof"
    error_code = "invalid_dpop_proof"


class UseDpopNonce(InvalidDpopProof):
    """RFC 9449 §9: "Resource servers use an HTTP 401 (Unauthorized) error code with an
    accompanying WWW-Authenticate: DPoP value and DPoP-Nonce value"."""

    slug = "use-dpop-nonce"
    error_code = "use_dpop_nonce"

    def __init__(
        self,
        detail: str,
        *,
        nonce: str,
        algs: Sequence[str],
        resource_metadata: str | None = None,
    ) -> None:
        super().__init__(
            detail, reason="dpop_nonce", algs=algs, resource_metadata=resource_metadata
        )
        self.nonce = nonce

    def extra_headers(self) -> dict[str, str]:
        # RFC 9449 §8.2: "Responses that include the DPoP-Nonce HTTP header should be
        # uncacheable"; §8: "there MUST NOT be more than one DPoP-Nonce header".
        return {"DPoP-Nonce": self.nonce, "Cache-Control": "no-store"}


class InvalidDpopToken(_DpopChallenged):
    """The access token fails under the DPoP scheme: its binding does not match the proof's
    key (RFC 9449 §7.1 Figure 16: ``error="invalid_token"``, "Invalid DPoP key binding"), it
    is bound to no DPoP key, or the route requires DPoP and the token is a plain bearer one."""

    slug = "invalid-dpop-token"


class DpopBoundAsBearer(InvalidToken):
    """RFC 9449 §7.2: "such a protected resource MUST reject a DPoP-bound access token
    received as a bearer token per [RFC6750]". The client used ``Bearer`` unambiguously, so
    the error travels in the Bearer challenge and a bare DPoP challenge says what would work
    (RFC 9449 §7.2 Figure 18)."""

    slug = "dpop-bound-as-bearer"

    def __init__(self, *, algs: Sequence[str], resource_metadata: str | None = None) -> None:
        super().__init__(
            "The access token is bound to a DPoP key: send it with the DPoP scheme and a proof.",
            reason="dpop_bound_as_bearer",
        )
        self.algs = tuple(algs)
        self.resource_metadata = resource_metadata

    def challenge(self, context: Challenge | str) -> str | None:
        ctx = as_challenge(context)
        meta = ctx.resource_metadata or self.resource_metadata
        return super().challenge(
            replace(ctx, dpop_algs=ctx.dpop_algs or self.algs, bearer=True, resource_metadata=meta)
        )
