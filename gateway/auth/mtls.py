"""RFC 8705 §3: certificate-bound access tokens, and where the client certificate comes from.

The certificate is the one of the TLS handshake (DER from the listener), or, behind a front
proxy that terminates TLS, the one that proxy forwards in a header: Envoy's
``X-Forwarded-Client-Cert`` or nginx's ``$ssl_client_escaped_cert``. A header counts only
when the socket peer is a trusted proxy (the caller knows the peer; ``client_certificate``
takes its verdict). Parsing is bounded and strict: a malformed certificate or header is an
``InvalidClientCertificate`` (400), never a 500 and never silently "no certificate".
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

from cryptography import x509

from gateway.auth.thumbprints import b64url, certificate_thumbprint
from gateway.problems import InvalidRequest, InvalidToken

CertificateSourceKind = Literal["tls", "header"]
HeaderFormat = Literal["xfcc", "escaped_pem"]

MAX_CERTIFICATE_BYTES: Final = 16 * 1024
MAX_XFCC_ELEMENTS: Final = 16
_PEM: Final = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+?)\r?\n-----END CERTIFICATE-----\r?\n?"
)
_HEX_SHA256: Final = re.compile(r"[0-9A-Fa-f]{64}")
_XFCC_KEY: Final = re.compile(r"[A-Za-z]+")
_XFCC_REPEATABLE: Final = frozenset({"dns", "uri"})


class InvalidClientCertificate(InvalidRequest):
    slug = "invalid-client-certificate"
    reason = "bad_client_certificate"


@dataclass(frozen=True, slots=True)
class CertificateSource:
    """Where a route reads the client certificate: the handshake, or one trusted header."""

    kind: CertificateSourceKind = "tls"
    header_format: HeaderFormat = "xfcc"


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    x5t_s256: str  # RFC 8705 §3.1
    der: bytes | None  # None when a front proxy forwarded only the certificate's hash


def _bad(detail: str) -> InvalidClientCertificate:
    return InvalidClientCertificate(detail)


def certificate_from_der(der: bytes) -> ClientCertificate:
    """The certificate from DER bytes, after checking they are one X.509 certificate."""
    if not der or len(der) > MAX_CERTIFICATE_BYTES:
        raise _bad("The client certificate is empty or too large.")
    try:
        x509.load_der_x509_certificate(der)
    except ValueError:
        raise _bad("The client certificate is not a DER X.509 certificate.") from None
    return ClientCertificate(x5t_s256=certificate_thumbprint(der), der=der)


def certificate_from_pem(pem: str) -> ClientCertificate:
    """Exactly one PEM ``CERTIFICATE`` block (RFC 7468 §5.1) and nothing else."""
    if len(pem) > 2 * MAX_CERTIFICATE_BYTES:
        raise _bad("The client certificate is too large.")
    match = _PEM.fullmatch(pem.strip(" \t"))
    if match is None:
        raise _bad("The client certificate is not one PEM certificate.")
    try:
        der = base64.b64decode(re.sub(r"[\r\n]", "", match.group(1)), validate=True)
    except binascii.Error:
        raise _bad("The client certificate's PEM body is not base64.") from None
    return certificate_from_der(der)


def certificate_from_escaped_pem(value: str) -> ClientCertificate:
    """nginx ``$ssl_client_escaped_cert``: "the client certificate in the PEM format
    (urlencoded)"."""
    return certificate_from_pem(_unescape(value))


def _unescape(value: str) -> str:
    if len(value) > 3 * MAX_CERTIFICATE_BYTES:
        raise _bad("The forwarded client certificate is too large.")
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise _bad("The forwarded client certificate is not URL-encoded text.") from None


