"""``gateway run | check | explain | schema | demo | --version``.

Each command imports what it needs when it runs: ``gateway run --workers N`` keeps its
supervisor free of pydantic and the gateway's cores (``gateway.supervisor``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__

if TYPE_CHECKING:
    from gateway.config.loader import LoadedConfig
    from gateway.config.models import PathRules


def _config_path(value: str | None) -> Path:
    path = value or os.environ.get("GATEWAY_CONFIG")
    if not path:
        raise SystemExit("gateway: give -c FILE or set GATEWAY_CONFIG")
    return Path(path)


def describe_routes(loaded: LoadedConfig) -> list[str]:
    """The resolved route table, one line per route, in match order. This is the compile
    step and nothing more: no event loop, no sockets (``gateway check`` refuses exactly
    what ``gateway run`` would)."""
    from gateway.compiler import compile_config

    compiled = compile_config(loaded)
    config = loaded.config
    lines = []
    for spec, route in zip(config.routes, compiled.routes, strict=True):
        match = spec.match
        hosts = ",".join(match.host) if match.host else "*"
        methods = ",".join(match.methods) if match.methods else "ANY"
        auth = "required" if route.auth.required else "anonymous"
        if route.auth.session is not None:
            auth = f"session:{route.auth.session.login}"
        scopes = ""
        if route.auth.policy.scopes_named:
            scopes = " scopes=" + " ".join(route.auth.policy.scopes_named)
        upstream = config.upstreams[spec.upstream]
        lines.append(
            f"{route.index:>3} {route.name}: {methods} {hosts} {match.path.kind}:"
            f"{match.path.pattern} -> {spec.upstream} ({upstream.url})"
            f" auth={auth}{scopes}{_paths_note(upstream.paths, config.defaults.paths)}"
        )
    return lines


def _paths_note(*layers: PathRules) -> str:
    """How the route's upstream reads paths, when that is not the strict reading."""
    from gateway.routing.semantics import path_semantics

    semantics = path_semantics(*layers)
    loose = [
        ("case-insensitive", semantics.case_insensitive),
        ("trailing-slash-ignored", semantics.trailing_slash_ignored),
        ("trailing-dot-ignored", semantics.trailing_dot_ignored),
        ("trailing-space-ignored", semantics.trailing_space_ignored),
    ]
    words = [word for word, on in loose if on]
    return f" paths={','.join(words)}" if words else ""


def _cmd_check(args: argparse.Namespace) -> int:
    from gateway.config.errors import ConfigError, format_issue
    from gateway.config.loader import load_config
    from gateway.route_audit import shadow_warnings

    path = _config_path(args.config)
    try:
        loaded = load_config(path)
        lines = describe_routes(loaded)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    warnings = shadow_warnings(loaded)
    for warning in warnings:
        print(format_issue(loaded.source.file, warning), file=sys.stderr)
    if warnings and args.strict:
        print(f"{path}: refused: {len(warnings)} warning(s) under --strict", file=sys.stderr)
        return 2
    noted = f", {len(warnings)} warning(s)" if warnings else ""
    print(f"{path}: OK, {len(lines)} routes{noted}")
    for line in lines:
        print(line)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from gateway.explain import EXIT_CONFIG, UsageError, question, run_explain

    try:
        q = question(args.method, args.url, args.header, args.token, args.token_file)
    except (UsageError, OSError) as error:
        print(f"gateway explain: {error}", file=sys.stderr)
        return EXIT_CONFIG
    return run_explain(_config_path(args.config), q, offline=args.offline, out=sys.stdout)


def _cmd_schema(args: argparse.Namespace) -> int:
    from gateway.config.models import GatewayConfig

    schema = GatewayConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "OAuth gateway configuration"
    print(json.dumps(schema, indent=2))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.server import run

    return run(_config_path(args.config), args.workers, watch=args.watch)


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(port=args.port, admin_port=args.admin_port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve a config")
    run.add_argument("-c", "--config", help="config file (default: $GATEWAY_CONFIG)")
    run.add_argument(
        "--workers", type=int, default=int(os.environ.get("GATEWAY_WORKERS", "1")),
        help="processes sharing the port with SO_REUSEPORT (default 1)",
    )  # fmt: skip
    run.add_argument(
        "--watch", action="store_true", default=os.environ.get("GATEWAY_WATCH") == "1",
        help="also reload when the config file changes (default: SIGHUP only)",
    )  # fmt: skip
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check", help="validate a config and print the resolved routes")
    check.add_argument("-c", "--config", help="config file (default: $GATEWAY_CONFIG)")
    check.add_argument(
        "--strict", action="store_true",
        help="also refuse (exit 2) a config with warnings, e.g. a weaker route that receives "
        "spellings of a protected path (deploy/PATHS.md)",
    )  # fmt: skip
    check.set_defaults(func=_cmd_check)

    explain = sub.add_parser(
        "explain", help="show which route a request matches and why it is allowed or refused"
    )
    explain.add_argument("-c", "--config", help="config file (default: $GATEWAY_CONFIG)")
    explain.add_argument("method", help="the request method, e.g. GET")
    explain.add_argument("url", help="http://host/path?query, or /path?query with -H 'Host: …'")
    explain.add_argument(
        "-H", "--header", action="append", default=[], metavar="'Name: value'",
        help="a request header (repeatable)",
    )  # fmt: skip
    token = explain.add_mutually_exclusive_group()
    token.add_argument("--token", help="a bearer token (sent as Authorization: Bearer …)")
    token.add_argument("--token-file", help="read the bearer token from this file")
    explain.add_argument(
        "--offline", action="store_true",
        help="fetch nothing: no discovery, key sets or introspection (file/inline keys only)",
    )  # fmt: skip
    explain.set_defaults(func=_cmd_explain)

    schema = sub.add_parser("schema", help="print the config's JSON Schema")
    schema.set_defaults(func=_cmd_schema)

    demo = sub.add_parser("demo", help="run on the example config with a dev issuer and upstream")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--admin-port", type=int, default=9901)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("GATEWAY_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
