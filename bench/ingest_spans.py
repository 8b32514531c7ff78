"""The span sets the ingest benchmark sends.

`light`: the spans nexus-otel's own instrumentation sends, 14 attributes in the current GenAI
spelling. `rich`: spans shaped like what other instrumentations send (OpenLLMetry, OpenLIT,
OpenInference): 25 to 40 attributes each, deprecated and current spellings mixed, one span in
three no model call at all (HTTP server and database client spans, which the exporter reads and
ignores), and one span in ten with prompt and completion content of a few kilobytes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from opentelemetry.trace import SpanKind

MODELS = [
    ("groq", "llama-3.3-70b-versatile"),
    ("groq", "llama-3.1-8b-instant"),
    ("anthropic", "claude-sonnet-4-5"),
    ("gcp.gemini", "gemini-2.5-flash"),
    ("openai", "gpt-4o-mini"),
]
OPERATIONS = ["fact_generation", "content_expansion", "caption", "hashtags"]
# The share of rich spans that are no model call, and of all rich spans that carry content.
NOT_LLM_SHARE = 1 / 3
CONTENT_SHARE = 1 / 10
CONTENT_CHARS = (1_500, 4_000)  # per prompt and per completion: "a few kilobytes" together
_WORDS = ("the", "of", "a", "to", "and", "in", "coffee", "morning", "fact", "post", "user")


def light_specs(count: int, start: datetime) -> list[dict[str, Any]]:
    """nexus-otel's own spans: every one an LLM call, 14 attributes."""
    rng = random.Random(7)
    specs = []
    for i in range(count):
        provider, model = rng.choice(MODELS)
        input_tokens = rng.randint(50, 4000)
        specs.append(
            {
                "start": start + timedelta(milliseconds=i),
                "duration_ms": rng.uniform(100, 3000),
                "name": f"chat {model}",
                "attributes": {
                    "gen_ai.provider.name": provider,
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": model,
                    "gen_ai.response.model": model,
                    "gen_ai.response.id": f"resp-{i}",
                    "gen_ai.response.finish_reasons": ["stop"],
                    "gen_ai.usage.input_tokens": input_tokens,
                    "gen_ai.usage.output_tokens": rng.randint(10, 1500),
                    "gen_ai.usage.cache_read.input_tokens": rng.choice([0, 0, input_tokens // 2]),
                    "server.address": "api.example.com",
                    "server.port": 443,
                    "nexus.operation": rng.choice(OPERATIONS),
                    "nexus.correlation_id": f"carousel-{i // 5}",
                    "nexus.usage.source": "response",
                },
            }
        )
    return specs


def rich_specs(count: int, start: datetime) -> list[dict[str, Any]]:
    """Spans as other instrumentations send them (see the module's docstring)."""
    rng = random.Random(11)
    specs = []
    for i in range(count):
        at = start + timedelta(milliseconds=i)
        if rng.random() < NOT_LLM_SHARE:
            specs.append(rng.choice((_http_span, _db_span))(rng, i, at))
            continue
        style = rng.choice((_openllmetry, _openlit, _current))
        spec = style(rng, i, at)
        # CONTENT_SHARE of all spans, drawn among the LLM ones (2 in 3 of the spans).
        if rng.random() < CONTENT_SHARE / (1 - NOT_LLM_SHARE):
            spec["attributes"].update(_content(rng, style))
        specs.append(spec)
    return specs


def _text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    length = 0
    while length < chars:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def _content(rng: random.Random, style: Callable[..., Any]) -> dict[str, Any]:
    prompt = _text(rng, rng.randint(*CONTENT_CHARS))
    completion = _text(rng, rng.randint(*CONTENT_CHARS))
    if style is _openlit:
        return {"gen_ai.content.prompt": prompt, "gen_ai.content.completion": completion}
    return {
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": "You write short facts for social posts.",
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": prompt,
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": completion,
        "gen_ai.completion.0.finish_reason": "stop",
    }


def _common(rng: random.Random, i: int) -> tuple[str, str, int, int, dict[str, Any]]:
    """Provider, model, token counts and the request attributes every style shares."""
    provider, model = rng.choice(MODELS)
    input_tokens, output_tokens = rng.randint(50, 4000), rng.randint(10, 1500)
    request = {
        "gen_ai.request.model": model,
        "gen_ai.request.temperature": rng.choice((0.0, 0.2, 0.7, 1.0)),
        "gen_ai.request.top_p": 1.0,
        "gen_ai.request.max_tokens": rng.choice((256, 512, 1024, 4096)),
        "gen_ai.response.model": model,
        "gen_ai.response.id": f"chatcmpl-{i:012d}",
        "gen_ai.response.finish_reasons": ["stop"],
        "server.address": f"api.{provider.split('.')[-1]}.example.com",
        "server.port": 443,
        "nexus.operation": rng.choice(OPERATIONS),
        "nexus.correlation_id": f"carousel-{i // 5}",
    }
    return provider, model, input_tokens, output_tokens, request


def _spec(at: datetime, name: str, rng: random.Random, attributes: dict[str, Any]) -> Any:
    return {
        "start": at,
        "duration_ms": rng.uniform(100, 3000),
        "name": name,
        "attributes": attributes,
    }


def _openllmetry(rng: random.Random, i: int, at: datetime) -> dict[str, Any]:
    """OpenLLMetry (Traceloop): deprecated gen_ai.system and prompt/completion token names,
    llm.* extras, traceloop.* association properties (copied onto every span; its
    `traceloop.span.kind` is only on the spans of its decorators, none of them a model call)."""
    provider, _, tokens_in, tokens_out, attributes = _common(rng, i)
    attributes.update(
        {
            "gen_ai.system": provider.split(".")[-1].title(),
            "llm.request.type": "chat",
            "gen_ai.usage.prompt_tokens": tokens_in,
            "gen_ai.usage.completion_tokens": tokens_out,
            "llm.usage.total_tokens": tokens_in + tokens_out,
            "gen_ai.usage.cache_read_input_tokens": rng.choice((0, 0, tokens_in // 3)),
            "llm.is_streaming": rng.random() < 0.3,
            "llm.headers": "None",
            "llm.request.functions.0.name": "lookup_fact",
            "llm.request.functions.0.description": "Looks a fact up in the fact store.",
            "gen_ai.openai.api_base": f"https://{attributes['server.address']}/v1/",
            "gen_ai.openai.system_fingerprint": f"fp_{i % 97:08x}",
            "traceloop.workflow.name": "carousel",
            "traceloop.entity.path": "carousel.generate",
            "traceloop.entity.name": "generate_fact",
            "traceloop.association.properties.user_id": f"user-{i % 311}",
            "traceloop.association.properties.session_id": f"session-{i // 40}",
            "llm.frequency_penalty": 0.0,
            "llm.presence_penalty": 0.0,
            "gen_ai.request.seed": 42,
            "http.response.status_code": 200,
        }
    )
    return _spec(at, f"{provider.split('.')[-1]}.chat", rng, attributes)


def _openlit(rng: random.Random, i: int, at: datetime) -> dict[str, Any]:
    """OpenLIT: current token names with gen_ai.system, its own cost and environment fields."""
    provider, model, tokens_in, tokens_out, attributes = _common(rng, i)
    attributes.update(
        {
            "gen_ai.system": provider,
            "gen_ai.operation.name": "chat",
            "gen_ai.usage.input_tokens": tokens_in,
            "gen_ai.usage.output_tokens": tokens_out,
            "gen_ai.usage.total_tokens": tokens_in + tokens_out,
            "gen_ai.request.frequency_penalty": 0.0,
            "gen_ai.request.presence_penalty": 0.0,
            "gen_ai.request.seed": rng.randint(0, 1000),
            "gen_ai.request.stop_sequences": ["\n\n", "END"],
            "gen_ai.request.user": f"user-{i % 311}",
            "gen_ai.request.is_stream": False,
            "gen_ai.environment": "production",
            "gen_ai.application_name": "carousel-writer",
            "gen_ai.sdk.version": "1.33.0",
            "gen_ai.output.type": "text",
            "gen_ai.server.ttft": rng.uniform(0.05, 0.8),
            "gen_ai.server.tbt": rng.uniform(0.001, 0.02),
            "gen_ai.response.system_fingerprint": f"fp_{i % 97:08x}",
            "telemetry.sdk.name": "openlit",
        }
    )
    return _spec(at, f"chat {model}", rng, attributes)


def _current(rng: random.Random, i: int, at: datetime) -> dict[str, Any]:
    """The current conventions (v1.3x), as the OpenTelemetry contrib instrumentations send them,
    with cache and reasoning counts and the old spelling of one count beside the new."""
    provider, model, tokens_in, tokens_out, attributes = _common(rng, i)
    reasoning = rng.choice((0, 0, tokens_out // 4))
    attributes.update(
        {
            "gen_ai.provider.name": provider,
            "gen_ai.operation.name": "chat",
            "gen_ai.usage.input_tokens": tokens_in,
            "gen_ai.usage.output_tokens": tokens_out,
            "gen_ai.usage.cache_read.input_tokens": rng.choice((0, tokens_in // 2)),
            "gen_ai.usage.cache_creation.input_tokens": rng.choice((0, 0, 128)),
            "gen_ai.usage.reasoning.output_tokens": reasoning,
            "gen_ai.usage.reasoning_tokens": reasoning,
            "gen_ai.request.frequency_penalty": 0.0,
            "gen_ai.request.presence_penalty": 0.0,
            "gen_ai.request.stop_sequences": ["\n\n"],
            "gen_ai.request.choice.count": 1,
            "gen_ai.output.type": "text",
            "gen_ai.conversation.id": f"conv-{i // 40}",
            "gen_ai.agent.name": "writer",
            "http.response.status_code": 200,
            "url.scheme": "https",
            "network.protocol.version": "1.1",
        }
    )
    return _spec(at, f"chat {model}", rng, attributes)


def _http_span(rng: random.Random, i: int, at: datetime) -> dict[str, Any]:
    """An HTTP server span (the web request around the calls): no model call."""
    route = rng.choice(("/api/posts/{id}", "/api/carousels", "/health", "/api/users/{id}/feed"))
    return {
        "start": at,
        "duration_ms": rng.uniform(2, 400),
        "name": f"GET {route}",
        "kind": SpanKind.SERVER,
        "attributes": {
            "http.request.method": "GET",
            "http.route": route,
            "http.response.status_code": rng.choice((200, 200, 200, 304, 404)),
            "url.path": route.replace("{id}", str(i % 1000)),
            "url.scheme": "https",
            "url.query": f"page={i % 7}",
            "server.address": "app.example.com",
            "server.port": 443,
            "client.address": f"10.0.{i % 250}.{i % 200}",
            "client.port": 40000 + i % 20000,
            "network.peer.address": "10.0.0.1",
            "network.peer.port": 443,
            "network.protocol.name": "http",
            "network.protocol.version": "1.1",
            "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
            "http.request.header.x_request_id": [f"req-{i:08d}"],
            "http.request.body.size": rng.randint(0, 4000),
            "http.response.body.size": rng.randint(100, 40000),
            "http.request.header.accept": ["application/json"],
            "http.response.header.content_type": ["application/json"],
            "enduser.id": f"user-{i % 311}",
            "session.id": f"session-{i // 40}",
            "deployment.environment": "production",
            "code.function": "handle_request",
            "code.namespace": "app.views",
        },
    }


def _db_span(rng: random.Random, i: int, at: datetime) -> dict[str, Any]:
    """A database client span: no model call."""
    table = rng.choice(("posts", "carousels", "users", "facts"))
    return {
        "start": at,
        "duration_ms": rng.uniform(0.2, 40),
        "name": f"SELECT app.{table}",
        "attributes": {
            "db.system": "postgresql",
            "db.system.name": "postgresql",
            "db.name": "app",
            "db.namespace": "app",
            "db.user": "app",
            "db.operation": "SELECT",
            "db.operation.name": "SELECT",
            "db.collection.name": table,
            "db.sql.table": table,
            "db.statement": f"SELECT * FROM {table} WHERE id = $1 AND owner_id = $2 LIMIT 50",
            "db.query.text": f"SELECT * FROM {table} WHERE id = $1 AND owner_id = $2 LIMIT 50",
            "db.response.returned_rows": rng.randint(0, 50),
            "server.address": "db.internal",
            "server.port": 5432,
            "network.peer.address": "10.0.1.5",
            "network.peer.port": 5432,
            "network.transport": "tcp",
            "network.type": "ipv4",
            "db.connection_string": "postgresql://db.internal:5432/app",
            "db.client.connections.pool.name": "app-pool",
            "db.instance.id": "db-1",
            "code.function": "fetch_rows",
            "code.namespace": "app.repository",
            "code.lineno": 120 + i % 40,
            "thread.id": 1 + i % 8,
            "thread.name": f"worker-{i % 8}",
        },
    }


SPAN_SETS: dict[str, Callable[[int, datetime], list[dict[str, Any]]]] = {
    "light": light_specs,
    "rich": rich_specs,
}
SPAN_SET_TITLES = {
    "light": "nexus-otel's own spans (14 attributes)",
    "rich": "other instrumentations' spans (25-40 attributes, 1 in 3 not LLM, 1 in 10 content)",
}
