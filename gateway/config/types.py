"""Scalar types of the config language: durations, HTTP methods, header names."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, WithJsonSchema

from gateway.methods import NEVER_RELAYED

TokenMode = Literal["jwt", "introspection", "auto"]
"""How an issuer's (or a route's) tokens are validated: locally, by introspection, or both
(a JWT locally, anything else introspected). The config and the auth core share it."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_MAX_DURATION = 30 * 86400.0
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``250ms``, ``30s``, ``5m``, ``1h`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 30s or 5m")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        else:
            raise ValueError("expected a duration such as 250ms, 30s or 5m")
    except OverflowError:
        raise ValueError("the duration is out of range") from None
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if not math.isfinite(seconds) or seconds > _MAX_DURATION:
        raise ValueError("the duration is out of range (at most 30 days)")
    return seconds


def _format_duration(seconds: float) -> str:
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(_format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h)?$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "A duration: 250ms, 30s, 5m, 1h, or a number of seconds.",
        }
    ),
]

_TOKEN = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"  # RFC 9110 §5.6.2 token  # noqa: S105

HeaderName = Annotated[str, Field(pattern=_TOKEN, max_length=256)]


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _relayed(value: str) -> str:
    if value in NEVER_RELAYED:
        raise ValueError(f"{value} is never relayed (the gateway answers it 405): leave it out")
    return value


HttpMethod = Annotated[
    str, BeforeValidator(_upper), Field(pattern=_TOKEN, max_length=32), AfterValidator(_relayed)
]
