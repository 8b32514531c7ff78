"""Normalization of the spellings that the end-to-end tests do not send through the wire."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.ingest.model import RawSpan
from exporter.ingest.normalize import InvalidSpan, to_llm_call

START_NS = 1_763_800_000_123_456_789
GEMINI_URL = "https://generativelanguage.googleapis.com/v1beta/models/x?key=sk-secret&alt=sse"


def _span(attributes: dict[str, Any], **fields: Any) -> RawSpan:
    values: dict[str, Any] = {
        "trace_id": "1" * 32, "span_id": "2" * 16, "parent_span_id": None, "name": "chat m",
        "kind": 3, "start_time_unix_nano": START_NS, "end_time_unix_nano": START_NS + 2_500_000,
        "status_code": 0, "status_message": "", "attributes": attributes,
        "resource_attributes": {"service.name": "svc"},
    }  # fmt: skip
    values.update(fields)
    return RawSpan(**values)


def test_openinference_spelling() -> None:
    call = to_llm_call(_span({
        "openinference.span.kind": "LLM", "llm.provider": "openai", "llm.model_name": "gpt-4o",
        "llm.token_count.prompt": 120, "llm.token_count.completion": 30,
        "llm.token_count.prompt_details.cache_read": 20, "llm.cost.total": 0.0015,
    }))  # fmt: skip
    assert call is not None
    assert (call.provider, call.model, call.input_tokens, call.output_tokens) == (
        "openai",
        "gpt-4o",
        120,
        30,
    )
    assert call.cache_read_tokens == 20 and call.total_tokens == 150
    assert str(call.reported_cost_usd) == "0.0015"


def test_openinference_embedding_spelling() -> None:
    call = to_llm_call(_span({
        "openinference.span.kind": "EMBEDDING", "server.address": "api.openai.com",
        "embedding.model_name": "text-embedding-3-large", "llm.token_count.prompt": 40,
        "llm.token_count.total": 40, "embedding.embeddings.0.embedding.text": "private",
        "embedding.embeddings.0.embedding.vector": [0.25, -0.5],
    }))  # fmt: skip
    assert call is not None
    assert (call.provider, call.model, call.gen_ai_operation) == (
        "openai", "text-embedding-3-large", "embeddings",
    )  # fmt: skip
    assert (call.input_tokens, call.output_tokens, call.total_tokens) == (40, 0, 40)
    assert call.attributes == {"openinference.span.kind": "EMBEDDING"}  # the content left out
    with_content = to_llm_call(_span({
        "openinference.span.kind": "EMBEDDING", "llm.provider": "openai",
        "embedding.model_name": "text-embedding-3-large", "llm.token_count.total": 40,
        "embedding.embeddings.0.embedding.text": "kept",
    }), store_content=True)  # fmt: skip
    assert with_content is not None and (with_content.input_tokens, with_content.total_tokens) == (
        40, 40,
    )  # fmt: skip
    assert with_content.attributes == {
        "openinference.span.kind": "EMBEDDING", "embedding.embeddings.0.embedding.text": "kept",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "operation"), [("llm", "chat"), (" Llm ", "chat"), ("embedding", "embeddings")]
)
def test_openinference_kinds_in_any_case_without_a_provider_key(kind: str, operation: str) -> None:
    call = to_llm_call(_span({
        "openinference.span.kind": kind, "server.address": "api.groq.com",
        "llm.model_name": "llama-3.3-70b-versatile", "llm.token_count.prompt": 9,
        "llm.token_count.completion": 2,
    }))  # fmt: skip
    assert call is not None
    assert (call.provider, call.model, call.gen_ai_operation) == (
        "groq", "llama-3.3-70b-versatile", operation,
    )  # fmt: skip
    assert (call.input_tokens, call.output_tokens, call.total_tokens) == (9, 2, 11)


def test_anthropic_input_exclusive_of_cache_is_made_inclusive() -> None:
    call = to_llm_call(_span({
        "gen_ai.system": "Anthropic", "gen_ai.request.model": "claude-sonnet-4-5",
        "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5,
        "gen_ai.usage.cache_read_input_tokens": 300, "gen_ai.usage.cache_creation_input_tokens": 40,
    }))  # fmt: skip
    assert call is not None
    assert (call.input_tokens, call.cache_read_tokens, call.cache_write_tokens) == (350, 300, 40)
    assert call.total_tokens == 355


@pytest.mark.parametrize(
    ("alias", "expected"),
    [("gemini", "gcp.gemini"), (" Vertex_AI ", "gcp.vertex_ai"),
     ("az.ai.openai", "azure.ai.openai"), ("mistralai", "mistral_ai"), ("xai", "x_ai"),
     ("bedrock", "aws.bedrock"), ("NewCo", "newco"), ("Vertex AI", "gcp.vertex_ai"),
     ("GOOGLE VERTEX AI", "gcp.vertex_ai"), ("Mistral AI", "mistral_ai"),
     ("Azure OpenAI", "azure.ai.openai"), ("Together AI", "together_ai"),
     ("Our Own Gateway", "our own gateway")],
)  # fmt: skip
def test_provider_aliases(alias: str, expected: str) -> None:
    call = to_llm_call(_span({"gen_ai.system": alias, "gen_ai.request.model": "m"}))
    assert call is not None and call.provider == expected


@pytest.mark.parametrize(
    "attributes",
    [
        {"http.request.method": "POST"},
        {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "invoke_agent",
         "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 5},
        {"openinference.span.kind": "CHAIN", "llm.provider": "openai", "llm.model_name": "x"},
        # OpenLIT's pydantic-ai agent run: the run's summed usage, on the agent's model
        {"gen_ai.provider.name": "pydantic_ai", "gen_ai.operation.name": "execute_task",
         "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 3000,
         "gen_ai.usage.output_tokens": 400},
        # ... and its step around one model request: a model, no usage
        {"gen_ai.provider.name": "pydantic_ai", "gen_ai.operation.name": "model_request",
         "gen_ai.request.model": "gpt-4o"},
        {"gen_ai.provider.name": "langgraph", "gen_ai.operation.name": "invoke_workflow",
         "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 5},
        {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "retrieval",
         "gen_ai.request.model": "text-embedding-3-small", "gen_ai.usage.input_tokens": 8},
        # OpenLLMetry's CrewAI spans: the framework's name, the agent's model, the run's usage
        *({"traceloop.span.kind": kind, "gen_ai.system": "crewai", "gen_ai.request.model": "gpt-4o",
           "gen_ai.usage.prompt_tokens": 700, "gen_ai.usage.completion_tokens": 90}
          for kind in ("workflow", "task", "agent", "tool")),
        {"traceloop.span.kind": " Agent ", "gen_ai.system": "openai",
         "gen_ai.request.model": "gpt-4o"},
    ],
    ids=["http", "agent", "openinference-chain", "openlit-agent-run", "openlit-model-request",
         "workflow", "retrieval", "traceloop-workflow", "traceloop-task", "traceloop-agent",
         "traceloop-tool", "traceloop-agent-spelled-otherwise"],
)  # fmt: skip
def test_spans_that_are_not_model_calls_are_ignored(attributes: dict[str, Any]) -> None:
    assert to_llm_call(_span(attributes)) is None


def test_a_traceloop_span_of_another_kind_is_a_call() -> None:
    # OpenLLMetry's own LLM spans carry no traceloop.span.kind; one naming no framework step
    # (`unknown`, a list) is read as any span.
    for kind in ("unknown", ["agent"]):
        call = to_llm_call(_span({
            "traceloop.span.kind": kind, "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o", "gen_ai.usage.prompt_tokens": 700,
            "gen_ai.usage.completion_tokens": 90,
        }))  # fmt: skip
        assert call is not None
        assert (call.provider, call.model, call.input_tokens, call.output_tokens) == (
            "openai", "gpt-4o", 700, 90,
        )  # fmt: skip
        assert call.attributes["traceloop.span.kind"] == kind


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), 2**63, 1.5, "many", True])
def test_bad_token_counts_are_rejected_naming_the_attribute(bad: Any) -> None:
    attributes = {"gen_ai.provider.name": "groq", "gen_ai.request.model": "m",
                  "gen_ai.usage.output_tokens": bad}  # fmt: skip
    with pytest.raises(InvalidSpan, match=r"gen_ai\.usage\.output_tokens"):
        to_llm_call(_span(attributes))


def test_numeric_strings_and_integral_floats_are_counts() -> None:
    attributes = {"gen_ai.provider.name": "groq", "gen_ai.request.model": "m",
                  "gen_ai.usage.input_tokens": "12", "gen_ai.usage.output_tokens": 3.0}  # fmt: skip
    call = to_llm_call(_span(attributes))
    assert call is not None and (call.input_tokens, call.output_tokens) == (12, 3)


def test_secrets_and_content_never_kept_unless_content_opted_in() -> None:
    attributes = {
        "gen_ai.provider.name": "gcp.gemini", "gen_ai.request.model": "gemini-2.5-flash",
        "http.request.header.x-goog-api-key": ["sk-secret"], "api_key": "sk-secret",
        "url.full": GEMINI_URL,
        "gen_ai.input.messages": "[]", "gen_ai.response.finish_reasons": ["stop"],
    }  # fmt: skip
    call = to_llm_call(_span(attributes))
    assert call is not None
    assert "sk-secret" not in repr(call)
    assert call.attributes["url.full"].endswith("/models/x?key=[REDACTED]&alt=sse")
    assert call.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert "gen_ai.input.messages" not in call.attributes
    with_content = to_llm_call(_span(attributes), store_content=True)
    assert with_content is not None and "gen_ai.input.messages" in with_content.attributes


def test_error_status_and_timestamp_truncation() -> None:
    call = to_llm_call(_span({"gen_ai.provider.name": "groq", "gen_ai.request.model": "m"},
                             status_code=2, exception_type="TimeoutError"))  # fmt: skip
    assert call is not None
    assert (call.success, call.error_type) == (False, "TimeoutError")
    assert call.timestamp.microsecond == 123456 and call.duration_ms == 2.5


def test_invalid_ids_are_rejected() -> None:
    with pytest.raises(InvalidSpan, match="trace id"):
        to_llm_call(_span({"gen_ai.provider.name": "groq", "gen_ai.request.model": "m"},
                          trace_id="0" * 32))  # fmt: skip


def test_every_field_comes_from_its_own_attribute() -> None:
    """Each column's value is read from its own attribute, never a neighbour's: every value
    differs here (to_llm_call passes LLMCall's fields by position)."""
    call = to_llm_call(
        _span({
            "gen_ai.provider.name": "groq", "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "req-model", "gen_ai.response.model": "resp-model",
            "gen_ai.usage.input_tokens": 101, "gen_ai.usage.output_tokens": 102,
            "gen_ai.usage.cache_read.input_tokens": 3,
            "gen_ai.usage.cache_creation.input_tokens": 4,
            "nexus.usage.cache_write_1h.input_tokens": 2,
            "openai.response.service_tier": "flex",
            "gen_ai.usage.reasoning.output_tokens": 5, "gen_ai.usage.total_tokens": 999,
            "nexus.operation": "op", "nexus.correlation_id": "corr", "nexus.usage.source": "chars",
            "server.address": "host.example", "gen_ai.response.time_to_first_chunk": 0.25,
            "nexus.cost.usd": 0.5, "error.type": "timeout", "app.kept": "kept",
        }, parent_span_id="3" * 16, status_code=2, status_message="failed")
    )  # fmt: skip
    assert call is not None
    assert (call.trace_id, call.span_id, call.parent_span_id) == ("1" * 32, "2" * 16, "3" * 16)
    assert call.timestamp.isoformat() == "2025-11-22T08:26:40.123456+00:00"
    assert (call.service_name, call.provider, call.model, call.response_model) == (
        "svc", "groq", "req-model", "resp-model",
    )  # fmt: skip
    assert (call.gen_ai_operation, call.operation, call.correlation_id) == ("chat", "op", "corr")
    counts = (call.input_tokens, call.output_tokens, call.cache_read_tokens)
    assert (*counts, call.cache_write_tokens, call.reasoning_tokens, call.total_tokens) == (
        101, 102, 3, 4, 5, 999,
    )  # fmt: skip
    assert (call.cache_write_1h_tokens, call.service_tier) == (2, "flex")
    assert (call.duration_ms, call.success, call.error_type) == (2.5, False, "timeout")
    assert (call.error_message, call.usage_source, call.server_address) == (
        "failed", "chars", "host.example",
    )  # fmt: skip
    assert (call.span_name, call.time_to_first_chunk_ms) == ("chat m", 250.0)
    assert (str(call.reported_cost_usd), call.reported_cost_key) == ("0.5", "nexus.cost.usd")
    assert call.attributes == {"app.kept": "kept"}


@pytest.mark.parametrize(
    ("write_1h", "expected"), [(None, 0), (0, 0), (250, 250), ("250", 250), (400, 300)]
)
def test_one_hour_cache_writes_are_read_within_the_cache_writes(
    write_1h: Any, expected: int
) -> None:
    """Absent is 0 (every write priced as a cache write); more than the writes is cut to them."""
    attributes = {"gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-sonnet-4-5",
                  "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 5,
                  "gen_ai.usage.cache_creation.input_tokens": 300}  # fmt: skip
    if write_1h is not None:
        attributes["nexus.usage.cache_write_1h.input_tokens"] = write_1h
    call = to_llm_call(_span(attributes))
    assert call is not None
    assert (call.cache_write_tokens, call.cache_write_1h_tokens) == (300, expected)
    assert call.attributes == {}


@pytest.mark.parametrize("bad", [-1, 1.5, "many", 10**9])
def test_bad_one_hour_cache_writes_are_rejected_naming_the_attribute(bad: Any) -> None:
    attributes = {"gen_ai.provider.name": "anthropic", "gen_ai.request.model": "m",
                  "gen_ai.usage.cache_creation.input_tokens": 300,
                  "nexus.usage.cache_write_1h.input_tokens": bad}  # fmt: skip
    with pytest.raises(InvalidSpan, match=r"nexus\.usage\.cache_write_1h\.input_tokens"):
        to_llm_call(_span(attributes))
