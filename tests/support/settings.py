"""Compiled settings built the way the gateway builds them: a config model, validated, then
compiled. Tests write issuers as the config file does and get what the auth core takes."""

from __future__ import annotations

from typing import Any

from gateway.auth.settings import IssuerSettings
from gateway.compiler.auth import issuer_settings
from gateway.config import models


def Issuer(**fields: Any) -> IssuerSettings:
    """The compiled settings of one ``issuers[]`` entry with these fields."""
    return issuer_settings(models.Issuer.model_validate(fields))
