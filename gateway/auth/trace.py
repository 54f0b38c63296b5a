"""What each step of one decision did, for ``gateway explain`` (RFC 6750 §3, RFC 7662 §2).

``Decider.decide`` and ``Authenticator.authenticate`` take an optional ``Trace``. On the
request path it is None and every hook is one ``is not None`` test; ``gateway explain``
passes one and prints the steps. The steps are recorded by the code that takes them, so
the explanation cannot drift from the decision: there is no second implementation to
keep in step. Values recorded never include a token (only its kind, issuer and key id).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Step:
    """One step: what it was, how it came out, and the facts it looked at."""

    name: str  # credential | token | cache | keys | introspection | policy | headers | ...
    outcome: str  # ok | hit | miss | fail | skipped | ...
    details: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Trace:
    """Collects ``Step``s in the order they happened."""

    steps: list[Step] = field(default_factory=list)

    def add(self, name: str, outcome: str, **details: object) -> None:
        shown = tuple((key, _text(value)) for key, value in details.items() if value is not None)
        self.steps.append(Step(name, outcome, shown))


def _text(value: object) -> str:
    if isinstance(value, frozenset | set | tuple | list):
        return " ".join(sorted(str(item) for item in value)) or "(none)"
    return str(value)
