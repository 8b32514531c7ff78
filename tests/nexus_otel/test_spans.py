"""What the spans say, read from an in-memory exporter: attributes, nesting, content, errors."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import gzip
import json
import logging
import threading
import zlib
from collections.abc import Callable
from typing import Any

import brotli
import httpx
import httpx2
import pytest
import wrapt
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import nexus_otel
from exporter.simulator import ProviderSimulator
from nexus_otel import _openai
from tests.nexus_otel.clients import MESSAGES, Call, run
from tests.nexus_otel.scripted_server import ScriptedServer

Spans = Callable[..., InMemorySpanExporter]
USAGE = {"x-sim-usage": "input=900,output=250,cache_read=400,cache_write=0,reasoning=50"}


def gen_ai_spans(memory: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in memory.get_finished_spans()
            if s.attributes and "gen_ai.provider.name" in s.attributes]  # fmt: skip


def test_span_shape_and_no_http_span(spans: Spans, simulator: ProviderSimulator) -> None:
    memory = spans()
    with nexus_otel.operation("fact_generation", correlation_id="carousel-1"):
        run(simulator, Call("groq", False, True, USAGE))
    [span] = memory.get_finished_spans()  # the call's one span: no HTTP span by default
    assert gen_ai_spans(memory) == [span]
    assert span.name == "chat llama-3.3-70b-versatile" and span.kind is SpanKind.CLIENT
    attrs = dict(span.attributes or {})
    host, port = simulator.base_url.removeprefix("http://").split(":")
    assert (attrs["server.address"], attrs["server.port"]) == (host, int(port))
    assert "http.response.status_code" not in attrs  # 200: left out, read as 200
    assert "gen_ai.usage.cache_creation.input_tokens" not in attrs  # 0: left out, read as 0
    assert attrs["gen_ai.provider.name"] == "groq" and attrs["gen_ai.operation.name"] == "chat"
    assert attrs["nexus.operation"] == "fact_generation"
    assert attrs["nexus.correlation_id"] == "carousel-1"
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (900, 250)
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 400
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 50
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.request.stream"] is True
    assert "nexus.usage.source" not in attrs  # the provider's own counts: stored as "response"
    assert 0 < float(attrs["nexus.response.time_to_first_chunk"]) < span_seconds(span)  # type: ignore[arg-type]
    assert "traceparent" not in simulator.responses[-1].request_headers


@pytest.mark.parametrize("stream", [False, True])
def test_http_spans_are_opt_in(spans: Spans, simulator: ProviderSimulator, stream: bool) -> None:
    memory = spans(http_spans=True)
    run(simulator, Call("anthropic", False, stream, USAGE))
    [span] = gen_ai_spans(memory)
    [http_span] = [s for s in memory.get_finished_spans() if s is not span]
    assert http_span.parent is not None and http_span.parent.span_id == span.context.span_id
    assert status_code(http_span) == 200
    # The call's span ends only once the body has been read: after the HTTP span.
    assert span.end_time and http_span.end_time and span.end_time >= http_span.end_time
    # The HTTP span propagates the trace to the provider, as it does for any request.
    traceparent = simulator.responses[-1].request_headers["traceparent"]
    assert traceparent.split("-")[1:3] == [
        f"{span.context.trace_id:032x}", f"{http_span.context.span_id:016x}"]  # fmt: skip


def status_code(http_span: ReadableSpan) -> object:
    """The HTTP span's status code, in the old or the stable semantic conventions."""
    attrs = dict(http_span.attributes or {})
    return attrs.get("http.response.status_code", attrs.get("http.status_code"))


