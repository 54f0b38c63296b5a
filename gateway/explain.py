"""``gateway explain``: why a request would be allowed or refused, step by step.

It runs the very steps a request runs (``gateway.request_decision``: locate → facts →
decide) on a compiled and started config, with a ``Trace`` that the decision code fills in
as it goes, so the explanation is the decision and not a model of it. Key sets, discovery
and introspection are fetched live, as the gateway would; ``--offline`` refuses every
outbound connection (only key sets from files or inline are then available). Exit status:
0 allow, 1 deny, 2 a config (or usage) error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp

from gateway.auth.decide import Allow, Decision, Deny
from gateway.auth.trace import Trace
from gateway.compiler import CompiledConfig, compile_config
from gateway.config.errors import ConfigError
from gateway.config.loader import LoadedConfig, load_config
from gateway.problems import GatewayError, MethodNotAllowed, NotFound, render_problem
from gateway.request_decision import Located, decide, locate, request_facts
from gateway.runtime import start_runtime

EXIT_ALLOW, EXIT_DENY, EXIT_CONFIG = 0, 1, 2
_KEY_WAIT = 10.0
_NEAREST = 3


@dataclass(frozen=True, slots=True)
class Question:
    """The request to explain, as the proxy listener would receive it."""

    method: str
    target: str  # raw, as typed
    host: str | None
    authorization: tuple[str, ...]


class UsageError(ValueError):
    """The command line does not describe a request."""


def question(
    method: str, url: str, headers: Sequence[str], token: str | None, token_file: str | None
) -> Question:
    """Build the request from ``METHOD URL [-H 'Name: value'] [--token T | --token-file F]``;
    a URL with a scheme gives the Host, a bare path takes it from ``-H 'Host: …'``."""
    fields: list[tuple[str, str]] = []
    for header in headers:
        name, colon, value = header.partition(":")
        if not colon or not name.strip() or name != name.strip():
            raise UsageError(f"-H {header!r}: expected 'Name: value'")
        fields.append((name, value.strip()))
    host = next((v for k, v in fields if k.lower() == "host"), None)
    if url.lower().startswith(("http://", "https://")):
        parts = urlsplit(url)
        host = host or parts.netloc
        target = url[len(parts.scheme) + 3 + len(parts.netloc) :] or "/"
    else:
        target = url
    authorization = [v for k, v in fields if k.lower() == "authorization"]
    if token_file is not None:
        token = Path(token_file).read_text().strip()
    if token is not None:
        authorization.append(f"Bearer {token}")
    return Question(method, target, host, tuple(authorization))


class _OfflineConnector(aiohttp.BaseConnector):
    """Refuses every connection: ``--offline`` fetches nothing."""

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
        raise aiohttp.ClientConnectionError(f"offline: {req.url} was not fetched")


def run_explain(config: Path, q: Question, *, offline: bool, out: TextIO) -> int:
    try:
        loaded = load_config(config)
        compiled = compile_config(loaded)
    except ConfigError as error:
        print(error, file=out)
        return EXIT_CONFIG
    if offline:
        logging.getLogger("gateway.auth.jwks").setLevel(logging.ERROR)  # expected failures
    return asyncio.run(_explain(loaded, compiled, q, offline=offline, out=out))


async def _explain(
    loaded: LoadedConfig, compiled: CompiledConfig, q: Question, *, offline: bool, out: TextIO
) -> int:
    print(f"request:  {q.method} {q.target}", file=out)
    print(f"host:     {q.host or '(none)'}", file=out)
    try:
        located = locate(compiled, q.target, q.host, q.method)
    except GatewayError as error:
        _refused_before_auth(compiled, q, error, out)
        return EXIT_DENY
    _show_route(loaded, located, out)
    connector = _OfflineConnector() if offline else aiohttp.TCPConnector(limit=10)
    session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
    try:
        runtime = await start_runtime(compiled, session, wait_for_keys=0 if offline else _KEY_WAIT)
        try:
            trace = Trace()
            facts = request_facts(located, q.method, q.host, q.authorization)
            decision = await decide(runtime.decider, located, facts, trace)
        finally:
            await runtime.close()
    finally:
        await session.close()
    _show_steps(trace, offline, out)
    return _show_decision(decision, compiled.realm, out)


def _refused_before_auth(
    compiled: CompiledConfig, q: Question, error: GatewayError, out: TextIO
) -> None:
    print(f"decision: deny {error.status} {error.reason}: {error.detail}", file=out)
    if isinstance(error, NotFound | MethodNotAllowed):
        print("no route matched; the nearest candidates:", file=out)
        for index in _nearest(compiled, q):
            print(f"  {_route_line(compiled.loaded, index)}", file=out)
    if isinstance(error, MethodNotAllowed):
        print(f"allowed methods for this path: {', '.join(error.allowed)}", file=out)


def _nearest(compiled: CompiledConfig, q: Question) -> list[int]:
    """The routes the table tested for this path (their literal prefixes start it), else the
    routes whose pattern shares the most leading segments with it."""
    path = q.target.partition("?")[0]
    try:
        tested = list(compiled.table.candidates(path, q.host))
    except GatewayError:
        tested = []
    if tested:
        return tested[:_NEAREST]
    patterns = [route.match.path.pattern for route in compiled.config.routes]
    shared = [_shared_segments(pattern, path) for pattern in patterns]
    ranked = sorted(range(len(patterns)), key=lambda i: (-shared[i], i))
    return ranked[:_NEAREST]


def _shared_segments(pattern: str, path: str) -> int:
    count = 0
    for mine, theirs in zip(pattern.split("/"), path.split("/"), strict=False):
        if mine != theirs:
            break
        count += 1
    return count


def _route_line(loaded: LoadedConfig, index: int) -> str:
    from gateway.cli import describe_routes  # the same lines as `gateway check`

    return describe_routes(loaded)[index].strip()


def _show_route(loaded: LoadedConfig, located: Located, out: TextIO) -> None:
    print(f"path:     {located.target.path} (normalised)", file=out)
    if located.path != located.target.path:
        print(f"matched:  {located.path} (path parameters removed)", file=out)
    print(f"route:    {_route_line(loaded, located.route.index)}", file=out)
    print("          the first route in order whose host, path and methods match", file=out)


def _show_steps(trace: Trace, offline: bool, out: TextIO) -> None:
    print("auth steps:" + (" (offline: nothing fetched)" if offline else ""), file=out)
    for step in trace.steps:
        details = " ".join(f"{key}={value}" for key, value in step.details)
        print(f"  {step.name:<22} {step.outcome:<9} {details}".rstrip(), file=out)


def _show_decision(decision: Decision, realm: str, out: TextIO) -> int:
    if isinstance(decision, Deny):
        error = decision.error
        print(f"decision: deny {error.status} {error.reason}: {error.detail}", file=out)
        for name, value in render_problem(error, realm).headers:
            if name == "WWW-Authenticate":
                print(f"challenge: {value}", file=out)
        return EXIT_DENY
    assert isinstance(decision, Allow)
    who = decision.identity
    print(f"decision: allow ({decision.reason})", file=out)
    if who is not None:
        print(f"identity: sub={who.subject} client_id={who.client_id} issuer={who.issuer} "
              f"kind={who.token_kind}", file=out)  # fmt: skip
    print("identity headers:" + ("" if decision.headers else " (none)"), file=out)
    for name, value in decision.headers:
        print(f"  {name}: {value}", file=out)
    return EXIT_ALLOW
