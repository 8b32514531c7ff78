"""`nexus-otel alertmanager-config` and `prometheus-rules`: files the real tools accept, routes
per severity, the shipped files in step with the generators."""

from __future__ import annotations

import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from exporter.alerting import (
    example_settings,
    render_alert_rules,
    render_alertmanager_config,
)
from exporter.cli import main
from tests.promstack import ROOT, binary, running_alertmanager

TOKEN = "987654:secret-bot-token"


def run_tool(name: str, package: str, *args: str) -> str:
    result = subprocess.run([binary(name, package), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def telegram_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NEXUS_ALERT_WEBHOOK_URL", "NEXUS_ALERT_LINK_URL", "NEXUS_WATCHDOG_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", "-1009876")
    monkeypatch.setenv("NEXUS_API_TOKEN", "api-secret")
    monkeypatch.setenv("NEXUS_API_PORT", "8123")


def test_generated_config_passes_amtool_and_carries_telegram_and_webhook(
    telegram_env: None, tmp_path: Path
) -> None:
    output = tmp_path / "am" / "alertmanager.yml"
    assert main(["alertmanager-config", "--output", str(output), "--make-dirs"]) == 0
    out = run_tool("amtool", "prometheus-alertmanager", "check-config", str(output))
    assert "4 receivers" in out and "3 inhibit rules" in out and "1 templates" in out
    assert (output.parent / "templates" / "telegram.tmpl").is_file()
    assert output.stat().st_mode & 0o077 == 0  # it holds the bot token
    config = yaml.safe_load(output.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    for name in ("critical", "warning"):
        (telegram,) = receivers[name]["telegram_configs"]
        assert telegram["bot_token"] == TOKEN and telegram["chat_id"] == -1009876
        assert telegram["parse_mode"] == "HTML" and telegram["send_resolved"] is True
        assert "nexus.telegram.message" in telegram["message"]
    for receiver in receivers.values():
        (hook, *_) = receiver["webhook_configs"]
        assert hook["url"] == "http://127.0.0.1:8123/api/alerts/webhook"
        assert hook["http_config"]["authorization"]["credentials"] == "api-secret"
    assert "telegram_configs" not in receivers["history"]
    assert "telegram_configs" not in receivers["watchdog"]
    critical_inhibits_warning = config["inhibit_rules"][0]
    assert critical_inhibits_warning["equal"] == ["budget"]
    assert 'severity="critical"' in critical_inhibits_warning["source_matchers"]
    assert 'severity="warning"' in critical_inhibits_warning["target_matchers"]


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=LLMBudgetExceeded", "severity=critical", "budget=daily"], "critical"),
        (["alertname=NexusExporterDown", "severity=critical"], "critical"),
        (["alertname=LLMBudgetWarning", "severity=warning", "budget=daily"], "warning"),
        (["alertname=LLMExpensiveCall", "severity=warning", "gen_ai_request_model=o3"], "warning"),
        (["alertname=Watchdog", "severity=none"], "watchdog"),
        (["alertname=SomethingElse", "severity=info"], "history"),
    ],
)
def test_each_severity_routes_to_its_receiver(
    telegram_env: None, tmp_path: Path, labels: list[str], receiver: str
) -> None:
    output = tmp_path / "alertmanager.yml"
    assert main(["alertmanager-config", "--output", str(output)]) == 0
    routed = run_tool(
        "amtool", "prometheus-alertmanager", "config", "routes", "test",
        f"--config.file={output}", "--verify.receivers=" + receiver, *labels,
    )  # fmt: skip
    assert routed.strip() == receiver


def test_without_telegram_alerts_still_reach_the_history(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", "")  # compose passes unset variables as empty
    output = tmp_path / "alertmanager.yml"
    assert main(["alertmanager-config", "--output", str(output)]) == 0
    run_tool("amtool", "prometheus-alertmanager", "check-config", str(output))
    config = yaml.safe_load(output.read_text())
    assert all("telegram_configs" not in r for r in config["receivers"])
    assert all(r["webhook_configs"] for r in config["receivers"])


def test_a_token_without_a_chat_id_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.delenv("TELEGRAM_CHAT_ID", raising=False)
    output = tmp_path / "alertmanager.yml"
    assert main(["alertmanager-config", "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "TELEGRAM_CHAT_ID is not set" in err and TOKEN not in err
    assert not output.exists()


def test_a_non_numeric_chat_id_names_the_bad_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TELEGRAM_CHAT_ID", "@mychannel")
    assert main(["alertmanager-config", "--output", str(tmp_path / "a.yml")]) == 2
    assert "'@mychannel'" in capsys.readouterr().err


def test_shipped_alertmanager_yml_is_the_generated_example_and_valid() -> None:
    shipped = ROOT / "alertmanager" / "alertmanager.yml"
    assert shipped.read_text() == render_alertmanager_config(example_settings()), (
        "regenerate it: nexus-otel alertmanager-config --example --file-mode 644 "
        "--output alertmanager/alertmanager.yml"
    )
    run_tool("amtool", "prometheus-alertmanager", "check-config", str(shipped))


def test_shipped_alert_rules_are_the_generator_defaults() -> None:
    assert render_alert_rules() == (ROOT / "prometheus" / "rules" / "alerts.yml").read_text()


def test_single_call_threshold_and_runbook_base_are_configurable(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    assert main(["prometheus-rules", "--out", str(rules), "--single-call-usd", "1.0",
                 "--runbook-base-url", "https://git.example.com/ops/nexus/"]) == 0  # fmt: skip
    text = (rules / "alerts.yml").read_text()
    assert 'le="1.0"' in text and 'le="0.5"' not in text
    assert "cost more than $1.00" in text and "$0.50" not in text
    assert "https://git.example.com/ops/nexus/docs/RUNBOOK.md#llmexpensivecall" in text
    run_tool("promtool", "prometheus", "check", "rules", *map(str, sorted(rules.glob("*.yml"))))
    # A $0.70 call (bucket le="1.0") stays quiet at a $1.00 threshold; a $2 call fires.
    labels = (
        'gen_ai_request_model="m",gen_ai_provider_name="p",service_name="s",nexus_operation="o"'
    )
    test = {
        "rule_files": ["rules/alerts.yml"],
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": f"nexus_llm_call_cost_usd_count{{{labels}}}", "values": "0 1 2"},
                {"series": f'nexus_llm_call_cost_usd_bucket{{le="1.0",{labels}}}',
                 "values": "0 1 1"},
            ],
            "alert_rule_test": [
                {"alertname": "LLMExpensiveCall", "eval_time": "1m", "exp_alerts": []},
                {"alertname": "LLMExpensiveCall", "eval_time": "2m", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "gen_ai_request_model": "m",
                                   "gen_ai_provider_name": "p", "service_name": "s",
                                   "nexus_operation": "o"},
                    "exp_annotations": {
                        "summary": "A call to m cost more than $1.00",
                        "description": "1 call(s) to m (p, operation o, service s) cost more "
                        "than $1.00 each in the last 10 minutes.",
                        "runbook_url": "https://git.example.com/ops/nexus/docs/RUNBOOK.md"
                        "#llmexpensivecall",
                    },
                }]},
            ],
        }],
    }  # fmt: skip
    (tmp_path / "threshold_test.yml").write_text(yaml.safe_dump(test))
    out = run_tool("promtool", "prometheus", "test", "rules", str(tmp_path / "threshold_test.yml"))
    assert "SUCCESS" in out


