"""The proxy listener's certificate over the process's life: renewals picked up from disk
or a reload without dropping a connection, and what ``/metrics`` says about them.

``ReloadingTls`` (``gateway.listener.tls``) does the swapping; this module decides when:
every ``listen.tls.watch_interval`` it asks whether a file changed (cert-manager and ACME
clients replace them in place), and on a config reload it serves the new section's files.
A renewal that does not load (a certificate written before its key) is logged and counted,
and the certificate being served stays: a listener never ends up with no certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from prometheus_client.core import Metric

from gateway.config.errors import ConfigError
from gateway.config.loader import LoadedConfig
from gateway.listener.tls import ReloadingTls, TlsError, TlsFiles
from gateway.metrics import Samples, counter_family, gauge_family

log = logging.getLogger("gateway.tls")


class TlsWatch:
    """The listener's ``ReloadingTls``, its file watch, and its metrics."""

    def __init__(self, files: TlsFiles, watch_interval: float) -> None:
        self.tls = ReloadingTls(files)
        self._interval = watch_interval
        self._reloads: Samples = {("ok",): 0.0, ("failed",): 0.0}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin watching the files (not when the interval is 0: reloads only)."""
        if self._interval > 0 and self._task is None:
            self._task = asyncio.ensure_future(self._watch())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.check_files()

    def check_files(self) -> None:
        """Serve the files anew if one changed on disk since it was loaded."""
        try:
            changed = self.tls.refresh()
        except TlsError as exc:
            self._reloads["failed",] += 1
            log.error("listen.tls.%s: the renewed files do not load, still serving the "
                      "previous certificate: %s", exc.where, exc)  # fmt: skip
            return
        if changed:
            self._reloads["ok",] += 1
            log.info("listen.tls: serving the renewed certificate from %s",
                     self.tls.files.cert_file)  # fmt: skip

    def follow(self, loaded: LoadedConfig, files: TlsFiles | None, interval: float) -> None:
        """A config reload: serve ``files`` from the next handshake on. ``ConfigError``
        (with the file and line of ``listen.tls``) when that needs a restart (TLS turned
        off, or another client-auth mode) or the files do not load; nothing changes then."""
        if files is None:
            raise loaded.source.error(
                ("listen", "tls"), "turning TLS off on the proxy listener needs a restart"
            )
        try:
            self.tls.replace(files)
        except TlsError as exc:
            raise loaded.source.error(("listen", "tls", *exc.where.split(".")), str(exc)) from None
        self._reloads["ok",] += 1
        if interval != self._interval:
            self._interval = interval
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
            self.start()

    def metric_families(self) -> Iterable[Metric]:
        expiry = self.tls.expiry
        if expiry is not None:
            yield gauge_family(
                "gateway_tls_certificate_expiry_seconds",
                "Seconds until the proxy listener's certificate expires (negative: expired).",
                [],
                {(): expiry - time.time()},
            )
        yield counter_family(
            "gateway_tls_reloads",
            "The proxy listener's certificate loaded anew (ok) or refused (failed).",
            ["result"],
            self._reloads,
        )


def refuse_turning_tls_on(loaded: LoadedConfig) -> ConfigError:
    """A reload that adds ``listen.tls`` to a plain listener: the socket is already open."""
    return loaded.source.error(
        ("listen", "tls"), "turning TLS on for the proxy listener needs a restart"
    )
