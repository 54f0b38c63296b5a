"""Mutation testing of the security-critical modules with mutmut 3 (issue 19).

    .venv/bin/python tests/mutation/run.py                    # every module in MODULES
    .venv/bin/python tests/mutation/run.py gateway/routing/paths.py gateway/proxy/trust.py
    .venv/bin/python tests/mutation/run.py --list             # the modules and their tests

The named modules are mutated in one mutmut run, in a fresh copy of the repository in a
temporary directory (the work tree is never touched), with ``tests/unit`` plus the fast
integration files listed for them in ``MODULES``. mutmut first runs those tests once to see
which test calls which function, then runs, for every mutant, only the tests that call the
mutated function. The base settings are ``[tool.mutmut]`` in pyproject.toml; this
script adds the module (``only_mutate``) and its tests (``pytest_add_cli_args_test_selection``).

Survivors are classified before scoring (see README.md):

- *message-only*: the mutant differs from the original only in a string literal that is
  the wording of an error or a log line (the first positional argument of the call in a
  ``raise`` statement, of a call to one of ``message_calls`` in equivalent.toml, or of a
  logger method). Error wording is not part of the contract, so no test asserts it.
- *equivalent*: listed by name in equivalent.toml with the reason it cannot be observed.

Exit status: 0 when every module meets the target (>= 90% raw, >= 95% with message-only and
equivalent survivors set aside), 1 when one does not, 2 when mutmut could not run.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EQUIVALENT = HERE / "equivalent.toml"
RAW_TARGET = 90.0
ADJUSTED_TARGET = 95.0

# module -> the integration files (besides tests/unit) that exercise it. Only fast files:
# each is run once per module to map tests to functions, then per mutant where it calls it.
MODULES: dict[str, tuple[str, ...]] = {
    "gateway/routing/paths.py": ("tests/integration/test_attacks_paths.py",),
    "gateway/routing/patterns.py": ("tests/integration/test_routing_semantics.py",),
    "gateway/routing/regex.py": (),
    "gateway/routing/request_target.py": ("tests/integration/test_attacks_paths.py",),
    "gateway/routing/semantics.py": ("tests/integration/test_routing_semantics.py",),
    "gateway/routing/table.py": ("tests/integration/test_routing_semantics.py",),
    "gateway/routing/variants.py": ("tests/integration/test_routing_semantics.py",),
    "gateway/auth/bearer.py": ("tests/integration/test_token_sources.py",),
    "gateway/auth/claims.py": ("tests/integration/test_jwt_verifier.py",),
    "gateway/auth/jwt.py": ("tests/integration/test_jwt_verifier.py",),
    "gateway/auth/jwks.py": ("tests/integration/test_jwks_provider.py",),
    "gateway/auth/policy.py": (),
    "gateway/auth/headers.py": ("tests/integration/test_attacks_identity.py",),
    "gateway/auth/contexts.py": ("tests/integration/test_identity_cache.py",),
    "gateway/auth/dpop.py": ("tests/integration/test_sender_constrained.py",),
    "gateway/auth/htu.py": (),
    "gateway/auth/sessions/session.py": (),
    "gateway/proxy/headers.py": ("tests/integration/test_forwarding_headers.py",),
    "gateway/proxy/trust.py": ("tests/integration/test_forwarding_headers.py",),
    "gateway/decision/forwarded.py": ("tests/integration/test_decision_service.py",),
    "gateway/proxy/response_head.py": ("tests/integration/test_edge_responses.py",),
    "gateway/proxy/ws_frames.py": (),
}

# What the copy needs to import the package and run the tests; never the e2e Node modules.
_COPY = ("gateway", "tests", "pyproject.toml", "deploy", "config", "README.md")
_SKIP = shutil.ignore_patterns(
    "__pycache__", "node_modules", ".hypothesis", "bench", "faults", "fuzz", "e2e", "mutation"
)
_DETECTED = ("killed", "timeout", "caught by type check")
_LOGGER_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})


@dataclass
class Survivor:
    name: str
    status: str  # survived | no tests | suspicious | ...
    kind: str  # behavioural | message-only | equivalent
    diff: str


@dataclass
class ModuleResult:
    module: str
    statuses: dict[str, str] = field(default_factory=dict)
    survivors: list[Survivor] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, *statuses: str) -> int:
        return sum(1 for status in self.statuses.values() if status in statuses)

    @property
    def total(self) -> int:
        return len(self.statuses)

    @property
    def detected(self) -> int:
        return self.count(*_DETECTED)

    @property
    def set_aside(self) -> int:
        return sum(1 for s in self.survivors if s.kind != "behavioural")

    @property
    def raw_score(self) -> float:
        return 100.0 * self.detected / self.total if self.total else 100.0

    @property
    def adjusted_score(self) -> float:
        counted = self.total - self.set_aside
        return 100.0 * self.detected / counted if counted else 100.0

    @property
    def on_target(self) -> bool:
        return self.raw_score >= RAW_TARGET and self.adjusted_score >= ADJUSTED_TARGET


def load_equivalents() -> tuple[dict[str, str], frozenset[str]]:
    data = tomllib.loads(EQUIVALENT.read_text("utf-8"))
    listed = {entry["mutant"]: entry["why"] for entry in data.get("equivalent", [])}
    return listed, frozenset(data.get("message_calls", []))


def _pyproject(modules: Sequence[str], tests: Sequence[str]) -> str:
    """The repository's pyproject.toml with the run's module and tests in [tool.mutmut]."""
    text = (REPO / "pyproject.toml").read_text("utf-8")
    base = tomllib.loads(text)["tool"]["mutmut"]
    settings = {
        **base,
        "only_mutate": list(modules),
        "pytest_add_cli_args_test_selection": list(tests),
    }
    section = "[tool.mutmut]\n" + "".join(
        f"{key} = {json.dumps(value)}\n" for key, value in settings.items()
    )
    return re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", lambda _: section + "\n", text)


def _workdir(parent: Path, modules: Sequence[str]) -> Path:
    work = parent / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in _COPY:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=_SKIP)
        else:
            shutil.copy2(source, work / name)
    tests = list(dict.fromkeys(["tests/unit", *(t for m in modules for t in MODULES[m])]))
    (work / "pyproject.toml").write_text(_pyproject(modules, tests), "utf-8")
    return work


def _mutmut(work: Path, children: int, log: Path) -> int:
    mutmut = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    with log.open("w") as out:
        return subprocess.call(
            [str(mutmut), "run", "--max-children", str(children)],
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _statuses(work: Path, module: str) -> dict[str, str]:
    from mutmut.stats import status_by_exit_code

    path = work / "mutants" / (module + ".meta")
    if not path.exists():  # nothing in the module that mutmut mutates
        return {}
    meta = json.loads(path.read_text("utf-8"))
    return {name: status_by_exit_code[code] for name, code in meta["exit_code_by_key"].items()}


def _parsed(work: Path, module: str) -> Any:
    """mutmut's trampolined copy of ``module``, parsed once for all of its survivors."""
    import libcst as cst

    return cst.parse_module((work / "mutants" / module).read_text("utf-8"))


