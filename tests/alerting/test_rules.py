"""The shipped Prometheus config and rules: valid, unit-tested by promtool, every rule covered."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promstack import ROOT, binary

PROMETHEUS_DIR = ROOT / "prometheus"
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"
SECRET = "/run/secrets/metrics_token"  # compose mounts NEXUS_METRICS_TOKEN there


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    result = subprocess.run(
        [binary("promtool", "prometheus"), *args], cwd=cwd, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def rules(kind: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [rule for rule in group["rules"] if kind in rule]
    return found


def promtool_tests() -> list[dict[str, Any]]:
    groups = []
    for path in sorted((PROMETHEUS_DIR / "tests").glob("*.yml")):
        groups += yaml.safe_load(path.read_text())["tests"]
    return groups


def test_config_and_rules_are_valid(tmp_path: Path) -> None:
    promtool("check", "config", "--syntax-only", "prometheus.yml")
    # In full, where compose puts the /metrics token (promtool wants the file to exist).
    shutil.copytree(PROMETHEUS_DIR, tmp_path / "prometheus")
    (tmp_path / "metrics_token").write_text("token")
    config = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    assert config.count(SECRET) == 1
    copy = tmp_path / "prometheus" / "prometheus.yml"
    copy.write_text(config.replace(SECRET, str(tmp_path / "metrics_token")))
    out = promtool("check", "config", str(copy), cwd=tmp_path / "prometheus")
    assert "2 rule files found" in out
    promtool("check", "rules", *(str(p) for p in sorted(PROMETHEUS_DIR.glob("rules/*.yml"))))


def test_promtool_unit_tests_pass() -> None:
    out = promtool("test", "rules", *(str(p) for p in sorted(PROMETHEUS_DIR.glob("tests/*.yml"))))
    assert "FAILED" not in out


def test_every_test_group_sets_its_interval() -> None:
    # Prometheus 2.42 gives wrong results for a test group without `interval`.
    assert all("interval" in group for group in promtool_tests())


def test_every_alert_is_tested_silent_before_and_firing_after_its_for() -> None:
    cases: dict[str, list[dict[str, Any]]] = {}
    for group in promtool_tests():
        for case in group.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case)
    for alert in rules("alert"):
        name = alert["alert"]
        assert name in cases, f"{name} has no promtool test"
        firing = [c for c in cases[name] if c.get("exp_alerts")]
        assert firing, f"{name} is never tested firing"
        for case in firing:
            for expected in case["exp_alerts"]:
                assert set(expected["exp_annotations"]) == {"summary", "description", "runbook_url"}
        if _duration(alert.get("for", "0s")) > 0:
            first_firing = min(_duration(c["eval_time"]) for c in firing)
            assert any(
                not c.get("exp_alerts") and _duration(c["eval_time"]) < first_firing
                for c in cases[name]
            ), f"{name} is not tested silent before its for"


def test_every_recording_rule_is_tested_with_values() -> None:
    tested = {
        case["expr"]
        for group in promtool_tests()
        for case in group.get("promql_expr_test", [])
        if case.get("exp_samples")
    }
    for rule in rules("record"):
        assert rule["record"] in tested, f"{rule['record']} has no promtool test"
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule["record"]), rule["record"]


@pytest.mark.parametrize("alert", rules("alert"), ids=lambda a: a["alert"])
def test_alert_has_severity_annotations_and_a_runbook_section(alert: dict[str, Any]) -> None:
    assert alert["labels"]["severity"] in {"critical", "warning", "none"}
    annotations = alert["annotations"]
    assert {"summary", "description", "runbook_url"} <= set(annotations)
    anchor = alert["alert"].lower()
    assert annotations["runbook_url"].endswith(f"/docs/RUNBOOK.md#{anchor}")
    headings = re.findall(r"^## (\S+)", RUNBOOK.read_text(), flags=re.MULTILINE)
    assert alert["alert"] in headings, f"docs/RUNBOOK.md has no section ## {alert['alert']}"


def _duration(text: str) -> int:
    """Seconds in a Prometheus duration such as 1d1h39m or 30s."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([dhms])", str(text))
    assert parts or str(text) == "0", text
    return sum(int(n) * units[u] for n, u in parts)


def test_shipped_config_scrapes_the_compose_exporter_and_alerts_its_alertmanager() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # NexusExporterDown watches up{job="nexus-exporter"}: the job name is part of the contract.
    assert jobs["nexus-exporter"]["static_configs"] == [{"targets": ["exporter:4318"]}]
    # /metrics needs the metrics token: compose makes NEXUS_METRICS_TOKEN the secret Prometheus
    # reads it from, and gives the exporter the same variable.
    authorization = jobs["nexus-exporter"]["authorization"]
    assert authorization == {"type": "Bearer", "credentials_file": SECRET}
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    assert config["rule_files"] == ["rules/*.yml"]  # relative to the mounted folder
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert {"exporter", "alertmanager", "prometheus"} <= set(services)
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    secret = Path(SECRET).name
    assert services["prometheus"]["secrets"] == [secret]
    assert compose["secrets"][secret] == {"environment": "NEXUS_METRICS_TOKEN"}
    assert "NEXUS_METRICS_TOKEN" in services["exporter"]["environment"]
