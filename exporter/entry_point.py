"""The `nexus-otel` console script: the command line, or one line saying which extra to install
when the base install (the app-side instrumentation alone) runs it."""

from __future__ import annotations

import sys
from collections.abc import Sequence

# Modules of the `server` extra's dependencies (pyproject.toml) that the command line imports;
# a missing one means the extra is not installed, not a fault in the code.
SERVER_MODULES = frozenset(
    {
        "fastapi",
        "google.protobuf",
        "h11",
        "opentelemetry.proto",
        "pgserver",
        "platformdirs",
        "prometheus_client",
        "psycopg",
        "psycopg_pool",
        "pydantic",
        "pydantic_core",
        "pydantic_settings",
        "rich",
        "starlette",
        "uvicorn",
        "websockets",
        "yaml",
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from exporter.cli import main as run

        return run(argv)
    except ModuleNotFoundError as exc:
        name = exc.name or ""
        missing = next((m for m in SERVER_MODULES if name == m or name.startswith(m + ".")), None)
        if missing is None:
            raise
        print(
            f"nexus-otel: the module {missing!r} is missing: the command line needs the server"
            " extra: install nexus-otel with [server] (in a clone: pip install -e '.[server]';"
            " README: Install)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
