"""Config file -> validated ``GatewayConfig``, or a ``ConfigError`` listing every problem at once.

Three passes, each reporting all it finds: YAML structure and ``${VAR}`` interpolation
(``gateway.config.yaml``), the pydantic schema, then the references between sections that a
schema cannot express (a route's upstream and issuers must exist, names must be unique, patterns
must compile). A config that fails any pass never starts a gateway, nor replaces a running one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, cast, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gateway.config.errors import ConfigError, ConfigIssue, format_key_path
from gateway.config.models import GatewayConfig, Route
from gateway.config.models.sessions import RouteSession, login_reference_problems
from gateway.config.yaml import Loc, SourceDoc, load_yaml, load_yaml_text
from gateway.routing.patterns import PathKind, check_prefix_path, compile_path_pattern
from gateway.routing.semantics import path_semantics

_BRANCH_MESSAGE = "Input should be "


@dataclass(frozen=True)
class LoadedConfig:
    config: GatewayConfig
    source: SourceDoc


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> LoadedConfig:
    return _validated(load_yaml(path, os.environ if env is None else env))


def load_config_text(
    text: str, file: str = "<string>", env: Mapping[str, str] | None = None
) -> LoadedConfig:
    return _validated(load_yaml_text(text, file, os.environ if env is None else env))


def _validated(source: SourceDoc) -> LoadedConfig:
    try:
        config = GatewayConfig.model_validate(source.data)
    except ValidationError as exc:
        raise ConfigError(source.file, _sorted(_schema_issues(source, exc.errors()))) from None
    issues = _reference_issues(config, source)
    if issues:
        raise ConfigError(source.file, _sorted(issues))
    return LoadedConfig(config, source)


def _sorted(issues: Sequence[ConfigIssue]) -> list[ConfigIssue]:
    return sorted(issues, key=lambda i: (i.line is None, i.line or 0))


def _issue(source: SourceDoc, loc: Loc, message: str) -> ConfigIssue:
    return ConfigIssue(format_key_path(loc), source.line_of(loc), message)


# --- schema errors -------------------------------------------------------------------------


def _schema_issues(source: SourceDoc, errors: Sequence[ErrorDetails]) -> list[ConfigIssue]:
    # A union (e.g. a claim's `equals: str | int | float | bool`) fails once per branch at the
    # same place; those are gathered here and said once.
    messages: dict[Loc, list[str]] = {}
    for error in errors:
        loc, is_key = _data_loc(source.data, error["loc"], error["type"] == "missing")
        message = _message(error, loc)
        if is_key:
            message = f"invalid key: {message}"
        if message not in messages.setdefault(loc, []):
            messages[loc].append(message)
    return [
        _issue(source, loc, message)
        for loc, found in messages.items()
        for message in _merge_branches(found)
    ]


def _data_loc(data: Any, loc: Sequence[str | int], missing: bool) -> tuple[Loc, bool]:
    """Pydantic's loc without its own parts (union tags, ``[key]``), and whether it was a key.

    A part is kept when it names something in the data; the one exception is the last part of a
    "missing" error, which names the key that is absent.
    """
    kept: list[str | int] = []
    is_key = False
    for index, part in enumerate(loc):
        found, child = _step(data, part)
        if found:
            kept.append(part)
            data = child
        elif missing and index == len(loc) - 1:
            kept.append(part)
        elif part == "[key]":
            is_key = True
    return tuple(kept), is_key


def _step(data: Any, part: str | int) -> tuple[bool, Any]:
    if isinstance(part, int) and isinstance(data, list) and 0 <= part < len(data):
        return True, data[part]
    if isinstance(part, str) and isinstance(data, dict) and part in data:
        return True, data[part]
    return False, None


def _message(error: ErrorDetails, loc: Loc) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        expected = f" (expected one of: {', '.join(sorted(model.model_fields))})" if model else ""
        return f"unknown key {loc[-1]!r}{expected}"
    if kind == "missing":
        return f"missing required key {loc[-1]!r}"
    return error["msg"].removeprefix("Value error, ")


def _merge_branches(messages: list[str]) -> list[str]:
    if len(messages) > 1 and all(m.startswith(_BRANCH_MESSAGE) for m in messages):
        wanted = [m.removeprefix(_BRANCH_MESSAGE) for m in messages]
        return [f"{_BRANCH_MESSAGE}{', '.join(wanted[:-1])} or {wanted[-1]}"]
    return messages


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model class whose fields live at ``loc``, found by walking the type annotations."""
    candidates: list[Any] = [GatewayConfig]
    for part in loc:
        candidates = [child for kind in candidates for child in _children(kind, part)]
    return next((kind for kind in candidates if _is_model(kind)), None)


def _children(kind: Any, part: str | int) -> list[Any]:
    if _is_model(kind):
        field = kind.model_fields.get(part) if isinstance(part, str) else None
        return _alternatives(field.annotation) if field is not None else []
    origin, args = get_origin(kind), get_args(kind)
    if origin is list and isinstance(part, int):
        return _alternatives(args[0])
    if origin is dict and isinstance(part, str):
        return _alternatives(args[1])
    return []


def _alternatives(kind: Any) -> list[Any]:
    origin = get_origin(kind)
    if origin is Annotated:
        return _alternatives(get_args(kind)[0])
    if origin is Union or origin is UnionType:
        return [alt for arg in get_args(kind) for alt in _alternatives(arg)]
    return [kind]


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