def test_a_threshold_off_the_histogram_buckets_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prometheus-rules", "--out", str(tmp_path), "--single-call-usd", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "--single-call-usd 0.3 is not a bucket boundary" in err and "0.25, 0.5" in err
    assert not (tmp_path / "alerts.yml").exists()


@pytest.mark.parametrize(
    "url",
    ['https://x.example/"', "https://x.example/\n  - alert: Injected", "javascript:alert(1)",
     "x.example/ops", "https://", "https://x.example/a b", "https://x.example/\\"],
)  # fmt: skip
def test_a_runbook_base_that_is_no_http_url_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """Written into a double-quoted YAML string, a quote made a rule file Prometheus refuses
    (every alert off) and a newline wrote itself into every runbook link."""
    assert main(["prometheus-rules", "--out", str(tmp_path), "--runbook-base-url", url]) == 2
    assert "is not an http(s) URL" in capsys.readouterr().err
    assert not (tmp_path / "alerts.yml").exists()


def test_file_mode_can_open_the_file_to_an_alertmanager_running_as_another_user(
    telegram_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "alertmanager.yml"
    assert main(["alertmanager-config", "--output", str(output), "--file-mode", "644"]) == 0
    assert output.stat().st_mode & 0o777 == 0o644
    assert main(["alertmanager-config", "--output", str(output), "--file-mode", "rw-r--r--"]) == 2
    assert "--file-mode 'rw-r--r--' is not an octal mode" in capsys.readouterr().err


def test_example_flag_writes_the_shipped_file(telegram_env: None, tmp_path: Path) -> None:
    output = tmp_path / "alertmanager.yml"
    assert main(["alertmanager-config", "--example", "--output", str(output)]) == 0
    assert output.read_text() == (ROOT / "alertmanager" / "alertmanager.yml").read_text()
    assert TOKEN not in output.read_text()  # the environment's token stays out


@pytest.mark.e2e
def test_a_down_exporter_silences_the_collector_alerts_it_causes(tmp_path: Path) -> None:
    """The real Alertmanager with the shipped config: while NexusExporterDown fires, the
    collector's full queue and refusals (its consequences) and no-calls are suppressed; a
    collector alert of its own (dropping spans) still goes out."""
    starts = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()

    def alert(name: str, severity: str) -> dict[str, object]:
        labels = {"alertname": name, "severity": severity, "instance": "otel-collector:8888"}
        return {"labels": labels, "annotations": {"summary": name}, "startsAt": starts}

    names = {
        "NexusExporterDown": "critical",
        "NexusCollectorQueueNearlyFull": "warning",
        "NexusCollectorRefusingSpans": "warning",
        "LLMNoCallsIngested": "warning",
        "NexusCollectorDroppingSpans": "critical",
    }
    with running_alertmanager(ROOT / "alertmanager" / "alertmanager.yml", tmp_path) as manager:
        posted = [alert(name, severity) for name, severity in names.items()]
        httpx.post(f"{manager.url}/api/v2/alerts", json=posted).raise_for_status()
        deadline = time.monotonic() + 30
        while True:
            states = {a["labels"]["alertname"]: a["status"] for a in manager.alerts()}
            suppressed = {n for n, s in states.items() if s["state"] == "suppressed"}
            if len(states) == len(names) and len(suppressed) == 3:
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.1)
    down = states["NexusExporterDown"]
    assert down["state"] == "active"
    assert suppressed == {
        "NexusCollectorQueueNearlyFull", "NexusCollectorRefusingSpans", "LLMNoCallsIngested",
    }  # fmt: skip
    assert states["NexusCollectorDroppingSpans"]["state"] == "active"
    assert states["NexusCollectorQueueNearlyFull"]["inhibitedBy"]


