"""compose.yaml, the collector config, Grafana provisioning and the Dockerfile: they parse, refer
only to files, services, variables and components that exist, and what they run is runnable.
(No Docker engine here: each part is checked directly, the database role against PostgreSQL.)"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from exporter.cli import build_parser
from exporter.core.db import migrate
from tests.collector_contrib import INTERNAL_METRICS, has_component, prometheus_name
from tests.support import with_database

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
COLLECTOR = yaml.safe_load((ROOT / "otel-collector" / "config.yaml").read_text())
PROVISIONING = ROOT / "grafana" / "provisioning"
NEXUS_IMAGE = "nexus-otel:local"
# What the alerting work adds (prometheus/, `nexus-otel alertmanager-config`), checked once there.
ALERTING_PENDING = not (ROOT / "prometheus" / "prometheus.yml").exists()
# The user the collector image runs as (opentelemetry-collector-releases,
# distributions/otelcol-contrib/Dockerfile: USER 10001:10001, FROM scratch).
COLLECTOR_UID = 10001
INGEST_TOKEN_REFERENCE = "${env:NEXUS_INGEST_TOKEN}"
_COMPOSE_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:[:?-][^}]*)?\}")


def _env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {key: value for key, value in pairs}


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts.append((source, target))
    return mounts


def test_the_stack_has_every_service_with_pinned_images() -> None:
    assert set(SERVICES) == {
        "postgres", "exporter", "otel-collector", "otel-collector-queue", "alertmanager-config",
        "alertmanager", "prometheus", "grafana",
    }  # fmt: skip
    for name, service in SERVICES.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), name
    assert SERVICES["otel-collector"]["image"].startswith("otel/opentelemetry-collector-contrib:")
    assert SERVICES["grafana"]["environment"]["GF_USERS_DEFAULT_THEME"] == "dark"


def test_dependencies_name_services_and_wait_for_health() -> None:
    for name, service in SERVICES.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            target = SERVICES[dependency]
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in target, f"{dependency} has no health check"
            else:
                assert spec["condition"] == "service_completed_successfully", name
                assert target.get("restart") == "no", f"{dependency} must be a one-shot job"
    long_running = {n for n, s in SERVICES.items() if s.get("restart") != "no"}
    # The collector image has no shell to probe itself with; nothing waits on it.
    assert {n for n in long_running if "healthcheck" not in SERVICES[n]} == {"otel-collector"}
    assert not any("otel-collector" in s.get("depends_on", {}) for s in SERVICES.values())


def test_mounted_files_and_volumes_exist() -> None:
    declared = set(COMPOSE["volumes"])
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                pending = ALERTING_PENDING and name == "prometheus"
                assert pending or (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
    assert (ROOT / "Dockerfile").is_file()


def test_every_variable_comes_from_env_example_and_is_used() -> None:
    text = (ROOT / "compose.yaml").read_text()
    used = set(_COMPOSE_VAR.findall(text))
    example = _env_example()
    assert used - set(example) == set(), "add these to .env.example"
    assert set(example) - used == set(), "unused settings in .env.example"
    # Required secrets fail loudly instead of starting with an empty password.
    for secret in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "GRAFANA_DB_PASSWORD"):
        assert re.search(r"\$\{" + secret + r":\?", text), secret


def test_nexus_commands_are_valid_cli_invocations() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M)
    assert entrypoint and yaml.safe_load(entrypoint[1]) == ["nexus-otel"]
    default = yaml.safe_load(re.search(r"^CMD (\[.*\])$", dockerfile, re.M)[1])  # type: ignore[index]
    commands = [default] + [
        s["command"]
        for s in SERVICES.values()
        if s["image"] == NEXUS_IMAGE and "entrypoint" not in s  # one-shot jobs run another tool
    ]
    for command in commands:
        if ALERTING_PENDING and command[0] == "alertmanager-config":
            continue
        args = build_parser().parse_args(command)
        assert args.command == command[0]


def test_alertmanager_can_read_its_generated_config() -> None:
    """The config holding the bot token is written 0600: the job writing it runs as the user
    the Alertmanager image runs as (nobody), into a volume Alertmanager mounts as its config."""
    job, alertmanager = SERVICES["alertmanager-config"], SERVICES["alertmanager"]
    assert job["user"] == "65534:65534"
    output = job["command"][job["command"].index("--output") + 1]
    (volume,) = [v for v in job["volumes"] if v.endswith(":" + str(Path(output).parent))]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in alertmanager["volumes"]}
    directory = mounted[volume.split(":")[0]]
    assert f"--config.file={directory}/{Path(output).name}" in alertmanager["command"]
    assert "chmod 1777 /config" in (ROOT / "Dockerfile").read_text()


def test_dockerfile_copies_what_exists_and_exposes_the_ports() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        for source in shlex.split(line)[:-1]:
            assert (ROOT / source).exists(), source
    assert "EXPOSE 4318 8000" in dockerfile
    assert ".venv" in (ROOT / ".dockerignore").read_text()


def test_grafana_provisioning_parses_and_points_at_mounted_dashboards() -> None:
    grafana = SERVICES["grafana"]
    mounts = dict(_bind_mounts(grafana))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "nexus-otel.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == mounts["./grafana/dashboards"]
    assert list((ROOT / "grafana" / "dashboards").glob("*.json"))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "grafana" / "dashboards" / Path(home).name).is_file()
    text = (PROVISIONING / "datasources" / "datasources.yaml").read_text()
    sources = {d["uid"]: d for d in yaml.safe_load(text)["datasources"]}
    assert sources["nexus-prometheus"]["type"] == "prometheus"
    assert sources["nexus-postgres"]["type"] == "grafana-postgresql-datasource"
    assert "nexus-alertmanager" not in sources  # no panel can query it
    for source in sources.values():  # Grafana reaches services by their compose names
        host = re.sub(r"^https?://", "", source["url"]).split(":")[0]
        assert host in SERVICES, source["url"]
    for variable in re.findall(r"\$\{(\w+)\}", text):
        assert variable in grafana["environment"], f"Grafana needs {variable} to provision"


def test_collector_config_names_only_contrib_components() -> None:
    defined = {
        kind: set(COLLECTOR.get(kind) or {})
        for kind in ("receivers", "processors", "exporters", "extensions", "connectors")
    }
    for kind, names in defined.items():
        for name in names:
            assert has_component(kind, name), f"otelcol-contrib has no {kind[:-1]} {name}"
    assert not has_component("processors", "made_up")  # the check can fail
    service = COLLECTOR["service"]
    assert set(service["extensions"]) == defined["extensions"]
    pipeline = service["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) == defined[kind], kind
    # memory_limiter first; no batch processor: it would hold spans the receiver acknowledged
    # in memory, lost in a crash (the exporter batches after its disk queue instead).
    assert pipeline["processors"] == ["memory_limiter"]


def test_collector_forwards_to_the_exporter_with_its_token() -> None:
    (exporter,) = COLLECTOR["exporters"].values()
    assert exporter["endpoint"] == "http://exporter:4318"
    assert SERVICES["exporter"]["environment"]["NEXUS_HOST"] == "0.0.0.0"
    token = re.findall(r"\$\{env:(\w+)\}", exporter["headers"]["Authorization"])
    assert token == ["NEXUS_INGEST_TOKEN"]
    assert "NEXUS_INGEST_TOKEN" in SERVICES["otel-collector"]["environment"]
    assert "NEXUS_INGEST_TOKEN" in SERVICES["exporter"]["environment"]
    config_mount = dict(_bind_mounts(SERVICES["otel-collector"]))["./otel-collector/config.yaml"]
    assert f"--config={config_mount}" in SERVICES["otel-collector"]["command"]


def _extension(kind: str, name: str) -> dict[str, Any]:
    """The config of extension `name`, checked to be of `kind` and enabled in the service."""
    assert name.split("/", 1)[0] == kind, name
    assert name in COLLECTOR["service"]["extensions"], f"{name} is defined but not enabled"
    return COLLECTOR["extensions"][name] or {}


def _collector_volume(target: str) -> str:
    """The named volume the collector mounts at `target`."""
    (volume,) = [
        v.split(":")[0] for v in SERVICES["otel-collector"]["volumes"] if v.split(":")[1] == target
    ]
    assert volume in COMPOSE["volumes"], f"{target} is not on a named volume"
    return volume


def test_collector_queue_is_on_a_volume_the_collector_can_write() -> None:
    """The sending queue is persistent, on a named volume that survives the container, owned
    by the collector's user before the collector starts (its image has no shell to chown)."""
    (exporter,) = COLLECTOR["exporters"].values()
    queue = exporter["sending_queue"]
    assert queue["enabled"] is True
    storage = _extension("file_storage", queue["storage"])
    directory = storage["directory"]
    assert storage.get("create_directory") is not True  # the mount point is the directory
    compaction = storage.get("compaction", {})
    if compaction.get("on_start") or compaction.get("on_rebound"):
        assert Path(compaction["directory"]).is_relative_to(directory), "compaction off the volume"
    volume = _collector_volume(directory)
    job = SERVICES["otel-collector-queue"]
    assert job["restart"] == "no" and job["user"] == "0:0"
    assert job["entrypoint"] == ["chown", "-R", f"{COLLECTOR_UID}:{COLLECTOR_UID}", directory]
    assert job["volumes"] == [f"{volume}:{directory}"]
    depends = SERVICES["otel-collector"]["depends_on"]["otel-collector-queue"]
    assert depends == {"condition": "service_completed_successfully"}
    assert "user" not in SERVICES["otel-collector"]  # it runs as the image's user, COLLECTOR_UID