# --- references between sections ----------------------------------------------------------


def _reference_issues(config: GatewayConfig, source: SourceDoc) -> list[ConfigIssue]:
    issuer_keys = sorted({issuer.key for issuer in config.issuers})
    issues = [
        *_duplicates(source, "issuer key", _issuer_keys(config)),
        *_duplicates(source, "route name", _route_names(config)),
        *_unknown_issuers(source, ("defaults", "issuers"), config.defaults.issuers, issuer_keys),
    ]
    upstreams = sorted(config.upstreams)
    for index, route in enumerate(config.routes):
        loc: Loc = ("routes", index)
        if route.upstream not in config.upstreams:
            message = f"unknown upstream {route.upstream!r}{_expected(upstreams)}"
            issues.append(_issue(source, (*loc, "upstream"), message))
        issues.extend(_unknown_issuers(source, (*loc, "issuers"), route.issuers, issuer_keys))
        issues.extend(_auth_issues(source, config, loc, route))
        issues.extend(_path_issues(source, config, loc, route))
    issues.extend(_login_issues(source, config))
    return issues


def _login_issues(source: SourceDoc, config: GatewayConfig) -> Iterator[ConfigIssue]:
    routes: list[tuple[Loc, str | None, RouteSession | None]] = []
    for index, route in enumerate(config.routes):
        auth = route.auth or config.defaults.auth
        inherited = config.defaults.session if auth == "session" else None
        routes.append((("routes", index), auth, route.session or inherited))
    issuers = {issuer.key: issuer.keys.discovery for issuer in config.issuers}
    problems = login_reference_problems(
        config.logins,
        issuers,
        routes,
        shared_redis=config.cache.redis is not None,
        max_header_size=config.limits.max_header_size,
    )
    for loc, message in problems:
        yield _issue(source, loc, message)


def _expected(names: Sequence[str]) -> str:
    return f" (expected one of: {', '.join(names)})" if names else " (none are configured)"


def _issuer_keys(config: GatewayConfig) -> Iterator[tuple[Loc, str]]:
    for index, issuer in enumerate(config.issuers):
        yield ("issuers", index, "name" if issuer.name is not None else "issuer"), issuer.key


def _route_names(config: GatewayConfig) -> Iterator[tuple[Loc, str]]:
    for index, route in enumerate(config.routes):
        if route.name is not None:
            yield ("routes", index, "name"), route.name


def _duplicates(
    source: SourceDoc, what: str, named: Iterator[tuple[Loc, str]]
) -> Iterator[ConfigIssue]:
    first: dict[str, Loc] = {}
    for loc, name in named:
        if name not in first:
            first[name] = loc
            continue
        line = source.line_of(first[name])
        where = format_key_path(first[name]) + (f" on line {line}" if line is not None else "")
        yield _issue(source, loc, f"{what} {name!r} is already used by {where}")


def _unknown_issuers(
    source: SourceDoc, loc: Loc, names: list[str] | None, known: list[str]
) -> Iterator[ConfigIssue]:
    for index, name in enumerate(names or ()):
        if name not in known:
            yield _issue(source, (*loc, index), f"unknown issuer {name!r}{_expected(known)}")


def _auth_issues(
    source: SourceDoc, config: GatewayConfig, loc: Loc, route: Route
) -> Iterator[ConfigIssue]:
    if (route.auth or config.defaults.auth) != "required":
        return
    issuers = route.issuers if route.issuers is not None else config.defaults.issuers
    if issuers is None:
        issuers = [issuer.key for issuer in config.issuers]
    if issuers:
        return
    if route.issuers is not None:
        where: Loc = (*loc, "issuers")
    else:
        where = (*loc, "auth") if route.auth is not None else loc
    message = (
        "auth is required but no issuer can verify tokens here"
        " (configure an issuer, or set auth: anonymous)"
    )
    yield _issue(source, where, message)


def _path_issues(
    source: SourceDoc, config: GatewayConfig, loc: Loc, route: Route
) -> Iterator[ConfigIssue]:
    """Patterns and rewrite prefixes that do not compile, or can never match a normalised
    path, as the route's upstream reads paths."""
    path = route.match.path
    where: Loc = (*loc, "match", "path")
    # A string shorthand (`path: /a/**`) has no `glob`/`exact` key to point at.
    if _step(_at(source.data, where), path.kind)[0]:
        where = (*where, path.kind)
    bad = next((s for s in path.pattern.split("/") if "**" in s and s != "**"), None)
    if path.kind == "glob" and bad is not None:
        message = f"'**' must be a whole path segment, not {bad!r} (use * within a segment)"
        yield _issue(source, where, message)
    else:
        upstream = config.upstreams.get(route.upstream)
        layers = (upstream.paths, config.defaults.paths) if upstream else (config.defaults.paths,)
        try:
            kind = cast(PathKind, path.kind)  # PathMatch allows exactly these four
            compile_path_pattern(kind, path.pattern, path_semantics(*layers))
        except ValueError as exc:
            yield _issue(source, where, str(exc))
    rewrite = route.rewrite
    for key in ("strip_prefix", "add_prefix"):
        prefix = getattr(rewrite, key) if rewrite is not None else None
        if prefix is not None:
            try:
                check_prefix_path(key, prefix)
            except ValueError as exc:
                yield _issue(source, (*loc, "rewrite", key), str(exc))


def _at(data: Any, loc: Loc) -> Any:
    for part in loc:
        data = _step(data, part)[1]
    return data