CHANNEL_ENV = {
    "email": {"NEXUS_ALERT_EMAIL_TO": "oncall@example.org", "NEXUS_ALERT_EMAIL_FROM":
              "alerts@example.org", "NEXUS_SMTP_SMARTHOST": "smtp.example.org:587"},
    "email-auth": {"NEXUS_ALERT_EMAIL_TO": "a@example.org,b@example.org",
                   "NEXUS_ALERT_EMAIL_FROM": "alerts@example.org",
                   "NEXUS_SMTP_SMARTHOST": "smtp.example.org:465",
                   "NEXUS_SMTP_AUTH_USERNAME": "alerts", "NEXUS_SMTP_AUTH_PASSWORD": "smtp-pw-42",
                   "NEXUS_SMTP_REQUIRE_TLS": "false"},
    "slack": {"NEXUS_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T1/B2/slack-key-42",
              "NEXUS_SLACK_CHANNEL": "#llm-alerts"},
    "webhook": {"NEXUS_ALERT_NOTIFY_WEBHOOK_URL": "https://ops.example.org/hooks/nexus"},
}  # fmt: skip
CHANNEL_KEYS = {"email": "email_configs", "email-auth": "email_configs",
                "slack": "slack_configs", "webhook": "webhook_configs"}  # fmt: skip
SECRETS = ("smtp-pw-42", "slack-key-42", TOKEN)


