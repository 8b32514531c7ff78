"""The Responses API's spans, read from an in-memory exporter: what each call says, which requests
are calls, streams passed through as they arrive, failures reported inside a 200 answer."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from exporter.simulator import ProviderSimulator
from nexus_otel import _openai_responses
from nexus_otel._detect import detect
from tests.nexus_otel.clients import OPENAI_KEY
from tests.nexus_otel.scripted_server import ScriptedServer

Spans = Callable[..., InMemorySpanExporter]
USAGE = {"x-sim-usage": "input=900,output=250,cache_read=400,reasoning=50"}
WIRE_USAGE = {"input_tokens": 70, "input_tokens_details": {"cached_tokens": 20},
              "output_tokens": 30, "output_tokens_details": {"reasoning_tokens": 10},
              "total_tokens": 100}  # fmt: skip


def gen_ai_spans(memory: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in memory.get_finished_spans()
            if s.attributes and "gen_ai.provider.name" in s.attributes]  # fmt: skip


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=OPENAI_KEY, base_url=base_url, max_retries=0, timeout=20.0)


def test_span_of_a_response(spans: Spans, simulator: ProviderSimulator) -> None:
    memory = spans()
    answer = sdk(simulator.openai_base_url).responses.create(
        model="o4-mini", instructions="Be brief.", input="Octopus facts", max_output_tokens=800,
        temperature=0.5, extra_headers=USAGE)  # fmt: skip
    [span] = memory.get_finished_spans()  # no HTTP span under it
    assert span.name == "chat o4-mini" and span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    attrs = dict(span.attributes or {})
    assert {k: v for k, v in attrs.items() if k != "server.port"} == {
        "gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
        "server.address": "127.0.0.1", "gen_ai.request.model": "o4-mini",
        "gen_ai.request.max_tokens": 800, "gen_ai.request.temperature": 0.5,
        "gen_ai.usage.input_tokens": 900, "gen_ai.usage.output_tokens": 250,
        "gen_ai.usage.cache_read.input_tokens": 400,
        "gen_ai.usage.reasoning.output_tokens": 50, "gen_ai.response.model": "o4-mini",
        "gen_ai.response.id": answer.id, "gen_ai.response.finish_reasons": ("completed",),
        "openai.response.service_tier": "default",
    }  # fmt: skip


def test_content_capture(spans: Spans, simulator: ProviderSimulator) -> None:
    memory = spans(capture_content=True)
    answer = sdk(simulator.openai_base_url).responses.create(
        model="gpt-4.1", instructions="Be brief.", input="Octopus facts", extra_headers=USAGE
    )
    [span] = gen_ai_spans(memory)
    attrs = dict(span.attributes or {})
    assert json.loads(str(attrs["gen_ai.input.messages"])) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Octopus facts"},
    ]
    output = json.loads(str(attrs["gen_ai.output.messages"]))
    assert output[0]["parts"][0]["content"] == answer.output_text


def test_requests_that_are_no_call_make_no_gen_ai_span(
    spans: Spans, simulator: ProviderSimulator
) -> None:
    memory = spans()
    app = sdk(simulator.openai_base_url)
    created = app.responses.create(model="o4-mini", input="hi", background=True,
                                   extra_headers=USAGE)  # fmt: skip
    app.responses.retrieve(created.id)
    app.responses.input_tokens.count(model="o4-mini", input="hi")
    list(app.responses.input_items.list(created.id))
    app.responses.cancel(created.id)
    app.responses.delete(created.id)
    [call] = gen_ai_spans(memory)  # the background create, only
    assert call.attributes and call.attributes["gen_ai.response.finish_reasons"] == ("queued",)
    assert call.attributes["nexus.usage.source"] in {"tiktoken", "chars"}
    others = [(s.name, s.kind) for s in memory.get_finished_spans() if s is not call]
    assert others == [("GET", SpanKind.CLIENT), ("POST", SpanKind.CLIENT),
                      ("GET", SpanKind.CLIENT), ("POST", SpanKind.CLIENT),
                      ("DELETE", SpanKind.CLIENT)]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "is_call"),
    [("/openai/v1/responses", True), ("/v1/responses/", True), ("/v1/responses/compact", True),
     ("/v1/responses/input_tokens", False), ("/v1/responses/resp_1/cancel", False),
     ("/v1/responses/resp_1", False), ("/v1/responses/resp_1/input_items", False)],
)  # fmt: skip
def test_which_posts_are_calls(path: str, is_call: bool) -> None:
    target = detect(httpx.Request("POST", f"https://api.openai.com{path}"), {})
    assert (target is not None and target.wire is _openai_responses) is is_call


def test_groqs_responses_endpoint_is_groq_whatever_sdk_calls_it() -> None:
    request = httpx.Request("POST", "https://api.groq.com/openai/v1/responses",
                            headers={"user-agent": "OpenAI/Python 3.63.0"})  # fmt: skip
    target = detect(request, {})
    assert target is not None
    assert (target.provider, target.wire) == ("groq", _openai_responses)


def events(*payloads: dict[str, Any]) -> list[bytes]:
    return [f"event: {p['type']}\ndata: {json.dumps(p)}\n\n".encode() for p in payloads]


def response(status: str, **fields: Any) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "created_at": 1, "model": "gpt-4.1-2025-04-14",
            "status": status, "output": [], "error": None, "incomplete_details": None,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": None,
            **fields}  # fmt: skip


def delta(text: str) -> dict[str, Any]:
    return {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
            "content_index": 0, "delta": text, "logprobs": [], "sequence_number": 1}  # fmt: skip


def stream_from(server: ScriptedServer, **kwargs: Any) -> list[Any]:
    """A Responses stream through the SDK; the server holds back all but its first part until
    the app has seen the first event."""
    received = []
    answer = sdk(server.base_url + "/v1").responses.create(
        model="gpt-4.1", input="hi", stream=True, **kwargs
    )
    for event in answer:
        if not received:
            assert not server.release.is_set()  # the first event came on its own
            server.release.set()
        received.append(event)
    return received


def test_stream_passes_through_as_it_arrives(spans: Spans) -> None:
    memory = spans()
    first = events({"type": "response.created", "sequence_number": 0,
                    "response": response("in_progress")})  # fmt: skip
    done = response("completed", usage=WIRE_USAGE)
    rest = events(delta("Hi"), {"type": "response.completed", "sequence_number": 2,
                                "response": done})  # fmt: skip
    with ScriptedServer() as server:
        server.parts = [*first, *rest]
        server.headers = {"content-type": "text/event-stream"}
        received = stream_from(server)
    assert [e.type for e in received] == [
        "response.created", "response.output_text.delta", "response.completed"]  # fmt: skip
    [span] = gen_ai_spans(memory)
    attrs = dict(span.attributes or {})
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (70, 30)
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 20
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 10
    assert attrs["gen_ai.response.model"] == "gpt-4.1-2025-04-14"
    assert float(attrs["nexus.response.time_to_first_chunk"]) > 0  # type: ignore[arg-type]


def test_a_long_final_event_is_still_read(spans: Spans) -> None:
    """The final event repeats the whole response (instructions and output text included): far
    longer than the stream's tail the instrumentation first looks at."""
    memory = spans()
    text = "octopus " * 2000
    message = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip
    done = response("completed", usage=WIRE_USAGE, instructions="x" * 9000, output=[message])
    with ScriptedServer() as server:
        server.parts = [
            *events({"type": "response.created", "sequence_number": 0,
                     "response": response("in_progress")}),
            *events(delta(text), {"type": "response.completed", "sequence_number": 2,
                                  "response": done}),
        ]  # fmt: skip
        server.headers = {"content-type": "text/event-stream"}
        stream_from(server)
    [span] = gen_ai_spans(memory)
    attrs = dict(span.attributes or {})
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (70, 30)
    assert "nexus.usage.source" not in attrs  # the provider's counts, not an estimate


