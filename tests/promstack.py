"""The real Prometheus and Alertmanager binaries for tests: free ports, readiness, query helpers.

with running_prometheus(prometheus_config(["127.0.0.1:4318"]), tmp_path) as prom:
    prom.wait_for(lambda: prom.query("up") != [])
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests.support import QuietHandler, free_port, serving

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "prometheus" / "rules"
T = TypeVar("T")


def binary(name: str, package: str) -> str:
    """The binary's path; outside CI a missing one skips, under CI it fails the test."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (apt-get install -y {package})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def prometheus_config(
    targets: Sequence[str],
    *,
    interval: str = "1s",
    rule_files: Sequence[Path | str] = (),
    alertmanager: str | None = None,
    job: str = "nexus-exporter",
    bearer_token: str | None = None,
) -> dict[str, Any]:
    """A Prometheus config scraping `targets` (host:port) every `interval`, sending
    `bearer_token` when the exporter's /metrics needs one."""
    scrape: dict[str, Any] = {"job_name": job, "static_configs": [{"targets": list(targets)}]}
    if bearer_token:
        scrape["authorization"] = {"type": "Bearer", "credentials": bearer_token}
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [scrape],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config


@dataclass
class Server:
    """A running binary: its base URL, process and log."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **params: Any) -> Any:
        """A GET on the server's JSON API; raises with the server's own message on an error."""
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def wait_for(
        self, check: Callable[[], T | None], timeout: float = 30, what: str = "condition"
    ) -> T:
        """Polls `check` until it returns something truthy; fails with the server log."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n--- log ---\n{self.log()}")
            time.sleep(0.25)


class Prometheus(Server):
    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector (`metric`, `value`)."""
        return list(self.get("/api/v1/query", query=expr)["result"])

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None when empty."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise AssertionError(f"{expr} returned {len(result)} series")
        return float(result[0]["value"][1])

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> Any:
        return self.get("/api/v1/query_range", query=expr, start=start, end=end, step=step)

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts pending or firing now."""
        return list(self.get("/api/v1/alerts")["alerts"])

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.alerts()
            if a["labels"].get("alertname") == alertname and a["state"] == "firing"
        ]

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/rules")["groups"])


class Alertmanager(Server):
    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds (API v2), optionally filtered by label equality."""
        params = [("filter", f'{k}="{v}"') for k, v in filters.items()]
        response = httpx.get(f"{self.url}/api/v2/alerts", params=params, timeout=10)
        response.raise_for_status()
        return list(response.json())


@contextlib.contextmanager
def running_prometheus(
    config: dict[str, Any], workdir: Path, extra_args: Sequence[str] = ()
) -> Iterator[Prometheus]:
    """Starts Prometheus on a free port with `config` (and `extra_args` flags), waits for
    /-/ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    command = [
        binary("prometheus", "prometheus"), f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle", *extra_args,
    ]  # fmt: skip
    with _started(command, workdir / "prometheus.log", f"http://127.0.0.1:{port}") as server:
        yield Prometheus(server.url, server.process, server.log_path)


@contextlib.contextmanager
def running_alertmanager(config_path: Path, workdir: Path) -> Iterator[Alertmanager]:
    """Starts Alertmanager (no clustering) on a free port with the config file at `config_path`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        binary("prometheus-alertmanager", "prometheus-alertmanager"),
        f"--config.file={config_path}", f"--storage.path={workdir / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
    ]  # fmt: skip
    with _started(command, workdir / "alertmanager.log", f"http://127.0.0.1:{port}") as server:
        yield Alertmanager(server.url, server.process, server.log_path)


@contextlib.contextmanager
def _started(command: list[str], log_path: Path, url: str) -> Iterator[Server]:
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    server = Server(url, process, log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _wait_ready(server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.process.args[0]} exited:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{server.process.args[0]} did not become ready:\n{server.log()}")


@contextlib.contextmanager
def static_target(render: Callable[[int], str | None]) -> Iterator[str]:
    """A /metrics endpoint for Prometheus to scrape, standing in for a part a test cannot run
    or break for real (the collector, a second exporter): `render(n)` is the text of the n-th
    scrape (from 1, so a counter can grow by scrape), None answers 503 (the target is down).
    Yields its host:port."""
    scrapes = 0
    lock = threading.Lock()

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            nonlocal scrapes
            with lock:
                scrapes += 1
                text = render(scrapes)
            data = (text or "down\n").encode()
            self.answer(503 if text is None else 200, data, "text/plain; version=0.0.4")

    with serving(Handler) as server:
        yield f"127.0.0.1:{server.server_address[1]}"


def backfill(workdir: Path, samples: Sequence[tuple[str, float, float]]) -> None:
    """Writes (series, value, unix time) samples from the past into the storage that
    `running_prometheus(config, workdir)` opens, with promtool's OpenMetrics import: history
    a test cannot wait for, such as the same hour yesterday. Each series' samples in time
    order; `series` is `name_total{labels}` of a counter."""
    lines = []
    for family in dict.fromkeys(s.split("{")[0].removesuffix("_total") for s, _, _ in samples):
        lines.append(f"# TYPE {family} counter")
        lines += [f"{s} {v:g} {t:.3f}" for s, v, t in samples if s.startswith(family)]
    source = workdir / "backfill.om"
    workdir.mkdir(parents=True, exist_ok=True)
    source.write_text("\n".join([*lines, "# EOF"]) + "\n")
    result = subprocess.run(
        [binary("promtool", "prometheus"), "tsdb", "create-blocks-from", "openmetrics",
         str(source), str(workdir / "prometheus-data")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