def test_collector_queue_is_bounded_and_keeps_what_it_accepted() -> None:
    (exporter,) = COLLECTOR["exporters"].values()
    queue = exporter["sending_queue"]
    # Bounded in bytes of spans (the disk it takes), refusing (senders retry) when full.
    assert queue["sizer"] == "bytes"
    assert queue["queue_size"] == 1024**3
    assert queue["block_on_overflow"] is False
    # Batched after the disk queue: a queued request leaves the disk once delivered.
    assert queue["batch"]["sizer"] == "items"
    assert queue["batch"]["min_size"] <= queue["batch"]["max_size"]
    # Retryable failures are retried for as long as the exporter is away (0: no deadline).
    assert exporter["retry_on_failure"]["enabled"] is True
    assert exporter["retry_on_failure"]["max_elapsed_time"] == 0


def test_collector_receivers_require_the_ingest_token() -> None:
    """Every OTLP protocol authenticates with a bearer token extension holding the token apps
    would send straight to the exporter; the collector forwards with the same one."""
    protocols = COLLECTOR["receivers"]["otlp"]["protocols"]
    assert set(protocols) == {"grpc", "http"}
    for name, protocol in protocols.items():
        authenticator = protocol["auth"]["authenticator"]
        token = _extension("bearertokenauth", authenticator)
        assert token == {"token": INGEST_TOKEN_REFERENCE}, name  # no `tokens`, no `filename`
    (exporter,) = COLLECTOR["exporters"].values()
    assert exporter["headers"]["Authorization"] == f"Bearer {INGEST_TOKEN_REFERENCE}"
    # The health check answers without a token, on its own port.
    assert COLLECTOR["extensions"]["health_check"]["endpoint"].endswith(":13133")


