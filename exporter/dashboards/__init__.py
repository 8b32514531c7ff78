"""Grafana dashboards as code: built with the foundation SDK, written as committed JSON.

`nexus-otel dashboards` (or `make dashboards`) regenerates grafana/dashboards/*.json; the
provisioning in grafana/provisioning loads them into Grafana.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from exporter.dashboards import costs, health, overview, performance, roi
from exporter.dashboards.sql import register_sql_variant

# File name (without .json) -> builder. Each module holds one dashboard with a fixed uid.
DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "overview": overview.build,
    "costs": costs.build,
    "performance": performance.build,
    "roi": roi.build,
    "exporter-health": health.build,
}


def build_all() -> dict[str, Dashboard]:
    return {name: build().build() for name, build in DASHBOARDS.items()}


def render(board: Dashboard) -> str:
    """Stable JSON: sorted keys, two-space indent, a final newline (diffs stay readable)."""
    return json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def load(text: str) -> Dashboard:
    """Parses dashboard JSON into the SDK's models (panels, options and queries included)."""
    register_default_plugins()
    register_sql_variant()
    return Dashboard.from_json(json.loads(text))


def write_all(directory: Path) -> dict[Path, bool]:
    """Writes every dashboard; returns each path and whether its content changed."""
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[Path, bool] = {}
    for name, board in build_all().items():
        path = directory / f"{name}.json"
        text = render(board)
        changed = not path.exists() or path.read_text() != text
        if changed:
            path.write_text(text)
        written[path] = changed
    return written


def stale(directory: Path) -> list[Path]:
    """Dashboard files missing or different from what the code generates."""
    return [
        path
        for name, board in build_all().items()
        if not (path := directory / f"{name}.json").exists() or path.read_text() != render(board)
    ]
