"""Files shipped with the project: the installed wheel's copy, else the source tree's."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The repository root when running from a clone (exporter/core/files.py is two levels down).
SOURCE_TREE = Path(__file__).resolve().parents[2]


def bundled_dir(kind: str) -> Path:
    """`migrations`, `prometheus/rules` or `alertmanager/templates`.

    The wheel carries them inside the package (`exporter/_migrations`, `exporter/_prometheus_rules`,
    ..., as pyproject's force-include names them), and that copy comes first: the source tree's
    path, seen from an installed package, is site-packages, where another distribution may have
    put a `migrations/` of its own. An editable install or a clone has no such copy."""
    packaged = Path(str(resources.files("exporter") / ("_" + kind.replace("/", "_"))))
    return packaged if packaged.is_dir() else SOURCE_TREE / kind
