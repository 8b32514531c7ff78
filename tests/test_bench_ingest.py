"""The ingest benchmark measures what it says: both span sets, each run's ratio against the
concurrent COPY, the minimum against the target and the median against the aim, and the CPU
by stage; and the attribute-rich set is shaped as other instrumentations send spans."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

_ROOT = Path(__file__).resolve().parent.parent
_PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system")
_CONTENT_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "gen_ai.content.")


def test_the_rich_span_set_is_shaped_as_other_instrumentations_send_spans() -> None:
    from bench.ingest_spans import rich_specs  # here: a tree without it fails this test alone

    specs = rich_specs(3000, datetime(2026, 12, 6, tzinfo=UTC))
    sizes = {len(s["attributes"]) for s in specs}
    assert min(sizes) >= 25 and max(sizes) <= 40, sizes
    not_llm = [s for s in specs if not any(k in s["attributes"] for k in _PROVIDER_KEYS)]
    content = [s for s in specs if any(k.startswith(_CONTENT_PREFIXES) for k in s["attributes"])]
    # Drawn at random (one seed): within 3 points of one in three and of one in ten.
    assert abs(len(not_llm) / len(specs) - 1 / 3) < 0.03
    assert abs(len(content) / len(specs) - 1 / 10) < 0.03
    spellings = {k for s in specs for k in s["attributes"]}
    assert {"gen_ai.system", "gen_ai.provider.name"} <= spellings  # deprecated and current
    assert {"gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens"} <= spellings
    sizes_of_content = [
        len(v) for s in content for k, v in s["attributes"].items() if "content" in k
    ]
    assert max(sizes_of_content) >= 1500  # a few kilobytes, prompt and completion
    # Every span naming a provider is a model call the exporter stores: a span it skips would
    # make the set cheaper than what instrumentations send (an OpenLLMetry LLM span once carried
    # `traceloop.span.kind`, which only its decorators' spans have).
    from exporter.ingest import otlp
    from exporter.ingest.normalize import to_llm_call
    from tests.ingest.otlp_helpers import make_spans, protobuf_body

    request = otlp.parse_request(protobuf_body(make_spans(specs)), otlp.PROTOBUF)
    calls = [to_llm_call(raw) for raw in otlp.iter_raw_spans(request)]
    assert sum(call is not None for call in calls) == len(specs) - len(not_llm)


def test_the_ingest_benchmark_prints_both_sets_every_run_minimum_median_and_stages(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(_ROOT), "COLUMNS": "250"}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "ingest", "--spans", "2000", "--runs", "2"],
        cwd=_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = done.stdout
    assert done.returncode in (0, 1), done.stderr  # 1: a target missed, as the table says
    for name in ("light", "rich"):
        for run in (1, 2):
            assert re.search(
                rf"{name} run {run}: plain COPY [\d,]+ rows/s, nexus-otel [\d,]+ rows/s"
                rf" \([\d,]+ spans/s\) = \d\.\d\d",
                out,
            ), out
        assert re.search(rf"ingest, {name} spans, OTLP protobuf x1000, 2 runs: minimum", out)
        assert re.search(rf"ingest, {name} spans, OTLP protobuf x1000, 2 runs: median", out)
    assert out.count(">= 0.60 every run") == 2 and out.count("aim >= 0.75") == 2
    assert out.count("CPU per span by stage, one process (us): decode ") == 2
    for stage in ("normalize", "price", "encode", "metrics"):
        assert out.count(f", {stage} ") >= 2, stage
    assert out.count("decode workers ") == 2 and out.count("PostgreSQL ") >= 2
    # PostgreSQL's CPU against the plain COPY's, the measure a write path is judged by.
    assert len(re.findall(r"for the plain COPY of the same rows: \d+\.\d\dx\)", out)) == 2
    assert done.returncode == (1 if "│ NO │" in out else 0)