def test_a_failed_response_is_a_failed_call_with_its_usage(spans: Spans) -> None:
    """`response.failed` arrives in a 200 stream: the call failed, and what it used is kept."""
    memory = spans()
    error = {"code": "server_error", "message": "The model failed to generate a response."}
    failed = response("failed", usage=WIRE_USAGE, error=error)
    with ScriptedServer() as server:
        server.parts = events(
            {"type": "response.created", "sequence_number": 0, "response": response("queued")},
            {"type": "response.failed", "sequence_number": 1, "response": failed},
        )
        server.headers = {"content-type": "text/event-stream"}
        received = stream_from(server)
    assert received[-1].type == "response.failed"  # the SDK raises nothing
    [span] = gen_ai_spans(memory)
    attrs = dict(span.attributes or {})
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "The model failed to generate a response."
    assert attrs["error.type"] == "server_error"
    assert attrs["gen_ai.response.finish_reasons"] == ("failed",)
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (70, 30)


def test_an_error_event_ends_a_stream_as_a_failed_call(spans: Spans) -> None:
    memory = spans()
    error = {"type": "error", "code": "rate_limit_exceeded", "message": "Slow down.",
             "param": None, "sequence_number": 1}  # fmt: skip
    with ScriptedServer() as server:
        server.parts = events(
            {"type": "response.created", "sequence_number": 0,
             "response": response("in_progress")}, error)  # fmt: skip
        server.headers = {"content-type": "text/event-stream"}
        stream_from(server)
    [span] = gen_ai_spans(memory)
    attrs = dict(span.attributes or {})
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "Slow down."
    assert attrs["error.type"] == "rate_limit_exceeded"
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (0, 0)


