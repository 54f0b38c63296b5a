"""Compile ``listen.tls``: the files the proxy listener serves, loaded once here so that
``gateway check`` and a reload refuse a certificate, key or CA file that would not load."""

from __future__ import annotations

from gateway.config.loader import LoadedConfig
from gateway.listener.tls import TlsError, TlsFiles, server_context


def listener_tls(loaded: LoadedConfig) -> TlsFiles | None:
    section = loaded.config.listen.tls
    if section is None:
        return None
    files = TlsFiles(
        cert_file=section.cert_file,
        key_file=section.key_file,
        min_version=section.min_version,
        client_auth=section.client_auth.mode,
        client_ca_file=section.client_auth.ca_file,
    )
    try:
        server_context(files)
    except TlsError as exc:
        where = ("listen", "tls", *exc.where.split("."))
        raise loaded.source.error(where, str(exc)) from None
    return files
