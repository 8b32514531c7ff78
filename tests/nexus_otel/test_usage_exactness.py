"""Usage fields the providers report beside the plain counts, read through the official SDKs from
a server that answers with the provider's own wire format: every billed token is counted, and the
handle's cost is the list price of exactly those tokens."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import openai
from google import genai
from google.genai import types
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import nexus_otel
from tests.nexus_otel.clients import GEMINI_KEY
from tests.nexus_otel.scripted_server import ScriptedServer

Spans = Callable[..., InMemorySpanExporter]
GEMINI_MODEL = "gemini-2.5-flash"  # genai-prices: $0.30 input, $2.50 output, per million tokens
# A grounded answer: Google Search results fed the model 3,000 tool-use prompt tokens, which
# `promptTokenCount` leaves out and `totalTokenCount` counts; they are billed as input.
GEMINI_USAGE = {
    "promptTokenCount": 1_000,
    "candidatesTokenCount": 200,
    "thoughtsTokenCount": 50,
    "toolUsePromptTokenCount": 3_000,
    "totalTokenCount": 4_250,
}
GEMINI_COST = (4_000 * Decimal("0.30") + 250 * Decimal("2.50")) / 1_000_000  # $0.001825


def gemini_client(server: ScriptedServer) -> genai.Client:
    http = types.HttpOptions(base_url=server.base_url, api_version="v1beta",
                             retry_options=types.HttpRetryOptions(attempts=1))  # fmt: skip
    return genai.Client(api_key=GEMINI_KEY, http_options=http)


def gemini_chunk(text: str, usage: dict[str, int], finish: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
    if finish:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": GEMINI_MODEL}


def span_usage(memory: InMemorySpanExporter) -> tuple[int, int, int]:
    [span] = memory.get_finished_spans()
    attrs = dict(span.attributes or {})
    return (
        attrs["gen_ai.usage.input_tokens"],  # type: ignore[return-value]
        attrs["gen_ai.usage.output_tokens"],
        attrs["gen_ai.usage.reasoning.output_tokens"],
    )


def test_gemini_tool_use_prompt_tokens_are_input(spans: Spans) -> None:
    memory = spans()
    with ScriptedServer() as server:
        server.parts = [json.dumps(gemini_chunk("Grounded.", GEMINI_USAGE, True)).encode()]
        server.headers = {"content-type": "application/json"}
        server.release.set()
        client = gemini_client(server)  # kept: a client collected mid-call closes its transport
        with nexus_otel.operation("grounded") as op:
            response = client.models.generate_content(
                model=GEMINI_MODEL, contents="Who won yesterday?"
            )
    assert response.usage_metadata is not None
    assert response.usage_metadata.tool_use_prompt_token_count == 3_000
    assert span_usage(memory) == (4_000, 250, 50)
    [call] = op.calls
    assert call.input_tokens + call.output_tokens == GEMINI_USAGE["totalTokenCount"]
    assert op.cost_usd == GEMINI_COST


def test_gemini_stream_tool_use_prompt_tokens_are_input(spans: Spans) -> None:
    memory = spans()
    early = {"promptTokenCount": 1_000, "toolUsePromptTokenCount": 3_000, "totalTokenCount": 4_000}
    chunks = [gemini_chunk("Groun", early, False), gemini_chunk("ded.", GEMINI_USAGE, True)]
    with ScriptedServer() as server:
        server.parts = [f"data: {json.dumps(chunk)}\r\n\r\n".encode() for chunk in chunks]
        server.headers = {"content-type": "text/event-stream"}
        server.release.set()
        client = gemini_client(server)
        with nexus_otel.operation("grounded") as op:
            stream = client.models.generate_content_stream(
                model=GEMINI_MODEL, contents="Who won yesterday?"
            )
            assert "".join(chunk.text or "" for chunk in stream) == "Grounded."
    assert span_usage(memory) == (4_000, 250, 50)
    assert op.cost_usd == GEMINI_COST


# xAI's `completion_tokens` leaves the reasoning out (`total_tokens` is prompt + completion +
# reasoning), and bills it as output: genai-prices' x-ai extractor adds the two.
XAI_USAGE = {
    "prompt_tokens": 1_000,
    "completion_tokens": 100,
    "total_tokens": 2_000,
    "prompt_tokens_details": {"text_tokens": 1_000, "cached_tokens": 200},
    "completion_tokens_details": {"reasoning_tokens": 900},
}
# grok-4-0709 in genai-prices: $3 input, $0.75 cache read, $15 output, per million tokens.
XAI_COST = (800 * Decimal(3) + 200 * Decimal("0.75") + 1_000 * Decimal(15)) / 1_000_000


def xai_client(server: ScriptedServer) -> openai.OpenAI:
    return openai.OpenAI(api_key="xai-test", base_url=server.base_url + "/v1", max_retries=0)


def xai_span(memory: InMemorySpanExporter) -> dict[str, Any]:
    [span] = memory.get_finished_spans()
    return dict(span.attributes or {})


def in_out(attrs: dict[str, Any]) -> tuple[int, int]:
    return attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]


def test_xai_reasoning_outside_completion_tokens_is_output(spans: Spans) -> None:
    with ScriptedServer() as server:
        memory = spans(providers={server.base_url.removeprefix("http://"): "x_ai"})
        reply = {"id": "x1", "object": "chat.completion", "created": 1, "model": "grok-4-0709",
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": "42"}}],
                 "usage": XAI_USAGE}  # fmt: skip
        server.parts = [json.dumps(reply).encode()]
        server.headers = {"content-type": "application/json"}
        server.release.set()
        with nexus_otel.operation("think") as op:
            response = xai_client(server).chat.completions.create(
                model="grok-4", messages=[{"role": "user", "content": "6 x 7?"}]
            )
    assert response.usage is not None and response.usage.total_tokens == 2_000
    attrs = xai_span(memory)
    assert attrs["gen_ai.provider.name"] == "x_ai"
    assert in_out(attrs) == (1_000, 1_000)
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 900
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 200
    assert op.total_tokens == 2_000 and op.cost_usd == XAI_COST


def test_xai_stream_reasoning_outside_completion_tokens_is_output(spans: Spans) -> None:
    base = {"id": "x2", "object": "chat.completion.chunk", "created": 1, "model": "grok-4-0709"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "42"}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": XAI_USAGE},
    ]
    with ScriptedServer() as server:
        memory = spans(providers={server.base_url.removeprefix("http://"): "x_ai"})
        server.parts = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [
            b"data: [DONE]\n\n"
        ]
        server.headers = {"content-type": "text/event-stream"}
        server.release.set()
        with nexus_otel.operation("think") as op:
            stream = xai_client(server).chat.completions.create(
                model="grok-4", messages=[{"role": "user", "content": "6 x 7?"}], stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "42"
    attrs = xai_span(memory)
    assert in_out(attrs) == (1_000, 1_000)
    assert op.cost_usd == XAI_COST


def test_openai_reasoning_inside_completion_tokens_is_counted_once(spans: Spans) -> None:
    """OpenAI's (and Groq's) completion_tokens include the reasoning: total is prompt +
    completion."""
    usage = {**XAI_USAGE, "completion_tokens": 1_000, "total_tokens": 2_000}
    with ScriptedServer() as server:
        memory = spans()
        reply = {"id": "o1", "object": "chat.completion", "created": 1, "model": "o3",
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": "42"}}],
                 "usage": usage}  # fmt: skip
        server.parts = [json.dumps(reply).encode()]
        server.headers = {"content-type": "application/json"}
        server.release.set()
        client = openai.OpenAI(api_key="sk-test", base_url=server.base_url + "/v1", max_retries=0)
        client.chat.completions.create(model="o3", messages=[{"role": "user", "content": "6 x 7?"}])
    attrs = xai_span(memory)
    assert in_out(attrs) == (1_000, 1_000)
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 900