def test_a_compaction_is_a_call(spans: Spans) -> None:
    """`responses.compact()` runs the model over a conversation and bills it."""
    memory = spans()
    compacted = {"id": "cmp_1", "object": "response.compaction", "created_at": 1, "output": [],
                 "usage": WIRE_USAGE}  # fmt: skip
    with ScriptedServer() as server:
        server.parts = [json.dumps(compacted).encode()]
        server.headers = {"content-type": "application/json"}
        server.release.set()
        sdk(server.base_url + "/v1").responses.compact(model="gpt-4.1", input="a long chat")
    [span] = gen_ai_spans(memory)
    attrs = dict(span.attributes or {})
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (70, 30)
    assert attrs["gen_ai.request.model"] == "gpt-4.1" and "nexus.usage.source" not in attrs


def test_a_refused_request_is_a_failed_call(spans: Spans, simulator: ProviderSimulator) -> None:
    """A 400 with OpenAI's JSON error body: the span names the status and carries the message."""
    memory = spans()
    with pytest.raises(openai.BadRequestError):
        sdk(simulator.openai_base_url).responses.create(model="o4-mini", input=[])
    [span] = gen_ai_spans(memory)
    attrs = dict(span.attributes or {})
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "Missing required parameter: 'input'."
    assert (attrs["error.type"], attrs["http.response.status_code"]) == ("400", 400)
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (0, 0)


def test_a_cut_stream_is_estimated_and_failed(spans: Spans, simulator: ProviderSimulator) -> None:
    """Cut after its first text: no final event, so no status and no usage from the provider."""
    memory = spans()
    cut = {"x-sim-error": "interrupt"}
    with pytest.raises(openai.APIConnectionError):
        responses = sdk(simulator.openai_base_url).responses
        list(responses.create(model="o4-mini", input="hi", stream=True, extra_headers=cut))
    [span] = gen_ai_spans(memory)
    attrs = dict(span.attributes or {})
    assert span.status.status_code is StatusCode.ERROR
    assert attrs["nexus.usage.source"] in {"tiktoken", "chars"}
    assert attrs["gen_ai.usage.output_tokens"] > 0  # type: ignore[operator]
    assert "gen_ai.response.finish_reasons" not in attrs
    assert str(attrs["gen_ai.response.id"]).startswith("resp_")  # read from `response.created`