def _resolve_env(value: Any, env: dict[str, str]) -> Any:
    """What the collector's `env` config provider makes of a value (confmap/provider/
    envprovider/provider.go at v0.136.0): a variable unset or empty is the empty string, and a
    value that is only the reference becomes YAML of that string (empty: null)."""
    if not isinstance(value, str):
        return value
    reference = re.fullmatch(r"\$\{env:(\w+)(?::-(.*))?\}", value)
    if reference:
        name, default = reference.groups()
        resolved = env.get(name, default if default is not None else "")
        return yaml.safe_load(resolved) if resolved else None
    return re.sub(r"\$\{env:(\w+)\}", lambda m: env.get(m[1], ""), value)


def _bearertokenauth_is_valid(config: dict[str, Any]) -> bool:
    """Config.Validate of contrib extension/bearertokenauthextension/config.go at v0.136.0:
    a token, a list of tokens or a token file, and not both a token and a list."""
    token, tokens, filename = config.get("token"), config.get("tokens"), config.get("filename")
    return bool(token or tokens or filename) and not (token and tokens)


@pytest.mark.parametrize("environment", [{}, {"NEXUS_INGEST_TOKEN": ""}], ids=["unset", "empty"])
def test_the_collector_refuses_to_start_without_the_ingest_token(
    environment: dict[str, str],
) -> None:
    """Without the token the receivers' authenticator fails config validation, so the
    collector exits at start instead of forwarding batches the exporter answers 401."""
    text = (ROOT / "otel-collector" / "config.yaml").read_text()
    assert "NEXUS_INGEST_TOKEN:-" not in text  # a default would start it without a token
    protocols = COLLECTOR["receivers"]["otlp"]["protocols"].values()
    for name in {protocol["auth"]["authenticator"] for protocol in protocols}:
        extension = _extension("bearertokenauth", name)
        missing = {k: _resolve_env(v, environment) for k, v in extension.items()}
        assert not _bearertokenauth_is_valid(missing), name
        given = {k: _resolve_env(v, {"NEXUS_INGEST_TOKEN": "s3cret"}) for k, v in extension.items()}
        assert _bearertokenauth_is_valid(given) and given["token"] == "s3cret"


def _collector_metrics_reader() -> dict[str, Any]:
    metrics = COLLECTOR["service"]["telemetry"]["metrics"]
    assert "address" not in metrics  # removed from the schema: readers only at v0.136.0
    (reader,) = metrics["readers"]
    prometheus: dict[str, Any] = reader["pull"]["exporter"]["prometheus"]
    return prometheus


