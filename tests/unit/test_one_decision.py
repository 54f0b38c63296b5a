"""The proxy, the decision service and ``gateway explain`` share one decision implementation.

Checked from the source: every caller reaches normalisation, route matching and the
``Decider`` only through ``gateway.request_decision``, and that module is the only one
that calls them. A second copy of any step (the bypass class where a forward-auth service
matches a path the proxy would have normalised differently) fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"
SHARED = PACKAGE / "request_decision.py"
CALLERS = sorted(
    [PACKAGE / "handler.py", PACKAGE / "explain.py", *(PACKAGE / "decision").glob("*.py")]
)
# The steps of a decision, by the name they are called by.
STEP_FUNCTIONS = {"normalise_target", "origin_form", "match_path", "without_path_parameters"}
STEP_METHODS = {"decide", "match"}  # Decider.decide, RouteTable.match
STEP_CLASSES = {"RequestFacts"}


def _calls(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                found.add(func.id)
            elif isinstance(func, ast.Attribute):
                found.add("." + func.attr)
    return found


def _imported_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", CALLERS, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_caller_takes_a_decision_step_itself(path: Path) -> None:
    tree = ast.parse(path.read_text())
    calls = _calls(tree)
    assert calls & STEP_FUNCTIONS == set()
    assert calls & {"." + name for name in STEP_METHODS} == set()
    assert calls & STEP_CLASSES == set()
    imported = {name.rsplit(".", 1)[1] for name in _imported_names(tree)}
    assert imported & (STEP_FUNCTIONS | STEP_CLASSES) == set()


def test_the_shared_module_is_where_the_steps_are_called() -> None:
    calls = _calls(ast.parse(SHARED.read_text()))
    assert {"normalise_target", "origin_form", "match_path", "RequestFacts"} <= calls
    assert {".match", ".decide"} <= calls


@pytest.mark.parametrize(
    "module",
    ["handler.py", "explain.py", "decision/verdict.py"],
)
def test_each_caller_goes_through_the_shared_functions(module: str) -> None:
    tree = ast.parse((PACKAGE / module).read_text())
    imported = {name.rsplit(".", 1)[1] for name in _imported_names(tree)}
    calls = _calls(tree)
    # ``locate``, or its two halves (the proxy answers RFC 9728 metadata in between).
    located = {"locate"} <= calls or {"target_of", "route_of"} <= calls
    assert located and ({"locate"} <= imported or {"target_of", "route_of"} <= imported)
    assert {"request_facts", "decide"} <= imported & calls


def test_the_decision_service_judges_only_in_verdict() -> None:
    """Every adapter (nginx, Traefik/Caddy, Envoy HTTP, Envoy gRPC) calls ``judge``."""
    for module in ("http_service.py", "grpc_service.py"):
        tree = ast.parse((PACKAGE / "decision" / module).read_text())
        assert "judge" in _calls(tree), module