@pytest.mark.parametrize("module", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_other_requests_keep_their_http_span(spans: Spans, module: Any) -> None:
    memory = spans()
    with ScriptedServer() as server:
        server.parts = [b'{"ok": true}']
        server.headers = {"content-type": "application/json"}
        server.release.set()
        body = {"model": "gpt-4o", "messages": MESSAGES}  # an LLM-looking body, another path
        response = module.post(server.base_url + "/v1/embeddings/other", json=body)
    assert response.json() == {"ok": True}
    [http_span] = memory.get_finished_spans()
    assert http_span.kind is SpanKind.CLIENT and http_span.name == "POST"
    assert status_code(http_span) == 200
    assert gen_ai_spans(memory) == []


def test_a_wrapper_between_ours_and_the_http_instrumentation_is_kept(
    spans: Spans, simulator: ProviderSimulator
) -> None:
    """Only the httpx instrumentation's own wrapper is stepped over; an app's wrapper under ours
    still runs, and the HTTP span stays suppressed through the context instead."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    seen: list[str] = []

    def apps_wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kw: Any) -> Any:
        seen.append(str(args[0].url.path))
        return wrapped(*args, **kw)

    http = HTTPXClientInstrumentor()
    http.instrument()  # the app's own, before ours: transport <- HTTP span <- app's <- ours
    wrapt.wrap_function_wrapper(httpx, "HTTPTransport.handle_request", apps_wrapper)
    try:
        memory = spans()
        run(simulator, Call("groq", False, False, USAGE))
        nexus_otel.uninstrument()
    finally:
        wrapper = httpx.HTTPTransport.__dict__["handle_request"]
        httpx.HTTPTransport.handle_request = wrapper.__wrapped__  # type: ignore[method-assign]
        http.uninstrument()
    assert seen == ["/openai/v1/chat/completions"]
    [span] = memory.get_finished_spans()  # the GenAI span alone: no HTTP span under it
    assert gen_ai_spans(memory) == [span]
    assert "traceparent" not in simulator.responses[-1].request_headers


def test_each_client_names_its_own_provider(spans: Spans) -> None:
    """Detection is remembered per client, server and path: two clients calling the same server
    and path with different SDKs' User-Agents keep their own providers, call after call."""
    memory = spans()
    reply = {"model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    with ScriptedServer() as server:
        server.parts = [json.dumps(reply).encode()]
        server.headers = {"content-type": "application/json"}
        server.release.set()
        url = server.base_url + "/v1/chat/completions"
        body = {"model": "m", "messages": MESSAGES}
        with (
            httpx.Client(headers={"User-Agent": "Groq/Python 1.7.0"}) as groq_like,
            httpx.Client(headers={"User-Agent": "my-gateway-client/2"}) as plain,
        ):
            for client in (groq_like, plain, groq_like, plain):
                client.post(url, json=body).read()
    providers = [s.attributes["gen_ai.provider.name"] for s in gen_ai_spans(memory)]  # type: ignore[index]
    assert providers == ["groq", "openai", "groq", "openai"]


def span_seconds(span: ReadableSpan) -> float:
    assert span.end_time is not None and span.start_time is not None
    return (span.end_time - span.start_time) / 1e9


def test_error_span(spans: Spans, simulator: ProviderSimulator) -> None:
    memory = spans()
    with pytest.raises(Exception, match=r"429|rate"):
        run(simulator, Call("openai", False, False, {"x-sim-error": "429"}))
    [span] = gen_ai_spans(memory)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes and span.attributes["error.type"] == "429"
    assert span.attributes["http.response.status_code"] == 429


def test_content_is_off_by_default_and_opt_in(spans: Spans, simulator: ProviderSimulator) -> None:
    memory = spans()
    text = run(simulator, Call("anthropic", False, False, USAGE))
    [span] = gen_ai_spans(memory)
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output")) for k in span.attributes or {})
    assert "gen_ai.request.stream" not in (span.attributes or {})  # a plain call: left out
    nexus_otel.uninstrument()
    memory = spans(capture_content=True)
    text = run(simulator, Call("anthropic", False, False, USAGE))
    [span] = gen_ai_spans(memory)
    attrs = dict(span.attributes or {})
    assert json.loads(str(attrs["gen_ai.input.messages"])) == MESSAGES[1:]
    assert json.loads(str(attrs["gen_ai.output.messages"]))[0]["parts"][0]["content"] == text


def test_stream_passes_through_as_it_arrives(spans: Spans) -> None:
    """The server holds back the rest of the stream until the app has read the first chunk:
    any buffering in the instrumentation would hang here."""
    memory = spans()
    first = (
        b'data: {"id":"c1","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    )
    rest = [b'data: {"id":"c1","model":"gpt-4o","choices":[{"index":0,"delta":{},'
            b'"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n',
            b"data: [DONE]\n\n"]  # fmt: skip
    with ScriptedServer() as server:
        server.parts = [first, *rest]
        server.headers = {"content-type": "text/event-stream"}
        received: list[bytes] = []
        body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True}
        with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body) as response:
            for chunk in response.iter_raw():
                if not received:
                    assert not server.release.is_set()  # the first chunk came on its own
                    server.release.set()
                received.append(chunk)
    assert b"".join(received) == first + b"".join(rest)  # unchanged, byte for byte
    [span] = gen_ai_spans(memory)
    attrs = dict(span.attributes or {})
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (7, 2)
    assert attrs["gen_ai.provider.name"] == "openai"  # the wire format's own provider


ANSWER = {"id": "msg_1", "type": "message", "model": "claude-sonnet-4-5",
          "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
          "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 30,
                    "cache_creation_input_tokens": 20}}  # fmt: skip