@pytest.fixture
def no_channel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for env in {name for values in CHANNEL_ENV.values() for name in values}:
        monkeypatch.delenv(env, raising=False)
    for env in ("TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID", "NEXUS_ALERT_LINK_URL"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("NEXUS_ALERT_WEBHOOK_URL", "http://api:8000/api/alerts/webhook")
    return monkeypatch


@pytest.mark.parametrize(
    "combination",
    [("email",), ("email-auth",), ("slack",), ("webhook",), ("telegram", "email", "slack"),
     ("telegram", "email-auth", "slack", "webhook")],
    ids="+".join,
)  # fmt: skip
def test_each_combination_of_channels_passes_amtool(
    no_channel_env: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], combination: tuple[str, ...],
) -> None:  # fmt: skip
    for channel in combination:
        if channel == "telegram":
            no_channel_env.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
            no_channel_env.setenv("TELEGRAM_CHAT_ID", "-1009876")
        else:
            for name, value in CHANNEL_ENV[channel].items():
                no_channel_env.setenv(name, value)
    output = tmp_path / "alertmanager.yml"
    assert main(["alertmanager-config", "--output", str(output)]) == 0
    console = capsys.readouterr()
    assert not any(secret in console.out + console.err for secret in SECRETS)
    assert output.stat().st_mode & 0o777 == 0o600
    out = run_tool("amtool", "prometheus-alertmanager", "check-config", str(output))
    assert "4 receivers" in out
    assert {p.name for p in (tmp_path / "templates").iterdir()} == {
        "email.tmpl", "slack.tmpl", "telegram.tmpl",
    }  # fmt: skip
    receivers = {r["name"]: r for r in yaml.safe_load(output.read_text())["receivers"]}
    wanted = {CHANNEL_KEYS.get(c, "telegram_configs") for c in combination} | {"webhook_configs"}
    for name in ("critical", "warning"):
        assert set(receivers[name]) - {"name"} == wanted
        hooks = [h["url"] for h in receivers[name]["webhook_configs"]]
        expected_hooks = ["http://api:8000/api/alerts/webhook"]
        if "webhook" in combination:
            expected_hooks.append("https://ops.example.org/hooks/nexus")
        assert hooks == expected_hooks
    for name in ("history", "watchdog"):  # the channels page people: not the heartbeat
        assert set(receivers[name]) == {"name", "webhook_configs"}
        assert len(receivers[name]["webhook_configs"]) == 1
    critical = receivers["critical"]
    if "email-auth" in combination:
        (mail,) = critical["email_configs"]
        assert (mail["to"], mail["from"], mail["smarthost"]) == (
            "a@example.org,b@example.org", "alerts@example.org", "smtp.example.org:465",
        )  # fmt: skip
        assert (mail["auth_username"], mail["auth_password"]) == ("alerts", "smtp-pw-42")
        assert mail["require_tls"] is False
        assert mail["headers"] == {"Subject": '{{ template "nexus.email.subject" . }}'}
    if "email" in combination:
        (mail,) = critical["email_configs"]
        assert mail["require_tls"] is True  # the default: no mail in clear text
        assert "auth_username" not in mail and "auth_password" not in mail
    if "slack" in combination:
        (slack,) = critical["slack_configs"]
        assert slack["api_url"] == "https://hooks.slack.com/services/T1/B2/slack-key-42"
        assert slack["channel"] == "#llm-alerts"
        assert slack["color"] == '{{ template "nexus.slack.colour" . }}'


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NEXUS_ALERT_EMAIL_TO": "a@example.org"},
         "NEXUS_ALERT_EMAIL_FROM and NEXUS_SMTP_SMARTHOST not set: alert mail "
         "(NEXUS_ALERT_EMAIL_TO) needs a sender and an SMTP server"),
        ({**CHANNEL_ENV["email"], "NEXUS_SMTP_AUTH_PASSWORD": "smtp-pw-42"},
         "NEXUS_SMTP_AUTH_USERNAME is not set: SMTP authentication needs both user and password"),
    ],
)  # fmt: skip
def test_an_incomplete_email_setting_is_a_clear_error(
    no_channel_env: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], env: dict[str, str], message: str,
) -> None:  # fmt: skip
    for name, value in env.items():
        no_channel_env.setenv(name, value)
    output = tmp_path / "alertmanager.yml"
    assert main(["alertmanager-config", "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "smtp-pw-42" not in err
    assert not output.exists()


def test_channel_secrets_are_not_written_into_a_git_work_tree(
    no_channel_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".git").mkdir()
    for name, value in {**CHANNEL_ENV["email-auth"], **CHANNEL_ENV["slack"]}.items():
        no_channel_env.setenv(name, value)
    output = tmp_path / "alertmanager.yml"
    assert main(["alertmanager-config", "--output", str(output)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the SMTP password (NEXUS_SMTP_AUTH_PASSWORD) and the Slack webhook URL" in err
    assert not any(secret in err for secret in SECRETS)
    assert not output.exists()


def test_channel_flags_are_accepted_like_their_variables(
    no_channel_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "alertmanager.yml"
    assert main([
        "alertmanager-config", "--output", str(output),
        "--alert-email-to", "x@example.org", "--alert-email-from", "am@example.org",
        "--smtp-smarthost", "127.0.0.1:25", "--smtp-require-tls", "false",
        "--slack-webhook-url", "https://hooks.slack.com/services/slack-key-42",
        "--alert-notify-webhook-url", "https://ops.example.org/hook",
    ]) == 0  # fmt: skip
    out = " ".join(capsys.readouterr().err.split())
    assert "email to x@example.org, Slack, your webhook and the alert-history webhook" in out
    (critical, *_) = yaml.safe_load(output.read_text())["receivers"]
    assert critical["email_configs"][0]["require_tls"] is False
    assert critical["slack_configs"][0]["api_url"].endswith("slack-key-42")
    assert critical["webhook_configs"][1]["url"] == "https://ops.example.org/hook"


def _durations_ms(text: str) -> tuple[str, list[int]]:
    """The text with each `for:`, range, step and offset duration replaced by `<D>`, and the
    durations in milliseconds, in order."""
    units = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
    found: list[int] = []

    def take(match: re.Match[str]) -> str:
        found.append(sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|[dhms])", match[2])))
        return match[1] + "<D>"

    duration = r"((?:\d+(?:ms|[dhms]))+)"
    pattern = rf"(for: |\[|:|offset ){duration}(?=\s*$|\]|:|\)|\s)"
    return re.sub(pattern, take, text, flags=re.MULTILINE), found


@pytest.mark.parametrize("factor", [0.01, 0.5])
def test_time_scale_multiplies_every_duration_of_the_rules_alike(
    tmp_path: Path, factor: float
) -> None:
    assert main(["prometheus-rules", "--out", str(tmp_path), "--time-scale", str(factor)]) == 0
    # 13 `for:`, 14 ranges and 3 offsets in the alerts; 9 ranges in the recording rules.
    for name, count in (("alerts.yml", 30), ("recording.yml", 9)):
        shipped, original = _durations_ms((ROOT / "prometheus" / "rules" / name).read_text())
        assert len(original) == count
        scaled_text, scaled = _durations_ms((tmp_path / name).read_text())
        assert scaled_text == shipped  # nothing else changed
        assert scaled == [ms * factor for ms in original]
    shipped_rules = yaml.safe_load((ROOT / "prometheus" / "rules" / "alerts.yml").read_text())
    with_for = [r for g in shipped_rules["groups"] for r in g["rules"] if "for" in r]
    assert len(with_for) == 13  # every alert but Watchdog, which fires at once
    text = (tmp_path / "alerts.yml").read_text()
    if factor == 0.01:  # spot checks, as a person reads them
        assert "[36s] offset 14m24s" in text and "for: 1s200ms" in text and "[6s]" in text
    run_tool("promtool", "prometheus", "check", "rules", *map(str, sorted(tmp_path.glob("*.yml"))))


@pytest.mark.parametrize(
    ("factor", "message"),
    [("0", "--time-scale 0 is not in (0, 1]"), ("2", "--time-scale 2 is not in (0, 1]"),
     ("1e-9", "--time-scale 1e-09 makes 5m shorter than a millisecond")],
)  # fmt: skip
def test_a_time_scale_out_of_range_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], factor: str, message: str
) -> None:
    assert main(["prometheus-rules", "--out", str(tmp_path), "--time-scale", factor]) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "alerts.yml").exists()
