"""A provider's own API host names its calls the same way on both sides: the instrumentation,
from the request it sees, and the exporter, from the server address on another library's span."""

from __future__ import annotations

import httpx
import pytest

from exporter.ingest.model import RawSpan
from exporter.ingest.normalize import to_llm_call
from nexus_otel._detect import Detector, detect

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
    "api.deepseek.com": ("/chat/completions", "deepseek"),
    "api.mistral.ai": ("/v1/chat/completions", "mistral_ai"),
    "api.x.ai": ("/v1/chat/completions", "x_ai"),
    "api.together.xyz": ("/v1/chat/completions", "together_ai"),
    "api.together.ai": ("/v1/chat/completions", "together_ai"),
    "api.fireworks.ai": ("/inference/v1/chat/completions", "fireworks"),
    "openrouter.ai": ("/api/v1/chat/completions", "openrouter"),
    "res.openai.azure.com": ("/openai/deployments/gpt4o/chat/completions", "azure.ai.openai"),
    "res.cognitiveservices.azure.com": (
        "/openai/deployments/gpt4o/chat/completions",
        "azure.ai.openai",
    ),
    # An Azure AI Foundry host outside `/openai/`: the Azure AI model inference API.
    "res.services.ai.azure.com": ("/models/chat/completions", "azure.ai.inference"),
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


def test_the_foundry_host_serves_azure_openai_under_openai() -> None:
    url = "https://res.services.ai.azure.com/openai/deployments/gpt4o/chat/completions"
    target = detect(httpx.Request("POST", url), {})
    assert target is not None and target.provider == "azure.ai.openai"


def test_the_app_names_its_own_servers_whatever_the_sdk_says() -> None:
    """An OpenAI-compatible server named by `providers=` is that provider, though the openai SDK
    calls it (User-Agent `OpenAI/Python`); the name is stored as the exporter stores it."""
    request = httpx.Request("POST", "https://llm.internal:8443/v1/chat/completions",
                            headers={"User-Agent": "OpenAI/Python 3.54.0"})  # fmt: skip
    assert detect(request, {}).provider == "openai"  # type: ignore[union-attr]
    named = Detector({"llm.internal:8443": "Together"}).target(httpx.HTTPTransport(), request)
    assert named is not None and named.provider == "together_ai"


def test_azure_openai_sdk_names_itself() -> None:
    request = httpx.Request("POST", "https://gateway.example/openai/deployments/x/chat/completions",
                            headers={"User-Agent": "AzureOpenAI/Python 3.54.0"})  # fmt: skip
    target = detect(request, {})
    assert target is not None and (target.provider, target.wire.request_info(
        target.path, {}).model) == ("azure.ai.openai", "x")  # fmt: skip
