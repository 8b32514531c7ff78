"""A provider's own API host names its calls the same way on both sides: the instrumentation,
from the request it sees, and the exporter, from the server address on another library's span."""

from __future__ import annotations

import httpx
import pytest

from exporter.ingest.model import RawSpan
from exporter.ingest.normalize import to_llm_call
from nexus_otel._detect import detect

START_NS = 1_763_800_000_123_456_789
# host → (a model-call path on it, the provider its calls are stored under)
HOSTS = {
    "api.groq.com": ("/openai/v1/chat/completions", "groq"),
    "api.openai.com": ("/v1/chat/completions", "openai"),
    "api.anthropic.com": ("/v1/messages", "anthropic"),
    "generativelanguage.googleapis.com": (
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "gcp.gemini",
    ),
    "europe-west4-aiplatform.googleapis.com": (
        "/v1/projects/p/locations/europe-west4/publishers/google/models/gemini-2.5-flash"
        ":generateContent",
        "gcp.vertex_ai",
    ),
}


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_the_host_names_the_provider_on_both_sides(host: str) -> None:
    path, provider = HOSTS[host]
    target = detect(httpx.Request("POST", f"https://{host}{path}"), {})
    assert target is not None and target.provider == provider
    span = RawSpan(
        trace_id="1" * 32,
        span_id="2" * 16,
        parent_span_id=None,
        name="llm",
        kind=3,
        start_time_unix_nano=START_NS,
        end_time_unix_nano=START_NS + 1_000_000,
        status_code=0,
        status_message="",
        resource_attributes={"service.name": "svc"},
        attributes={
            "openinference.span.kind": "LLM",
            "server.address": host,
            "llm.model_name": "gemini-2.5-flash",
            "llm.token_count.prompt": 10,
        },
    )
    call = to_llm_call(span)
    assert call is not None and call.provider == provider
