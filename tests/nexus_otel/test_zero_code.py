"""Zero-code instrumentation: `opentelemetry-instrument python app.py` (with opentelemetry-distro
and the standard OTEL_* variables) loads the `nexus_otel` entry point, and an app that never imports
nexus_otel has its LLM calls stored as `nexus_otel.instrument()` stores them: one row per call,
one GenAI span per call and no HTTP span, whichever instrumentor the command loads first.

The command finds instrumentors through installed distributions' entry points. Each run is given
two on its PYTHONPATH, in the order under test: this project's, as pyproject.toml declares it
(so a stale install of the project cannot hide a missing or wrong declaration), and the installed
httpx instrumentation's, copied as it is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from exporter.simulator import ProviderSimulator
from tests.nexus_otel.clients import MODELS
from tests.support import ExporterProcess, query

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINT = "nexus_otel"
GROUP = "opentelemetry_instrumentor"
# Per provider, the usage the simulator reports for the call (input, output tokens).
USAGE = {"groq": (1200, 300), "anthropic": (900, 250), "gcp.gemini": (700, 150)}
# Other GenAI instrumentations a development environment may have installed (OpenLLMetry's Groq
# for the benchmark, its Anthropic for the test of two instrumentations on one call): left out,
# so each run loads the same instrumentors everywhere.
OTHER_GENAI_INSTRUMENTORS = ["groq", "anthropic"]
SIMULATOR_URLS = ("groq_base_url", "openai_base_url", "anthropic_base_url", "gemini_base_url")

APP = """
import json, sys, types
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tests.nexus_otel.clients import Call, run

# What the provider the command configured records, seen from inside: our span, any HTTP span.
seen = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(seen))
sim = types.SimpleNamespace(**json.loads(sys.argv[1]))  # the simulator's base URLs
for provider, usage in json.loads(sys.argv[2]).items():
    run(sim, Call(provider, False, False, {"x-sim-usage": usage}))
trace.get_tracer_provider().force_flush()
print(json.dumps([[s.name, s.instrumentation_scope.name] for s in seen.get_finished_spans()]))
"""


def write_dist(directory: Path, name: str, metadata_text: str, entry_points: str) -> Path:
    dist_info = directory / f"{name.replace('-', '_')}-0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(metadata_text)
    (dist_info / "entry_points.txt").write_text(entry_points)
    return directory


@pytest.fixture(scope="module")
def entry_point_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("entry-points")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    instrumentors = declared.get("entry-points", {}).get(GROUP, {})
    lines = "".join(f"{name} = {target}\n" for name, target in instrumentors.items())
    ours = write_dist(
        base / "ours", "nexus-otel",
        f"Metadata-Version: 2.1\nName: nexus-otel\nVersion: {declared['version']}\n",
        f"[{GROUP}]\n{lines}",
    )  # fmt: skip
    httpx = metadata.distribution("opentelemetry-instrumentation-httpx")
    theirs = write_dist(
        base / "httpx", "opentelemetry-instrumentation-httpx",
        httpx.read_text("METADATA") or "", httpx.read_text("entry_points.txt") or "",
    )  # fmt: skip
    return {"ours": ours, "httpx": theirs}


def run_app(
    tmp_path: Path,
    simulator: ProviderSimulator,
    exporter: ExporterProcess,
    first: Path,
    then: Path,
    **env: str,
) -> list[list[str]]:
    """Runs the app under `opentelemetry-instrument`; returns the spans the app's provider saw."""
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(APP))
    urls = {name: getattr(simulator, name) for name in SIMULATOR_URLS}
    usage = {provider: f"input={i},output={o}" for provider, (i, o) in USAGE.items()}
    command = shutil.which("opentelemetry-instrument", path=str(Path(sys.executable).parent))
    assert command is not None, "opentelemetry-instrument: install the dev extra"
    python_path = os.pathsep.join([str(first), str(then), str(ROOT)])
    result = subprocess.run(
        [command, sys.executable, str(app), json.dumps(urls), json.dumps(usage)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": python_path, **env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    spans: list[list[str]] = json.loads(result.stdout.strip().splitlines()[-1])
    return spans


def standard_env(service: str, exporter: ExporterProcess, disabled: list[str]) -> dict[str, str]:
    return {
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": exporter.base_url,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRICS_EXPORTER": "none",  # the exporter takes traces only
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": ",".join(disabled),
    }


def rows(database_url: str, service: str) -> list[tuple[Any, ...]]:
    return query(
        database_url,
        "SELECT provider, model, input_tokens, output_tokens FROM api_calls"
        " WHERE service_name = %s ORDER BY provider",
        (service,),
    )


@pytest.mark.parametrize("first", ["ours", "httpx"], ids=["ours-first", "httpx-first"])
def test_opentelemetry_instrument_records_each_call_once(
    tmp_path: Path,
    simulator: ProviderSimulator,
    exporter: ExporterProcess,
    database_url: str,
    entry_point_dirs: dict[str, Path],
    first: str,
) -> None:
    service = f"zero-code-{uuid.uuid4().hex[:8]}"
    then = "httpx" if first == "ours" else "ours"
    env = standard_env(service, exporter, OTHER_GENAI_INSTRUMENTORS)
    spans = run_app(
        tmp_path, simulator, exporter, entry_point_dirs[first], entry_point_dirs[then], **env
    )
    # One GenAI span per call and no HTTP span. Anthropic's SDK traces its own calls into the
    # global provider: that span is the call's, enriched, so it still counts once.
    assert sorted(spans) == [
        ["anthropic.messages.create", "com.anthropic.sdk.python"],
        ["chat llama-3.3-70b-versatile", "nexus_otel"],
        ["generate_content gemini-2.5-flash", "nexus_otel"],
    ]
    # Exported by the distro's own OTLP exporter, flushed at the app's exit; the exporter
    # answers an export once its rows are stored.
    assert rows(database_url, service) == [
        ("anthropic", MODELS["anthropic"], *USAGE["anthropic"]),
        ("gcp.gemini", MODELS["gcp.gemini"], *USAGE["gcp.gemini"]),
        ("groq", MODELS["groq"], *USAGE["groq"]),
    ]


def test_disabled_instrumentations_leave_it_out(
    tmp_path: Path,
    simulator: ProviderSimulator,
    exporter: ExporterProcess,
    database_url: str,
    entry_point_dirs: dict[str, Path],
) -> None:
    service = f"zero-code-off-{uuid.uuid4().hex[:8]}"
    env = standard_env(service, exporter, [ENTRY_POINT, *OTHER_GENAI_INSTRUMENTORS])
    # The Anthropic SDK traces its own calls, with their usage, whatever is disabled: off too.
    env["ANTHROPIC_OPEN_TELEMETRY"] = "false"
    spans = run_app(
        tmp_path, simulator, exporter, entry_point_dirs["ours"], entry_point_dirs["httpx"], **env
    )
    # Only the httpx instrumentation's HTTP span of each call: nothing of ours.
    assert spans == [["POST", "opentelemetry.instrumentation.httpx"]] * 3
    assert rows(database_url, service) == []
