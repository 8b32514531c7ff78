"""A real Prometheus for the dashboard query test: scrapes one exporter every second."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import free_port

RULES_DIR = Path(__file__).resolve().parents[2] / "prometheus" / "rules"


def prometheus_binary() -> str:
    """The binary, or a skip outside CI (under CI a missing binary fails the test)."""
    path = shutil.which("prometheus")
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail("prometheus is not installed (apt-get install prometheus)")
    pytest.skip("prometheus is not installed")


@contextlib.contextmanager
def running_prometheus(target: str, workdir: Path) -> Iterator[str]:
    """Prometheus scraping `target` (host:port) at 1 s, with the project's rule files loaded."""
    rule_files = sorted(str(p) for p in RULES_DIR.glob("*.y*ml")) if RULES_DIR.exists() else []
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files,
        "scrape_configs": [
            {"job_name": "nexus-exporter", "static_configs": [{"targets": [target]}]}
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [prometheus_binary(), f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, workdir)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_ready(url: str, process: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((workdir / "prometheus.log").read_text())
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("prometheus did not become ready")


def api(url: str, path: str, **params: Any) -> Any:
    """A Prometheus HTTP API call; raises with Prometheus's own message on an error."""
    response = httpx.get(f"{url}{path}", params=params, timeout=10)
    body = response.json()
    if body.get("status") != "success":
        raise AssertionError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]
