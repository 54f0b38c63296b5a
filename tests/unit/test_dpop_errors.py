"""RFC 9449 §7.1, §7.2, §9 challenges, exactly as a client reads them."""

from __future__ import annotations

from gateway.auth.dpop_errors import (
    DpopBoundAsBearer,
    InvalidDpopProof,
    InvalidDpopToken,
    UseDpopNonce,
    dpop_challenge,
)
from gateway.problems import Challenge, InvalidToken, MissingCredentials, error_description

ALGS = ("ES256", "PS256")
META = "https://api.example.com/.well-known/oauth-protected-resource/mcp"


def test_invalid_proof_challenge() -> None:
    error = InvalidDpopProof("The DPoP proof is too old.", reason="dpop_iat", algs=ALGS)
    assert isinstance(error, InvalidToken) and error.status == 401
    assert error.challenge("gw") == (
        'DPoP realm="gw", error="invalid_dpop_proof", '
        'error_description="The DPoP proof is too old.", algs="ES256 PS256"'
    )
    assert error.extra_headers() == {}
    assert error.problem()["type"] == "urn:oauth-gateway:problem:invalid-dpop-proof"


def test_binding_mismatch_challenge_is_rfc_figure_16() -> None:
    error = InvalidDpopToken("Invalid DPoP key binding", reason="dpop_binding", algs=["ES256"])
    assert error.challenge("gw") == (
        'DPoP realm="gw", error="invalid_token", '
        'error_description="Invalid DPoP key binding", algs="ES256"'
    )


def test_use_dpop_nonce_sends_the_nonce_uncacheable() -> None:
    error = UseDpopNonce(
        "Resource server requires nonce in DPoP proof", nonce="eyJ7S_zG.eyJH0-Z", algs=ALGS
    )
    assert error.status == 401 and error.reason == "dpop_nonce"
    assert error.challenge("gw").startswith('DPoP realm="gw", error="use_dpop_nonce", ')
    assert error.extra_headers() == {"DPoP-Nonce": "eyJ7S_zG.eyJH0-Z", "Cache-Control": "no-store"}


def test_bound_token_as_bearer_reports_in_bearer_and_offers_dpop() -> None:
    error = DpopBoundAsBearer(algs=ALGS)
    assert error.status == 401 and error.reason == "dpop_bound_as_bearer"
    bearer, dpop = error.challenge("gw").split(", DPoP ")
    assert bearer.startswith('Bearer realm="gw", error="invalid_token", error_description="')
    assert dpop == 'realm="gw", algs="ES256 PS256"'


def test_missing_credentials_without_error_information() -> None:
    """A DPoP route's answer to a request without credentials: the plain
    ``MissingCredentials`` (RFC 6750 §3.1), rendered with the route's ``Challenge``, which
    carries the schemes (RFC 9449 §7.1 and Figure 17)."""
    missing = MissingCredentials()
    required = Challenge(realm="gw", dpop_algs=ALGS, bearer=False)
    optional = Challenge(realm="gw", dpop_algs=ALGS, bearer=True)
    assert missing.status == 401
    assert missing.challenge(required) == 'DPoP realm="gw", algs="ES256 PS256"'
    assert missing.challenge(optional) == 'Bearer realm="gw", DPoP realm="gw", algs="ES256 PS256"'
    assert "error" not in (missing.challenge(optional) or "")


def test_resource_metadata_parameter_in_every_challenge() -> None:
    assert dpop_challenge("gw", ALGS, resource_metadata=META).endswith(
        f'algs="ES256 PS256", resource_metadata="{META}"'
    )
    both = Challenge(realm="gw", resource_metadata=META, dpop_algs=ALGS, bearer=True)
    assert (MissingCredentials().challenge(both) or "").count(f'resource_metadata="{META}"') == 2
    proof = InvalidDpopProof("x", reason="r", algs=ALGS, resource_metadata=META)
    assert proof.challenge("gw").endswith(f'resource_metadata="{META}"')


def test_quotes_in_values_are_escaped() -> None:
    error = InvalidDpopProof('bad "alg"', reason="r", algs=ALGS)
    assert "error_description=\"bad 'alg'\"" in error.challenge('a"b')  # §3: no '"' there
    assert error.challenge('a"b').startswith('DPoP realm="a\\"b"')


def test_an_error_description_keeps_to_the_rfc_6750_charset() -> None:
    """RFC 6750 §3: %x20-21 / %x23-5B / %x5D-7E; a detail quoting client input (a proof's
    alg) is mapped into it for the challenge, and stays as it was in the problem body."""
    detail = 'alg "ES\u0100\\x\t" refused'
    for error in (
        InvalidToken(detail),
        InvalidDpopProof(detail, reason="dpop_algorithm", algs=ALGS),
    ):
        challenge = error.challenge("gw") or ""
        assert "error_description=\"alg 'ES??x?' refused\"" in challenge, challenge
        assert error.problem()["detail"] == detail
    assert error_description(" !#[]~") == " !#[]~"
    assert error_description('"\\\x7f\x1f') == "'???"
