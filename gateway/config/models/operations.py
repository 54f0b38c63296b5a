"""Logging, tracing and shutdown."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.config.models.base import Strict
from gateway.config.types import Duration


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    access_log: bool = Field(True, description="One line per request on stdout.")


class Tracing(Strict):
    enabled: bool = Field(
        False, description="OpenTelemetry server spans (needs opentelemetry-api installed)."
    )


class Shutdown(Strict):
    """SIGTERM: readiness false at once, stop accepting after a delay, then drain."""

    readiness_delay: Duration = Field(5.0, description="Time for load balancers to notice.")
    drain_timeout: Duration = Field(30.0, description="Longest wait for in-flight requests.")
