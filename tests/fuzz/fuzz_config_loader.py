"""Fuzz target: config loading (YAML 1.1 safe subset, ``${VAR}`` interpolation, the pydantic
schema, cross-references, then the route compilation ``gateway check`` runs).

Whatever text an operator hands to ``gateway check`` or a SIGHUP reload, the only failure
allowed is ``ConfigError``, which names the file, line and key path; any other exception is a
traceback instead of an answer (and, on reload, an error the reload path does not catch).

Run with ``python tests/fuzz/fuzz_config_loader.py CORPUS_DIR -max_total_time=600``; see
tests/fuzz/README.md. ``check_config`` is importable without atheris, for regression tests.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

if __name__ == "__main__":
    import atheris

    _instrumentation: Any = atheris.instrument_imports(include=["gateway"])
else:
    _instrumentation = contextlib.nullcontext()

with _instrumentation:
    from gateway.cli import describe_routes
    from gateway.config.errors import ConfigError
    from gateway.config.loader import load_config_text

ENV = {"GW_PORT": "8080", "SECRET": "s" * 40, "EMPTY": "", "URL": "http://127.0.0.1:9000"}


def check_config(data: bytes) -> None:
    """Raise (so the fuzzer reports a crash) unless loading ends in a config or ConfigError."""
    text = data.decode("utf-8", errors="replace")
    try:
        loaded = load_config_text(text, file="fuzz.yaml", env=ENV)
        describe_routes(loaded)
    except ConfigError as error:
        if not str(error).startswith("fuzz.yaml"):
            raise AssertionError(f"a ConfigError that does not name the file: {error}") from None


def main() -> None:
    atheris.Setup(sys.argv, check_config)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
