"""Files shipped with the project: read from the source tree, else from the installed wheel."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The repository root when running from a clone (exporter/core/files.py is two levels down).
SOURCE_TREE = Path(__file__).resolve().parents[2]


def bundled_dir(kind: str) -> Path:
    """`migrations`, `prometheus/rules` or `alertmanager/templates`: the directory in the source
    tree, else its copy in the wheel (`exporter/_migrations`, `exporter/_prometheus_rules`, ...,
    as pyproject's force-include names them)."""
    source = SOURCE_TREE / kind
    if source.is_dir():
        return source
    return Path(str(resources.files("exporter") / ("_" + kind.replace("/", "_"))))
