"""YAML 1.1 (safe subset) to plain data, remembering the line of every key and list item.

The data is built from ``yaml.compose()`` nodes rather than ``yaml.safe_load()`` because the
loader needs each key's line to point errors at it, and because building it ourselves lets us
refuse what a config should never contain:

- tags other than the plain scalar, mapping and sequence ones (no ``!!python/*``, no ``!!set``);
- duplicate keys, which PyYAML silently resolves to the last one;
- alias bombs: aliases and ``<<`` merges are allowed (they are useful for shared settings), but
  expanding them may construct at most ``MAX_NODES`` nodes, and a recursive alias is refused.

Lines are those of the text a value comes from: an aliased or merged part has the lines of the
anchored text (PyYAML's composer keeps no mark for the alias itself).

Keys are always strings, taken verbatim from the source (``on:`` is the key ``"on"``, not
``True``). String values get ``${VAR}`` / ``${VAR:-default}`` interpolation; ``$${`` is a literal
``${``. A variable's value replaces text only and is never re-parsed as YAML, so a secret holding
``': '`` or ``'#'`` stays one string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.config.errors import ConfigError, ConfigIssue, format_key_path

MAX_NODES = 100_000

Loc = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_TAG + t for t in ("null", "bool", "int", "float", "str"))
_TIMESTAMP = _TAG + "timestamp"  # a bare 2024-01-01 means the text here, not a datetime
_MERGE = _TAG + "merge"
_MAP = _TAG + "map"
_SEQ = _TAG + "seq"
_STR = _TAG + "str"

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


@dataclass(frozen=True)
class SourceDoc:
    """The loaded data and where each part of it came from."""

    file: str
    data: Any
    lines: Mapping[tuple[str | int, ...], int]

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """The line of ``loc``, or of its deepest known ancestor (a missing key -> its parent)."""
        path = tuple(loc)
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def error(self, loc: Sequence[str | int], message: str) -> ConfigError:
        issue = ConfigIssue(format_key_path(loc), self.line_of(loc), message)
        return ConfigError(self.file, [issue])


def load_yaml(path: str | Path, env: Mapping[str, str]) -> SourceDoc:
    file = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise _file_error(file, "the config file does not exist") from None
    except UnicodeDecodeError as exc:
        raise _file_error(file, f"the config is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise _file_error(file, f"cannot read the config: {exc.strerror or exc}") from None
    return load_yaml_text(text, file, env)


def load_yaml_text(text: str, file: str, env: Mapping[str, str]) -> SourceDoc:
    root = _compose(text, file)
    if root is None or (isinstance(root, ScalarNode) and root.tag == _TAG + "null"):
        raise _file_error(file, "the config is empty")
    if not isinstance(root, MappingNode):
        kind = "a list" if isinstance(root, SequenceNode) else "a single value"
        issue = ConfigIssue("", _line(root), f"the top level must be a mapping of keys, not {kind}")
        raise ConfigError(file, [issue])
    builder = _Builder(file, env)
    try:
        data = builder.build(root, (), builder.lines)
    except RecursionError:
        raise _file_error(file, "the config is nested too deeply") from None
    if builder.issues:
        raise ConfigError(file, sorted(dict.fromkeys(builder.issues), key=_issue_order))
    return SourceDoc(file, data, MappingProxyType(builder.lines))


def _compose(text: str, file: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(file, [_syntax_issue(exc)]) from None
    except yaml.reader.ReaderError as exc:  # a control character; its mark is an offset
        line = text.count("\n", 0, exc.position) + 1
        message = f"invalid YAML: character U+{exc.character:04X} is not allowed"
        raise ConfigError(file, [ConfigIssue("", line, message)]) from None
    except RecursionError:
        raise _file_error(file, "the config is nested too deeply") from None


def _syntax_issue(exc: yaml.MarkedYAMLError) -> ConfigIssue:
    mark = exc.problem_mark or exc.context_mark
    message = f"invalid YAML: {exc.problem or exc.context}"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context} on line {exc.context_mark.line + 1})"
    return ConfigIssue("", mark.line + 1 if mark is not None else None, message)


def _file_error(file: str, message: str) -> ConfigError:
    return ConfigError(file, [ConfigIssue("", None, message)])


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _issue_order(issue: ConfigIssue) -> tuple[bool, int, str]:
    return (issue.line is None, issue.line or 0, issue.key_path)


class _Builder:
    """Turns a node graph into plain data, collecting issues instead of stopping at the first."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.lines: dict[Loc, int] = {}
        self.issues: list[ConfigIssue] = []
        self._count = 0
        self._active: set[int] = set()  # ids of the nodes being built: a repeat is a cycle
        self._scalars = yaml.constructor.SafeConstructor()

    def build(self, node: Node, loc: Loc, lines: dict[Loc, int]) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            # Aliases let a few lines expand into billions of nodes; refuse instead of hanging.
            message = f"the config expands to more than {MAX_NODES} nodes (through aliases?)"
            raise ConfigError(self.file, [ConfigIssue("", _line(node), message)])
        if id(node) in self._active:
            self._issue(loc, _line(node), "an alias refers to a node that contains it")
            return None
        self._active.add(id(node))
        try:
            return self._build(node, loc, lines)
        finally:
            self._active.discard(id(node))

    def _build(self, node: Node, loc: Loc, lines: dict[Loc, int]) -> Any:
        if isinstance(node, MappingNode) and node.tag == _MAP:
            return self._mapping(node, loc, lines)
        if isinstance(node, SequenceNode) and node.tag == _SEQ:
            items = []
            for index, item in enumerate(node.value):
                lines[(*loc, index)] = _line(item)
                items.append(self.build(item, (*loc, index), lines))
            return items
        if isinstance(node, ScalarNode) and node.tag == _STR:
            return self._interpolate(node.value, loc, _line(node))
        if isinstance(node, ScalarNode) and node.tag in _SCALAR_TAGS:
            try:
                return self._scalars.construct_object(node)
            except (ValueError, OverflowError):  # e.g. an integer of thousands of digits
                self._issue(loc, _line(node), "the number is out of range")
                return None
        if isinstance(node, ScalarNode) and node.tag == _TIMESTAMP:
            return node.value
        self._issue(loc, _line(node), f"unsupported YAML tag {node.tag!r}")
        return None

    def _mapping(self, node: MappingNode, loc: Loc, lines: dict[Loc, int]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                self._issue(loc, _line(key_node), "a key must be a plain string, not a collection")
                continue
            key = key_node.value
            if key in result:
                first = lines[(*loc, key)]
                self._issue(
                    (*loc, key), _line(key_node), f"duplicate key {key!r} (first on line {first})"
                )
                continue
            lines[(*loc, key)] = _line(key_node)
            result[key] = self.build(value_node, (*loc, key), lines)
        for merge in merges:
            self._merge(result, merge, loc, lines)
        return result

    def _merge(self, result: dict[str, Any], node: Node, loc: Loc, lines: dict[Loc, int]) -> None:
        # YAML merge keys: explicit keys win, then earlier merged mappings win over later ones.
        sources = node.value if isinstance(node, SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, MappingNode):
                self._issue(loc, _line(source), "'<<' merges a mapping or a list of mappings")
                continue
            scratch: dict[Loc, int] = {}
            merged = self.build(source, loc, scratch)
            if not isinstance(merged, dict):  # refused (a cycle, a tag), already reported
                continue
            new = {key: value for key, value in merged.items() if key not in result}
            result.update(new)
            lines.update((path, n) for path, n in scratch.items() if path[len(loc)] in new)

    def _interpolate(self, text: str, loc: Loc, line: int) -> str:
        if "${" not in text:
            return text

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            body = match.group(1)
            variable = _VARIABLE.fullmatch(body) if body is not None else None
            if variable is None:
                shown = match.group(0) if body is not None else "${"
                self._issue(
                    loc,
                    line,
                    f"bad reference {shown!r} (expected ${{NAME}} or "
                    "${NAME:-default}, or $${ for a literal ${)",
                )
                return ""
            name, default = variable.groups()
            value = self.env.get(name)
            if default is not None and not value:
                return default
            if value is None:
                self._issue(
                    loc,
                    line,
                    f"environment variable {name} is not set "
                    f"(set it, or give a default: ${{{name}:-…}})",
                )
                return ""
            return value

        return _REFERENCE.sub(replace, text)

    def _issue(self, loc: Loc, line: int, message: str) -> None:
        self.issues.append(ConfigIssue(format_key_path(loc), line, message))
