"""Config errors that point at a file, a key path and a line, so a bad config is fixed in one pass.

A config is rejected as a whole: every problem found is collected into one ``ConfigError``
rather than raised one at a time, because an operator editing a file wants the full list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem: where it is (``key_path``, ``line``) and what was expected (``message``)."""

    key_path: str
    line: int | None
    message: str


class ConfigError(Exception):
    """A config that must not start (or replace) a gateway; ``str()`` is ready for a terminal."""

    def __init__(self, file: str, issues: Sequence[ConfigIssue]) -> None:
        self.file = file
        self.issues = tuple(issues)
        super().__init__(file, self.issues)

    def __str__(self) -> str:
        return "\n".join(format_issue(self.file, issue) for issue in self.issues)


def format_issue(file: str, issue: ConfigIssue) -> str:
    # "FILE:LINE: KEY_PATH: MESSAGE", the shape editors and CI annotators already link.
    where = f"{file}:{issue.line}" if issue.line is not None else file
    if issue.key_path:
        where = f"{where}: {issue.key_path}"
    return f"{where}: {issue.message}"


def format_key_path(loc: Sequence[str | int]) -> str:
    """``("routes", 3, "match", "path")`` -> ``routes[3].match.path``.

    Keys that are not identifiers are quoted (``upstreams["my svc"]``) so that a key named
    ``"3"`` or ``"a.b"`` cannot be mistaken for an index or a nested key.
    """
    out: list[str] = []
    for part in loc:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif part.isidentifier():
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{json.dumps(part, ensure_ascii=False)}]")
    return "".join(out)


class SettingError(ValueError):
    """A value the schema accepted but compiling refused; ``loc`` is its key path below the
    section that was being compiled, so the loader can point at the exact line."""

    def __init__(self, loc: Sequence[str | int], message: str) -> None:
        super().__init__(message)
        self.loc = tuple(loc)
