"""Apache httpd + mod_auth_openidc as a measured peer of the bench (issue 14 item 7).

mod_auth_openidc, configured as an OAuth 2.0 resource server (``AuthType oauth20``), checks
bearer tokens in front of ``mod_proxy`` to the bench's upstream: local JWT verification
against a JWKS URL (``OIDCOAuthVerifyJwksUri``), or RFC 7662 introspection with its results
cached in Redis (``OIDCOAuthIntrospectionEndpoint`` + ``OIDCCacheType redis``). It refuses
plain-HTTP key and introspection URLs, so the bench issuer is served over TLS with a CA made
for the run (``make_bench_ca``) that only this Apache trusts.

The policy is the gateway route's: ``iss``, ``aud`` and ``scope`` as ``Require claim`` rules
(all of them), ``exp`` checked by the module. Apache answers a failed ``Require`` with 401,
or 403 with ``AuthzSendForbiddenOnFailure``, which is set so that a missing scope is 403 as
it is for the gateway.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

MODULES = Path("/usr/lib/apache2/modules")
_NEEDED = ("mod_mpm_event", "mod_authn_core", "mod_authz_core", "mod_proxy", "mod_proxy_http",
           "mod_auth_openidc")  # fmt: skip


@dataclass(frozen=True)
class BenchTls:
    ca: Path  # the CA certificate Apache trusts (OIDCCABundlePath)
    cert: Path  # the bench issuer's server certificate, for 127.0.0.1
    key: Path


def make_bench_ca(directory: Path) -> BenchTls:
    """A CA and a server certificate for 127.0.0.1 (and localhost), made for this run."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway bench CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    tls = BenchTls(directory / "bench-ca.pem", directory / "issuer.pem", directory / "issuer.key")
    tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tls


def missing() -> str | None:
    """Why this peer cannot run here, or None."""
    if not Path("/usr/sbin/apache2").exists():
        return "apache2 not found (apt-get install apache2 libapache2-mod-auth-openidc)"
    absent = [name for name in _NEEDED if not (MODULES / f"{name}.so").exists()]
    if absent:
        return f"Apache modules missing: {', '.join(absent)} (libapache2-mod-auth-openidc)"
    return None


def apache_conf(
    root: Path,
    *,
    port: int,
    upstream_port: int,
    issuer_port: int,
    tls: BenchTls,
    issuer: str,
    audience: str,
    scope: str,
    mode: str,
    client: tuple[str, str],
    redis_port: int | None = None,
) -> Path:
    """One Apache (event MPM, one process of 64 threads, as the gateway has one process),
    everything it writes under ``root``. ``mode``: ``jwt`` or ``introspection``."""
    (root / "run").mkdir(parents=True, exist_ok=True)
    for directory in (root, root / "run", tls.ca.parent):
        os.chmod(directory, 0o755)  # noqa: S103 - the children run as www-data
    os.chmod(tls.ca, 0o644)
    modules = "\n".join(f"LoadModule {name.removeprefix('mod_')}_module {MODULES}/{name}.so"
                        for name in _NEEDED)  # fmt: skip
    base = f"https://127.0.0.1:{issuer_port}"
    if mode == "jwt":
        validation = f"OIDCOAuthVerifyJwksUri {base}/jwks"
        cache = "OIDCCacheType shm"
    else:
        client_id, secret = client
        validation = "\n".join([
            f"OIDCOAuthIntrospectionEndpoint {base}/introspect",
            f"OIDCOAuthClientID {client_id}",
            f"OIDCOAuthClientSecret {secret}",
            "OIDCOAuthIntrospectionEndpointAuth client_secret_basic",
        ])  # fmt: skip
        assert redis_port is not None
        cache = f"OIDCCacheType redis\nOIDCRedisCacheServer 127.0.0.1:{redis_port}"
    conf = root / "httpd.conf"
    conf.write_text(f"""
ServerRoot {root}
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {root}/run/httpd.pid
DefaultRuntimeDir {root}/run
Mutex file:{root}/run default
ErrorLog {root}/error.log
LogLevel warn
{modules}
User www-data
Group www-data
StartServers 1
ServerLimit 1
ThreadLimit 64
ThreadsPerChild 64
MinSpareThreads 1
MaxSpareThreads 64
MaxRequestWorkers 64
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 75

OIDCCryptoPassphrase bench-{os.urandom(8).hex()}
OIDCCABundlePath {tls.ca}
OIDCSSLValidateServer On
OIDCOAuthSSLValidateServer On
OIDCOAuthAcceptTokenAs header
{validation}
{cache}

<Location /auth>
  AuthType oauth20
  AuthzSendForbiddenOnFailure On
  <RequireAll>
    Require claim iss:{issuer}
    Require claim aud:{audience}
    Require claim scope:{scope}
  </RequireAll>
</Location>
ProxyPass / http://127.0.0.1:{upstream_port}/ keepalive=On
""")
    return conf
