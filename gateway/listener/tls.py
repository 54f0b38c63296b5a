"""TLS on the listener (RFC 8446, RFC 9325): the server context, and swapping it while the
socket stays open.

A certificate is renewed long before the process is restarted (cert-manager rotates every
60 days, ACME clients every 30), so the listener never holds its context for life. The
listener is given one ``SSLContext`` when it starts (``tls_door`` hands it to every
connection's handshake); that *front* context's
``sni_callback`` runs during every ClientHello (with or without SNI) and points the
connection at the *current* context, whose certificate, key and client CAs OpenSSL then
uses for that handshake (``SSL_set_SSL_CTX``). Replacing the current context changes what
the next handshake presents; connections already open keep theirs.

One thing does not follow a swap: whether a client certificate is asked for at all. OpenSSL
copies the verify mode into each connection from the front context before the callback, so
``client_auth.mode`` is fixed for the listener's life (``ReloadingTls.replace`` refuses a
change rather than pretending); the CA file does follow.

Choices, after RFC 9325 §4 and Mozilla's "intermediate" profile: TLS 1.2 at least (1.3 by
choice), on 1.2 only ECDHE/DHE with AEAD ciphers, no compression, no renegotiation (a client
could otherwise make the event loop do a handshake per request), ALPN ``http/1.1`` (the
listener speaks nothing else). A client offering only ``h2`` completes the handshake with
no protocol selected: Python's ``ssl`` cannot send RFC 7301 §3.2's no_application_protocol
alert; its HTTP/2 preface is then refused by the listener (505).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509

ClientAuth = Literal["none", "optional", "required"]
TlsVersion = Literal["1.2", "1.3"]

# Mozilla "intermediate" TLS 1.2 suites (forward secrecy, AEAD); TLS 1.3's are OpenSSL's own.
_TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    ]
)
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What a server context is made of (the ``listen.tls`` section, compiled)."""

    cert_file: Path  # PEM: the certificate, then its chain
    key_file: Path  # PEM private key (unencrypted: there is no one to type a passphrase)
    min_version: TlsVersion = "1.2"
    client_auth: ClientAuth = "none"
    client_ca_file: Path | None = None  # the CAs client certificates must chain to


class TlsError(ValueError):
    """A file that cannot be used, with which setting it came from (``where``)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context for ``files``; ``TlsError`` names the file that is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[files.min_version]
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
    except FileNotFoundError:
        # OpenSSL does not say which of the two it could not open.
        where, path = (
            ("cert_file", files.cert_file)
            if not files.cert_file.is_file()
            else ("key_file", files.key_file)
        )
        raise TlsError(where, f"cannot read {path}: no such file") from None
    except ssl.SSLError as exc:
        # OpenSSL says which: "KEY_VALUES_MISMATCH", "PEM lib" (unparsable), ...
        raise TlsError("cert_file", f"cannot load the certificate and key: {exc}") from None
    except OSError as exc:
        raise TlsError("cert_file", f"cannot read the certificate or key: {exc}") from None
    context.verify_mode = _VERIFY[files.client_auth]
    if files.client_auth != "none":
        if files.client_ca_file is None:
            raise TlsError("client_auth.ca_file", "client certificates need a CA file")
        try:
            context.load_verify_locations(cafile=files.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError("client_auth.ca_file", f"cannot load the CA file: {exc}") from None
    return context


def certificate_expiry(files: TlsFiles) -> float | None:
    """When the served certificate expires (epoch seconds), for the expiry metric; None when
    the file cannot be read as PEM (``server_context`` has already said why)."""
    try:
        leaf = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    except (OSError, ValueError):
        return None
    return leaf.not_valid_after_utc.timestamp()


def files_version(files: TlsFiles) -> tuple[tuple[int, int, int, int], ...]:
    """What changes when any of the files is replaced: each one's device, inode, size and
    modification time, following symlinks (Kubernetes swaps a secret volume's ``..data``
    link, which changes the inode the path reaches, not the path)."""
    paths = [files.cert_file, files.key_file]
    if files.client_ca_file is not None:
        paths.append(files.client_ca_file)
    version = []
    for path in paths:
        try:
            status = os.stat(path)
        except OSError:
            version.append((0, 0, -1, 0))
            continue
        version.append((status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns))
    return tuple(version)


class ReloadingTls:
    """The listener's TLS: ``front`` goes to the listener; ``replace`` and ``refresh``
    change what new handshakes use."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._version = files_version(files)
        self._current = server_context(files)
        self.front = server_context(files)
        self.front.sni_callback = self._select
        self.expiry = certificate_expiry(files)

    @property
    def files(self) -> TlsFiles:
        return self._files

    def _select(self, connection: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        connection.context = self._current

    def replace(self, files: TlsFiles) -> None:
        """Serve ``files`` from the next handshake on (a config reload). Raises ``TlsError``
        and keeps the current context when they cannot be loaded, or when the client-auth
        mode differs (see the module docstring)."""
        if files.client_auth != self._files.client_auth:
            raise TlsError(
                "client_auth.mode",
                f"changing client_auth.mode ({self._files.client_auth} to "
                f"{files.client_auth}) needs a restart",
            )
        version = files_version(files)
        self._current = server_context(files)
        self._files, self._version = files, version
        self.expiry = certificate_expiry(files)

    def refresh(self) -> bool:
        """Reload when a file changed on disk since it was last loaded; True when the served
        context changed. Raises ``TlsError`` (the old context stays) for new files that do
        not load, such as a certificate written before its key."""
        version = files_version(self._files)
        if version == self._version:
            return False
        self._version = version  # a broken file is reported once, not every interval
        self._current = server_context(self._files)
        self.expiry = certificate_expiry(self._files)
        return True


def peer_certificate(ssl_object: ssl.SSLObject | None) -> bytes | None:
    """The client certificate's DER, when the client sent one and it verified (RFC 8705
    §2.1: the binding is to the certificate presented in the mutual-TLS handshake)."""
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)
