"""Sender-constrained tokens on a route: DPoP proofs (RFC 9449) and certificate binding
(RFC 8705), checked after the identity cache on every request.

Whether a token is bound is a fact about the token (its ``cnf``, cached with its identity);
whether this request proves possession of the key is a fact about the request, so it is
decided here each time and never cached, and a hot token's remembered decision is never
used for a bound token. ``check`` answers which kind of token the request used (for the
access log) or raises the precise refusal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.auth.binding import UNBOUND, Binding, Mode, Scheme, required_proofs, token_binding

__all__ = [
    "UNBOUND",
    "HeaderLookup",
    "Presented",
    "SenderRules",
    "TokenType",
    "binding_of",
    "check",
]
from gateway.auth.dpop import DpopPolicy, validate_proof
from gateway.auth.dpop_errors import InvalidDpopProof
from gateway.auth.dpop_nonce import current_nonces
from gateway.auth.htu import external_uri
from gateway.auth.identity import Identity
from gateway.auth.mtls import CertificateSource, check_certificate_binding, client_certificate
from gateway.auth.replay import ReplayStore

TokenType = Literal["Bearer", "DPoP", "mTLS"]
__all__ = ["UNBOUND", "HeaderLookup", "Presented", "SenderRules", "TokenType", "binding_of",
           "check"]  # fmt: skip


class HeaderLookup(Protocol):
    """Every value of a request header, by case-insensitive name (a multidict's getall)."""

    def getall(self, key: str, default: Sequence[str], /) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class DpopRules:
    mode: Mode
    external_url: str  # the URL clients use; htu is checked against it, never against Host
    policy: DpopPolicy
    nonce_secret: bytes | None = None
    nonce_lifetime: float = 300.0
    forward_proof: bool = False


@dataclass(frozen=True, slots=True)
class MtlsRules:
    mode: Mode
    source: CertificateSource
    header: str  # the front proxy's certificate header, when source is "header"
    peer_trusted: Callable[[str | None], bool]  # may this peer set that header?


@dataclass(frozen=True, slots=True)
class SenderRules:
    """A route's sender-constraint rules; None for a check means its mode is off."""

    dpop: DpopRules | None = None
    mtls: MtlsRules | None = None

    @property
    def dpop_mode(self) -> Mode:
        return "off" if self.dpop is None else self.dpop.mode

    @property
    def mtls_mode(self) -> Mode:
        return "off" if self.mtls is None else self.mtls.mode

    @property
    def dpop_algs(self) -> tuple[str, ...]:
        return () if self.dpop is None else self.dpop.policy.algorithms


OFF = SenderRules()


@dataclass(frozen=True, slots=True)
class Presented:
    """What the request shows beyond the token: its DPoP proofs and its client certificate."""

    method: str
    path: str  # the normalised path the client used (before any rewrite)
    headers: HeaderLookup
    peer: str | None
    tls_certificate: bytes | None  # DER, from the handshake


def binding_of(identity: Identity) -> Binding:
    """The token's binding; cheap enough to read per request (a dict lookup when unbound)."""
    if "cnf" not in identity.claims and "token_type" not in identity.claims:
        return UNBOUND
    return token_binding(identity.claims)


async def check(
    rules: SenderRules,
    scheme: Scheme,
    identity: Identity,
    token: str,
    presented: Presented,
    replay: ReplayStore | None,
    *,
    now: Callable[[], float] = time.time,
) -> TokenType:
    """RFC 9449 §7.1 and RFC 8705 §3 for one request; raises the refusal."""
    binding = binding_of(identity)
    needed = required_proofs(
        scheme, binding, dpop=rules.dpop_mode, mtls=rules.mtls_mode, dpop_algs=rules.dpop_algs
    )
    kind: TokenType = "Bearer"
    if needed.dpop:
        assert rules.dpop is not None  # required_proofs refuses DPoP where it is off
        await _check_proof(rules.dpop, binding, token, presented, replay, now())
        kind = "DPoP"
    if needed.certificate:
        assert rules.mtls is not None and binding.x5t_s256 is not None
        mtls = rules.mtls
        certificate = client_certificate(
            mtls.source,
            tls_der=presented.tls_certificate,
            header_values=presented.headers.getall(mtls.header, ()),
            peer_trusted=mtls.peer_trusted(presented.peer),
        )
        check_certificate_binding(binding.x5t_s256, certificate)
        kind = "mTLS" if kind == "Bearer" else kind
    return kind


async def _check_proof(
    dpop: DpopRules,
    binding: Binding,
    token: str,
    presented: Presented,
    replay: ReplayStore | None,
    now: float,
) -> None:
    nonces: Sequence[str] = ()
    if dpop.nonce_secret is not None:
        nonces = current_nonces(dpop.nonce_secret, now, dpop.nonce_lifetime)
    proof = validate_proof(
        presented.headers.getall("DPoP", ()),
        method=presented.method,
        uri=external_uri(dpop.external_url, presented.path),
        access_token=token,
        bound_jkt=binding.jkt,
        policy=dpop.policy,
        now=now,
        nonces=nonces,
    )
    # RFC 9449 §11.1: a proof is accepted once; the store keeps its hash until it expires,
    # counted against its key's share of the store (the key matched the token's cnf.jkt).
    if replay is not None and not await replay.record(
        proof.replay_key, proof.replay_ttl, proof.jkt
    ):
        raise InvalidDpopProof(
            "The DPoP proof was already used.", reason="dpop_replay", algs=dpop.policy.algorithms
        )
