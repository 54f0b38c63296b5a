"""The architecture rules (README "Layout"), checked from the source with ``ast``.

The next change that makes the HTTP core know about OAuth, or the auth core about aiohttp's
server, or a shared leaf about either, fails here rather than in a review.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"
MAX_LINES = 400
SHARED_LEAVES = ("problems", "metrics", "accesslog", "tracing", "boundedjson")
CORES = ("auth", "proxy", "routing", "cache", "listener", "decision", "admin", "compiler",
         "handler", "runtime", "components", "app", "server", "cli", "demo")  # fmt: skip


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted, e.g. gateway.auth.jwt
    target: str  # the imported module, dotted
    top_level: bool  # at module level and not under TYPE_CHECKING


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, source: str, is_package: bool) -> Iterator[Import]:
    def visit(nodes: list[ast.stmt], top_level: bool) -> Iterator[Import]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(source, alias.name, top_level)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = source.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    yield Import(source, base, top_level)
                    yield Import(source, f"{base}.{alias.name}", top_level)
            elif isinstance(node, ast.If) and _type_checking(node):
                yield from visit(node.body, False)
            else:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        yield from visit([child], top_level and isinstance(node, ast.If | ast.Try))

    yield from visit(tree.body, True)


def all_imports() -> list[Import]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        found.extend(_imports(tree, module_name(path), path.name == "__init__.py"))
    return found


IMPORTS = all_imports()
MODULES = {module_name(path) for path in PACKAGE.rglob("*.py")}


def _inside(module: str, package: str) -> bool:
    full = f"gateway.{package}"
    return module == full or module.startswith(full + ".")


def imports_between(importer: str, imported: str) -> list[str]:
    return sorted(
        {
            f"{i.source} imports {i.target}"
            for i in IMPORTS
            if _inside(i.source, importer) and _inside(i.target, imported)
        }
    )


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("proxy", "auth"),
        ("auth", "proxy"),
        ("proxy", "handler"),
        ("auth", "handler"),
        ("routing", "auth"),
        ("routing", "proxy"),
        ("cache", "auth"),
        ("config", "auth"),
        ("config", "proxy"),
        ("listener", "auth"),
        ("listener", "handler"),
    ],
    ids=lambda value: value,
)
def test_a_core_does_not_know_the_other(importer: str, imported: str) -> None:
    assert imports_between(importer, imported) == []


def test_auth_never_imports_the_web_framework_server() -> None:
    offending = sorted(
        f"{i.source} imports {i.target}"
        for i in IMPORTS
        if _inside(i.source, "auth")
        and (i.target == "aiohttp.web" or i.target.startswith("aiohttp.web_"))
    )
    assert offending == []


def test_the_auth_and_proxy_cores_take_compiled_values_not_config_models() -> None:
    assert imports_between("auth", "config.models") == []
    assert imports_between("proxy", "config.models") == []
    assert imports_between("cache", "config.models") == []


@pytest.mark.parametrize("leaf", SHARED_LEAVES)
def test_shared_leaves_import_no_core_package(leaf: str) -> None:
    offending = [
        f"{i.source} imports {i.target}"
        for i in IMPORTS
        if _inside(i.source, leaf)
        and i.target.startswith("gateway.")
        and any(_inside(i.target, core) for core in (*CORES, "config"))
    ]
    assert offending == []


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for item in IMPORTS:
        if item.top_level and item.target in MODULES and item.target != item.source:
            graph[item.source].add(item.target)
    # A package's __init__ importing its own modules is how packages re-export, not a cycle.
    for module in graph:
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    on_stack: list[str] = []
    state: dict[str, int] = {}

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        on_stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*on_stack[on_stack.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        on_stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)) is not None:
            pytest.fail(" -> ".join(cycle))


def test_no_module_is_over_the_line_limit() -> None:
    long = {
        module_name(path): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_rules_see_the_imports_they_check() -> None:
    """The walker is not vacuous: known imports are found, lazy and TYPE_CHECKING ones too."""
    assert imports_between("handler", "auth")  # the joint does import both cores
    assert imports_between("handler", "proxy")
    lazy = [
        i for i in IMPORTS if i.source == "gateway.runtime" and i.target == "gateway.cache.redis"
    ]
    assert lazy and not lazy[0].top_level
