"""Settings a container sets through its environment, over what the config file says.

``GATEWAY_CONFIG`` names the file (read by the CLI); ``GATEWAY_LISTEN`` and
``GATEWAY_ADMIN_LISTEN`` (``host:port``), ``GATEWAY_LOG_LEVEL`` and ``GATEWAY_LOG_FORMAT``
override the file, so one image and one ConfigMap can serve several environments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from gateway.config.errors import ConfigError, ConfigIssue
from gateway.config.loader import LoadedConfig

_LISTENERS = {"GATEWAY_LISTEN": "listen", "GATEWAY_ADMIN_LISTEN": "admin"}
_LOGGING = {"GATEWAY_LOG_LEVEL": "level", "GATEWAY_LOG_FORMAT": "format"}


def _host_port(variable: str, value: str) -> dict[str, Any]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError("<environment>", [ConfigIssue(variable, None, "expected host:port")])
    return {"host": host.strip("[]") or "0.0.0.0", "port": int(port)}  # noqa: S104


def apply_environment(loaded: LoadedConfig, env: Mapping[str, str]) -> LoadedConfig:
    """``loaded`` with the environment's overrides, validated like the file itself."""
    config = loaded.config
    data = config.model_dump()
    changed = False
    for variable, section in _LISTENERS.items():
        if value := env.get(variable):
            data[section].update(_host_port(variable, value))
            changed = True
    for variable, key in _LOGGING.items():
        if value := env.get(variable):
            data["logging"][key] = value.lower()
            changed = True
    if not changed:
        return loaded
    # model_dump keeps SecretStr values as objects, so secrets survive the round trip.
    try:
        new = type(config).model_validate(data)
    except ValidationError as exc:
        issues = [ConfigIssue(".".join(map(str, e["loc"])), None, e["msg"]) for e in exc.errors()]
        raise ConfigError("<environment>", issues) from None
    return LoadedConfig(config=new, source=loaded.source)
