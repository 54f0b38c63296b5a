"""RFC 8705 §3 certificate-bound tokens: the certificate from the handshake, Envoy XFCC and
nginx's escaped PEM, parsed strictly; the binding compared."""

from __future__ import annotations

import datetime
import hashlib
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.auth.mtls import (
    CertificateSource,
    InvalidClientCertificate,
    certificate_from_der,
    certificate_from_escaped_pem,
    certificate_from_xfcc,
    check_certificate_binding,
    client_certificate,
    split_xfcc,
)
from gateway.auth.thumbprints import b64url
from gateway.problems import InvalidToken


def make_certificate(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


CERT = make_certificate("client-a")
OTHER = make_certificate("client-b")
DER = CERT.public_bytes(serialization.Encoding.DER)
PEM = CERT.public_bytes(serialization.Encoding.PEM).decode()
X5T = b64url(hashlib.sha256(DER).digest())
HASH = hashlib.sha256(DER).hexdigest()


def test_der_from_the_handshake() -> None:
    certificate = certificate_from_der(DER)
    assert certificate.x5t_s256 == X5T and certificate.der == DER


def test_nginx_escaped_pem() -> None:
    assert certificate_from_escaped_pem(quote(PEM, safe="")).x5t_s256 == X5T
    assert certificate_from_escaped_pem(quote(PEM.replace("\n", "\r\n"))).x5t_s256 == X5T


def test_envoy_xfcc_cert_quoted_with_hash_and_subject() -> None:
    subject = 'Subject="/C=US/CN=client-a, with; punctuation="'
    header = f'By=spiffe://gw;Hash={HASH};Cert="{quote(PEM, safe="")}";{subject};URI=u;DNS=a;DNS=b'
    assert certificate_from_xfcc([header]).x5t_s256 == X5T


def test_envoy_xfcc_takes_the_last_element_the_trusted_proxy_appended() -> None:
    other_pem = quote(OTHER.public_bytes(serialization.Encoding.PEM).decode(), safe="")
    header = f'Cert="{other_pem}",By=spiffe://gw;Cert="{quote(PEM, safe="")}"'
    assert certificate_from_xfcc([header]).x5t_s256 == X5T
    # Two field lines are one list (RFC 9110 §5.3): the last line's element still counts.
    assert certificate_from_xfcc([f'Cert="{other_pem}"', f"Hash={HASH}"]).x5t_s256 == X5T


def test_envoy_xfcc_hash_alone_is_enough() -> None:
    certificate = certificate_from_xfcc([f"By=spiffe://gw;Hash={HASH.upper()}"])
    assert certificate.x5t_s256 == X5T and certificate.der is None


def test_split_xfcc_handles_quotes_and_escapes() -> None:
    assert split_xfcc('A="x,y;z=\\"q\\"";B=2,C=3') == [
        [("a", 'x,y;z="q"'), ("b", "2")],
        [("c", "3")],
    ]


BAD_XFCC = {
    "unterminated-quote": 'Cert="abc',
    "no-equals": "Hash",
    "empty-element": f"Hash={HASH},",
    "bad-key": f"Ha-sh={HASH}",
    "repeated-cert": f'Cert="{quote(PEM)}";Cert="{quote(PEM)}"',
    "bad-hash": "Hash=abc",
    "hash-mismatch": f'Hash={"0" * 64};Cert="{quote(PEM)}"',
    "neither": 'By=spiffe://gw;Subject="/CN=x"',
    "garbage-cert": 'Cert="-----BEGIN%20CERTIFICATE-----%0AAAAA%0A-----END%20CERTIFICATE-----"',
    "not-pem": 'Cert="hello"',
    "two-certs": f'Cert="{quote(PEM + PEM)}"',
    "bad-utf8": 'Cert="%ff%fe"',
    "too-many-elements": ",".join([f"Hash={HASH}"] * 17),
    "oversized": "Hash=" + "a" * 70_000,
}


@pytest.mark.parametrize("header", BAD_XFCC.values(), ids=BAD_XFCC.keys())
def test_malformed_xfcc_is_a_precise_400(header: str) -> None:
    with pytest.raises(InvalidClientCertificate) as refused:
        certificate_from_xfcc([header])
    assert refused.value.status == 400 and refused.value.reason == "bad_client_certificate"


@pytest.mark.parametrize(
    "der",
    [b"", b"\x30\x00", DER + b"\x00", DER[:-1], b"\x30" * 20_000],
    ids=["empty", "empty-sequence", "trailing-byte", "truncated", "oversized"],
)
def test_malformed_der_is_a_precise_400(der: bytes) -> None:
    with pytest.raises(InvalidClientCertificate):
        certificate_from_der(der)


def test_pem_body_must_be_strict_base64() -> None:
    lines = PEM.splitlines()
    lines[1] = "*" + lines[1][1:]
    with pytest.raises(InvalidClientCertificate):
        certificate_from_escaped_pem(quote("\n".join(lines) + "\n"))


def test_source_tls_ignores_headers() -> None:
    source = CertificateSource(kind="tls")
    assert (
        client_certificate(source, tls_der=None, header_values=[f"Hash={HASH}"], peer_trusted=True)
        is None
    )
    found = client_certificate(source, tls_der=DER, header_values=[], peer_trusted=False)
    assert found is not None and found.x5t_s256 == X5T


def test_source_header_only_from_a_trusted_peer() -> None:
    source = CertificateSource(kind="header", header_format="xfcc")
    headers = [f"Hash={HASH}"]
    assert (
        client_certificate(source, tls_der=DER, header_values=headers, peer_trusted=False) is None
    )
    found = client_certificate(source, tls_der=None, header_values=headers, peer_trusted=True)
    assert found is not None and found.x5t_s256 == X5T


def test_source_nginx_header_must_be_single() -> None:
    source = CertificateSource(kind="header", header_format="escaped_pem")
    one = quote(PEM)
    found = client_certificate(source, tls_der=None, header_values=[one], peer_trusted=True)
    assert found is not None and found.x5t_s256 == X5T
    with pytest.raises(InvalidClientCertificate):
        client_certificate(source, tls_der=None, header_values=[one, one], peer_trusted=True)


def test_binding_matches_or_is_invalid_token() -> None:
    check_certificate_binding(X5T, certificate_from_der(DER))
    other = certificate_from_der(OTHER.public_bytes(serialization.Encoding.DER))
    with pytest.raises(InvalidToken) as mismatch:
        check_certificate_binding(X5T, other)
    assert mismatch.value.status == 401 and mismatch.value.reason == "mtls_mismatch"
    assert 'error="invalid_token"' in mismatch.value.challenge("gw")
    with pytest.raises(InvalidToken) as missing:
        check_certificate_binding(X5T, None)
    assert missing.value.reason == "mtls_missing"


def test_a_client_quote_cannot_swallow_the_element_the_proxy_appended() -> None:
    """Envoy's APPEND_FORWARD appends its element to whatever XFCC the client sent. A client
    value that opens a quote must not swallow the proxy's separator so that the client's
    own Hash (a victim's certificate) ends up in the last element."""
    victim = hashlib.sha256(OTHER.public_bytes(serialization.Encoding.DER)).hexdigest()
    client_part = f'Hash={victim};URI="'
    appended = f'By=spiffe://gw;Hash={HASH};Subject="CN=client-a";URI=spiffe://client-a'
    with pytest.raises(InvalidClientCertificate):
        certificate_from_xfcc([f"{client_part},{appended}"])
    with pytest.raises(InvalidClientCertificate):
        split_xfcc('URI="a"b')  # text after a closing quote
    with pytest.raises(InvalidClientCertificate):
        split_xfcc('URI=a"b"')  # a quote inside an unquoted value
