"""Runs the coverage-guided fuzzer for a bounded number of inputs, seeded with real batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.hostile.payloads import llm_attributes, new_span, request, to_json

FUZZER = Path(__file__).with_name("fuzz_otlp.py")
RUNS = int(os.environ.get("NEXUS_FUZZ_RUNS", "30000"))


def _seed_corpus(directory: Path) -> None:
    spans = [
        new_span(llm_attributes(**{"gen_ai.usage.cost": 0.25, "url.full": "https://x/?key=k"})),
        new_span(llm_attributes(input_tokens="12", output_tokens=3.0)),
        # Not LLM calls: skipped undecoded, unless a call's key shows anywhere in them.
        new_span({"http.request.method": "GET", "url.path": "/v1/chat"}, "GET /v1/chat"),
        new_span({"db.statement": "SELECT 'gen_ai.system'", "db.system": "postgresql"}),
        new_span(
            {"openinference.span.kind": "LLM", "llm.model_name": "m", "llm.token_count.prompt": 9}
        ),
    ]
    message = request(spans)
    (directory / "protobuf").write_bytes(b"\x01\x00" + message.SerializeToString())
    (directory / "json").write_bytes(b"\x00\x00" + json.dumps(to_json(message)).encode())


def test_fuzzer_finds_no_input_that_escapes_as_a_crash_or_an_unstorable_row(
    tmp_path: Path,
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _seed_corpus(corpus)
    result = subprocess.run(
        [sys.executable, str(FUZZER), f"-runs={RUNS}", "-max_len=4096", "-timeout=10",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Done {RUNS} runs" in result.stderr