def _functions(source: Any, name: str) -> tuple[str, str]:
    """The original and the mutated function's source, both under the original name."""
    import libcst as cst
    from mutmut.mutation.diff_apply import read_mutant_function, read_original_function

    original = cst.Module([read_original_function(source, name)]).code
    mutant = cst.Module([read_mutant_function(source, name)]).code
    return original, mutant


def _differences(a: ast.AST, b: ast.AST, parents: tuple[ast.AST, ...]) -> Iterator[tuple]:
    """Pairs of differing nodes (with the original's ancestors), outermost first."""
    if type(a) is not type(b):
        yield (a, b, parents)
        return
    for name, value in ast.iter_fields(a):
        other = getattr(b, name, None)
        if isinstance(value, ast.AST) and isinstance(other, ast.AST):
            yield from _differences(value, other, (*parents, a))
        elif isinstance(value, list) and isinstance(other, list):
            if len(value) != len(other):
                yield (a, b, parents)
                return
            for x, y in zip(value, other, strict=True):
                if isinstance(x, ast.AST) and isinstance(y, ast.AST):
                    yield from _differences(x, y, (*parents, a))
                elif x != y:
                    yield (a, b, parents)
                    return
        elif value != other:
            yield (a, b, parents)
            return


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _is_message(parents: tuple[ast.AST, ...], node: ast.AST, message_calls: frozenset[str]) -> bool:
    """Whether ``node`` is (part of) the first positional argument of a raise, message or
    log call."""
    chain = (*parents, node)
    for index, ancestor in enumerate(chain[:-1]):
        if not isinstance(ancestor, ast.Call):
            continue
        child = chain[index + 1]
        # Only the first positional argument is the wording: a reason code passed second
        # (``check.fail("The proof is too old.", "dpop_iat")``) is a metrics label.
        if not ancestor.args or child is not ancestor.args[0]:
            continue
        name = _callee(ancestor)
        in_raise = any(isinstance(p, ast.Raise) for p in chain[:index])
        if in_raise or name in message_calls or name in _LOGGER_METHODS:
            return True
    return False


def _is_text(node: ast.AST, *, allow_none: bool) -> bool:
    if isinstance(node, ast.JoinedStr):
        return True
    if not isinstance(node, ast.Constant):
        return False
    return isinstance(node.value, str) or (allow_none and node.value is None)


def classify(original: str, mutant: str, message_calls: frozenset[str]) -> str:
    """``message-only`` when every difference is string-literal wording of a message."""
    differences = list(_differences(ast.parse(original), ast.parse(mutant), ()))
    if not differences:
        return "equivalent"  # mutmut made the same code twice
    for a, b, parents in differences:
        # A wording changed, or dropped (None): RFC 9457 "detail" is advisory text.
        literal = _is_text(a, allow_none=False) and _is_text(b, allow_none=True)
        if not (literal and _is_message(parents, a, message_calls)):
            return "behavioural"
    return "message-only"


def _diff(original: str, mutant: str) -> str:
    import difflib

    lines = difflib.unified_diff(original.splitlines(), mutant.splitlines(), lineterm="", n=1)
    return "\n".join(line for line in lines if not line.startswith(("---", "+++", "@@")))


