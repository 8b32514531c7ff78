"""Dependencies point one way: routes → domain → core. Nothing but the command line and the
service wiring imports the HTTP package, and the app-side library imports no server code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each part of `exporter` and the parts it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "__init__": set(),
    "core": set(),
    "ingest": {"core"},
    "alerting": {"core", "ingest"},
    "usage": {"core", "ingest", "alerting"},
    "api": {"core", "ingest", "usage"},
    "dashboards": set(),
    "simulator": set(),
    "service": {"core", "ingest", "usage", "alerting", "api"},
    "demo": {"core", "ingest", "usage", "simulator", "service"},
    "cli": {"core", "ingest", "usage", "alerting", "dashboards", "demo", "service", "simulator"},
    "entry_point": {"cli"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (imports inside functions count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(node.lineno, name) for name in names]
    return found


def part_of(path: Path) -> str:
    relative = path.relative_to(ROOT / "exporter").with_suffix("")
    return relative.parts[0]


def violations(package: str, allowed_for: dict[str, set[str]] | None) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            head, _, rest = module.partition(".")
            if package == "nexus_otel":
                if head == "exporter":
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
                continue
            if head != "exporter" or not rest:
                continue
            source, target = part_of(path), rest.split(".")[0]
            assert allowed_for is not None
            if target != source and target not in allowed_for[source]:
                found.append(f"{path.relative_to(ROOT)}:{line} ({source}) imports {module}")
    return found


def test_every_part_of_the_exporter_is_placed_in_a_layer() -> None:
    parts = {part_of(p) for p in (ROOT / "exporter").rglob("*.py")}
    assert parts - set(ALLOWED) == set(), "add the new part to ALLOWED, in its layer"


@pytest.mark.parametrize("package", ["exporter", "nexus_otel"])
def test_imports_point_one_way(package: str) -> None:
    assert violations(package, ALLOWED) == []


def test_the_check_sees_an_import_against_the_direction(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from exporter.api.schemas import CallPublic\n")
    assert imported_modules(sample) == [(2, "exporter.api.schemas.CallPublic")]
    assert "api" not in ALLOWED["usage"] and "api" not in ALLOWED["ingest"]