ANSWER_STREAM = b"".join(
    f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode()
    for e in [
        {"type": "message_start", "message": {**ANSWER, "content": [], "stop_reason": None}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 5},
        },
        {"type": "message_stop"},
    ]
)


COMPRESS = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}


@pytest.mark.parametrize("module", [httpx, httpx2], ids=["httpx", "httpx2"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_compressed_bodies_are_read(spans: Spans, encoding: str, stream: bool, module: Any) -> None:
    """The transport sees the body before httpx decompresses it: gzip and deflate are told from
    the body's first bytes and undone on the side; brotli (which httpx asks for once `brotli` is
    installed, and OpenAI's API answers in) is told by the response's Content-Encoding."""
    memory = spans()
    plain = ANSWER_STREAM if stream else json.dumps(ANSWER).encode()
    compressed = COMPRESS[encoding](plain)
    with ScriptedServer() as server:
        server.parts = [compressed[:7], compressed[7:]]
        content_type = "text/event-stream" if stream else "application/json"
        server.headers = {"content-type": content_type, "content-encoding": encoding}
        server.release.set()
        body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": MESSAGES[1:],
                "stream": stream}  # fmt: skip
        response = module.post(server.base_url + "/v1/messages", json=body)
    assert response.content == plain
    [span] = gen_ai_spans(memory)
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.usage.input_tokens"] == 60  # 10 + cache read 30 + cache write 20
    assert attrs["gen_ai.usage.output_tokens"] == 5
    assert attrs["gen_ai.usage.cache_creation.input_tokens"] == 20


@pytest.mark.usefixtures("spans")
def test_other_instrumentations_gen_ai_span_is_enriched_not_doubled(
    simulator: ProviderSimulator,
) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    nexus_otel.instrument(tracer_provider=provider)  # the `spans` fixture undoes it
    tracer = trace.get_tracer("some.genai.instrumentation", tracer_provider=provider)
    with (
        nexus_otel.operation("expand"),
        tracer.start_as_current_span(
            "chat gpt-4o-mini", kind=SpanKind.CLIENT, attributes={"gen_ai.provider.name": "openai"}
        ),
    ):
        run(simulator, Call("openai", False, False, USAGE))
    [span] = memory.get_finished_spans()  # enriched, and no HTTP span under it either
    assert gen_ai_spans(memory) == [span]
    assert (
        span.instrumentation_scope
        and span.instrumentation_scope.name == "some.genai.instrumentation"
    )
    attrs = dict(span.attributes or {})
    assert attrs["nexus.operation"] == "expand"
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 400


def test_internal_errors_are_logged_not_raised(
    spans: Spans, simulator: ProviderSimulator, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    memory = spans()
    monkeypatch.setenv("NEXUS_OTEL_RAISE_INTERNAL_ERRORS", "0")

    def broken(*args: Any) -> None:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(_openai, "read_json", broken)
    with caplog.at_level(logging.ERROR, logger="nexus_otel"):
        text = run(simulator, Call("groq", False, False, USAGE))
    assert text  # the app got its answer
    assert "parser bug" in caplog.text
    [span] = gen_ai_spans(memory)  # and the call still has its span, with estimated usage
    assert span.attributes and span.attributes["nexus.usage.source"] == "tiktoken"


def test_operations_nest_decorate_and_follow_tasks_and_threads(
    spans: Spans, simulator: ProviderSimulator
) -> None:
    spans()

    @nexus_otel.operation("decorated_sync", correlation_id="c-sync")
    def sync_step() -> nexus_otel.Operation | None:
        run(simulator, Call("groq", False, False, USAGE))
        return nexus_otel.current_operation()

    @nexus_otel.operation("decorated_async")
    async def async_step() -> None:
        child = asyncio.create_task(asyncio.to_thread(lambda: None))
        await child
        await asyncio.gather(*(asyncio.create_task(_openai_call(simulator)) for _ in range(2)))

    with nexus_otel.operation("carousel", correlation_id="carousel-9") as outer:
        inner = sync_step()
        asyncio.run(async_step())
        context = contextvars.copy_context()
        gemini = Call("gcp.gemini", False, False, USAGE)
        thread = threading.Thread(target=context.run, args=(run, simulator, gemini))
        thread.start()
        thread.join()
    assert inner is not None and [c.operation for c in inner.calls] == ["decorated_sync"]
    assert inner.calls[0].correlation_id == "c-sync"
    calls = outer.calls
    assert len(calls) == 4 and outer.total_tokens == 4 * 1150 and outer.success
    assert sorted(c.operation or "" for c in calls) == [
        "carousel", "decorated_async", "decorated_async", "decorated_sync"]  # fmt: skip
    assert {c.correlation_id for c in calls if c.operation == "decorated_async"} == {"carousel-9"}
    assert outer.cost_usd is not None and outer.cost_usd == sum(c.cost_usd or 0 for c in calls)
    assert outer.metrics["calls"] == 4


@pytest.mark.parametrize(
    ("name", "correlation_id", "message"),
    [
        (42, None, "operation name must be text, not int: 42"),
        (None, None, "operation name must be text, not NoneType: None"),
        (b"step", None, "operation name must be text, not bytes: b'step'"),
        ("step", 123, "correlation_id must be text or None, not int: 123 (pass str(...))"),
        ("step", ["a"], "correlation_id must be text or None, not list: ['a'] (pass str(...))"),
    ],
)
def test_an_operation_named_with_something_not_text_is_refused_where_it_is_written(
    name: Any, correlation_id: Any, message: str
) -> None:
    """A span drops an attribute that is not text with only a log line: the calls would go
    untagged. The app's own line raises instead, as a context manager or as a decorator."""
    with pytest.raises(TypeError) as raised:
        nexus_otel.operation(name, correlation_id=correlation_id)
    assert str(raised.value) == message
    assert nexus_otel.current_operation() is None


async def _openai_call(simulator: ProviderSimulator) -> None:
    await asyncio.to_thread(run, simulator, Call("openai", False, False, USAGE))


def test_content_capture_from_the_environment(
    spans: Spans, simulator: ProviderSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_OTEL_CAPTURE_CONTENT", "true")
    memory = spans()
    run(simulator, Call("groq", False, False, USAGE))
    [span] = gen_ai_spans(memory)
    assert "gen_ai.input.messages" in (span.attributes or {})


def test_a_stream_closed_early_ends_its_span_with_estimated_usage(
    spans: Spans, simulator: ProviderSimulator
) -> None:
    import groq

    memory = spans()
    client = groq.Groq(api_key="gsk-x", base_url=simulator.groq_base_url, max_retries=0)
    with nexus_otel.operation("early") as op:
        stream = client.chat.completions.create(
            model="llama-3.3-70b-versatile", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
            extra_headers={"x-sim-latency": "0"},
        )  # fmt: skip
        next(iter(stream))
        stream.close()
    [span] = gen_ai_spans(memory)
    attrs = dict(span.attributes or {})
    assert attrs["nexus.usage.source"] == "tiktoken" and span.status.status_code is StatusCode.UNSET
    [record] = op.calls
    assert record.success and record.input_tokens > 0


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_stream_dropped_unread_is_still_one_call(
    spans: Spans, simulator: ProviderSimulator, is_async: bool
) -> None:
    """The request went out (and is billed) though the app never read the stream: an exception
    between `create()` and the loop. The call ends when its response is let go of."""
    import openai

    memory = spans()
    kwargs: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES, "stream": True,
                              "extra_headers": {**USAGE, "x-sim-latency": "0"}}  # fmt: skip

    def make_and_drop() -> None:
        client = openai.OpenAI(api_key="sk-x", base_url=simulator.openai_base_url, max_retries=0)
        client.chat.completions.create(**kwargs)  # the stream: dropped unread

    async def make_and_drop_async() -> None:
        client = openai.AsyncOpenAI(
            api_key="sk-x", base_url=simulator.openai_base_url, max_retries=0
        )
        await client.chat.completions.create(**kwargs)
        gc.collect()

    with nexus_otel.operation("dropped") as op:
        if is_async:
            asyncio.run(make_and_drop_async())
        else:
            make_and_drop()
        gc.collect()
    [span] = gen_ai_spans(memory)
    attrs = dict(span.attributes or {})
    assert attrs["nexus.operation"] == "dropped" and span.status.status_code is StatusCode.UNSET
    assert attrs["nexus.usage.source"] == "tiktoken" and attrs["gen_ai.usage.output_tokens"] == 0
    [record] = op.calls
    assert record.success and record.input_tokens == attrs["gen_ai.usage.input_tokens"] == 25


@pytest.mark.usefixtures("spans")
def test_spans_that_are_not_one_model_call_are_not_enriched(simulator: ProviderSimulator) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    nexus_otel.instrument(tracer_provider=provider)
    tracer = trace.get_tracer("app", tracer_provider=provider)
    agent = {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "invoke_agent"}
    with tracer.start_as_current_span("invoke_agent planner", attributes=agent):
        run(simulator, Call("openai", False, False, USAGE))
    chat = {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat"}
    with tracer.start_as_current_span("chat twice", kind=SpanKind.CLIENT, attributes=chat):
        run(simulator, Call("openai", False, False, USAGE))
        run(simulator, Call("openai", False, False, USAGE))  # a second call: its own span
    calls = [s for s in memory.get_finished_spans()
             if (s.attributes or {}).get("gen_ai.usage.input_tokens") == 900]  # fmt: skip
    scopes = sorted(s.instrumentation_scope.name for s in calls if s.instrumentation_scope)
    assert scopes == ["app", "nexus_otel", "nexus_otel"]  # three calls, three spans with usage


def test_span_is_a_child_of_the_span_current_when_the_request_was_sent(
    spans: Spans, simulator: ProviderSimulator
) -> None:
    """The call's span is recorded when the body ends; its parent and start stay those of the
    request, even when the stream is read after the app's own span has ended."""
    import groq

    memory = spans()
    client = groq.Groq(api_key="gsk-x", base_url=simulator.groq_base_url, max_retries=0)
    tracer = trace.get_tracer("app", tracer_provider=TracerProvider())
    with tracer.start_as_current_span("handle request") as app_span:
        stream = client.chat.completions.create(
            model="llama-3.3-70b-versatile", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
            extra_headers={**USAGE, "x-sim-latency": "0"},
        )  # fmt: skip
    assert memory.get_finished_spans() == ()  # nothing recorded before the body is read
    after_app_span = app_span.end_time  # type: ignore[attr-defined]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    [span] = gen_ai_spans(memory)
    assert text and span.parent is not None
    assert span.parent.span_id == app_span.get_span_context().span_id
    assert span.context.trace_id == app_span.get_span_context().trace_id
    assert span.start_time is not None and span.start_time < after_app_span < span.end_time  # type: ignore[operator]
    assert dict(span.attributes or {})["gen_ai.usage.input_tokens"] == 900