@pytest.mark.skipif(ALERTING_PENDING, reason="prometheus/prometheus.yml is not there yet")
def test_prometheus_scrapes_the_collectors_own_metrics() -> None:
    reader = _collector_metrics_reader()
    assert reader["host"] == "0.0.0.0"  # reachable from Prometheus on the compose network
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    target = f"otel-collector:{reader['port']}"
    assert jobs["otel-collector"]["static_configs"] == [{"targets": [target]}]
    assert target.split(":")[0] in SERVICES
    # Only inside the compose network: the port is not published.
    assert not any(str(reader["port"]) in p for p in SERVICES["otel-collector"]["ports"])


@pytest.mark.skipif(ALERTING_PENDING, reason="prometheus/prometheus.yml is not there yet")
def test_collector_alerts_read_metrics_the_collector_exposes() -> None:
    reader = _collector_metrics_reader()
    assert reader["without_units"] is True  # names carry no unit ({spans}, {batches})
    suffixless = reader["without_type_suffix"]
    exposed = {prometheus_name(m, without_type_suffix=suffixless) for m in INTERNAL_METRICS}
    rules = (ROOT / "prometheus" / "rules" / "alerts.yml").read_text()
    used = set(re.findall(r"\botelcol_\w+", rules))
    assert used - exposed == set(), "not a metric the collector exposes"
    assert {
        "otelcol_exporter_send_failed_spans_total", "otelcol_receiver_refused_spans_total",
        "otelcol_exporter_enqueue_failed_spans_total", "otelcol_exporter_queue_size",
        "otelcol_exporter_queue_capacity",
    } <= used  # fmt: skip


@pytest.mark.skipif(ALERTING_PENDING, reason="prometheus/prometheus.yml is not there yet")
def test_prometheus_scrapes_compose_services() -> None:
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    targets = [
        target
        for job in config.get("scrape_configs", [])
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert "exporter:4318" in targets
    # Grafana's floor for $__interval and $__rate_interval must be the real scrape interval.
    text = (PROVISIONING / "datasources" / "datasources.yaml").read_text()
    (prometheus,) = [d for d in yaml.safe_load(text)["datasources"] if d["type"] == "prometheus"]
    assert prometheus["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]
    for target in targets:
        assert target.split(":")[0] in {*SERVICES, "localhost"}, target


def _psql() -> str:
    found = shutil.which("psql")
    if found:
        return found
    import pgserver

    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    assert bundled.exists(), "no psql binary"
    return str(bundled)


@pytest.mark.e2e
def test_grafana_database_role_reads_everything_and_writes_nothing(postgres_server: str) -> None:
    """Runs the init script the postgres container runs, then the migrations (the exporter's
    first start), then queries as Grafana would."""
    info = psycopg.conninfo.conninfo_to_dict(postgres_server)
    database, reader = f"nexus_compose_{uuid.uuid4().hex[:8]}", f"grafana_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    url = with_database(postgres_server, database)
    env = {
        **os.environ, "PATH": f"{Path(_psql()).parent}:{os.environ['PATH']}",
        "PGHOST": str(info.get("host", "")), "PGPORT": str(info.get("port") or 5432),
        "PGPASSWORD": str(info.get("password") or ""),
        "POSTGRES_USER": str(info.get("user") or "postgres"), "POSTGRES_DB": database,
        "GRAFANA_DB_USER": reader, "GRAFANA_DB_PASSWORD": "s3cret'quote",
    }  # fmt: skip
    try:
        script = ROOT / "grafana" / "postgres" / "10-grafana-reader.sh"
        subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True)
        migrate(url)
        as_reader = psycopg.conninfo.make_conninfo(url, user=reader, password="s3cret'quote")
        with psycopg.connect(as_reader) as conn:
            relations = ("api_calls", "ten_minute_usage_summary", "hourly_usage_summary",
                         "daily_usage_summary", "v_budget_status", "v_carousel_roi",
                         "alert_history")  # fmt: skip
            for relation in relations:
                conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(relation)))
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO alert_history (fingerprint, alertname, status, "
                             "starts_at) VALUES ('x', 'x', 'firing', now())")  # fmt: skip
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database)))  # fmt: skip
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(reader)))


def test_the_exporter_serves_beyond_loopback_only_with_tokens() -> None:
    """`serve` refuses an open API on a public address: compose must require every token it
    listens with, and the alert-history config must send the API token."""
    env = SERVICES["exporter"]["environment"]
    assert env["NEXUS_HOST"] == "0.0.0.0"
    for name in ("NEXUS_INGEST_TOKEN", "NEXUS_API_TOKEN", "NEXUS_METRICS_TOKEN"):
        assert env[name].startswith("${" + name + ":?"), name
        assert _env_example()[name], f"{name} is empty in .env.example"
    assert "NEXUS_ALLOW_UNAUTHENTICATED" not in env
    config_env = SERVICES["alertmanager-config"]["environment"]
    assert config_env["NEXUS_API_TOKEN"].startswith("${NEXUS_API_TOKEN:?")
