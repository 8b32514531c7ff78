"""The Prometheus alert rules, rewritten for another single-call threshold or runbook location
(`nexus-otel prometheus-rules`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from prometheus_client.utils import floatToGoString

from exporter.alerting.errors import AlertingConfigError
from exporter.core.files import bundled_dir
from exporter.ingest.metrics import COST_BUCKETS

DEFAULT_RUNBOOK_BASE_URL = "https://github.com/nexus-otel/nexus-otel/blob/main"
DEFAULT_SINGLE_CALL_USD = 0.5


def render_alert_rules(
    single_call_usd: float = DEFAULT_SINGLE_CALL_USD,
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL,
) -> str:
    """alerts.yml with another single-call threshold and runbook base URL."""
    if single_call_usd not in COST_BUCKETS:
        boundaries = ", ".join(floatToGoString(b) for b in COST_BUCKETS)
        raise AlertingConfigError(
            f"--single-call-usd {single_call_usd:g} is not a bucket boundary of "
            f"nexus_llm_call_cost_usd; choose one of {boundaries}"
        )
    text = (bundled_dir("prometheus/rules") / "alerts.yml").read_text()
    default_le = f'le="{floatToGoString(DEFAULT_SINGLE_CALL_USD)}"'
    text = text.replace(default_le, f'le="{floatToGoString(single_call_usd)}"')
    text = text.replace(f"${DEFAULT_SINGLE_CALL_USD:.2f}", f"${single_call_usd:.2f}")
    base = runbook_base_url.rstrip("/")
    return text.replace(f"{DEFAULT_RUNBOOK_BASE_URL}/docs/RUNBOOK.md", f"{base}/docs/RUNBOOK.md")


def write_rules(directory: Path, single_call_usd: float, runbook_base_url: str) -> list[Path]:
    """Writes alerts.yml (rendered) and recording.yml (as shipped) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    alerts = directory / "alerts.yml"
    alerts.write_text(render_alert_rules(single_call_usd, runbook_base_url))
    recording = directory / "recording.yml"
    shutil.copyfile(bundled_dir("prometheus/rules") / "recording.yml", recording)
    return [alerts, recording]