def run_modules(modules: Sequence[str], parent: Path, children: int) -> list[ModuleResult]:
    """One mutmut run over ``modules``: tests are mapped to functions once, for all of them."""
    work = _workdir(parent, modules)
    log = parent / "mutmut.log"
    started = time.monotonic()
    code = _mutmut(work, children, log)
    seconds = time.monotonic() - started
    if code != 0:
        sys.stderr.write(log.read_text("utf-8", "replace")[-4000:])
        raise SystemExit(f"mutmut failed (exit {code}); log: {log}")
    return read_results(work, modules, seconds)


def read_results(work: Path, modules: Sequence[str], seconds: float) -> list[ModuleResult]:
    """The statuses mutmut recorded in ``work`` and the survivors, classified."""
    listed, message_calls = load_equivalents()
    results = []
    cwd = os.getcwd()
    os.chdir(work)  # mutmut's readers work relative to the project root
    try:
        for module in modules:
            result = ModuleResult(module, _statuses(work, module), seconds=seconds)
            survivors = sorted(
                (item for item in result.statuses.items() if item[1] not in _DETECTED),
                key=lambda item: _order(item[0]),
            )
            source = _parsed(work, module) if survivors else None
            for name, status in survivors:
                original, mutant = _functions(source, name)
                kind = "equivalent" if name in listed else classify(original, mutant, message_calls)
                result.survivors.append(Survivor(name, status, kind, _diff(original, mutant)))
            results.append(result)
    finally:
        os.chdir(cwd)
    return results


def _order(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else 0


def table(results: Sequence[ModuleResult]) -> str:
    rows = [
        "| module | mutants | killed | timed out | survived | message-only | equivalent "
        "| score raw | score set aside |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        kinds = [s.kind for s in r.survivors]
        mark = "" if r.on_target else " **below target**"
        rows.append(
            f"| `{r.module}` | {r.total} | {r.count('killed', 'caught by type check')} "
            f"| {r.count('timeout')} | {len(r.survivors)} | {kinds.count('message-only')} "
            f"| {kinds.count('equivalent')} | {r.raw_score:.1f}% | {r.adjusted_score:.1f}%{mark} |"
        )
    total = sum(r.total for r in results)
    detected = sum(r.detected for r in results)
    aside = sum(r.set_aside for r in results)
    if len(results) > 1 and total:
        rows.append(
            f"| all | {total} | | | {sum(len(r.survivors) for r in results)} | | "
            f"| {100 * detected / total:.1f}% | {100 * detected / max(total - aside, 1):.1f}% |"
        )
    return "\n".join(rows)


def survivors_report(results: Sequence[ModuleResult], *, all_kinds: bool) -> str:
    out: list[str] = []
    for r in results:
        for s in r.survivors:
            if s.kind != "behavioural" and not all_kinds:
                continue
            out.append(f"{s.name} ({s.status}, {s.kind})\n{s.diff}\n")
    return "\n".join(out)


def stale_equivalents(results: Sequence[ModuleResult]) -> list[str]:
    listed, _ = load_equivalents()
    run = {r.module.removesuffix(".py").replace("/", ".") for r in results}
    survived = {s.name for r in results for s in r.survivors}
    return sorted(
        name
        for name in listed
        if any(name.startswith(m + ".") for m in run) and name not in survived
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module paths (default: all of MODULES)")
    parser.add_argument("--children", type=int, default=1, help="mutmut worker processes")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    parser.add_argument(
        "--from", dest="source", type=Path, help="report on a --keep directory, do not run"
    )
    parser.add_argument("--all-survivors", action="store_true", help="also list set-aside ones")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--list", action="store_true", help="list modules and their tests")
    args = parser.parse_args(argv)
    if args.list:
        for module, tests in MODULES.items():
            print(module, "tests/unit", *tests)
        return 0
    modules = args.modules or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"not in MODULES: {', '.join(unknown)}")
    if args.source:
        results = read_results(args.source / "work", modules, 0.0)
    else:
        parent = args.keep or Path(tempfile.mkdtemp(prefix="mutation-"))
        sys.stderr.write(f"mutating {len(modules)} modules in {parent} ...\n")
        try:
            results = run_modules(modules, parent, args.children)
        finally:
            if not args.keep:
                shutil.rmtree(parent, ignore_errors=True)
    if not args.source:
        total = sum(r.total for r in results)
        sys.stderr.write(f"  {total} mutants in {results[0].seconds:.0f} s\n")
    print(table(results))
    print()
    report = survivors_report(results, all_kinds=args.all_survivors)
    print("Surviving mutants" + ("" if args.all_survivors else " (behavioural only)") + ":\n")
    print(report or "none")
    stale = stale_equivalents(results)
    if stale:
        print("\nListed as equivalent but not surviving (remove from equivalent.toml):")
        print("\n".join(stale))
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "module": r.module,
                        "statuses": r.statuses,
                        "survivors": [s.__dict__ for s in r.survivors],
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    return 0 if all(r.on_target for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
