"""One structured line per request, and the process's log format.

Access lines bypass the ``logging`` machinery (several µs per record on the hot path) and go
to a buffered stream flushed at least twice a second. A line never carries a token, an
Authorization header or a query string (which may hold ``access_token``): the path is the
normalised path only, and the subject is a hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import re
import sys
import time
from dataclasses import dataclass
from typing import IO, Any, Literal

LogFormat = Literal["json", "text"]
_FLUSH_AFTER = 0.5


def new_request_id() -> str:
    """A request id (when the client or a trusted proxy sent none): 96 random bits. They
    correlate log lines and need not be unpredictable, so they come from the process's
    Mersenne Twister, seeded from the OS and reseeded after a fork, not a syscall per request.
    """
    return f"{random.getrandbits(96):024x}"


@dataclass(slots=True)
class RequestRecord:
    """What one request did, filled in as it goes through the handler."""

    request_id: str
    method: str
    path: str
    remote: str | None
    route: str = "-"
    status: int = 0
    decision: str = "-"  # allow | deny | anonymous | error
    reason: str = "-"
    client_id: str | None = None
    subject: str | None = None
    token_type: str | None = None  # bearer | dpop | mtls: how the token was presented
    upstream: str | None = None
    upstream_status: int | None = None
    upstream_seconds: float | None = None
    bytes_out: int | None = None
    mode: str = "proxy"  # proxy | decision (the forward-auth service)
    host_proxy: str | None = None  # decision mode: nginx | traefik | caddy | envoy-http | ...


def subject_hash(subject: str | None) -> str | None:
    """A stable, non-reversible handle on a subject for correlating log lines."""
    if subject is None:
        return None
    return hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class AccessLog:
    def __init__(self, fmt: LogFormat = "json", stream: IO[str] | None = None) -> None:
        self._format = fmt
        self._stream = stream or sys.stdout
        self._flush_scheduled = False
        self._broken = False

    def write(self, record: RequestRecord, seconds: float) -> None:
        fields: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
            "request_id": record.request_id,
            "route": record.route,
            "method": record.method,
            "path": record.path,
            "status": record.status,
            "decision": record.decision,
            "reason": record.reason,
            "client_id": record.client_id,
            "sub_hash": subject_hash(record.subject),
            "token_type": record.token_type,
            "upstream": record.upstream,
            "upstream_status": record.upstream_status,
            "upstream_ms": None if record.upstream_seconds is None
            else round(record.upstream_seconds * 1000, 3),
            "duration_ms": round(seconds * 1000, 3),
            "bytes_out": record.bytes_out,
            "remote": record.remote,
            "mode": record.mode,
            "host_proxy": record.host_proxy,
        }  # fmt: skip
        if self._format == "json":
            line = json.dumps(fields, separators=(",", ":"), ensure_ascii=True)
        else:
            line = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None)
        try:
            self._stream.write(line + "\n")
        except (OSError, ValueError) as error:
            # The request was served already; a broken log stream must not turn it into an
            # error, and must not be reported once per request.
            if not self._broken:
                self._broken = True
                logging.getLogger("gateway.access").error("access log unwritable: %s", error)
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(_FLUSH_AFTER, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stdout
            self._stream.flush()


def _text_value(value: object) -> str:
    """A text-format field: quoted and escaped (JSON string rules, ASCII only) unless plain,
    so a claim cannot forge a line (CWE-117) or break the stream's encoding."""
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=True)


_PLAIN = re.compile(r"[A-Za-z0-9._:/@+\-]{1,256}")


class JsonFormatter(logging.Formatter):
    """Operational log lines (errors, key-set events) as JSON objects."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


def configure_logging(level: str, fmt: LogFormat) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