def split_xfcc(value: str) -> list[list[tuple[str, str]]]:
    """Envoy XFCC: elements separated by ``,``, each ``key=value`` pairs separated by ``;``;
    a value holding ``,``, ``;`` or ``=`` is double-quoted, with ``\\"`` for a quote.

    Strict about quotes: one opens only a whole value and only ``;``, ``,`` or the end may
    follow the one that closes it. With APPEND_FORWARD the proxy appends to what the client
    sent, and a lenient reading would let a quote the client left open swallow the proxy's
    separator and make the client's own element the last one.
    """
    elements: list[list[tuple[str, str]]] = []
    pairs: list[tuple[str, str]] = []
    field: list[str] = []
    key: str | None = None
    quoted = closed = False
    at = 0
    while at < len(value):
        char = value[at]
        at += 1
        if quoted:
            if char == "\\" and value[at : at + 1] == '"':
                field.append('"')
                at += 1
            elif char == '"':
                quoted, closed = False, True
            else:
                field.append(char)
        elif char in ";,":
            pairs.append(_pair(key, field))
            key, field, closed = None, [], False
            if char == ",":
                elements.append(pairs)
                pairs = []
        elif closed or (char == '"' and (key is None or field)):
            raise _bad("The X-Forwarded-Client-Cert header has a stray quote.")
        elif char == '"':
            quoted = True
        elif char == "=" and key is None:
            key, field = "".join(field).strip(" "), []
        else:
            field.append(char)
    if quoted:
        raise _bad("The X-Forwarded-Client-Cert header has an unterminated quoted value.")
    pairs.append(_pair(key, field))
    elements.append(pairs)
    return elements


def _pair(key: str | None, field: list[str]) -> tuple[str, str]:
    if key is None or _XFCC_KEY.fullmatch(key) is None:
        raise _bad("The X-Forwarded-Client-Cert header has a malformed key=value pair.")
    return key.lower(), "".join(field)


def certificate_from_xfcc(values: Sequence[str]) -> ClientCertificate:
    """The certificate in the *last* XFCC element: the one the trusted proxy in front of us
    appended (``APPEND_FORWARD``) or set (``SANITIZE_SET``); earlier elements describe hops
    we cannot vouch for. ``Cert`` (URL-encoded PEM) is used when present, else ``Hash``
    (hex SHA-256 of the DER, which is what ``x5t#S256`` encodes); both must then agree."""
    # RFC 9110 §5.3: several field lines are one comma-separated list.
    value = ",".join(values)
    if len(value) > 4 * MAX_CERTIFICATE_BYTES:
        raise _bad("The X-Forwarded-Client-Cert header is too large.")
    elements = split_xfcc(value)
    if len(elements) > MAX_XFCC_ELEMENTS:
        raise _bad("The X-Forwarded-Client-Cert header has too many elements.")
    found: dict[str, str] = {}
    for name, text in elements[-1]:
        if name in found and name not in _XFCC_REPEATABLE:
            raise _bad(f"The X-Forwarded-Client-Cert element repeats {name!r}.")
        found[name] = text
    digest = found.get("hash")
    if digest is not None and _HEX_SHA256.fullmatch(digest) is None:
        raise _bad("The X-Forwarded-Client-Cert Hash is not a hex SHA-256 digest.")
    if "cert" in found:
        certificate = certificate_from_pem(_unescape(found["cert"]))
        if digest is not None and b64url(bytes.fromhex(digest)) != certificate.x5t_s256:
            raise _bad("The X-Forwarded-Client-Cert Hash does not match its Cert.")
        return certificate
    if digest is None:
        raise _bad("The X-Forwarded-Client-Cert element carries neither Cert nor Hash.")
    return ClientCertificate(x5t_s256=b64url(bytes.fromhex(digest)), der=None)


def client_certificate(
    source: CertificateSource,
    *,
    tls_der: bytes | None,
    header_values: Sequence[str],
    peer_trusted: bool,
) -> ClientCertificate | None:
    """The request's client certificate, or None when it presented none we may believe.

    A certificate header from a peer that is not a trusted proxy is ignored (anyone can type
    one); a malformed one from a trusted proxy is an error, not "no certificate".
    """
    if source.kind == "tls":
        return None if tls_der is None else certificate_from_der(tls_der)
    if not header_values or not peer_trusted:
        return None
    if source.header_format == "xfcc":
        return certificate_from_xfcc(header_values)
    if len(header_values) > 1:
        raise _bad("The request carries more than one client certificate header.")
    return certificate_from_escaped_pem(header_values[0])


def check_certificate_binding(bound_x5t_s256: str, certificate: ClientCertificate | None) -> None:
    """RFC 8705 §3: "If they do not match, the resource access attempt MUST be rejected with
    an error, per [RFC6750], using an HTTP 401 status code and the "invalid_token" error
    code." The comparison takes constant time."""
    if certificate is None:
        raise InvalidToken("The access token is bound to a client certificate and the request "
                           "presented none.", reason="mtls_missing")  # fmt: skip
    if not hmac.compare_digest(certificate.x5t_s256.encode(), bound_x5t_s256.encode()):
        raise InvalidToken("The access token is bound to another client certificate.",
                           reason="mtls_mismatch")  # fmt: skip
